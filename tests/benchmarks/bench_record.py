"""Recorder benchmark: wall time of a user's loop recorded by a Recorder / the same loop without it,
and the cost of branches.

    python tests/benchmarks/bench_record.py [--steps 1000] [--block 50] [--reps 3]

Loops (CPU, one thread): ``mlp`` — an MLP 40-100-100-10 (the mnist1d-mlp shape), batch 128, SGD
with momentum 0.9; ``cnn`` — a CNN with BatchNorm and dropout on 1x16x16 inputs, batch 64, Adam.
Each repetition builds the baseline and the recorded loop (same seed) and runs them interleaved in
blocks of ``--block`` steps (this machine's speed drifts more than the overhead being measured);
``overhead`` is recorded time / baseline time over all blocks. The recorder decides every 50 steps
(random walk) and measures every step; ``close_s`` (the commit into a store) is reported apart.
``branches``: the same recorded loop with branches (every action for ``horizon`` steps at every
decision point), as branch steps / main steps and wall-time ratio to the recorded loop.
Prints one JSON object on the last line.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout's trajlib

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from trajlib.collect import Recorder  # noqa: E402
from trajlib.spec import BranchConfig  # noqa: E402
from trajlib.store import create_store  # noqa: E402


def _mlp() -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    model = nn.Sequential(
        nn.Linear(40, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return (
        model,
        opt,
        lambda g: (torch.randn(128, 40, generator=g), torch.randint(0, 10, (128,), generator=g)),
    )


def _cnn() -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(32 * 4 * 4, 10),
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return (
        model,
        opt,
        lambda g: (
            torch.randn(64, 1, 16, 16, generator=g),
            torch.randint(0, 10, (64,), generator=g),
        ),
    )


class _Loop:
    def __init__(self, make: Any, store: Any | None, branches: int = 0) -> None:
        torch.manual_seed(0)
        self.model, self.opt, self.batch = make()
        self.g = torch.Generator().manual_seed(1)
        self.stream: Any = (self.batch(self.g) for _ in iter(int, 1))  # endless
        self.time_s = 0.0
        self.rec = None
        if store is not None:
            self.rec = Recorder(
                store, self.opt, total_steps=10**6, every=50, model=self.model,
                train_step=self.train_step if branches else None,
                branch=BranchConfig(horizon=max(branches, 1), cooldown=0), run_id=f"bench-{id(self)}",
            )  # fmt: skip
            if branches:
                self.stream = self.rec.batches(self.stream)

    def train_step(self, batch: Any) -> torch.Tensor:
        x, y = batch
        self.opt.zero_grad()
        loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss

    def block(self, n: int) -> None:
        t0 = time.perf_counter()
        batches = (self.batch(self.g) for _ in range(n))
        source = (
            self.rec.batches(batches) if self.rec is not None and self.rec.train_step else batches
        )
        for b in source:
            loss = self.train_step(b)
            if self.rec is not None:
                self.rec.observe(loss)
                self.rec.step()
        self.time_s += time.perf_counter() - t0


def bench(name: str, make: Any, steps: int, block: int, reps: int, horizon: int) -> dict[str, Any]:
    base_s = rec_s = close_s = 0.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-record-"))
    for r in range(reps):
        store = create_store(tmp / f"{name}-{r}", durable=False)
        loops = [_Loop(make, None), _Loop(make, store)]
        for i in range(steps // block):
            for loop in loops if i % 2 == 0 else loops[::-1]:
                loop.block(block)
        base_s += loops[0].time_s
        rec_s += loops[1].time_s
        t0 = time.perf_counter()
        assert loops[1].rec is not None and loops[1].rec.close()
        close_s += time.perf_counter() - t0
    store = create_store(tmp / f"{name}-branches", durable=False)
    plain, branched = _Loop(make, store), _Loop(make, store, branches=horizon)
    n = min(steps, 500)
    for i in range(n // 50):
        for loop in (plain, branched) if i % 2 == 0 else (branched, plain):
            loop.block(50)
    assert branched.rec is not None
    ev = branched.rec.events
    return {
        "loop": name,
        "steps": steps * reps,
        "baseline_ms_per_step": 1e3 * base_s / (steps * reps),
        "overhead": rec_s / base_s,
        "close_s": close_s / reps,
        "branches": {
            "horizon": horizon,
            "branch_steps_per_main_step": ev["branch_steps"] / ev["steps"],
            "wall_ratio_vs_recorded": branched.time_s / plain.time_s,
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--block", type=int, default=50)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--horizon", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(1)
    out = [
        bench(n, m, a.steps, a.block, a.reps, a.horizon) for n, m in (("mlp", _mlp), ("cnn", _cnn))
    ]
    for r in out:
        print(f"{r['loop']}: {r['baseline_ms_per_step']:.2f} ms/step, recorder overhead "
              f"{r['overhead']:.3f}, branches x{r['branches']['branch_steps_per_main_step']:.2f} "
              f"steps, wall x{r['branches']['wall_ratio_vs_recorded']:.2f}")  # fmt: skip
    print(json.dumps({"device": "cpu", "threads": 1, "results": out}))


if __name__ == "__main__":
    main()
