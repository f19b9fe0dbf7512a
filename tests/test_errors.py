"""Every trajlib error survives pickling (process-pool and Ray workers send them back): same class,
same one-line message, same fields."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import pickle

import pytest

import trajlib.errors as E
from trajlib.tasks import get_task

# One example of every class in trajlib.errors.__all__, with fields.
EXAMPLES: dict[str, E.TrajlibError] = {
    "TrajlibError": E.TrajlibError("something went wrong"),
    "ConfigError": E.ConfigError("collect.every", "a positive integer", 0, "set it in the recipe"),
    "UnknownNameError": E.UnknownNameError("task", "mnist9", ["digits-mlp", "mnist1d-mlp"]),
    "StoreError": E.StoreError(2, "no such store", "/data/x"),
    "StoreVersionError": E.StoreVersionError("store schema 9 is newer than this trajlib's 3"),
    "CheckpointError": E.CheckpointError("payload sha256 mismatch"),
    "NotFittedError": E.NotFittedError("MLPController is not fitted; call fit first"),
    "FeatureSetMismatchError": E.FeatureSetMismatchError("feature set v1 != v2"),
}


def _task_family(name: str) -> str:
    return get_task(name).family  # (a Task holds closures; its family travels back)


def test_every_error_class_has_an_example():
    assert set(EXAMPLES) == set(E.__all__)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_error_round_trips_through_pickle(name):
    err = EXAMPLES[name]
    assert type(err).__name__ == name
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err) and "\n" not in str(back)
    assert back.args == err.args
    assert vars(back) == vars(err)
    if isinstance(err, OSError):
        assert (back.errno, back.strerror, back.filename) == (err.errno, err.strerror, err.filename)


def test_config_error_fields_survive_and_unpicklable_values_travel_as_repr():
    err = E.ConfigError("task", "a callable", lambda: 1)
    back = pickle.loads(pickle.dumps(err))
    assert (back.field, back.expected) == ("task", "a callable")
    assert back.got == repr(err.got) and str(back) == str(err)


def test_worker_config_error_reaches_the_caller_as_itself():
    """A real spawned worker raising a trajlib error: the caller gets the ConfigError (its one
    line and fields), not a BrokenProcessPool."""
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        fut = pool.submit(get_task, "trajlib_no_such_module_xyz:make_task")
        with pytest.raises(E.ConfigError) as info:
            fut.result()
        assert info.value.field == "task"
        assert info.value.got == "trajlib_no_such_module_xyz:make_task"
        assert str(info.value).startswith("`task` must be an importable 'module:function'")
        # the pool still works afterwards
        assert pool.submit(_task_family, "digits-mlp").result() == get_task("digits-mlp").family
