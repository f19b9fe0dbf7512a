"""Commits are atomic and idempotent; unfinished runs are invisible and collected by gc."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl

from trajlib import schema as S
from trajlib.store import open_store
from trajlib.store._layout import atomic_write_parquet, temp_path


def _leave_unfinished(store, run_factory, rid: str) -> None:
    """Write every fragment of a run except the runs/ commit marker (a crash just before it)."""
    r = run_factory(rid, n_steps=80)
    store.write_run(**r)
    (store.path / "runs" / f"{rid}.parquet").unlink()


def test_write_run_twice_returns_false_and_duplicates_nothing(store, run_factory):
    r = run_factory("r1", n_steps=70)
    assert store.write_run(**r) is True
    assert store.write_run(**r) is False
    assert open_store(store.path).write_run(**r) is False
    assert store.steps().collect().height == 70
    assert store.runs().collect().height == 1
    assert store.validate() == []


def test_uncommitted_fragments_are_invisible(store, run_factory):
    store.write_run(**run_factory("done", n_steps=50))
    _leave_unfinished(store, run_factory, "half")
    assert (store.path / "steps" / "half.parquet").exists()
    assert not store.is_committed("half")
    assert store.committed_run_ids() == {"done"}
    for lf in (store.steps(), store.decisions(), store.branches(), store.runs()):
        assert set(lf.collect()[S.RUN_ID].unique().to_list()) <= {"done"}
    assert store.steps(run_ids=["half"]).collect().height == 0
    assert store.validate() == []  # garbage is not a problem, just gc's job


def test_gc_removes_unfinished_runs_and_temp_files_but_never_committed_ones(store, run_factory):
    committed = run_factory("keep", n_steps=60)
    store.write_run(**committed)
    _leave_unfinished(store, run_factory, "half")
    tmp = temp_path(store.path / "steps" / "ghost.parquet", "ghost")
    tmp.write_bytes(b"partial")
    before = {p: p.stat().st_mtime_ns for p in store.path.rglob("*") if "keep" in p.name}

    removed = store.gc()

    assert "steps/half.parquet" in removed and "decisions/half.parquet" in removed
    assert "layers.zarr/half" in removed and f"steps/{tmp.name}" in removed
    assert not any("keep" in r for r in removed)
    assert {p: p.stat().st_mtime_ns for p in store.path.rglob("*") if "keep" in p.name} == before
    assert_frame = store.steps().collect()
    assert assert_frame.height == 60
    assert store.validate() == []
    assert store.gc() == []  # nothing left
    # the unfinished run can now be written afresh
    assert store.write_run(**run_factory("half", n_steps=80))
    assert store.validate() == []


def test_gc_leaves_runs_under_a_live_claim_alone(store, run_factory):
    _leave_unfinished(store, run_factory, "busy")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        claim = store.path / "locks" / "busy.claim"
        claim.write_text(
            json.dumps({"pid": other.pid, "host": os.uname().nodename, "start": None, "token": "x"})
        )
        assert store.gc() == []
        assert (store.path / "steps" / "busy.parquet").exists()
    finally:
        other.kill()
        other.wait()
    removed = store.gc()  # holder dead: claim is stale, run is garbage
    assert "locks/busy.claim" in removed and "steps/busy.parquet" in removed


def test_leftovers_of_a_crashed_attempt_do_not_leak_into_the_recommit(store, run_factory):
    _leave_unfinished(store, run_factory, "r1")  # wrote decisions, branches and layers
    r = run_factory("r1", n_steps=80)
    assert store.write_run(r["run"], r["steps"])  # this time without them
    assert store.decisions().collect().height == 0
    assert store.branches().collect().height == 0
    assert not (store.path / "layers.zarr" / "r1").exists()
    assert store.validate() == []


def test_claims_exclude_other_processes_and_stale_claims_are_taken_over(store):
    assert store.claim("r1") is True
    assert store.claim("r1") is True  # already ours
    other = open_store(store.path)  # stands in for another process: same pid, other token
    assert other.claim("r1") is False
    store.release("r1")
    assert other.claim("r1") is True
    other.release("r1")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    (store.path / "locks" / "r2.claim").write_text(
        json.dumps(
            {"pid": int(dead.stdout), "host": os.uname().nodename, "start": None, "token": "t"}
        )
    )
    assert store.claim("r2") is True  # stale: its pid is gone
    store.release("r2")
    assert not (store.path / "locks" / "r2.claim").exists()


def test_write_run_waits_for_a_live_claim_then_skips(store, run_factory):
    r = run_factory("r1", n_steps=30)
    other = open_store(store.path)
    assert other.claim("r1")
    assert store.write_run(**r, claim_timeout_s=0.05) is False  # claimed elsewhere, not committed
    assert not store.is_committed("r1")
    other.release("r1")
    assert store.write_run(**r) is True


def test_validate_reports_a_run_committed_twice(store, run_factory):
    store.write_run(**run_factory("r1", n_steps=30))
    src = store.path / "runs" / "r1.parquet"
    meta = pl.read_parquet_metadata(src)
    atomic_write_parquet(
        pl.read_parquet(src),
        store.path / "runs" / "part-x-0.parquet",
        "r1",
        durable=False,
        metadata={"trajlib.counts": json.dumps({"r1": json.loads(meta["trajlib.counts"])})},
    )
    problems = store.validate()
    assert any("committed 2 times" in p for p in problems)


def test_validate_reports_missing_and_damaged_pieces(store, run_factory):
    store.write_run(**run_factory("r1", n_steps=120))
    store.write_run(**run_factory("r2", n_steps=120))
    (store.path / "decisions" / "r1.parquet").unlink()
    steps = pl.read_parquet(store.path / "steps" / "r2.parquet")
    steps.head(100).write_parquet(store.path / "steps" / "r2.parquet")
    problems = "\n".join(store.validate())
    assert "run 'r1': 0 decisions rows; expected 2" in problems
    assert "run 'r2': 100 steps rows; expected 120" in problems
    import zarr

    arr = zarr.open_array(str(store.path / "layers.zarr" / "r1"), mode="r+")
    arr.attrs["layer_names"] = ["wrong"]
    assert "layer names ['wrong']" in "\n".join(store.validate())
    assert np.isfinite(store.layers("r2")[0]).all()
