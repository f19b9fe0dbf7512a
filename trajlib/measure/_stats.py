"""Step statistics from per-layer sums: one definition for the collector and the deployed probe.

Both the collection engine (:mod:`trajlib.collect`) and the optimizer-hook probe of
:mod:`trajlib.deploy` reduce a step to five per-layer sums (:data:`RAW_LAYER_SUMS`) and derive the
step-table statistics (:data:`STEP_STATS`, names as in :mod:`trajlib.schema`) from them with
:func:`step_stats`, so the features a controller is trained on and the ones it sees when deployed
are computed by the same code. For float32 sums it runs the native kernel (``tl_step_stats`` in
:mod:`trajlib.measure._native`) when that loads, else the NumPy code below, which is the reference
definition (the tests hold both to a plain per-step loop; on one machine both sides take the same
path).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from trajlib import schema as S
from trajlib.measure import _native

__all__ = ["RAW_LAYER_SUMS", "STEP_STATS", "step_stats"]

#: Per-layer sums of one step: |g|^2, |w|^2, |u|^2, g . g_prev, u . u_prev.
RAW_LAYER_SUMS = ("grad_sq", "weight_sq", "update_sq", "grad_dot_prev", "update_dot_prev")

#: Statistics derived from them, in this order.
STEP_STATS = (
    S.GRAD_NORM,
    S.WEIGHT_NORM,
    S.UPDATE_NORM,
    S.GRAD_COS,
    S.UPDATE_COS,
    S.UPD_RATIO_MEAN,
    S.UPD_RATIO_MAX,
    S.UPD_RATIO_MIN,
    S.UPD_RATIO_MEDIAN,
)
_EPS = 1e-30


def _host(x: Any) -> np.ndarray:
    """A tensor (any device) or array as a float64 host array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def step_stats(
    sums: Any,
    prev_norms: Any | None = None,
    present: Any | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of ``n`` consecutive steps, on the host (float64; native kernel or NumPy).

    The inputs are small (a decision interval of per-layer sums), so one host copy and NumPy are
    several times cheaper than a chain of tiny tensor operations, on any device.

    Args:
        sums: ``[n, 5, *batch, L]`` per-layer sums (:data:`RAW_LAYER_SUMS`) of ``n`` consecutive
            steps, a tensor or an array; ``*batch`` is e.g. the members of a population (or
            nothing).
        prev_norms: ``[2, *batch]`` global gradient and update norms of the step before the first
            one, or ``None`` (the cosines of the first step are then NaN).
        present: ``None`` or bool ``[n, L]`` (no batch dims): layers that took part in the step;
            the others are left out of the update-ratio aggregates.

    Returns:
        ``([n, *batch, len(STEP_STATS)], [2, *batch] norms of the last step)``, float64 arrays.
        Norms are global L2 norms; cosines are with the previous step; update ratios are
        |u_l| / |w_l| aggregated over layers (mean, max, min, and the lower median); a NaN in
        any layer's ratio makes all four NaN.
    """
    lib = _native.lib()
    if lib is not None:
        f32 = _host32(sums)
        if f32 is not None and f32.shape[0] > 0 and f32.shape[-1] > 0:
            return _native_stats(lib, f32, prev_norms, present)
    sums = _host(sums)
    batch = sums.shape[2:-1]
    prev = np.full((2, *batch), math.nan) if prev_norms is None else _host(prev_norms)
    if sums.shape[0] == 0:
        return np.zeros((0, *batch, len(STEP_STATS))), prev
    tot = sums.sum(-1)  # [n, 5, *batch]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        gn, wn, un = np.sqrt(tot[:, 0]), np.sqrt(tot[:, 1]), np.sqrt(tot[:, 2])  # [n, *batch]
        pg = np.concatenate([prev[:1], gn[:-1]])
        pu = np.concatenate([prev[1:], un[:-1]])
        gcos = tot[:, 3] / np.maximum(gn * pg, _EPS)
        ucos = tot[:, 4] / np.maximum(un * pu, _EPS)
        ratio = np.sqrt(sums[:, 2]) / np.maximum(np.sqrt(sums[:, 1]), _EPS)  # [n, *batch, L]
        if present is not None:
            mask = _host(present).astype(bool)  # [n, L]
            mask = mask.reshape(mask.shape[0], *([1] * len(batch)), mask.shape[-1])
            if not mask.all():
                return _aggregate_masked(gn, wn, un, gcos, ucos, ratio, mask), np.stack(
                    [gn[-1], un[-1]]
                )
        agg = _aggregate(ratio)
    out = np.stack([gn, wn, un, gcos, ucos, *agg], -1)
    return out, np.stack([gn[-1], un[-1]])


def _host32(x: Any) -> np.ndarray | None:
    """A float32 tensor or array as a C-contiguous float32 host array (else None: other dtypes
    take the NumPy path, so nothing is rounded on the way)."""
    if isinstance(x, torch.Tensor):
        if x.dtype != torch.float32:
            return None
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim < 3:
        return None
    return np.ascontiguousarray(x)


def _native_stats(
    lib: Any, sums: np.ndarray, prev_norms: Any | None, present: Any | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`step_stats` by the native kernel (same definitions, float64; one call)."""
    n, L, batch = sums.shape[0], sums.shape[-1], sums.shape[2:-1]
    B = math.prod(batch)
    out = np.empty((n, *batch, len(STEP_STATS)))
    last = np.empty((2, *batch))
    prev = None
    if prev_norms is not None:
        prev = np.ascontiguousarray(_host(prev_norms).reshape(2, B))
    mask = None
    if present is not None:
        mask = np.ascontiguousarray(_host(present).reshape(n, L) != 0, dtype=np.uint8)
    scratch = np.empty(L)
    lib.tl_step_stats(
        n, B, L, sums.ctypes.data,
        None if prev is None else prev.ctypes.data,
        None if mask is None else mask.ctypes.data,
        out.ctypes.data, last.ctypes.data, scratch.ctypes.data,
    )  # fmt: skip
    return out, last


def _aggregate(ratio: np.ndarray) -> list[np.ndarray]:
    """Mean, max, min and lower median over the last axis; NaN anywhere gives NaN for all."""
    L = ratio.shape[-1]
    srt = np.sort(ratio, -1)  # NaNs sort last
    bad = np.isnan(srt[..., -1])
    aggs = [ratio.mean(-1), srt[..., -1], srt[..., 0], srt[..., (L - 1) // 2]]
    return [np.where(bad, math.nan, a) for a in aggs]


def _aggregate_masked(
    gn: np.ndarray,
    wn: np.ndarray,
    un: np.ndarray,
    gcos: np.ndarray,
    ucos: np.ndarray,
    ratio: np.ndarray,
    mask: np.ndarray,
) -> np.ndarray:
    """:func:`step_stats` rows where some steps leave layers out of the ratio aggregates."""
    rows = []
    for i in range(ratio.shape[0]):
        keep = np.broadcast_to(mask[i], ratio[i].shape)
        n_keep = int(mask[i].sum())  # layers kept (mask[i] is [1, ..., 1, L])
        if n_keep == 0:
            agg = [np.full(ratio.shape[1:-1], math.nan)] * 4
        else:
            sel = ratio[i][keep].reshape(*ratio.shape[1:-1], n_keep)
            agg = _aggregate(sel)
        rows.append(np.stack([gn[i], wn[i], un[i], gcos[i], ucos[i], *agg], -1))
    return np.stack(rows)
