"""Step statistics from per-layer sums: one definition for the collector and the deployed probe.

Both the collection engine (:mod:`trajlib.collect`) and the optimizer-hook probe of
:mod:`trajlib.deploy` reduce a step to five per-layer sums (:data:`RAW_LAYER_SUMS`) and derive the
step-table statistics (:data:`STEP_STATS`, names as in :mod:`trajlib.schema`) from them with
:func:`step_stats`, so the features a controller is trained on and the ones it sees when deployed
are computed by the same code.
"""

from __future__ import annotations

import math

import torch

from trajlib import schema as S

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


def step_stats(
    sums: torch.Tensor,
    prev_norms: torch.Tensor | None = None,
    present: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Statistics of ``n`` consecutive steps.

    Args:
        sums: ``[n, 5, *batch, L]`` per-layer sums (:data:`RAW_LAYER_SUMS`) of ``n`` consecutive
            steps; ``*batch`` is e.g. the members of a population (or nothing).
        prev_norms: ``[2, *batch]`` global gradient and update norms of the step before the first
            one, or ``None`` (the cosines of the first step are then NaN).
        present: ``None`` or bool ``[n, L]`` (no batch dims): layers that took part in the step;
            the others are left out of the update-ratio aggregates.

    Returns:
        ``([n, *batch, len(STEP_STATS)], [2, *batch] norms of the last step)``. Norms are global
        L2 norms; cosines are with the previous step; update ratios are |u_l| / |w_l| aggregated
        over layers (mean, max, min, median).
    """
    if sums.shape[0] == 0:
        batch = sums.shape[2:-1]
        empty = sums.new_zeros((0, *batch, len(STEP_STATS)))
        last = prev_norms if prev_norms is not None else sums.new_full((2, *batch), math.nan)
        return empty, last
    tot = sums.sum(-1)  # [n, 5, *batch]
    gn, wn, un = tot[:, 0].sqrt(), tot[:, 1].sqrt(), tot[:, 2].sqrt()  # [n, *batch]
    if prev_norms is None:
        prev_norms = torch.full((2, *gn.shape[1:]), math.nan, dtype=sums.dtype, device=sums.device)
    prev_norms = prev_norms.to(device=sums.device, dtype=sums.dtype)
    pg = torch.cat([prev_norms[:1], gn[:-1]])
    pu = torch.cat([prev_norms[1:], un[:-1]])
    gcos = tot[:, 3] / (gn * pg).clamp_min(_EPS)
    ucos = tot[:, 4] / (un * pu).clamp_min(_EPS)
    ratio = sums[:, 2].sqrt() / sums[:, 1].sqrt().clamp_min(_EPS)  # [n, *batch, L]
    if present is None or bool(present.all()):
        r_mean, r_max, r_min = ratio.mean(-1), ratio.amax(-1), ratio.amin(-1)
        r_med = ratio.median(-1).values
    else:
        nan = torch.tensor(math.nan, dtype=ratio.dtype, device=ratio.device)
        rows = []
        for r, m in zip(ratio, present):
            v = r[..., m]
            if v.numel() == 0:
                rows.append(torch.stack([nan, nan, nan, nan]))
            else:
                rows.append(torch.stack([v.mean(), v.amax(), v.amin(), v.median()]))
        r_mean, r_max, r_min, r_med = torch.stack(rows).unbind(1)
    out = torch.stack([gn, wn, un, gcos, ucos, r_mean, r_max, r_min, r_med], -1)
    return out, torch.stack([gn[-1], un[-1]])
