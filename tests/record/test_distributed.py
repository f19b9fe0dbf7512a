"""Under DistributedDataParallel one rank records and every rank applies the same schedule: a real
2-process gloo group on CPU. The ranks use different behaviour seeds and see different data, so
without the broadcast their schedules would differ."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from trajlib import schema as S
from trajlib.collect import Recorder
from trajlib.store import create_store, open_store

STEPS, EVERY = 24, 3


def _worker(rank: int, init: str, store_path: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(
            nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))
        )
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sink = create_store(store_path) if rank == 0 else None
        rec = Recorder(sink, opt, total_steps=STEPS, every=EVERY, seed=rank,
                       behaviour="random-walk", model=model.module)  # fmt: skip
        g = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
        lrs = []
        with rec:
            for _ in range(STEPS):
                x = torch.randn(8, 4, generator=g)
                opt.zero_grad()
                loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
                loss.backward()
                lrs.append(opt.param_groups[0]["lr"])
                opt.step()
                rec.observe(loss)
                rec.step()
        torch.save({"lrs": lrs, "committed": rec.committed}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_one_rank_records_and_every_rank_applies_the_same_schedule(tmp_path: Path):
    init = f"file://{tmp_path / 'rendezvous'}"
    out = str(tmp_path / "lrs")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(init, str(tmp_path / "store"), out), nprocs=2, join=True)
    r0, r1 = (torch.load(f"{out}.{r}", weights_only=True) for r in (0, 1))
    assert r0["committed"] is True and r1["committed"] is False
    assert r0["lrs"] == r1["lrs"]
    assert len(set(r0["lrs"])) > 1  # the schedule moved
    st = open_store(tmp_path / "store")
    assert st.validate() == [] and st.runs().collect().height == 1
    steps = st.steps().collect().sort(S.STEP)
    assert steps[S.LR].to_list() == pytest.approx(r0["lrs"], rel=1e-6)
    assert st.decisions().collect().height == STEPS // EVERY - 1
