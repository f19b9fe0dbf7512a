"""Executors: the local pool and a real local Ray cluster commit every run through the sink, each
worker writing its own fragments; a stopped and restarted collection skips committed runs."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import polars as pl
import pytest
from _sink import ParquetSink, open_sink

from trajlib import schema as S
from trajlib.collect import collect, parse_recipe, work_units


def _recipe(runs: int = 4, population: int = 2):
    return parse_recipe(
        {
            "collect": {
                "tasks": ["digits-mlp", "teacher-student"],
                "runs_per_task": runs,
                "population": population,
                "budget": 40,
                "every": 20,
                "val_every": 20,
            },
            "branch": {"enabled": True, "horizon": 10, "cooldown": 0},
        },
        name="exec-test",
    )


def test_work_units_are_populations_of_one_task():
    units = work_units(_recipe(runs=5, population=2))
    assert [len(u) for u in units] == [2, 2, 1, 2, 2, 1]
    assert all(len({s.entry["task"] for s in u}) == 1 for u in units)


def test_local_collection_commits_every_run_with_its_tables(tmp_path):
    r = _recipe()
    rep = collect(r, functools.partial(open_sink, str(tmp_path)), workers=1, progress=False)
    assert (rep.total, rep.committed, rep.failed, rep.skipped) == (8, 8, 0, 0)
    assert rep.steps == 8 * 40 and rep.branch_steps == 8 * 1 * 5 * 10
    assert rep.steps_per_s > 0 and rep.branch_steps_per_s > 0
    sink = ParquetSink(tmp_path)
    runs = sink.runs()
    assert set(runs[S.STATUS]) == {S.STATUS_COMPLETE}
    steps = sink.steps(runs[S.RUN_ID][0])
    assert steps.columns == list(S.STEP_SCHEMA) and len(steps) == 40


def test_stopped_and_restarted_collection_skips_committed_runs(tmp_path):
    r = _recipe()
    with pytest.raises(RuntimeError, match="simulated crash"):
        collect(r, functools.partial(open_sink, str(tmp_path), 3), workers=1, progress=False)
    first = set(ParquetSink(tmp_path).runs()[S.RUN_ID])
    assert len(first) == 3
    assert not list((tmp_path / "locks").iterdir())  # claims released on the way out
    rep = collect(r, functools.partial(open_sink, str(tmp_path)), workers=1, progress=False)
    assert (rep.committed, rep.skipped) == (5, 3)
    runs = ParquetSink(tmp_path).runs()
    assert len(runs) == 8 and set(runs[S.RUN_ID]) >= first
    again = collect(r, functools.partial(open_sink, str(tmp_path)), workers=1, progress=False)
    assert (again.committed, again.skipped) == (0, 8)


@pytest.mark.slow
def test_local_process_pool_writes_from_several_workers(tmp_path):
    r = _recipe()
    rep = collect(r, functools.partial(open_sink, str(tmp_path)), workers=2, progress=False)
    assert rep.committed == 8
    runs = ParquetSink(tmp_path).runs()
    assert runs["pid"].n_unique() == 2  # two spawned workers, each writing its own fragments


@pytest.mark.ray
@pytest.mark.slow
def test_ray_executor_with_a_real_local_cluster(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    # Ray workers inherit the driver's environment: let them import trajlib and the test sink.
    here = Path(__file__).resolve().parent
    path = [str(here), str(here.parents[1]), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))
    try:
        r = _recipe()
        factory = functools.partial(open_sink, str(tmp_path))
        rep = collect(r, factory, executor="ray", workers=2, progress=False)
        assert not ray.is_initialized()  # the executor started and stopped its own cluster
        assert (rep.committed, rep.failed) == (8, 0), rep.errors
        runs = ParquetSink(tmp_path).runs()
        assert len(runs) == 8
        assert all(len(ParquetSink(tmp_path).steps(i)) == 40 for i in runs[S.RUN_ID])
        again = collect(r, factory, executor="ray", workers=2, progress=False)
        assert (again.committed, again.skipped) == (0, 8)
    finally:
        if ray.is_initialized():
            ray.shutdown()


def test_failed_run_is_recorded_and_collection_goes_on(tmp_path, monkeypatch):
    import trajlib.collect._runner as runner

    def broken(*a, **k):
        raise ValueError("model exploded in a new way")

    monkeypatch.setattr(runner, "run_population", broken)
    rep = collect(_recipe(), functools.partial(open_sink, str(tmp_path)), workers=1, progress=False)
    assert rep.failed == 8 and "model exploded" in rep.errors[0]
    runs = ParquetSink(tmp_path).runs()
    assert set(runs[S.STATUS]) == {S.STATUS_FAILED}
    assert isinstance(runs, pl.DataFrame)
