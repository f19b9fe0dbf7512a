"""One conformance suite, run over every registered controller kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ctl_synth import (
    ALL_KINDS,
    FAST_PARAMS,
    KEEP,
    Synth,
    make_controller,
    save_kwargs,
    split_runs,
)
from sklearn.base import clone

from trajlib.controllers import get_controller_kind, load_controller, save_controller
from trajlib.controllers._metrics import offline_metrics
from trajlib.errors import FeatureSetMismatchError, NotFittedError

pytestmark = pytest.mark.parametrize("kind", ALL_KINDS)


def _decide_all(ctl, X: np.ndarray, runs: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Decide row by row, resetting the state at each new run (rows are in step order)."""
    actions, values, state, prev = [], [], None, None
    for x, r in zip(X, runs):
        if r != prev:
            state, prev = ctl.initial_state(), r
        v, _ = ctl.decide_values(x, state)
        a, state = ctl.decide(x, state)
        actions.append(a)
        values.append(v)
    return actions, np.array(values)


def test_not_fitted(kind: str, tmp_path: Path) -> None:
    ctl = make_controller(kind)
    x = np.zeros((3, 6))
    with pytest.raises(NotFittedError, match="not fitted"):
        ctl.predict_values(x)
    with pytest.raises(NotFittedError):
        ctl.decide(x[0])
    with pytest.raises(NotFittedError):
        save_controller(ctl, tmp_path / "c", **save_kwargs())


def test_params_and_clone(kind: str, fitted) -> None:
    cls = get_controller_kind(kind)
    ctl = cls(**FAST_PARAMS.get(kind, {}))
    params = ctl.get_params()
    for k, v in FAST_PARAMS.get(kind, {}).items():
        assert params[k] == v
    assert ctl.set_params(random_state=7) is ctl
    assert ctl.get_params()["random_state"] == 7
    c2 = clone(fitted(kind))
    assert c2.get_params() == fitted(kind).get_params()
    assert not hasattr(c2, "n_features_in_")
    with pytest.raises(NotFittedError):
        c2.predict_values(np.zeros((1, 6)))


def test_learns_a_simple_rule(kind: str, synth: Synth, fitted) -> None:
    _, test = split_runs(synth)
    pred = fitted(kind).predict_values(synth.X[test], synth.runs[test], synth.steps[test])
    m = offline_metrics(pred, synth.T[test], KEEP, synth.best[test])
    chance = 1 / 5
    assert m["agreement"] > 0.6 > 2 * chance, m
    assert m["regret"] < 0.5 * m["regret_keep"], m
    assert m["regret"] < 0.5 * m["regret_random"], m
    assert m["calib_corr"] > 0.5, m


def test_seeded_determinism(kind: str, synth: Synth, fitted) -> None:
    train, test = split_runs(synth)
    a = make_controller(kind, random_state=0).fit(
        synth.X[train], synth.T[train], synth.runs[train], synth.steps[train]
    )
    va = a.predict_values(synth.X[test], synth.runs[test])
    vb = fitted(kind).predict_values(synth.X[test], synth.runs[test])
    np.testing.assert_array_equal(va, vb)


def test_save_load_identical(kind: str, synth: Synth, fitted, tmp_path: Path) -> None:
    ctl = fitted(kind)
    path = save_controller(ctl, tmp_path / "ckpt", **save_kwargs())
    loaded = load_controller(path, expect_feature_set_hash="abc123")
    _, test = split_runs(synth)
    X, runs = synth.X[test], synth.runs[test]
    np.testing.assert_array_equal(
        ctl.predict_values(X, runs), loaded.controller.predict_values(X, runs)
    )
    a1, v1 = _decide_all(ctl, X, runs)
    a2, v2 = _decide_all(loaded.controller, X, runs)
    assert a1 == a2
    np.testing.assert_array_equal(v1, v2)
    assert loaded.controller.get_params() == ctl.get_params()
    spec = save_kwargs()["spec"]
    assert loaded.spec == spec
    assert loaded.feature_names == list(spec.feature_set.names)
    assert loaded.feature_set_hash == "abc123"
    assert loaded.every == 50 and loaded.mode == "free" and loaded.base_schedule == "constant"
    assert loaded.action_space == spec.action_space
    assert loaded.hp_space == spec.hp_space
    m = json.loads((path / "manifest.json").read_text())
    assert m["format"] == "trajlib-controller" and m["format_version"] == 1 and m["kind"] == kind
    assert m["offline_metrics"] == {"agreement": 0.5, "regret": None}


def test_wrong_feature_set_hash_refused(kind: str, fitted, tmp_path: Path) -> None:
    path = save_controller(fitted(kind), tmp_path / "ckpt", **save_kwargs())
    with pytest.raises(FeatureSetMismatchError, match=r"abc123.*deadbeef"):
        load_controller(path, expect_feature_set_hash="deadbeef")
    with pytest.raises(FeatureSetMismatchError, match="7 features"):
        fitted(kind).decide(np.zeros(7))


def test_decide_matches_batch_prediction(kind: str, synth: Synth, fitted) -> None:
    """Single-row decisions (carrying the state online) == batch predict over each run."""
    ctl = fitted(kind)
    _, test = split_runs(synth)
    X, runs = synth.X[test], synth.runs[test]
    batch = ctl.predict_values(X, runs)
    actions, online = _decide_all(ctl, X, runs)
    np.testing.assert_allclose(online, batch, rtol=1e-5, atol=1e-6)
    agree = np.mean(np.array(actions) == batch.argmax(1))
    assert agree > 0.99  # only exact near-ties may flip


def test_nan_and_inf_features_do_not_crash(kind: str, fitted) -> None:
    ctl = fitted(kind)
    state = ctl.initial_state()
    for x in (
        np.full(6, np.nan),
        np.array([np.nan, 0.5, np.inf, -np.inf, 0.0, 1.0]),
        np.array([1e30, 0.5, -1e30, 0.0, np.nan, 1.0]),
    ):
        a, state = ctl.decide(x, state)
        assert isinstance(a, int) and 0 <= a < 5
        v, _ = ctl.decide_values(x, state)
        assert np.isfinite(v).all()


def test_payload_is_not_pickle(kind: str, fitted, tmp_path: Path) -> None:
    path = save_controller(fitted(kind), tmp_path / "ckpt", **save_kwargs())
    for f in sorted(path.iterdir()):
        data = f.read_bytes()
        assert not data.startswith(b"\x80"), f"{f.name} looks like a pickle"
        if f.suffix == ".json":
            json.loads(data)
        elif f.suffix == ".txt":
            assert data.startswith(b"tree\n"), f.name  # LightGBM text model
        elif f.suffix == ".safetensors":
            n = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + n])
            assert all(
                v["dtype"] in ("F32", "F64", "I64")
                for k, v in header.items()
                if k != "__metadata__"
            )
        else:
            raise AssertionError(f"unexpected payload file {f.name}")
