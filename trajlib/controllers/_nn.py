"""Shared pieces of the torch kinds: input standardisation, target scaling, tensor payloads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from trajlib.errors import CheckpointError

__all__ = ["Standardizer", "masked_targets", "save_tensors", "load_tensors"]

_CLIP = 10.0


class Standardizer:
    """``x -> clip((x - mean) / std, -10, 10)`` with non-finite values set to 0 (the mean), plus a
    0/1 missing indicator for each feature that had non-finite values in the training rows.

    The clip keeps a feature far outside the training range (a blow-up, a unit mistake) from
    driving the network to extreme outputs.

    ``transform`` returns float32 ``[n, f + n_missing_cols]``.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, missing_cols: np.ndarray) -> None:
        self.mean = mean.astype(np.float64)
        self.inv_std = (1.0 / std).astype(np.float64)
        self.missing_cols = missing_cols.astype(np.intp)

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        finite = np.isfinite(X)
        cnt = finite.sum(axis=0)
        Xz = np.where(finite, X, 0.0)
        mean = Xz.sum(axis=0) / np.maximum(cnt, 1)
        var = (np.where(finite, X - mean, 0.0) ** 2).sum(axis=0) / np.maximum(cnt, 1)
        std = np.sqrt(var)
        std = np.where(std > 1e-12, std, 1.0)
        missing_cols = np.flatnonzero(~finite.all(axis=0))
        return cls(mean, std, missing_cols)

    @property
    def n_out(self) -> int:
        return self.mean.shape[0] + self.missing_cols.shape[0]

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``[n, f]`` -> ``[n, n_out]`` float32."""
        finite = np.isfinite(X)
        Z = np.where(finite, np.clip((X - self.mean) * self.inv_std, -_CLIP, _CLIP), 0.0)
        if self.missing_cols.size:
            Z = np.concatenate([Z, (~finite[:, self.missing_cols]).astype(np.float64)], axis=1)
        return Z.astype(np.float32)

    def transform_one(self, x: np.ndarray) -> np.ndarray:
        """``[f]`` -> ``[n_out]`` float32 (single-row fast path)."""
        finite = np.isfinite(x)
        z = np.clip((x - self.mean) * self.inv_std, -_CLIP, _CLIP)
        if finite.all():
            if self.missing_cols.size:
                z = np.concatenate([z, np.zeros(self.missing_cols.size)])
            return z.astype(np.float32)
        z = np.where(finite, z, 0.0)
        if self.missing_cols.size:
            z = np.concatenate([z, (~finite[self.missing_cols]).astype(np.float64)])
        return z.astype(np.float32)

    def tensors(self) -> dict[str, np.ndarray]:
        return {
            "input.mean": self.mean,
            "input.inv_std": self.inv_std,
            "input.missing_cols": self.missing_cols.astype(np.int64),
        }

    @classmethod
    def from_tensors(cls, t: Mapping[str, np.ndarray]) -> Standardizer:
        std = 1.0 / t["input.inv_std"]
        return cls(t["input.mean"], std, t["input.missing_cols"])


def masked_targets(T: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Targets scaled to unit spread: ``(T_scaled float32 with NaN -> 0, mask float32, scale)``.

    One scale for every action keeps their order; ``scale`` multiplies predictions back.
    """
    known = ~np.isnan(T)
    scale = float(np.std(T[known])) if known.any() else 1.0
    if not np.isfinite(scale) or scale < 1e-8:
        scale = 1.0
    return (
        np.where(known, T / scale, 0.0).astype(np.float32),
        known.astype(np.float32),
        scale,
    )


def save_tensors(tensors: Mapping[str, np.ndarray]) -> bytes:
    """safetensors bytes of contiguous numpy arrays."""
    return st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()})


def load_tensors(name: str, data: bytes, required: list[str]) -> dict[str, np.ndarray]:
    """Parse safetensors ``data`` (file ``name``); every key in ``required`` must be present."""
    try:
        t = st_load(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{name}: not a valid safetensors file ({e})") from e
    missing = [k for k in required if k not in t]
    if missing:
        raise CheckpointError(f"{name}: missing tensors {missing}")
    return t


def check_state(name: str, state: Mapping[str, Any], keys: list[str]) -> None:
    """Raise :class:`CheckpointError` when the model-state dict lacks ``keys``."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{name}: model state lacks {missing}")
