"""Bad input raises ConfigError naming the column and leaves nothing of the run behind;
stores of other schema versions, and directories that are not stores, are refused."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from trajlib import schema as S
from trajlib.errors import ConfigError, StoreError, StoreVersionError
from trajlib.store import create_store, open_store


def _nothing_left(store, rid: str) -> None:
    assert not store.is_committed(rid)
    leftovers = [p for p in store.path.rglob("*") if rid in p.name]
    assert leftovers == []
    assert store.steps().collect().height == 0


@pytest.mark.parametrize(
    ("mutate", "field", "expected"),
    [
        (lambda r: r["steps"].drop(S.LOSS), "steps.loss", "Float32"),
        (lambda r: r["steps"].with_columns(pl.lit(1).alias("bogus")), "steps.bogus", "absent"),
        (
            lambda r: r["steps"].with_columns(pl.col(S.FINITE).cast(pl.String)),
            "steps.finite",
            "Boolean",
        ),
        (lambda r: r["steps"].with_columns(pl.col(S.STEP).cast(pl.Float64)), "steps.step", "Int32"),
        (
            lambda r: r["steps"].with_columns(pl.lit("other").alias(S.RUN_ID)),
            "steps.run_id",
            "'r1'",
        ),
        (lambda r: r["steps"].head(50), "run.steps_done", "50"),
        (lambda r: r["steps"].with_columns(pl.col(S.STEP) * 2), "steps.step", "each exactly once"),
    ],
)
def test_bad_steps_raise_config_error_naming_the_column(
    store, run_factory, mutate, field, expected
):
    r = run_factory("r1", n_steps=100)
    r["steps"] = mutate(r)
    with pytest.raises(ConfigError, match=expected) as err:
        store.write_run(**r)
    assert err.value.field == field
    assert field in str(err.value)
    _nothing_left(store, "r1")


def test_bad_run_fields_and_other_tables(store, run_factory):
    cases = [
        (lambda r: r["run"].pop(S.TASK), "run.task"),
        (lambda r: r["run"].update(status="exploded"), "run.status"),
        (lambda r: r["run"].update(seed="seven"), "run.seed"),
        (lambda r: r["run"].update(colour="red"), "run.colour"),
        (lambda r: r["run"].update(run_id="../escape"), "run.run_id"),
        (lambda r: r.update(decisions=r["decisions"].drop(S.PROPENSITY)), "decisions.propensity"),
        (
            lambda r: r.update(branches=r["branches"].with_columns(pl.lit(10**6).alias(S.STEP))),
            "branches.step",
        ),
        (lambda r: r.update(layers=r["layers"][:-1]), "layers"),
        (lambda r: r.update(layer_names=["just-one"]), "layer_names"),
        (
            lambda r: r.update(
                decisions=r["decisions"].with_columns(pl.lit(40_000).cast(pl.Int64).alias(S.ACTION))
            ),
            "decisions.action",
        ),
    ]
    for mutate, field in cases:
        r = run_factory("r1", n_steps=100)
        mutate(r)
        with pytest.raises(ConfigError) as err:
            store.write_run(**r)
        assert err.value.field == field, str(err.value)
        _nothing_left(store, "r1")


def test_compatible_numeric_types_are_cast(store, run_factory):
    r = run_factory("r1", n_steps=40)
    loose = (
        r["steps"]
        .with_columns(
            pl.col(S.LOSS).cast(pl.Float64),
            pl.col(S.STEP).cast(pl.Int64),
            pl.col(S.VAL_ACC).cast(pl.Float64),
            pl.lit(None).alias(S.VAL_LOSS),
        )
        .drop(S.RUN_ID)
    )
    run = dict(r["run"], seed=np.int64(3), steps_done=np.int32(40))
    assert store.write_run(
        run, loose, layers=r["layers"].astype(np.float64), layer_names=r["layer_names"]
    )
    got = store.steps().collect()
    assert got.schema == pl.Schema(S.STEP_SCHEMA)
    assert got[S.RUN_ID].unique().to_list() == ["r1"]
    assert got[S.VAL_LOSS].null_count() == 40
    assert store.layers("r1")[0].dtype == np.float32
    assert store.validate() == []


def test_newer_schema_version_raises_naming_both_versions(tmp_path):
    store = create_store(tmp_path / "s")
    m = json.loads((store.path / "manifest.json").read_text())
    m["schema_version"] = S.SCHEMA_VERSION + 9
    (store.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreVersionError) as err:
        open_store(store.path)
    msg = str(err.value)
    assert str(S.SCHEMA_VERSION + 9) in msg and f"schema version {S.SCHEMA_VERSION}" in msg
    assert isinstance(err.value, StoreError)


def test_version_compared_as_int_not_string(tmp_path):
    store = create_store(tmp_path / "s")
    m = json.loads((store.path / "manifest.json").read_text())
    m["schema_version"] = "1"
    (store.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="must be an integer"):
        open_store(store.path)


def test_opening_a_non_store_names_the_path(tmp_path):
    with pytest.raises(StoreError, match=str(tmp_path / "missing")):
        open_store(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match=f"{tmp_path / 'plain'}: not a trajlib store"):
        open_store(tmp_path / "plain")
    (tmp_path / "plain" / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(StoreError, match="format"):
        open_store(tmp_path / "plain")
