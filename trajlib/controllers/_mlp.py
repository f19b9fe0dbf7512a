"""``mlp``: a small torch MLP regressing every action's advantage at once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from trajlib.controllers._base import Controller, ControllerState, torch_threads
from trajlib.controllers._nn import (
    Standardizer,
    check_state,
    load_tensors,
    masked_targets,
    save_tensors,
)
from trajlib.controllers._registry import register_controller_kind
from trajlib.errors import CheckpointError

__all__ = ["MLPController"]


@register_controller_kind
class MLPController(Controller):
    """``f (+ missing indicators) -> hidden -> ... -> A`` ReLU MLP, masked MSE on known targets.

    Inputs are standardised (non-finite -> 0 plus a missing indicator for features that had
    missing values in training); targets are divided by their spread and scaled back on output.
    After ``fit`` the weights live in numpy (``layers_``): decisions and batch predictions run in
    numpy float32, with no torch call.

    Parameters
    ----------
    hidden: width of each hidden layer.
    n_layers: number of hidden layers.
    epochs: passes over the training rows.
    batch_size: rows per Adam step.
    lr, weight_decay: Adam (decoupled weight decay, AdamW).
    random_state: seed for initialisation and shuffling.
    num_threads: torch threads during ``fit`` (restored afterwards).
    """

    kind = "mlp"

    def __init__(
        self,
        hidden: int = 64,
        n_layers: int = 2,
        epochs: int = 60,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        random_state: int = 0,
        num_threads: int = 1,
    ) -> None:
        self.hidden = hidden
        self.n_layers = n_layers
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.num_threads = num_threads

    def _fit(
        self, X: np.ndarray, T: np.ndarray, groups: np.ndarray | None, order: np.ndarray | None
    ) -> None:
        import torch
        from torch import nn

        std = Standardizer.fit(X)
        Z = std.transform(X)
        Ts, M, scale = masked_targets(T)
        with torch_threads(self.num_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.random_state))
            dims = [std.n_out] + [int(self.hidden)] * int(self.n_layers)
            mods: list[nn.Module] = []
            for i in range(len(dims) - 1):
                mods += [nn.Linear(dims[i], dims[i + 1]), nn.ReLU()]
            mods.append(nn.Linear(dims[-1], T.shape[1]))
            net = nn.Sequential(*mods)
            opt = torch.optim.AdamW(
                net.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay)
            )
            gen = torch.Generator().manual_seed(int(self.random_state))
            Zt, Tt, Mt = torch.from_numpy(Z), torch.from_numpy(Ts), torch.from_numpy(M)
            n, bs = Z.shape[0], max(1, int(self.batch_size))
            for _ in range(int(self.epochs)):
                perm = torch.randperm(n, generator=gen)
                for s in range(0, n, bs):
                    idx = perm[s : s + bs]
                    m = Mt[idx]
                    err = (net(Zt[idx]) - Tt[idx]) ** 2 * m
                    loss = err.sum() / m.sum().clamp(min=1.0)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            linears = [m for m in net if isinstance(m, nn.Linear)]
            weights = [lin.weight.detach().numpy().copy() for lin in linears]
            biases = [lin.bias.detach().numpy().copy() for lin in linears]
        self._set_weights(std, weights, biases, scale)

    def _set_weights(
        self, std: Standardizer, weights: list[np.ndarray], biases: list[np.ndarray], scale: float
    ) -> None:
        self.standardizer_ = std
        # stored [in, out] so a row vector multiplies from the left
        self.layers_ = [
            (np.ascontiguousarray(w.T, dtype=np.float32), b.astype(np.float32))
            for w, b in zip(weights, biases)
        ]
        self.target_scale_ = float(scale)

    def _forward(self, Z: np.ndarray) -> np.ndarray:
        h = Z
        for W, b in self.layers_[:-1]:
            h = np.maximum(h @ W + b, 0.0)
        W, b = self.layers_[-1]
        return (h @ W + b).astype(np.float64) * self.target_scale_

    def _predict_values(
        self, X: np.ndarray, groups: np.ndarray | None, order: np.ndarray | None
    ) -> np.ndarray:
        return self._forward(self.standardizer_.transform(X))

    def _decide_values(
        self, x: np.ndarray, state: ControllerState
    ) -> tuple[np.ndarray, ControllerState]:
        return self._forward(self.standardizer_.transform_one(x)), state

    # ------------------------------------------------------------------ checkpoint payload
    def _payload(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        tensors = dict(self.standardizer_.tensors())
        for i, (W, b) in enumerate(self.layers_):
            tensors[f"linear.{i}.weight"] = np.ascontiguousarray(W.T)
            tensors[f"linear.{i}.bias"] = b
        tensors["target.scale"] = np.array([self.target_scale_], dtype=np.float64)
        state = {
            "n_features_in": int(self.n_features_in_),
            "n_actions": int(self.n_actions_),
            "n_linear": len(self.layers_),
        }
        return {"model.safetensors": save_tensors(tensors)}, state

    @classmethod
    def _from_payload(
        cls, params: Mapping[str, Any], files: Mapping[str, bytes], state: Mapping[str, Any]
    ) -> MLPController:
        check_state("model_state.json", state, ["n_features_in", "n_actions", "n_linear"])
        if "model.safetensors" not in files:
            raise CheckpointError("model.safetensors: payload file missing from the manifest")
        n_lin = int(state["n_linear"])
        keys = [f"linear.{i}.{p}" for i in range(n_lin) for p in ("weight", "bias")]
        t = load_tensors(
            "model.safetensors",
            files["model.safetensors"],
            ["input.mean", "input.inv_std", "input.missing_cols", "target.scale", *keys],
        )
        ctl = cls(**params)
        ctl._set_weights(
            Standardizer.from_tensors(t),
            [t[f"linear.{i}.weight"] for i in range(n_lin)],
            [t[f"linear.{i}.bias"] for i in range(n_lin)],
            float(t["target.scale"][0]),
        )
        ctl.n_features_in_ = int(state["n_features_in"])
        ctl.n_actions_ = int(state["n_actions"])
        if ctl.layers_[-1][0].shape[1] != ctl.n_actions_:
            raise CheckpointError(
                f"model.safetensors: output layer has {ctl.layers_[-1][0].shape[1]} actions, "
                f"model_state.json says {ctl.n_actions_}"
            )
        return ctl
