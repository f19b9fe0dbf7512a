"""Executors: the local pool and a real local Ray cluster commit every run into a real store, each
worker writing its own fragments; a stopped and restarted collection skips committed runs."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from trajlib import schema as S
from trajlib.collect import collect, parse_recipe
from trajlib.collect._executor import work_units
from trajlib.errors import StoreError
from trajlib.store import Store, create_store, open_store


def _store(tmp_path: Path) -> tuple[Store, functools.partial]:
    path = tmp_path / "store"
    return create_store(path), functools.partial(open_store, str(path))


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
    assert all(len({s.task for s in u}) == 1 for u in units)


def test_local_collection_commits_every_run_with_its_tables(tmp_path):
    store, factory = _store(tmp_path)
    rep = collect(_recipe(), factory, workers=1, progress=False)
    assert (rep.total, rep.committed, rep.failed, rep.skipped) == (8, 8, 0, 0)
    assert rep.steps == 8 * 40 and rep.branch_steps == 8 * 1 * 5 * 10
    assert rep.steps_per_s > 0 and rep.branch_steps_per_s > 0
    runs = store.runs().collect()
    assert set(runs[S.STATUS]) == {S.STATUS_COMPLETE}
    steps = store.steps(run_ids=[runs[S.RUN_ID][0]]).collect()
    assert steps.columns == list(S.STEP_SCHEMA) and len(steps) == 40
    assert store.decisions().collect().height == 8 and store.branches().collect().height == 8 * 5
    assert store.validate() == []


def test_stopped_and_restarted_collection_skips_committed_runs(tmp_path):
    store, factory = _store(tmp_path)
    # a first collection that stopped after half of the runs (run ids do not depend on how many
    # runs the recipe asks for, so the smaller recipe's runs are the bigger one's first ones)
    first = collect(_recipe(runs=2), factory, workers=1, progress=False)
    assert first.committed == 4
    done = store.committed_run_ids()
    rep = collect(_recipe(), factory, workers=1, progress=False)
    assert (rep.committed, rep.skipped) == (4, 4)
    assert len(store.committed_run_ids()) == 8 and store.committed_run_ids() >= done
    again = collect(_recipe(), factory, workers=1, progress=False)
    assert (again.committed, again.skipped) == (0, 8)
    assert store.validate() == []


@pytest.mark.slow
def test_local_process_pool_writes_from_several_workers(tmp_path):
    store, factory = _store(tmp_path)
    rep = collect(_recipe(), factory, workers=2, progress=False)
    assert rep.committed == 8
    assert len(store.committed_run_ids()) == 8 and store.validate() == []


@pytest.mark.ray
@pytest.mark.slow
def test_ray_executor_with_a_real_local_cluster(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    # Ray workers inherit the driver's environment: let them import trajlib from this checkout.
    root = Path(__file__).resolve().parents[2]
    path = [str(root), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))
    try:
        r = _recipe()
        store, factory = _store(tmp_path)
        rep = collect(r, factory, executor="ray", workers=2, progress=False)
        assert not ray.is_initialized()  # the executor started and stopped its own cluster
        assert (rep.committed, rep.failed) == (8, 0), rep.errors
        steps = store.steps().collect()
        assert steps.group_by(S.RUN_ID).len()["len"].to_list() == [40] * 8
        assert store.validate() == []
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
    store, factory = _store(tmp_path)
    rep = collect(_recipe(), factory, workers=1, progress=False)
    assert rep.failed == 8 and "model exploded" in rep.errors[0]
    runs = store.runs().collect()
    assert set(runs[S.STATUS]) == {S.STATUS_FAILED}
    assert all("model exploded" in e for e in runs[S.ERROR])
    assert store.validate() == []


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_workers_trajlib_error_reaches_the_caller_as_itself(tmp_path, executor, monkeypatch):
    """Workers open the sink themselves: a store that is not there is a StoreError raised in the
    worker, which reaches the caller as that error (its one line), on a real pool and on Ray."""
    if executor == "ray":
        ray = pytest.importorskip("ray")
        path = [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in path if p))
    missing = tmp_path / "no-store"
    factory = functools.partial(open_store, str(missing))
    try:
        with pytest.raises(StoreError) as info:
            collect(_recipe(), factory, executor=executor, workers=2, progress=False)
    finally:
        if executor == "ray" and ray.is_initialized():
            ray.shutdown()
    assert type(info.value) is StoreError
    assert (
        str(info.value) == f"{missing}: no such directory; create a store with create_store(path)"
    )
