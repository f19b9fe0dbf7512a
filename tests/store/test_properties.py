"""Property tests of write_run's input handling: any accepted input reads back equal (after the
documented casts), any rejected one raises ConfigError naming a column and leaves nothing."""

from __future__ import annotations

import tempfile

import polars as pl
from _store_fixtures import make_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from trajlib import schema as S
from trajlib.errors import ConfigError
from trajlib.store import create_store

FLOATS = [c for c, t in S.STEP_SCHEMA.items() if t == pl.Float32]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_steps=st.integers(0, 60),
    widen=st.sets(st.sampled_from(FLOATS)),
    shuffle_seed=st.integers(0, 2**16),
    drop_run_id=st.booleans(),
    drop=st.one_of(st.none(), st.sampled_from([c for c in S.STEP_SCHEMA if c != S.RUN_ID])),
)
def test_write_run_accepts_or_rejects_cleanly(n_steps, widen, shuffle_seed, drop_run_id, drop):
    r = make_run("p", n_steps=n_steps, n_layers=2)
    steps = r["steps"].with_columns(pl.col(c).cast(pl.Float64) for c in widen)
    steps = steps.sample(fraction=1.0, shuffle=True, seed=shuffle_seed)
    steps = steps.select(sorted(steps.columns, key=lambda c: hash((c, shuffle_seed))))
    if drop_run_id:
        steps = steps.drop(S.RUN_ID)
    if drop is not None:
        steps = steps.drop(drop)
    with tempfile.TemporaryDirectory() as d:
        store = create_store(d)
        if drop is not None:
            try:
                store.write_run(**{**r, "steps": steps})
            except ConfigError as err:
                assert err.field == f"steps.{drop}"
            else:
                raise AssertionError("missing column accepted")
            assert store.committed_run_ids() == set() and store.gc() == []
            return
        assert store.write_run(**{**r, "steps": steps})
        assert_frame_equal(store.steps().collect(), r["steps"])
        assert store.validate() == []
