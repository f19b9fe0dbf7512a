"""``model info`` / ``model verify`` handlers, and a user-defined controller kind."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pytest
from ctl_synth import FEATURES, Synth, save_kwargs, split_runs

from trajlib.cli._model_cmds import add_model_commands
from trajlib.controllers import (
    Controller,
    controller_kinds,
    get_controller_kind,
    load_controller,
    register_controller_kind,
    save_controller,
)
from trajlib.controllers._nn import load_tensors, save_tensors
from trajlib.controllers._registry import _REGISTRY
from trajlib.errors import CheckpointError, TrajlibError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trajlib")
    add_model_commands(p.add_subparsers(dest="command"))
    return p


def run(argv: list[str]) -> tuple[int, str]:
    args = parser().parse_args(argv)
    out = io.StringIO()
    return args.func(args, out=out), out.getvalue()


def test_model_info_and_verify(fitted, tmp_path: Path) -> None:
    path = save_controller(fitted("gbt"), tmp_path / "ckpt", **save_kwargs())
    code, text = run(["model", "info", str(path)])
    assert code == 0
    assert "kind           gbt" in text and "hash abc123" in text and "lr x2" in text
    assert "agreement=0.5" in text
    code, text = run(["model", "info", "--json", str(path)])
    assert code == 0 and '"format": "trajlib-controller"' in text
    code, text = run(["model", "verify", str(path)])
    assert (code, text.strip()) == (0, f"{path}: ok")

    f = path / "model_1.txt"
    f.write_bytes(f.read_bytes() + b"\n")
    code, text = run(["model", "verify", str(path)])
    assert code == 1 and "1 problem(s)" in text and "model_1.txt: sha256 mismatch" in text

    with pytest.raises(TrajlibError, match="not a checkpoint folder"):
        run(["model", "info", str(tmp_path / "nope")])
    code, text = run(["model", "verify", str(tmp_path / "nope")])
    assert code == 1


def test_user_kind_with_one_subclass(synth: Synth, tmp_path: Path) -> None:
    """A nearest-centroid controller written by a user: fit, decide, checkpoint round trip."""

    @register_controller_kind
    class Centroid(Controller):
        kind = "centroid_test"

        def __init__(self, shrink: float = 0.0) -> None:
            self.shrink = shrink

        def _fit(self, X, T, groups, order) -> None:
            X = np.nan_to_num(X)
            best = np.nan_to_num(T, nan=-np.inf).argmax(1)
            self.centroids_ = np.stack(
                [
                    X[best == a].mean(0) if (best == a).any() else np.full(X.shape[1], np.inf)
                    for a in range(T.shape[1])
                ]
            )

        def _predict_values(self, X, groups, order) -> np.ndarray:
            d = ((np.nan_to_num(X)[:, None, :] - self.centroids_[None]) ** 2).sum(-1)
            return -d

        def _payload(self):
            return {"model.safetensors": save_tensors({"c": self.centroids_})}, {
                "n_features_in": self.n_features_in_,
                "n_actions": self.n_actions_,
            }

        @classmethod
        def _from_payload(cls, params, files, state):
            ctl = cls(**params)
            ctl.centroids_ = load_tensors("model.safetensors", files["model.safetensors"], ["c"])[
                "c"
            ]
            ctl.n_features_in_ = state["n_features_in"]
            ctl.n_actions_ = state["n_actions"]
            return ctl

    try:
        assert "centroid_test" in controller_kinds()
        train, test = split_runs(synth)
        ctl = get_controller_kind("centroid_test")().fit(synth.X[train], synth.T[train])
        path = save_controller(ctl, tmp_path / "c", **save_kwargs())
        loaded = load_controller(path)
        np.testing.assert_array_equal(
            loaded.controller.predict_values(synth.X[test]), ctl.predict_values(synth.X[test])
        )
        assert loaded.controller.decide(synth.X[0])[0] == ctl.decide(synth.X[0])[0]
    finally:
        _REGISTRY.pop("centroid_test", None)
    with pytest.raises(CheckpointError, match="unknown controller kind 'centroid_test'"):
        load_controller(path)
    assert len(FEATURES) == 6
