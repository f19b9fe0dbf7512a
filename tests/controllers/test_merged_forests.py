"""An ensemble of tree models decides in one walk of all its members' trees: the same numbers,
bit for bit, as asking each member."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.measure._require import require_native
from trajlib.controllers import load_controller
from trajlib.controllers._ensemble import _mean_std
from trajlib.controllers._treewalk import Forests

MODELS = Path(__file__).resolve().parents[2] / "models"
ENSEMBLES = [
    "trajlib-lr-v2",
    "trajlib-lr-v3",
    "trajlib-lr-v3-climb",
    "trajlib-lr-v4",
    "trajlib-lr-v5",
    "trajlib-lr-v6",
]


def _rows(n_features: int, n: int = 200) -> np.ndarray:
    rng = np.random.default_rng(0)
    X = rng.normal(0, 2, size=(n, n_features))
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values (no validation, say)
    X[rng.random(X.shape) < 0.05] = 0.0  # exact zeros (LightGBM's "Zero" missing type)
    return X


@pytest.mark.parametrize("name", ENSEMBLES)
def test_one_walk_equals_every_member_asked(name: str) -> None:
    ctrl = load_controller(MODELS / name / "checkpoint").controller
    assert ctrl._merged_forests() is not None
    for x in _rows(ctrl.n_features_in_):
        mean, std, state = ctrl.decide_spread(x)
        z = ctrl._augment(x[None, :])[0]
        each = np.stack([m.decide_values(z)[0] for m in ctrl.members_])
        ref_mean, ref_std = _mean_std(each)
        np.testing.assert_array_equal(mean, ref_mean)
        np.testing.assert_array_equal(std, ref_std)
        assert state is None


def test_concat_of_forests_keeps_each_output() -> None:
    ctrl = load_controller(MODELS / "trajlib-lr-v4" / "checkpoint").controller
    parts = [m.forests_ for m in ctrl.members_]
    merged = Forests.concat(parts)
    assert merged.n_outputs == sum(f.n_outputs for f in parts)
    assert merged.n_trees == sum(f.n_trees for f in parts)
    for z in _rows(ctrl.n_features_in_ + 1, 50):
        np.testing.assert_array_equal(
            merged.predict_one(z), np.concatenate([f.predict_one(z) for f in parts])
        )
    assert Forests.concat(parts[:1]).predict_one(z).tolist() == parts[0].predict_one(z).tolist()


@pytest.mark.parametrize("name", ["trajlib-lr-v5", "trajlib-lr-v6"])
def test_only_the_actions_read_are_walked_with_the_same_values(name: str) -> None:
    loaded = load_controller(MODELS / name / "checkpoint")
    ctrl = loaded.controller
    rule = loaded.decision_rule
    assert rule is not None and rule.z_by_action is not None
    only = tuple(a for a, z in enumerate(rule.z_by_action) if z is not None)  # keep included
    assert 0 < len(only) < ctrl.n_actions_
    full_nodes = ctrl._merged_forests()[0].n_split
    assert ctrl._merged_forests(only)[0].n_split < full_nodes  # fewer trees walked
    others = [a for a in range(ctrl.n_actions_) if a not in only]
    for x in _rows(ctrl.n_features_in_, 100):
        mean, std, _ = ctrl.decide_spread(x)
        m_only, s_only, state = ctrl.decide_spread(x, only=only)
        np.testing.assert_array_equal(m_only[list(only)], mean[list(only)])
        np.testing.assert_array_equal(s_only[list(only)], std[list(only)])
        assert np.isnan(m_only[others]).all() and state is None
        # the rule takes the same action either way
        assert (
            rule.choose(m_only, s_only, loaded.action_space.keep_index)[0]
            == rule.choose(mean, std, loaded.action_space.keep_index)[0]
        )


def test_a_controller_without_a_subset_walk_computes_every_action() -> None:
    ctrl = load_controller(MODELS / "trajlib-lr-v1" / "checkpoint").controller
    x = _rows(ctrl.n_features_in_, 1)[0]
    np.testing.assert_array_equal(ctrl.decide_spread(x, only=(0,))[0], ctrl.decide_spread(x)[0])


def test_plain_float_mean_and_std_are_numpys_bit_for_bit() -> None:
    from trajlib.controllers._ensemble import _mean_std_rows

    rng = np.random.default_rng(0)
    for t in range(3000):
        k, n_actions = int(rng.integers(1, 8)), int(rng.integers(1, 7))  # < 8 members
        P = rng.normal(size=(k, n_actions)) * 10.0 ** rng.uniform(-6, 6, size=(k, n_actions))
        if t % 3 == 0:  # an action a member never chose (-inf), NaN, inf
            P[rng.random(P.shape) < 0.1] = rng.choice([-np.inf, np.nan, np.inf])
        mean, std = _mean_std(P)
        got_mean, got_std = _mean_std_rows(P.tolist())
        assert np.array(got_mean).tobytes() == mean.tobytes()
        assert np.array(got_std).tobytes() == std.tobytes()


@pytest.mark.parametrize("name", ENSEMBLES)
def test_one_row_augment_equals_the_batch_augment(name: str) -> None:
    ctrl = load_controller(MODELS / name / "checkpoint").controller
    for x in _rows(ctrl.n_features_in_, 40):
        assert ctrl._augment_one(x).tobytes() == ctrl._augment(x[None, :])[0].tobytes()


@pytest.mark.parametrize("name", [*ENSEMBLES, "trajlib-lr-v7", "trajlib-lr-v8"])
def test_the_native_walk_is_the_numpy_walk_bit_for_bit(name: str) -> None:
    """Every shipped tree model's merged forests (v7, v8: both parts'), rows with NaN, zeros, values
    on a threshold and infinities: ``forest_walk.c`` and the numpy walk give the same bytes."""
    require_native()
    ctrl = load_controller(MODELS / name / "checkpoint").controller
    parts = [ctrl.primary_, ctrl.veto_] if name in ("trajlib-lr-v7", "trajlib-lr-v8") else [ctrl]
    rng = np.random.default_rng(1)
    for part in parts:
        forests = part._merged_forests()[0]
        assert forests._native_call() is not None
        rows = _rows(part.n_features_in_ + 1, 150)
        on = rng.choice(forests.thr, size=len(rows))  # exactly on a split's threshold
        rows[np.arange(len(rows)), forests.feat[rng.integers(0, forests.n_split, len(rows))]] = on
        rows[:10, 0], rows[10:20, 1] = np.inf, -np.inf
        for z in rows:
            assert forests.predict_one(z).tobytes() == forests.predict_one_numpy(z).tobytes()


def test_without_native_code_the_numpy_walk_is_used(monkeypatch) -> None:
    from trajlib.controllers import _treewalk

    monkeypatch.setenv("TRAJLIB_NATIVE", "0")
    _treewalk._walker.cache_clear()  # cleared again after: the next test compiles or finds it
    try:
        ctrl = load_controller(MODELS / "trajlib-lr-v4" / "checkpoint").controller
        forests = ctrl._merged_forests()[0]
        assert forests._native_call() is None
        assert "TRAJLIB_NATIVE=0" in _treewalk.native_status()
        z = _rows(ctrl.n_features_in_ + 1, 1)[0]
        assert forests.predict_one(z).tobytes() == forests.predict_one_numpy(z).tobytes()
    finally:
        _treewalk._walker.cache_clear()


def test_a_copy_or_a_pickle_walks_its_own_tables() -> None:
    """The native call holds the addresses of its object's node tables: a deep copy or a pickle
    (the scheduler copies its controller) leaves it out and makes its own, with the same sums."""
    import copy
    import pickle

    ctrl = load_controller(MODELS / "trajlib-lr-v4" / "checkpoint").controller
    forests = ctrl._merged_forests()[0]
    z = _rows(ctrl.n_features_in_ + 1, 1)[0]
    want = forests.predict_one(z).tobytes()  # the native call is made here, where it loads
    for other in (copy.deepcopy(forests), pickle.loads(pickle.dumps(forests))):
        assert "_call" not in vars(other)
        assert other.predict_one(z).tobytes() == want
        if getattr(forests, "_call", None) is not None:
            assert other._call is not None and other._call[1] != forests._call[1]


def test_a_row_too_short_raises_instead_of_reading_past_it() -> None:
    require_native()
    forests = (
        load_controller(MODELS / "trajlib-lr-v4" / "checkpoint").controller.members_[0].forests_
    )
    assert forests._native_call() is not None
    with pytest.raises(IndexError):
        forests.predict_one(np.zeros(int(forests.feat.max())))
