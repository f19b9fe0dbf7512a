"""Crash safety and concurrency, with real processes: SIGKILLed writers and parallel writers."""

from __future__ import annotations

import multiprocessing as mp
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from _crash_writer import run_ids
from _store_fixtures import make_run
from polars.testing import assert_frame_equal

from trajlib import schema as S
from trajlib.store import open_store

HERE = Path(__file__).parent
N_RUNS, N_STEPS = 120, 200


_EXPECTED: dict[str, dict] = {}


def _expected(rid: str) -> dict:
    if rid not in _EXPECTED:
        _EXPECTED[rid] = make_run(rid, n_steps=N_STEPS, n_layers=2)
    return _EXPECTED[rid]


def _check_intact(store, ids: set[str], layers_of: set[str]) -> None:
    """Every committed run reads back exactly what was written; nothing else is visible."""
    steps = store.steps().collect().sort(S.RUN_ID, S.STEP)
    assert set(steps[S.RUN_ID].unique().to_list()) == ids
    if ids:
        want = pl.concat([_expected(rid)["steps"] for rid in sorted(ids)])
        assert_frame_equal(steps, want)
        dec = store.decisions().collect().sort(S.RUN_ID, S.STEP)
        assert_frame_equal(dec, pl.concat([_expected(rid)["decisions"] for rid in sorted(ids)]))
    for rid in layers_of:
        np.testing.assert_array_equal(store.layers(rid)[0], _expected(rid)["layers"])


def _start_writer(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_crash_writer.py"), str(path), str(N_RUNS), str(N_STEPS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.slow
def test_sigkilled_writer_leaves_a_valid_store_and_resumes(tmp_path):
    path = tmp_path / "store"
    rng = random.Random(1234)
    committed: set[str] = set()
    kills = 0
    progress: list[int] = []
    for _ in range(5):
        proc = _start_writer(path)
        try:
            proc.wait(timeout=rng.uniform(0.05, 0.3))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        store = open_store(path)
        assert store.validate() == []
        now = store.committed_run_ids()
        assert committed <= now  # nothing committed is ever lost
        _check_intact(store, now, now - committed)
        committed = now
        progress.append(len(now))
    assert kills >= 3  # most rounds were cut short mid-loop
    assert len(committed) < N_RUNS
    assert len(set(progress)) >= 3, progress  # kills landed at different points of the loop

    proc = _start_writer(path)  # a restart skips what is committed and finishes the rest
    assert proc.wait(timeout=120) == 0
    store = open_store(path)
    assert store.committed_run_ids() == set(run_ids(N_RUNS))
    assert store.validate() == []
    _check_intact(store, set(run_ids(N_RUNS)), set(run_ids(N_RUNS)) - committed)
    store.gc()  # whatever the kills left behind goes; committed runs stay
    assert store.validate() == []
    assert store.steps().collect().height == N_RUNS * N_STEPS


@pytest.mark.slow
def test_concurrent_writers_commit_every_run_exactly_once(tmp_path):
    from _crash_writer import concurrent_writer

    path = str(tmp_path / "store")
    ids = run_ids(12)
    n_proc = 4
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n_proc), ctx.Queue()
    procs = []
    for k in range(n_proc):
        mine = ids[3 * k :] + ids[: 3 * k]  # every process writes every run, in another order
        mine = mine[:9]  # overlapping: each run is attempted by 3 processes
        random.Random(k).shuffle(mine)
        procs.append(ctx.Process(target=concurrent_writer, args=(path, mine, 200, barrier, queue)))
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    wins = {rid: sum(r.get(rid, False) for r in results) for rid in ids}
    assert wins == dict.fromkeys(ids, 1)
    store = open_store(path)
    assert store.committed_run_ids() == set(ids)
    assert store.validate() == []
    assert store.steps().collect().height == 12 * 200
    assert list((Path(path) / "locks").glob("*.claim")) == []
