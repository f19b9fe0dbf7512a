"""Slow, obviously-correct reference of the default feature set: plain loops over row dicts.

Written from the definitions in trajlib/features/_library.py and _prims.py, sharing no code with
the library: direct window sums (no cumulative sums), mean-centred least squares, exact stdev.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

nan = math.nan

# the reference's direct sums / exact stdev are better conditioned than cumulative sums: allow for
# the cancellation error of sqrt(E[x^2] - E[x]^2) style formulas (absolute ~1e-8)
ATOL = {"loss_volatility_50": 1e-7, "grad_norm_cv_100": 1e-6}


def _fin(x: Any) -> bool:
    return x is not None and isinstance(x, float | int) and math.isfinite(x)


def _log(x: float) -> float:
    return math.log(x) if (_fin(x) and x > 0) else nan


def _floor(x: float) -> float:
    """The update-ratio floor of the feature library (1e-8); NaN stays NaN."""
    return x if x != x else max(x, 1e-8)


def _ema(xs: list[Any], hl: float) -> float:
    b = 2.0 ** (-1.0 / hl)
    m = None
    for x in xs:
        if _fin(x):
            m = x if m is None else (1.0 - b) * x + b * m
    return nan if m is None else m


def _last(xs: list[Any]) -> tuple[float, float, float]:
    """(last finite, its index, the finite value before it)."""
    idx = [i for i, x in enumerate(xs) if _fin(x)]
    if not idx:
        return nan, nan, nan
    prev = xs[idx[-2]] if len(idx) > 1 else nan
    return xs[idx[-1]], float(idx[-1]), prev


def _first(xs: list[Any]) -> float:
    for x in xs:
        if _fin(x):
            return x
    return nan


def reference(rows: list[dict[str, Any]], s: int, budget: float) -> dict[str, float]:
    """Default-set features for a decision at step ``s`` from ``rows`` (rows ``t < s`` used;
    windows are the last ``w`` of those rows, lags hide the last ``k`` of them)."""
    R = rows[: max(s, 0)]
    col = {c: [r.get(c) for r in R] for c in (rows[0].keys() if rows else [])}

    def c(name: str) -> list[Any]:
        return col.get(name, [None] * len(R))

    def c_before(name: str, k: int) -> list[Any]:
        return c(name)[: max(len(R) - k, 0)]

    loss = c("loss")
    B = float(budget) if (budget and budget > 0) else nan
    out: dict[str, float] = {}
    out["progress"] = s / B
    e = {h: _ema(loss, h) for h in (10, 50, 200)}
    out["loss_ema_ratio_10_50"] = _log(e[10]) - _log(e[50])
    out["loss_ema_ratio_50_200"] = _log(e[50]) - _log(e[200])
    out["loss_ema_ratio_10_200"] = _log(e[10]) - _log(e[200])
    for w in (10, 50, 200):
        pts = [(t, _log(loss[t])) for t in range(max(0, len(R) - w), len(R)) if _fin(_log(loss[t]))]
        if len(pts) < 2:
            out[f"loss_slope_{w}"] = nan
        else:
            tm = sum(p[0] for p in pts) / len(pts)
            ym = math.fsum(p[1] for p in pts) / len(pts)
            num = math.fsum((t - tm) * (y - ym) for t, y in pts)
            den = math.fsum((t - tm) ** 2 for t, _ in pts)
            out[f"loss_slope_{w}"] = 100.0 * num / den
    ds = []
    for t in range(max(1, len(R) - 50), len(R)):
        a, b = _log(loss[t]), _log(loss[t - 1])
        if _fin(a) and _fin(b):
            ds.append(a - b)
    out["loss_volatility_50"] = statistics.stdev(ds) if len(ds) >= 2 else nan
    out["loss_change_50"] = _log(e[10]) - _log(_ema(c_before("loss", 50), 10))
    out["loss_change_start"] = _log(e[10]) - _log(_first(loss))
    lo = max(0, len(R) - 50)
    spikes = 0
    for t in range(lo, len(R)):
        ref = _ema(loss[:t], 50)
        if _fin(loss[t]) and _fin(ref) and loss[t] > 2.0 * ref:
            spikes += 1
    rows_w = len(R) - min(lo, len(R))
    out["loss_spike_frac_50"] = spikes / rows_w if rows_w else nan

    def bad(t: int) -> bool:
        f = R[t].get("finite")
        return (f is not None and not f) or not _fin(loss[t])

    out["nonfinite_frac"] = sum(bad(t) for t in range(len(R))) / len(R) if R else nan
    out["nonfinite_frac_50"] = sum(bad(t) for t in range(lo, len(R))) / rows_w if rows_w else nan
    out["log_lr_rel_init"] = _log(_last(c("lr"))[0]) - _log(_first(c("lr")))
    lm = c("lr_mult")
    change, prev, seen = -1, None, False
    for t, x in enumerate(lm):
        if _fin(x):
            if prev is not None and x != prev:
                change = t
            prev, seen = x, True
    out["lr_mult_age"] = (s - max(change, 0)) / B if seen else nan
    out["log_lr_mult"] = _log(_last(lm)[0])
    out["base_factor"] = _last(c("base_factor"))[0]
    out["momentum"] = _last(c("momentum"))[0]
    g = c("grad_norm")
    g2 = [x * x if _fin(x) else None for x in g]
    out["grad_norm_ema_ratio_10_100"] = _log(_ema(g, 10)) - _log(_ema(g, 100))
    out["grad_norm_change_50"] = _log(_ema(g, 100)) - _log(_ema(c_before("grad_norm", 50), 100))
    m, m2 = _ema(g, 100), _ema(g2, 100)
    var = m2 - m * m
    out["grad_norm_cv_100"] = (
        (math.sqrt(var) if var > 0 else 0.0 if var == var else nan) / m
        if (m == m and m != 0)
        else nan
    )
    out["grad_cos_ema_50"] = _ema(c("grad_cos"), 50)
    out["update_cos_ema_50"] = _ema(c("update_cos"), 50)
    for k in ("mean", "max", "min", "median"):
        out[f"log_upd_ratio_{k}"] = _log(_floor(_ema(c(f"upd_ratio_{k}"), 50)))
    out["upd_ratio_spread"] = _log(_floor(_ema(c("upd_ratio_max"), 50))) - _log(
        _floor(_ema(c("upd_ratio_min"), 50))
    )
    w = c("weight_norm")
    out["weight_norm_growth_start"] = _log(_last(w)[0]) - _log(_first(w))
    out["weight_norm_growth_50"] = _log(_last(w)[0]) - _log(_last(c_before("weight_norm", 50))[0])
    v, tv, vprev = _last(c("val_loss"))
    out["val_gap"] = _log(v) - _log(e[50])
    out["val_trend"] = _log(v) - _log(vprev)
    out["val_age"] = (s - (tv + 1.0)) / B
    return {k: (x if _fin(x) else nan) for k, x in out.items()}
