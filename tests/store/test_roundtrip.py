"""Every table written by write_run reads back identical; filters select by task/status/run."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from trajlib import schema as S
from trajlib.errors import StoreError
from trajlib.store import create_store, open_store


def test_round_trip_of_every_table(store, run_factory):
    r = run_factory("r1", n_steps=150, n_layers=4)
    assert store.write_run(**r) is True
    assert store.is_committed("r1") and store.committed_run_ids() == {"r1"}

    again = open_store(store.path)
    assert_frame_equal(again.steps().collect(), r["steps"])
    assert_frame_equal(again.decisions().collect(), r["decisions"])
    assert_frame_equal(again.branches().collect(), r["branches"])
    runs = again.runs().collect()
    assert runs.schema == pl.Schema(S.RUN_SCHEMA)
    row = runs.row(0, named=True)
    for k, v in r["run"].items():
        assert row[k] == (pytest.approx(v) if isinstance(v, float) else v), k
    assert json.loads(row[S.LAYER_NAMES]) == r["layer_names"]
    assert row[S.ERROR] is None and row[S.CREATED]  # optional filled with null, created stamped
    arr, names, stats = again.layers("r1")
    np.testing.assert_array_equal(arr, r["layers"])
    assert arr.dtype == np.float32 and arr.shape == (150, 4, 3)
    assert names == r["layer_names"] and stats == list(S.LAYER_STATS)
    assert again.validate() == []


def test_steps_are_stored_sorted_and_schema_exact(store, run_factory):
    r = run_factory("r1", n_steps=60)
    shuffled = r["steps"].sample(fraction=1.0, shuffle=True, seed=1)
    assert store.write_run(r["run"], shuffled)
    got = store.steps().collect()
    assert got.schema == pl.Schema(S.STEP_SCHEMA)
    assert got[S.STEP].to_list() == list(range(60))


def test_lazy_filters_by_task_status_and_run_ids(store, run_factory):
    specs = [
        ("a1", "alpha", "complete"),
        ("a2", "alpha", "diverged"),
        ("b1", "beta", "complete"),
        ("b2", "beta", "failed"),
    ]
    for rid, task, status in specs:
        assert store.write_run(**run_factory(rid, n_steps=120, task=task, status=status))
    lf = store.steps(task="alpha")
    assert isinstance(lf, pl.LazyFrame)

    def ids(lf: pl.LazyFrame) -> set[str]:
        return set(lf.select(S.RUN_ID).unique().collect()[S.RUN_ID].to_list())

    assert ids(store.steps(task="alpha")) == {"a1", "a2"}
    assert ids(store.steps(status="complete")) == {"a1", "b1"}
    assert ids(store.steps(task="beta", status=["complete", "failed"])) == {"b1", "b2"}
    assert ids(store.steps(run_ids=["a2", "b2", "nope"])) == {"a2", "b2"}
    assert ids(store.decisions(task="beta", run_ids={"b1"})) == {"b1"}
    assert ids(store.branches(status="diverged")) == {"a2"}
    assert ids(store.runs(task="gamma")) == set()
    assert store.steps(task="gamma").collect().schema == pl.Schema(S.STEP_SCHEMA)
    assert store.runs(task="alpha", status="complete").collect()[S.RUN_ID].to_list() == ["a1"]


def test_layers_are_per_run(store, run_factory):
    r1, r2 = run_factory("r1", n_steps=30, n_layers=2), run_factory("r2", n_steps=50, n_layers=5)
    store.write_run(**r1)
    store.write_run(**r2)
    assert store.layers("r1")[0].shape == (30, 2, 3)
    np.testing.assert_array_equal(store.layers("r2")[0], r2["layers"])


def test_run_without_optional_tables_reads_as_empty(store, run_factory):
    r = run_factory("bare", n_steps=20)
    assert store.write_run(r["run"], r["steps"])
    assert store.decisions().collect().height == 0
    assert store.branches().collect().schema == pl.Schema(S.BRANCH_SCHEMA)
    with pytest.raises(StoreError, match="no per-layer array"):
        store.layers("bare")
    with pytest.raises(StoreError, match="not committed"):
        store.layers("other")
    assert store.validate() == []


def test_empty_store_reads_empty_frames(store):
    assert store.runs().collect().height == 0
    assert store.steps().collect().schema == pl.Schema(S.STEP_SCHEMA)
    assert store.committed_run_ids() == set()
    info = store.info()
    assert info["runs"] == 0 and info["steps"] == 0 and info["size_bytes"] > 0


def test_info_counts_runs_steps_decisions_and_bytes(store, run_factory):
    for i, (task, status) in enumerate([("a", "complete"), ("a", "diverged"), ("b", "complete")]):
        store.write_run(**run_factory(f"r{i}", n_steps=100, task=task, status=status))
    info = store.info()
    assert info["runs"] == 3
    assert info["runs_by_task"] == {"a": {"complete": 1, "diverged": 1}, "b": {"complete": 1}}
    assert info["steps"] == 300
    assert info["decisions"] == store.decisions().collect().height == 3
    assert info["branches"] == 15
    assert info["size_bytes"] > 10_000


def test_create_store_is_idempotent_and_refuses_foreign_dirs(tmp_path):
    s1 = create_store(tmp_path / "s")
    s2 = create_store(tmp_path / "s", exist_ok=True)
    assert s1.manifest == s2.manifest
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["format"] == S.STORE_FORMAT and manifest["schema_version"] == S.SCHEMA_VERSION
    assert {"trajlib_version", "created", "writer"} <= manifest.keys()
    with pytest.raises(StoreError, match="already exists"):
        create_store(tmp_path / "s", exist_ok=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    with pytest.raises(StoreError, match="not a trajlib store"):
        create_store(tmp_path / "junk")
