"""Offline metrics of a controller on labelled decision points (advantage units = log-loss)."""

from __future__ import annotations

import warnings

import numpy as np

from trajlib.errors import ConfigError

__all__ = ["offline_metrics"]


def offline_metrics(
    predicted: np.ndarray,
    targets: np.ndarray,
    keep_index: int,
    best_action: np.ndarray | None = None,
) -> dict[str, float]:
    """Compare predicted advantages with realised ones on held-out rows.

    Parameters
    ----------
    predicted: ``[n, A]`` predicted advantages; the controller chooses the argmax.
    targets: ``[n, A]`` realised advantages over keep (NaN = action not measured).
    keep_index: the keep action (its advantage is 0).
    best_action: ``[n]`` label's best action (keep wins ties); default argmax of ``targets``.

    Returns
    -------
    dict of floats:
        ``agreement`` (chosen == best), ``agreement_keep`` (share of rows where keep is best),
        ``agreement_random`` (expected agreement of a uniform choice among measured actions),
        ``regret`` (mean best − chosen advantage over rows where the chosen action was measured),
        ``regret_keep`` and ``regret_random`` (always keep / uniform random, for reference),
        ``coverage`` (share of rows whose chosen action was measured), ``chosen_advantage``,
        ``calib_corr`` and ``calib_slope`` (realised vs predicted advantage of the chosen action;
        slope 1 = calibrated), ``mae_chosen`` and ``mae_all`` (absolute error of the chosen /
        every measured action), ``n_rows``. NaN where undefined.
    """
    P = np.asarray(predicted, dtype=np.float64)
    T = np.asarray(targets, dtype=np.float64)
    if P.shape != T.shape or P.ndim != 2:
        raise ConfigError("predicted", f"an array of shape {T.shape} like targets", P.shape)
    known = ~np.isnan(T)
    rows = known.any(axis=1)
    P, T, known = P[rows], T[rows], known[rows]
    n = T.shape[0]
    if n == 0:
        return {"n_rows": 0.0}
    Tf = np.where(known, T, -np.inf)
    best_val = Tf.max(axis=1)
    best = Tf.argmax(axis=1) if best_action is None else np.asarray(best_action)[rows]
    chosen = np.where(np.isnan(P), -np.inf, P).argmax(axis=1)
    ar = np.arange(n)
    adv_chosen = T[ar, chosen]
    pv = P[ar, chosen]
    valid = ~np.isnan(adv_chosen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_known = np.nanmean(T, axis=1)
        n_known = known.sum(axis=1)
        out = {
            "n_rows": float(n),
            "agreement": float(np.mean(chosen == best)),
            "agreement_keep": float(np.mean(best == keep_index)),
            "agreement_random": float(np.mean(1.0 / n_known)),
            "regret": _mean(best_val[valid] - adv_chosen[valid]),
            "regret_keep": _mean(best_val - np.nan_to_num(T[:, keep_index], nan=0.0)),
            "regret_random": _mean(best_val - mean_known),
            "coverage": float(np.mean(valid)),
            "chosen_advantage": _mean(adv_chosen[valid]),
            "mae_chosen": _mean(np.abs(pv[valid] - adv_chosen[valid])),
            "mae_all": _mean(np.abs(P[known] - T[known])),
        }
        x, y = pv[valid], adv_chosen[valid]
        if x.size >= 2 and np.std(x) > 0 and np.std(y) > 0:
            out["calib_corr"] = float(np.corrcoef(x, y)[0, 1])
            out["calib_slope"] = float(np.cov(x, y)[0, 1] / np.var(x, ddof=1))
        else:
            out["calib_corr"] = out["calib_slope"] = float("nan")
    return out


def _mean(a: np.ndarray) -> float:
    return float(np.mean(a)) if a.size else float("nan")
