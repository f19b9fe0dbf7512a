"""``gru``: a GRU over the decision points of a run; the hidden state carries the run's history."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from trajlib.controllers._base import Controller, ControllerState, sequences, torch_threads
from trajlib.controllers._nn import (
    Standardizer,
    check_state,
    load_tensors,
    masked_targets,
    save_tensors,
)
from trajlib.controllers._registry import register_controller_kind
from trajlib.errors import CheckpointError, ConfigError

__all__ = ["GRUController"]

_TENSORS = [
    "gru.weight_ih",
    "gru.weight_hh",
    "gru.bias_ih",
    "gru.bias_hh",
    "head.weight",
    "head.bias",
]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)  # = 1 / (1 + exp(-x)), without overflow


@register_controller_kind
class GRUController(Controller):
    """One-layer GRU over standardised inputs; a linear head on ``[h_t, z_t]`` gives ``[A]``.

    Trained on whole runs (one sequence per group, ordered by step), masked MSE on known targets.
    Online, :meth:`decide` advances the hidden state by one decision with a numpy GRU cell that
    follows ``torch.nn.GRU``'s equations; pass the returned state to the next call and start each
    run with :meth:`initial_state`. ``predict_values(X, groups, order)`` runs the same cell over
    every sequence in a batch.

    Parameters
    ----------
    hidden: GRU width.
    epochs: passes over the training runs.
    batch_runs: sequences per Adam step.
    lr, weight_decay: AdamW.
    random_state: seed for initialisation and shuffling.
    num_threads: torch threads during ``fit`` (restored afterwards).
    """

    kind = "gru"
    stateful = True

    def __init__(
        self,
        hidden: int = 32,
        epochs: int = 80,
        batch_runs: int = 8,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        random_state: int = 0,
        num_threads: int = 1,
    ) -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.batch_runs = batch_runs
        self.lr = lr
        self.weight_decay = weight_decay
        self.random_state = random_state
        self.num_threads = num_threads

    def _fit(
        self, X: np.ndarray, T: np.ndarray, groups: np.ndarray | None, order: np.ndarray | None
    ) -> None:
        import torch
        from torch import nn

        if int(self.hidden) < 1:
            raise ConfigError("hidden", "a positive integer", self.hidden)
        std = Standardizer.fit(X)
        Z = std.transform(X)
        Ts, M, scale = masked_targets(T)
        seqs = sequences(X.shape[0], groups, order)
        d, A, H = Z.shape[1], T.shape[1], int(self.hidden)
        with torch_threads(self.num_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.random_state))
            gru = nn.GRU(d, H, batch_first=True)
            head = nn.Linear(H + d, A)
            params = list(gru.parameters()) + list(head.parameters())
            opt = torch.optim.AdamW(
                params, lr=float(self.lr), weight_decay=float(self.weight_decay)
            )
            gen = torch.Generator().manual_seed(int(self.random_state))
            bs = max(1, int(self.batch_runs))
            for _ in range(int(self.epochs)):
                perm = torch.randperm(len(seqs), generator=gen).tolist()
                for s in range(0, len(seqs), bs):
                    batch = [seqs[i] for i in perm[s : s + bs]]
                    zb, tb, mb = _pad(batch, Z, Ts, M)
                    zt = torch.from_numpy(zb)
                    out, _ = gru(zt)
                    pred = head(torch.cat([out, zt], dim=-1))
                    m = torch.from_numpy(mb)
                    loss = (((pred - torch.from_numpy(tb)) ** 2) * m).sum() / m.sum().clamp(min=1.0)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            p = {f"gru.{k[:-3]}": v for k, v in gru.named_parameters()}  # weight_ih_l0 -> weight_ih
            p.update({f"head.{k}": v for k, v in head.named_parameters()})
            tensors = {k: p[k].detach().numpy().copy() for k in _TENSORS}
        self._set_weights(std, tensors, scale)

    def _set_weights(self, std: Standardizer, t: Mapping[str, np.ndarray], scale: float) -> None:
        self.standardizer_ = std
        self.tensors_ = {k: np.asarray(t[k], dtype=np.float32) for k in _TENSORS}
        H = self.tensors_["gru.weight_hh"].shape[1]
        self.hidden_size_ = H
        self._wi = np.ascontiguousarray(self.tensors_["gru.weight_ih"].T)  # [d, 3H]
        self._wh = np.ascontiguousarray(self.tensors_["gru.weight_hh"].T)  # [H, 3H]
        self._bi = self.tensors_["gru.bias_ih"]
        self._bh = self.tensors_["gru.bias_hh"]
        self._wo = np.ascontiguousarray(self.tensors_["head.weight"].T)  # [H + d, A]
        self._bo = self.tensors_["head.bias"]
        self.target_scale_ = float(scale)

    def _cell(self, z: np.ndarray, h: np.ndarray) -> np.ndarray:
        """One ``torch.nn.GRU`` step: ``z`` ``[..., d]``, ``h`` ``[..., H]`` -> ``[..., H]``."""
        H = self.hidden_size_
        gi = z @ self._wi + self._bi
        gh = h @ self._wh + self._bh
        r = _sigmoid(gi[..., :H] + gh[..., :H])
        u = _sigmoid(gi[..., H : 2 * H] + gh[..., H : 2 * H])
        n = np.tanh(gi[..., 2 * H :] + r * gh[..., 2 * H :])
        return (1.0 - u) * n + u * h

    def _head(self, h: np.ndarray, z: np.ndarray) -> np.ndarray:
        return (np.concatenate([h, z], axis=-1) @ self._wo + self._bo).astype(
            np.float64
        ) * self.target_scale_

    def initial_state(self) -> np.ndarray:
        """Zero hidden state ``[hidden]`` (float32) for the first decision of a run."""
        self._check_fitted()
        return np.zeros(self.hidden_size_, dtype=np.float32)

    def _decide_values(
        self, x: np.ndarray, state: ControllerState
    ) -> tuple[np.ndarray, ControllerState]:
        h = self.initial_state() if state is None else np.asarray(state, dtype=np.float32)
        if h.shape != (self.hidden_size_,):
            raise ConfigError(
                "state", f"a GRU hidden state of shape ({self.hidden_size_},)", h.shape
            )
        z = self.standardizer_.transform_one(x)
        h = self._cell(z, h)
        return self._head(h, z), h

    def _predict_values(
        self, X: np.ndarray, groups: np.ndarray | None, order: np.ndarray | None
    ) -> np.ndarray:
        Z = self.standardizer_.transform(X)
        seqs = sequences(X.shape[0], groups, order)
        L = max(len(s) for s in seqs)
        B = len(seqs)
        zb = np.zeros((B, L, Z.shape[1]), dtype=np.float32)
        for i, s in enumerate(seqs):
            zb[i, : len(s)] = Z[s]
        h = np.zeros((B, self.hidden_size_), dtype=np.float32)
        vals = np.empty((B, L, self._bo.shape[0]))
        for t in range(L):
            h = self._cell(zb[:, t], h)
            vals[:, t] = self._head(h, zb[:, t])
        out = np.empty((X.shape[0], self._bo.shape[0]))
        for i, s in enumerate(seqs):
            out[s] = vals[i, : len(s)]
        return out

    # ------------------------------------------------------------------ checkpoint payload
    def _payload(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        tensors = {**self.standardizer_.tensors(), **self.tensors_}
        tensors["target.scale"] = np.array([self.target_scale_], dtype=np.float64)
        state = {"n_features_in": int(self.n_features_in_), "n_actions": int(self.n_actions_)}
        return {"model.safetensors": save_tensors(tensors)}, state

    @classmethod
    def _from_payload(
        cls, params: Mapping[str, Any], files: Mapping[str, bytes], state: Mapping[str, Any]
    ) -> GRUController:
        check_state("model_state.json", state, ["n_features_in", "n_actions"])
        if "model.safetensors" not in files:
            raise CheckpointError("model.safetensors: payload file missing from the manifest")
        t = load_tensors(
            "model.safetensors",
            files["model.safetensors"],
            ["input.mean", "input.inv_std", "input.missing_cols", "target.scale", *_TENSORS],
        )
        ctl = cls(**params)
        ctl._set_weights(Standardizer.from_tensors(t), t, float(t["target.scale"][0]))
        ctl.n_features_in_ = int(state["n_features_in"])
        ctl.n_actions_ = int(state["n_actions"])
        if ctl._bo.shape[0] != ctl.n_actions_:
            raise CheckpointError(
                f"model.safetensors: head has {ctl._bo.shape[0]} actions, "
                f"model_state.json says {ctl.n_actions_}"
            )
        return ctl


def _pad(
    batch: list[np.ndarray], Z: np.ndarray, T: np.ndarray, M: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-pad sequences to one length: ``[B, L, d]``, ``[B, L, A]``, mask ``[B, L, A]``."""
    L = max(len(s) for s in batch)
    B = len(batch)
    zb = np.zeros((B, L, Z.shape[1]), dtype=np.float32)
    tb = np.zeros((B, L, T.shape[1]), dtype=np.float32)
    mb = np.zeros((B, L, T.shape[1]), dtype=np.float32)
    for i, s in enumerate(batch):
        zb[i, : len(s)] = Z[s]
        tb[i, : len(s)] = T[s]
        mb[i, : len(s)] = M[s]
    return zb, tb, mb
