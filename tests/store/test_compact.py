"""compact() keeps the data identical, reduces files, and is safe against crashes at any phase."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from trajlib import schema as S
from trajlib.errors import StoreError
from trajlib.store import _compact, open_store

HERE = Path(__file__).parent
PHASES = ("written", "journal", "renamed", "deleted")


def _fill(store, run_factory, n: int = 6, n_steps: int = 120) -> None:
    for i in range(n):
        r = run_factory(
            f"r{i:02d}",
            n_steps=n_steps,
            task="ab"[i % 2],
            status="complete" if i % 3 else "diverged",
        )
        if i == 4:
            r = {"run": r["run"], "steps": r["steps"]}  # a run without optional tables
        assert store.write_run(**r)


def _tables(store) -> dict[str, pl.DataFrame]:
    keys = {
        "runs": [S.RUN_ID],
        "steps": [S.RUN_ID, S.STEP],
        "decisions": [S.RUN_ID, S.STEP],
        "branches": [S.RUN_ID, S.STEP, S.ACTION],
    }
    return {t: getattr(store, t)().collect().sort(k) for t, k in keys.items()}


def _assert_same(before: dict[str, pl.DataFrame], store) -> None:
    after = _tables(store)
    for t in before:
        assert_frame_equal(after[t], before[t])


def _n_parquet(store) -> int:
    return len(list(store.path.glob("*/*.parquet")))


def test_compact_keeps_data_and_reduces_files(store, run_factory):
    _fill(store, run_factory)
    before, files_before = _tables(store), _n_parquet(store)
    stats = store.compact(rows_per_file=300)  # small parts: several batches
    assert stats["runs"] == 6 and stats["files_before"] == files_before
    assert _n_parquet(store) == stats["files_after"] < files_before
    assert not list(store.path.glob("steps/r*.parquet"))
    assert store.validate() == []
    _assert_same(before, store)
    reopened = open_store(store.path)
    _assert_same(before, reopened)
    assert reopened.committed_run_ids() == {f"r{i:02d}" for i in range(6)}
    # parts are sorted by run_id, step
    for part in store.path.glob("steps/part-*.parquet"):
        df = pl.read_parquet(part)
        assert df.equals(df.sort(S.RUN_ID, S.STEP))
    # filters work on compacted files, layers untouched
    ids = set(store.steps(task="a").select(S.RUN_ID).unique().collect()[S.RUN_ID])
    assert ids == {"r00", "r02", "r04"}
    np.testing.assert_array_equal(store.layers("r03")[0], run_factory("r03", n_steps=120)["layers"])


def test_writes_after_compaction_and_second_compaction(store, run_factory):
    _fill(store, run_factory, n=3)
    store.compact()
    assert store.write_run(**run_factory("r00", n_steps=120)) is False  # committed in a part
    assert store.write_run(**run_factory("late", n_steps=120)) is True
    before = _tables(store)
    assert store.steps().collect().height == 4 * 120
    stats = store.compact()
    assert stats["runs"] == 1
    _assert_same(before, store)
    assert store.validate() == []
    assert store.compact()["runs"] == 0  # nothing left to do
    assert store.gc() == []


@pytest.mark.parametrize("phase", PHASES)
def test_crash_after_each_phase_leaves_a_valid_store(store, run_factory, monkeypatch, phase):
    _fill(store, run_factory)
    before = _tables(store)

    def hook(name: str) -> None:
        if name == phase:
            raise KeyboardInterrupt(f"simulated crash after {name}")

    monkeypatch.setattr(_compact, "_HOOK", hook)
    with pytest.raises(KeyboardInterrupt):
        store.compact()
    monkeypatch.setattr(_compact, "_HOOK", None)
    # readers honour the journal: same rows, nothing missing or doubled
    assert store.validate() == []
    _assert_same(before, open_store(store.path))
    assert len(store.committed_run_ids()) == 6
    # the next gc / compact finishes or undoes it
    store.gc()
    assert not (store.path / "compaction.json").exists()
    assert store.validate() == []
    _assert_same(before, store)
    store.compact()
    assert store.validate() == []
    _assert_same(before, store)
    assert not list(store.path.glob("*/.*.tmp"))


@pytest.mark.slow
def test_killed_compaction_process_leaves_a_valid_store(store, run_factory):
    _fill(store, run_factory)
    before = _tables(store)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from _crash_writer import "
        "compact_and_die_at as f; f(sys.argv[2], 'renamed')"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(HERE), str(store.path)], timeout=120)
    assert proc.returncode == 9
    assert (store.path / "compaction.json").exists()
    assert (store.path / "locks" / "_compact.claim").exists()  # a dead process's lock
    assert store.validate() == []
    _assert_same(before, store)
    stats = store.compact()  # takes over the stale lock, rolls the old compaction forward
    assert "compaction.json" in stats["recovered"]
    assert store.validate() == []
    _assert_same(before, store)


def test_a_live_compaction_excludes_another(store, run_factory):
    _fill(store, run_factory, n=2)
    other = open_store(store.path)
    from trajlib.store import _claims

    token = _claims.try_claim(store.path / "locks", "_compact")
    try:
        with pytest.raises(StoreError, match="another compaction is running"):
            other.compact()
        assert other.gc() == []  # gc does not undo a live compaction either
    finally:
        _claims.release(store.path / "locks", "_compact", token)


def test_journal_with_incomplete_swap_hides_new_files(store, run_factory):
    _fill(store, run_factory, n=2)
    before = _tables(store)
    # a part file that claims to replace r00's fragments, but the swap never completed
    (store.path / "compaction.json").write_text(
        json.dumps(
            {
                "new": ["steps/part-zz-00000.parquet", "runs/part-zz-00000.parquet"],
                "replaces": ["steps/r00.parquet", "runs/r00.parquet"],
            }
        )
    )
    pl.read_parquet(store.path / "steps" / "r00.parquet").write_parquet(
        store.path / "steps" / "part-zz-00000.parquet"
    )
    _assert_same(before, store)
    assert store.validate() == []
    removed = store.gc()
    assert "steps/part-zz-00000.parquet" in removed
    _assert_same(before, store)


def test_other_store_objects_see_a_compaction_at_once(store, run_factory):
    _fill(store, run_factory, n=3)
    other = open_store(store.path)  # stands in for another process with its own caches
    assert other.is_committed("r00") and not other.is_committed("r99")  # caches "no parts"
    store.compact()
    assert not (store.path / "runs" / "r00.parquet").exists()
    assert other.is_committed("r00")
    assert other.write_run(**run_factory("r01", n_steps=120)) is False
    assert other.steps().collect().height == 3 * 120
