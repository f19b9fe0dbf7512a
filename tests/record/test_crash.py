"""Crash safety: a recording commits chunks every C steps; a SIGKILLed training process keeps its
committed chunks and its run is `incomplete` (never read as a run); resuming from the user's own
checkpoint (Recorder.state_dict) gives the run an uninterrupted recording would have given."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from trajlib import schema as S
from trajlib.store import open_store

ROOT = Path(__file__).resolve().parents[2]


def _child(store: Path, ckpt: Path, mode: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.record._killed_recording", str(store), str(ckpt), mode],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(proc.stderr[-3000:])
    return proc.returncode


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    store, ckpt = root / "store", root / "ckpt.pt"
    assert _child(store, ckpt, "kill-at-17") == -signal.SIGKILL
    return store, ckpt


@pytest.mark.slow
def test_a_killed_recording_keeps_its_chunks_and_is_incomplete(killed):
    store, ckpt = killed
    st = open_store(store)
    assert st.validate() == []
    assert st.runs().collect().height == 0  # never read as a run
    assert st.steps().collect().height == 0
    (run_id,) = st.incomplete_runs()
    got = st.read_chunks(run_id)
    assert got["stop"] == 15  # chunks at steps 5, 10, 15; step 15 and 16 were lost
    assert got["steps"][S.STEP].to_list() == list(range(15))
    assert got["steps"][S.LOSS].is_not_null().all()
    assert got["layers"].shape[:1] == (15,) and got["run"][S.STATUS] == "incomplete"
    assert got["decisions"][S.STEP].to_list() == [4, 8, 12]


@pytest.mark.slow
def test_resuming_from_the_users_checkpoint_equals_an_uninterrupted_recording(killed, tmp_path):
    store, ckpt = killed
    assert _child(store, ckpt, "resume") == 0
    st = open_store(store)
    assert st.validate() == [] and st.incomplete_runs() == []
    run = st.runs().collect().row(0, named=True)
    assert run[S.STATUS] == S.STATUS_COMPLETE and run[S.STEPS_DONE] == 30
    assert not (store / "chunks" / run[S.RUN_ID]).exists()
    assert _child(tmp_path / "full", tmp_path / "unused.pt", "full") == 0
    full = open_store(tmp_path / "full")
    assert full.runs().collect()[S.RUN_ID].to_list() == [run[S.RUN_ID]]
    cols = [c for c in S.STEP_SCHEMA if c != S.STEP_TIME_S]
    a = st.steps().collect().sort(S.STEP).select(cols)
    b = full.steps().collect().sort(S.STEP).select(cols)
    assert a.equals(b)
    assert st.decisions().collect().sort(S.STEP).equals(full.decisions().collect().sort(S.STEP))
    la, _, _ = st.layers(run[S.RUN_ID])
    lb, _, _ = full.layers(run[S.RUN_ID])
    assert (la == lb).all()
    assert pl.Series(a[S.LR]).n_unique() >= 1


def test_chunks_on_an_fsspec_store_and_a_resume_in_process():
    import torch
    from torch import nn

    from trajlib.collect import Recorder
    from trajlib.store import create_store

    st = create_store("memory://recorder-chunks")
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    xs = torch.randn(10, 4, 3)

    def train(rec, steps):
        for t in steps:
            opt.zero_grad()
            loss = model(xs[t]).pow(2).mean()
            loss.backward()
            opt.step()
            rec.observe(loss)
            rec.step()

    rec = Recorder(st, opt, total_steps=10, every=2, chunk_every=3, behaviour="step")
    train(rec, range(4))
    saved = {"model": model.state_dict(), "opt": opt.state_dict(), "rec": rec.state_dict()}
    saved = {k: {kk: (vv.clone() if torch.is_tensor(vv) else vv) for kk, vv in v.items()}
             if k == "model" else v for k, v in saved.items()}  # fmt: skip
    train(rec, range(4, 7))  # chunk 4..6 committed, then the process "dies"
    rec.remove()
    (run_id,) = st.incomplete_runs()
    assert st.read_chunks(run_id)["stop"] == 6 and st.runs().collect().height == 0
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    rec = Recorder(st, opt, total_steps=10, every=2, chunk_every=3, behaviour="step")
    rec.load_state_dict(saved["rec"])  # drops the chunk committed after the checkpoint
    assert st.read_chunks(run_id)["stop"] == 4
    train(rec, range(4, 10))
    assert rec.close() and st.incomplete_runs() == [] and st.validate() == []
    steps = st.steps().collect().sort(S.STEP)
    assert steps[S.STEP].to_list() == list(range(10))
