"""Fast implementations against slow, obviously-correct references."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
import torch
from ctl_synth import Synth, split_runs

from tests.measure._require import require_native
from trajlib.controllers._base import sequences
from trajlib.controllers._treewalk import Forests


@pytest.mark.parametrize("path", ["native", "numpy"])
def test_forest_walk_equals_booster_predict(path: str) -> None:
    rng = np.random.default_rng(0)
    n, f = 3000, 10
    X = rng.normal(size=(n, f))
    X[rng.random((n, f)) < 0.1] = np.nan  # NaN-aware splits
    X[:, 2] = np.where(rng.random(n) < 0.3, 0.0, X[:, 2])
    boosters = []
    for a, zero_missing in enumerate((False, True, False)):
        y = np.nan_to_num(X[:, a]) + np.sin(np.nan_to_num(X[:, a + 3])) + 0.1 * rng.normal(size=n)
        params = {"objective": "regression", "num_leaves": 15, "verbosity": -1, "num_threads": 1}
        if zero_missing:
            params["zero_as_missing"] = True
        boosters.append(lgb.train(params, lgb.Dataset(X, y), 40))
    forests = Forests([b.dump_model() for b in boosters])
    Xt = rng.normal(size=(500, f))
    Xt[rng.random(Xt.shape) < 0.15] = np.nan
    Xt[:50, 2] = 0.0
    Xt[50:60, 4] = np.inf
    Xt[60:70, 5] = -np.inf
    ref = np.stack([b.predict(Xt, num_threads=1) for b in boosters], axis=1)
    if path == "native":
        require_native()
        assert forests._native_call() is not None
        walk = forests.predict_one
    else:
        walk = forests.predict_one_numpy
    got = np.stack([walk(x) for x in Xt])
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_numpy_gru_equals_torch_gru(synth: Synth, fitted) -> None:
    ctl = fitted("gru")
    _, test = split_runs(synth)
    X, runs = synth.X[test], synth.runs[test]
    t = ctl.tensors_
    d, H = t["gru.weight_ih"].shape[1], t["gru.weight_hh"].shape[1]
    gru = torch.nn.GRU(d, H, batch_first=True)
    with torch.no_grad():
        gru.weight_ih_l0.copy_(torch.from_numpy(t["gru.weight_ih"]))
        gru.weight_hh_l0.copy_(torch.from_numpy(t["gru.weight_hh"]))
        gru.bias_ih_l0.copy_(torch.from_numpy(t["gru.bias_ih"]))
        gru.bias_hh_l0.copy_(torch.from_numpy(t["gru.bias_hh"]))
    got = ctl.predict_values(X, runs)
    for seq in sequences(len(X), runs, None):
        z = torch.from_numpy(ctl.standardizer_.transform(X[seq]))[None]
        with torch.no_grad():
            out, _ = gru(z)
            head = torch.cat([out, z], dim=-1)[0].numpy() @ t["head.weight"].T + t["head.bias"]
        np.testing.assert_allclose(got[seq], head * ctl.target_scale_, rtol=1e-4, atol=1e-6)


def test_numpy_mlp_equals_a_torch_mlp_built_from_the_checkpoint(
    synth: Synth, fitted, tmp_path
) -> None:
    """The MLP decides and predicts in numpy; a torch ``nn.Sequential`` loaded from the saved
    checkpoint's tensors (torch layout), with the input standardisation written in torch, gives
    the same values on rows with NaN and inf, row by row and in a batch."""
    from ctl_synth import save_kwargs
    from safetensors.torch import load_file

    from trajlib.controllers import load_controller, save_controller

    ctl = fitted("mlp")
    path = save_controller(ctl, tmp_path / "ckpt", **save_kwargs())
    t = load_file(str(path / "model.safetensors"))
    n_lin = len([k for k in t if k.startswith("linear.") and k.endswith(".weight")])
    mods: list[torch.nn.Module] = []
    for i in range(n_lin):
        w = t[f"linear.{i}.weight"]
        lin = torch.nn.Linear(w.shape[1], w.shape[0]).double()
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(t[f"linear.{i}.bias"])
        mods += [lin, torch.nn.ReLU()]
    net = torch.nn.Sequential(*mods[:-1])
    mean, inv_std = t["input.mean"].double(), t["input.inv_std"].double()
    missing = t["input.missing_cols"].long()
    assert missing.numel() > 0, "the synthetic table has NaN features: indicators are exercised"

    def reference(X: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(X).double()
        finite = torch.isfinite(x)
        z = ((x - mean) * inv_std).clamp(-10.0, 10.0)
        z = torch.where(finite, z, torch.zeros_like(z))
        z = torch.cat([z, (~finite[:, missing]).double()], dim=1)
        with torch.no_grad():
            return (net(z) * t["target.scale"].double()).numpy()

    _, test = split_runs(synth)
    X = synth.X[test].copy()
    X[::7, 0] = np.inf
    X[3::11, 4] = -np.inf
    X[5::13] = np.nan
    want = reference(X)
    loaded = load_controller(path).controller
    for c in (ctl, loaded):
        np.testing.assert_allclose(c.predict_values(X), want, rtol=1e-4, atol=1e-5)
        state = c.initial_state()
        rows = np.stack([c.decide_values(x, state)[0] for x in X])
        np.testing.assert_allclose(rows, want, rtol=1e-4, atol=1e-5)
        top2 = np.sort(want, axis=1)[:, -2:]
        clear = np.flatnonzero(top2[:, 1] - top2[:, 0] > 1e-3 * np.abs(want).max())
        assert len(clear) > len(X) // 2
        assert [c.decide(X[i], state)[0] for i in clear] == list(want[clear].argmax(1))


def test_sequences_group_and_order() -> None:
    groups = np.array(["b", "a", "b", "a", "c"])
    order = np.array([20, 10, 10, 5, 1])
    seqs = sequences(5, groups, order)
    assert [s.tolist() for s in seqs] == [[2, 0], [3, 1], [4]]  # first-appearance order of groups
    assert [s.tolist() for s in sequences(5, groups, None)] == [[0, 2], [1, 3], [4]]


def test_fit_restores_torch_threads(synth: Synth) -> None:
    from ctl_synth import make_controller

    before = torch.get_num_threads()
    for kind in ("mlp", "gru"):
        make_controller(kind, epochs=1, num_threads=1).fit(synth.X[:200], synth.T[:200])
        assert torch.get_num_threads() == before
