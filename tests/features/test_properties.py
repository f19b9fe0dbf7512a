"""Scale-freeness, no look-ahead, missing data, hashing, registry, state_dict, amend."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.features._gen import TrajSpec, close, make_rows, to_frame
from trajlib.errors import ConfigError, FeatureSetMismatchError, UnknownNameError
from trajlib.features import (
    Feature,
    FeatureSet,
    LossSlope,
    OnlineFeatures,
    Progress,
    derive,
    get_feature_set,
    list_feature_sets,
    register_feature_set,
)

FS = get_feature_set("default")
# Changing the default set (a feature, a parameter, a version) must be deliberate: update this.
DEFAULT_HASH = "f02f40fe5a7c8f7ed24de4c84c42a59217e94c8a11b217c7e4cb1a0cc2fe7533"

specs = st.builds(
    TrajSpec,
    n=st.integers(0, 260),
    seed=st.integers(0, 2**31 - 1),
    bad_rate=st.sampled_from([0.0, 0.05, 0.3]),
    const_loss=st.booleans(),
    val_every=st.sampled_from([0, 1, 10]),
    lr_changes=st.integers(0, 3),
)


def _points(steps: list[int]) -> pl.DataFrame:
    return pl.DataFrame(
        {"run_id": ["r"] * len(steps), "step": steps},
        schema={"run_id": pl.String, "step": pl.Int64},
    )


# ------------------------------------------------------------------------------ API surface
def test_default_set_shape() -> None:
    assert len(FS) >= 25 and len(FS.names) == len(FS) == len(set(FS.names))
    assert FS.name == "default" and FS.version == 1
    assert isinstance(FS.hash, str) and len(FS.hash) == 64
    assert "default" in list_feature_sets()
    assert all(isinstance(f, Feature) and f.describe() for f in FS)
    assert all(f.scale_free for f in FS)


def test_unknown_set() -> None:
    with pytest.raises(UnknownNameError, match="nope"):
        get_feature_set("nope")
    with pytest.raises(KeyError):
        derive(pl.DataFrame(), _points([1]), {"r": 1}, feature_set="nope")


def test_register_and_small_set() -> None:
    fs = FeatureSet("tiny-test", 1, [Progress(), LossSlope(5)])
    register_feature_set(fs)
    assert get_feature_set("tiny-test") is fs and "tiny-test" in list_feature_sets()
    with pytest.raises(ConfigError):
        register_feature_set(FeatureSet("tiny-test", 2, [Progress()]))
    rows = make_rows(TrajSpec(30, 1))
    out = derive(to_frame({"r": rows}), _points([10, 30]), {"r": 30}, feature_set="tiny-test")
    assert out.columns == ["run_id", "step", "progress", "loss_slope_5", "n_missing"]
    on = OnlineFeatures("tiny-test", budget=30)
    for r in rows[:10]:
        on.update(r)
    assert np.allclose(on.values(), out.row(0)[2:4])


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        OnlineFeatures(budget=0)
    with pytest.raises(ConfigError):
        FeatureSet("x", 1, [Progress(), Progress()])
    with pytest.raises(ConfigError):
        derive(pl.DataFrame({"x": [1]}), _points([1]), {"r": 1})
    with pytest.raises(ConfigError):
        OnlineFeatures(budget=10).amend("val_loss", 1.0)


# ------------------------------------------------------------------------------ hash
def test_hash_stable_across_processes() -> None:
    code = "from trajlib.features import get_feature_set; print(get_feature_set('default').hash)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == FS.hash == DEFAULT_HASH


def test_hash_changes_with_parameters_and_versions() -> None:
    a = FeatureSet("h", 1, [Progress(), LossSlope(10)])
    assert a.hash == FeatureSet("h", 1, [Progress(), LossSlope(10)]).hash
    assert a.hash != FeatureSet("h", 1, [Progress(), LossSlope(11)]).hash
    assert a.hash != FeatureSet("h", 2, [Progress(), LossSlope(10)]).hash
    assert a.hash != FeatureSet("h2", 1, [Progress(), LossSlope(10)]).hash
    assert a.hash != FeatureSet("h", 1, [LossSlope(10), Progress()]).hash

    class LossSlope2(LossSlope):
        version = 2

    assert a.hash != FeatureSet("h", 1, [Progress(), LossSlope2(10)]).hash


# ------------------------------------------------------------------------------ scale-freeness
@settings(settings.get_profile("features"), max_examples=40)
@given(specs, st.sampled_from([8.0, 1 / 1024, 3.7, 1e4]), st.sampled_from([0.25, 1e-3, 7.0]))
def test_scale_free(spec: TrajSpec, c: float, c_lr: float) -> None:
    rows = make_rows(spec)
    scaled = []
    for r in rows:
        r2 = dict(r)
        for k, m in (("loss", c), ("val_loss", c), ("lr", c_lr)):
            if r2[k] is not None:
                r2[k] = r2[k] * m
        scaled.append(r2)
    steps = list(range(0, spec.n + 1, 13))
    pts = _points(steps)
    a = derive(to_frame({"r": rows}, pl.Float64), pts, {"r": 300})
    b = derive(to_frame({"r": scaled}, pl.Float64), pts, {"r": 300})
    for f in FS:
        if not f.scale_free:
            continue
        for x, y in zip(a[f.name].to_list(), b[f.name].to_list(), strict=True):
            assert close(y, x, 1e-6, 1e-8), (f.name, x, y)


# ------------------------------------------------------------------------------ no look-ahead
@settings(settings.get_profile("features"), max_examples=40)
@given(specs, st.integers(0, 300), st.integers(0, 2**31 - 1))
def test_no_look_ahead(spec: TrajSpec, s: int, seed: int) -> None:
    rows = make_rows(spec)
    other = make_rows(TrajSpec(spec.n, seed, bad_rate=0.3, val_every=1))
    changed = rows[:s] + [dict(o, step=i) for i, o in enumerate(other[s:], start=s)]
    # also append rows past the end: a longer future must not matter either
    longer = changed + [dict(o, step=len(changed) + i) for i, o in enumerate(other[:20])]
    pts = _points([s])
    a = derive(to_frame({"r": rows}), pts, {"r": 300}).row(0)
    b = derive(to_frame({"r": changed}), pts, {"r": 300}).row(0)
    c = derive(to_frame({"r": longer}), pts, {"r": 300}).row(0)
    if s > spec.n:  # past the end of the original run the longer table does see more rows
        c = b
    for x, y, z in zip(a[2:], b[2:], c[2:], strict=True):
        assert (x == y or (x != x and y != y)) and (x == z or (x != x and z != z))


# ------------------------------------------------------------------------------ missing data
def test_missing_data_never_raises() -> None:
    rows = make_rows(TrajSpec(40, 3, bad_rate=0.5))
    frame = to_frame({"r": rows})
    pts = pl.DataFrame({"run_id": ["r", "r", "ghost"], "step": [0, 40, 10]})
    out = derive(frame.drop("grad_norm", "val_loss"), pts, {"r": 40})  # columns gone, budget gone
    assert out.height == 3
    vals = out.select(FS.names).to_numpy()
    assert (out["n_missing"].to_numpy() == np.isnan(vals).sum(axis=1)).all()
    assert out["n_missing"][0] == len(FS) - 1  # nothing seen at step 0 (progress = 0)
    assert out["n_missing"][2] == len(FS)  # unknown run, unknown budget
    empty = derive(frame.head(0), pts, {"r": 40})
    assert empty["n_missing"].to_list() == [len(FS) - 1, len(FS) - 1, len(FS)]  # progress known
    nulls = frame.with_columns([pl.lit(None, dtype=pl.Float32).alias(c) for c in ("loss", "lr")])
    out = derive(nulls, pts.head(2), pl.DataFrame({"run_id": ["r"], "budget": [None]}))
    assert np.isnan(out["progress"][1])
    on = OnlineFeatures(budget=40)
    on.update({})
    on.update({"loss": None, "grad_norm": math.inf, "lr": -1.0, "finite": None})
    v = on.values()
    assert v.shape == (len(FS),) and v.dtype == np.float64


def test_constant_loss() -> None:
    rows = make_rows(TrajSpec(120, 1, const_loss=True))
    out = derive(to_frame({"r": rows}), _points([60, 120]), {"r": 120})
    for n in ("loss_ema_ratio_10_50", "loss_slope_50", "loss_volatility_50", "loss_change_50"):
        assert np.abs(out[n].to_numpy()).max() < 1e-12, n  # cumulative-sum rounding only


# ------------------------------------------------------------------------------ online engine
def test_state_dict_round_trip() -> None:
    rows = make_rows(TrajSpec(300, 9, bad_rate=0.05, val_every=10))
    a = OnlineFeatures(budget=300)
    for r in rows[:137]:
        a.update(r)
    d = json.loads(json.dumps(a.state_dict()))  # plain types only
    b = OnlineFeatures(budget=1)
    b.load_state_dict(d)
    assert b.budget == 300 and b.steps_seen == a.steps_seen == 137
    for i, r in enumerate(rows[137:]):
        a.update(r)
        b.update(r)
        if i % 17 == 0:
            va, vb = a.values(), b.values()
            assert np.array_equal(va, vb, equal_nan=True)
    other = OnlineFeatures(FeatureSet("other-set", 1, [Progress()]), budget=10)
    with pytest.raises(FeatureSetMismatchError):
        other.load_state_dict(d)


def test_amend_validation_after_step() -> None:
    rows = make_rows(TrajSpec(50, 4, val_every=10))
    on = OnlineFeatures(budget=50)
    for r in rows:
        late = dict(r)
        val = late.pop("val_loss")
        on.update(late)
        if val is not None:
            on.amend("val_loss", val)
    off = derive(to_frame({"r": rows}), _points([50]), {"r": 50}).row(0)[2:-1]
    assert all(close(float(x), y) for x, y in zip(on.values(), off, strict=True))


def test_values_idempotent_and_update_cost_is_constant() -> None:
    rows = make_rows(TrajSpec(100, 2))
    on = OnlineFeatures(budget=100)
    for r in rows:
        on.update(r)
    assert np.array_equal(on.values(), on.values(), equal_nan=True)
    assert on.values_dict().keys() == set(FS.names)
