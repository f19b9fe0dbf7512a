"""``final``: each branch's loss at the end of the run, extrapolated with the LR-annealing law.

Branch outcomes measured ``horizon`` steps after a decision carry the short-horizon bias (a lower
LR wins *now* by lowering noise, a higher LR would win by the end). ``final`` extrapolates every
branch to the end of the budget with the scaling law of Tissue et al. 2024 ("Scaling Law with
Learning Rate Annealing"), fitted per run on the run's own main trajectory:

``L(s) = L0 + A * S1(s) ** -alpha - C * S2(s)``, with the forward area ``S1(s) = sum_{i<s} eta_i``
and the annealing area ``S2(s) = sum_{i<s} m_i``, ``m_i = lam * m_{i-1} + (eta_{i-1} - eta_i)``
(the paper's momentum form of ``sum_i sum_{k<=i} (eta_{k-1} - eta_k) lam^(i-k)``), where ``eta``
is the LR divided by the run's start LR (``base_factor * lr_mult`` from the step table), so the fit
is scale-free. ``lam = exp(-1 / (tau * budget))``: the paper's 0.999 is a decay time of 1000 steps
in runs of tens of thousands; here the decay time is a fixed share ``tau`` of the budget.

1. **Fit** ``(L0, A, alpha, C)`` per run on its smoothed training loss against its recorded LR
   history (:func:`fit_annealing_law`): a grid over ``alpha`` with linear least squares for the
   rest gives the start, then bounded robust least squares (:func:`scipy.optimize.least_squares`,
   soft-L1, residuals in log-loss) refines it. A run whose fit fails (too few finite steps, a
   non-finite result, ``R^2`` in log-loss below ``min_r2``) or whose run row lacks its entry is
   **labelled like greedy** (``log val_loss`` at the horizon); :attr:`FinalLabels.stats` counts them.
2. **Path** of branch ``(s, a)``: the main LRs before ``s``; then ``m_a * base(t)`` for
   ``t = s .. budget - 1``, where ``m_a`` is the multiplier in force before ``s`` times action
   ``a``'s LR factor, clamped to the LR bounds (exactly what the branch ran for its horizon), and
   ``base`` is the run's base schedule (1 in free mode). **Assumption**: the run keeps the action's
   multiplier to the end of the budget, and when the base schedule does not itself end near 0
   (below 10 % of its peak; cosine and wsd do) a linear cool-down to 0 over
   ``round(cooldown * budget)`` further steps follows, like a branch's cool-down. Momentum and
   weight-decay moves do not enter the law (their paths equal keep's).
3. **Outcome**: the law's final loss on that path, anchored to the branch's measured validation
   loss at the horizon ``h = s + horizon``: ``log val_loss(h) + log L(end) - log L(h)``
   (``anchor="ratio"``, scale-free) or ``log(val_loss(h) + L(end) - L(h))`` (``anchor="shift"``).
   :func:`~trajlib.labels.make_labels` turns these into ``adv_a = outcome_keep - outcome_a``
   like every branch strategy (higher is better; keep is 0; diverged branches penalised).

It needs the step table and the runs table: ``make_labels(branches, "final", keep,
steps=store.steps(), runs=store.runs().collect())``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy.optimize import least_squares
from scipy.signal import lfilter

from trajlib import schema as S
from trajlib.errors import ConfigError
from trajlib.labels._base import LabelStrategy
from trajlib.space import base_factor
from trajlib.spec import RunConfig

__all__ = ["FinalLabels", "LawFit", "annealing_areas", "branch_areas", "fit_annealing_law"]

_ANCHORS = ("ratio", "shift")
_ALPHA_BOUNDS = (0.01, 3.0)
_ALPHA_GRID = np.geomspace(0.02, 2.0, 14)


def annealing_areas(eta: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Forward and annealing areas after ``0 .. n`` updates of LRs ``eta`` ``[..., n]``.

    Returns ``(S1, S2)``, each ``[..., n + 1]``: ``S1[k] = sum_{i<k} eta_i``,
    ``S2[k] = sum_{i<k} m_i`` with ``m_i = lam * m_{i-1} + eta_{i-1} - eta_i`` (``m_0 = 0``).
    """
    eta = np.asarray(eta, dtype=np.float64)
    d = np.zeros_like(eta)
    d[..., 1:] = eta[..., :-1] - eta[..., 1:]
    mom = lfilter([1.0], [1.0, -lam], d, axis=-1)
    pad = [(0, 0)] * (eta.ndim - 1) + [(1, 0)]
    return np.pad(np.cumsum(eta, axis=-1), pad), np.pad(np.cumsum(mom, axis=-1), pad)


def branch_areas(
    main: np.ndarray,
    tail: np.ndarray,
    lam: float,
    start: np.ndarray,
    mult: np.ndarray,
    at: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(S1, S2)`` after ``at[b]`` updates of the paths ``main[:start[b]]`` followed by
    ``mult[b] * tail[start[b]:]``, for every branch ``b`` at once, in O(1) per branch.

    Equal to :func:`annealing_areas` on the explicit paths (``1 <= start < at <= len(tail)``),
    from prefix sums of ``main`` and ``tail``: the areas are linear in the LR drops, and a drop at
    step ``j`` adds ``(1 - lam^(k - j)) / (1 - lam)`` to ``S2`` after ``k`` updates.
    """
    main = np.asarray(main, dtype=np.float64)
    tail = np.asarray(tail, dtype=np.float64)
    s, k = np.asarray(start, dtype=np.int64), np.asarray(at, dtype=np.int64)
    m = np.asarray(mult, dtype=np.float64)
    s1m, s2m = annealing_areas(main, lam)
    d = np.zeros_like(main)
    d[1:] = main[:-1] - main[1:]
    mom = lfilter([1.0], [1.0, -lam], d)
    g1 = np.concatenate([[0.0], np.cumsum(tail)])
    dg = np.zeros_like(tail)
    dg[1:] = tail[:-1] - tail[1:]
    j = np.arange(tail.size)
    r = np.concatenate([[0.0], np.cumsum(dg)])
    q = np.concatenate([[0.0], np.cumsum(dg * lam ** (-j.astype(np.float64)))])
    s1 = s1m[s] + m * (g1[k] - g1[s])
    geo = (1.0 - lam ** (k - s)) / (1.0 - lam)
    jump = lam * mom[s - 1] + main[s - 1] - m * tail[s]
    rest = (r[k] - r[s + 1]) - lam ** k.astype(np.float64) * (q[k] - q[s + 1])
    s2 = s2m[s] + jump * geo + m * rest / (1.0 - lam)
    return s1, s2


@dataclass(frozen=True)
class LawFit:
    """Fitted ``L = L0 + A * S1 ** -alpha - C * S2`` of one run, with its log-loss ``r2``."""

    L0: float
    A: float
    alpha: float
    C: float
    r2: float
    n_points: int

    def predict(self, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
        """The law at areas ``s1`` (> 0) and ``s2``."""
        s1 = np.maximum(np.asarray(s1, dtype=np.float64), 1e-12)
        return self.L0 + self.A * s1 ** (-self.alpha) - self.C * np.asarray(s2, dtype=np.float64)


def _smooth(x: np.ndarray, half: int) -> np.ndarray:
    """Centred moving average of half-width ``half`` (shorter windows at the ends)."""
    if half <= 0:
        return x.copy()
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(x.size)
    lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, x.size)
    return (c[hi] - c[lo]) / (hi - lo)


def fit_annealing_law(
    eta: np.ndarray,
    loss: np.ndarray,
    *,
    lam: float,
    smooth: int | None = None,
    max_points: int = 160,
    min_points: int = 8,
    min_r2: float = 0.3,
) -> LawFit | None:
    """Fit the LR-annealing law to one run; ``None`` when the fit fails.

    ``loss[t]`` is the (minibatch) training loss at the parameters after ``t`` updates and
    ``eta[t]`` the (normalised) LR of update ``t``; the finite prefix of both is used. The loss is
    smoothed by a centred moving average of half-width ``smooth`` (default ``n // 40``), the first
    5 % of steps are skipped (the law describes the curve after the first few updates), and at
    most ``max_points`` evenly spaced steps are fitted, in log-loss, robustly (soft-L1), with
    ``L0`` in ``[0, min loss]``, ``A >= 0``, ``alpha`` in ``[0.01, 3]``, ``C >= 0``.
    """
    eta = np.asarray(eta, dtype=np.float64)
    loss = np.asarray(loss, dtype=np.float64)
    n = min(eta.size, loss.size)
    bad = ~(np.isfinite(loss[:n]) & (loss[:n] > 0) & np.isfinite(eta[:n]) & (eta[:n] >= 0))
    if bad.any():
        n = int(np.argmax(bad))
    if n < min_points + 2:
        return None
    s1, s2 = annealing_areas(eta[:n], lam)
    half = max(0, n // 40) if smooth is None else int(smooth)
    y_all = _smooth(loss[:n], half)
    start = max(1, n // 20)
    idx = np.unique(np.linspace(start, n - 1, min(max_points, n - start)).astype(np.int64))
    idx = idx[s1[idx] > 0]
    if idx.size < min_points:
        return None
    x1, x2, y = s1[idx], s2[idx], y_all[idx]
    ly = np.log(y)
    ymin = float(y.min())

    # start: linear least squares in (L0, A, C) for each alpha of a grid
    best: tuple[float, np.ndarray] | None = None
    for a in _ALPHA_GRID:
        X = np.stack([np.ones_like(x1), x1 ** (-a), -x2], axis=1)
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        coef = np.array([min(max(coef[0], 0.0), ymin), max(coef[1], 1e-12), max(coef[2], 0.0)])
        pred = X @ coef
        if not np.all(np.isfinite(pred)):
            continue
        sse = float(np.sum((np.log(np.maximum(pred, 1e-3 * ymin)) - ly) ** 2))
        if best is None or sse < best[0]:
            best = (sse, np.array([coef[0], coef[1], a, coef[2]]))
    if best is None:
        return None
    x0 = best[1]
    floor = 1e-3 * ymin

    def resid(p: np.ndarray) -> np.ndarray:
        pred = p[0] + p[1] * x1 ** (-p[2]) - p[3] * x2
        return np.log(np.maximum(pred, floor)) - ly

    lx1 = np.log(x1)

    def jac(p: np.ndarray) -> np.ndarray:
        pw = x1 ** (-p[2])
        pred = p[0] + p[1] * pw - p[3] * x2
        inv = np.where(pred > floor, 1.0 / np.maximum(pred, floor), 0.0)
        cols = [np.ones_like(x1), pw, -p[1] * pw * lx1, -x2]
        return np.stack(cols, axis=1) * inv[:, None]

    # no annealing in the fitted steps (a constant LR): C is not identifiable, hold it at 0
    free_c = bool(np.ptp(x2) > 0)
    lower = np.array([0.0, 0.0, _ALPHA_BOUNDS[0], 0.0])
    upper = np.array([ymin, np.inf, _ALPHA_BOUNDS[1], np.inf])
    x0 = np.clip(x0, lower, np.where(np.isfinite(upper), upper, x0))
    x0[0] = min(x0[0], ymin * (1 - 1e-9))
    # scales of the parameters: the loss, the start's A, alpha ~ 0.5, a C worth 10 % of the loss
    c_scale = 0.1 * ymin / max(float(np.abs(x2).max()), 1e-12)
    scale = np.array([ymin, max(x0[1], 1e-6 * ymin), 0.5, max(x0[3], c_scale)])
    keep = slice(None) if free_c else slice(0, 3)

    def full(q: np.ndarray) -> np.ndarray:
        return q if free_c else np.append(q, 0.0)

    try:
        res = least_squares(
            lambda q: resid(full(q)),
            x0[keep],
            jac=lambda q: jac(full(q))[:, keep],
            bounds=(lower[keep], upper[keep]),
            loss="soft_l1",
            f_scale=0.05,
            x_scale=scale[keep],
            max_nfev=100,
        )
    except (ValueError, FloatingPointError):
        return None
    p = full(res.x)
    r = resid(p)
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(r))):
        return None
    sst = float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1.0 - float(np.sum(r**2)) / sst if sst > 0 else 0.0
    if r2 < min_r2:
        return None
    return LawFit(float(p[0]), float(p[1]), float(p[2]), float(p[3]), r2, int(idx.size))


@dataclass(frozen=True)
class _RunInfo:
    budget: int
    factors: np.ndarray  # LR factor per action
    low: float  # LR multiplier bounds
    high: float
    base: np.ndarray  # base factor of steps 0 .. budget - 1


def _run_info(budget: int, entry: str | None) -> _RunInfo | None:
    if not entry or budget <= 0:
        return None
    try:
        cfg = RunConfig.from_dict(json.loads(entry))
    except (ConfigError, ValueError, KeyError, TypeError):
        return None
    dec = cfg.decision
    factors = np.array([a.lr_factor() for a in dec.action_space.actions])
    lr = dec.hp_space["lr"] if "lr" in dec.hp_space else None
    t = np.arange(budget) / budget
    if dec.mode == "residual":
        base = np.array([base_factor(dec.base_schedule, float(p)) for p in t])
    else:
        base = np.ones(budget)
    return _RunInfo(
        budget=budget,
        factors=factors,
        low=lr.low if lr is not None else 0.0,
        high=lr.high if lr is not None else math.inf,
        base=base,
    )


class FinalLabels(LabelStrategy):
    """Outcome = the branch's loss at the end of the budget, predicted by the LR-annealing law
    fitted on the run's main trajectory and anchored to the branch's measured loss (module doc).

    Parameters
    ----------
    tau: decay time of the annealing momentum as a share of the budget (``lam``).
    cooldown: length of the final linear cool-down as a share of the budget, appended to the
        continuation when the base schedule does not end near 0 (0 = none).
    anchor: ``"ratio"`` (shift the law multiplicatively through the measured point) or ``"shift"``
        (additively).
    min_r2: smallest log-loss ``R^2`` of a run's fit; below it the run falls back to greedy.
    smooth: half-width of the training-loss moving average (``None``: ``n // 40``).
    """

    name = "final"
    needs_trajectory = True
    required_columns = (
        S.RUN_ID,
        S.STEP,
        S.ACTION,
        S.HORIZON,
        S.BRANCH_VAL_LOSS,
        S.BRANCH_DIVERGED,
    )

    def __init__(
        self,
        tau: float = 0.05,
        cooldown: float = 0.1,
        anchor: str = "ratio",
        min_r2: float = 0.3,
        smooth: int | None = None,
        tie_tol: float = 1e-3,
        diverged_penalty: float = 1.0,
    ) -> None:
        super().__init__(tie_tol=tie_tol, diverged_penalty=diverged_penalty)
        if not (isinstance(tau, int | float) and math.isfinite(tau) and 0.005 <= tau):
            raise ConfigError("tau", "a finite number >= 0.005 (a share of the budget)", tau)
        if not (isinstance(cooldown, int | float) and 0 <= cooldown <= 1):
            raise ConfigError("cooldown", "a share of the budget in [0, 1]", cooldown)
        if anchor not in _ANCHORS:
            raise ConfigError("anchor", f"one of {_ANCHORS}", anchor)
        if not (isinstance(min_r2, int | float) and min_r2 <= 1):
            raise ConfigError("min_r2", "a number <= 1", min_r2)
        if smooth is not None and not (isinstance(smooth, int) and smooth >= 0):
            raise ConfigError("smooth", "an integer >= 0 or None", smooth)
        self.tau = float(tau)
        self.cooldown = float(cooldown)
        self.anchor = anchor
        self.min_r2 = float(min_r2)
        self.smooth = smooth
        #: counts of the last labelling: runs, runs_fitted, runs_fallback, branches_fallback
        self.stats: dict[str, int] = {}
        #: the fits of the last labelling, by run id (None where the run fell back)
        self.fits: dict[str, LawFit | None] = {}

    def params(self) -> dict[str, Any]:
        return {
            "tau": self.tau,
            "cooldown": self.cooldown,
            "anchor": self.anchor,
            "min_r2": self.min_r2,
            "smooth": self.smooth,
            **super().params(),
        }

    def log_outcome(self) -> pl.Expr:
        raise self._needs_tables("each run's trajectory")

    # ------------------------------------------------------------------ the outcomes
    def branch_log_outcomes(
        self,
        branches: pl.DataFrame,
        steps: pl.DataFrame | pl.LazyFrame | None = None,
        runs: pl.DataFrame | None = None,
    ) -> pl.Series:
        if steps is None or runs is None:
            raise ConfigError("steps/runs", "the step and runs tables for 'final'", None)
        for col in (S.RUN_ID, S.BUDGET, S.ENTRY):
            if col not in runs.columns:
                raise ConfigError("runs", f"a runs table with {col!r}", runs.columns)
        br = branches.select(
            pl.col(S.RUN_ID).cast(pl.String),
            pl.col(S.STEP).cast(pl.Int64),
            pl.col(S.ACTION).cast(pl.Int64),
            pl.col(S.HORIZON).cast(pl.Int64),
            pl.col(S.BRANCH_VAL_LOSS).cast(pl.Float64),
        ).with_row_index("_row")
        greedy = br[S.BRANCH_VAL_LOSS].log()
        out = greedy.to_numpy().astype(np.float64).copy()  # null -> NaN; restored below
        ids = br[S.RUN_ID].unique()
        lazy = steps.lazy() if isinstance(steps, pl.DataFrame) else steps
        st = (
            lazy.filter(pl.col(S.RUN_ID).cast(pl.String).is_in(ids.implode()))
            .select(
                pl.col(S.RUN_ID).cast(pl.String),
                pl.col(S.STEP).cast(pl.Int64),
                pl.col(S.LOSS).cast(pl.Float64),
                pl.col(S.LR).cast(pl.Float64),
                pl.col(S.LR_MULT).cast(pl.Float64),
                pl.col(S.BASE_FACTOR).cast(pl.Float64),
            )
            .collect()
            .sort(S.RUN_ID, S.STEP)
        )
        by_run = st.partition_by(S.RUN_ID, as_dict=True)
        rr = runs.select(
            pl.col(S.RUN_ID).cast(pl.String), pl.col(S.BUDGET), pl.col(S.ENTRY)
        ).unique(S.RUN_ID)
        info_of = {r[S.RUN_ID]: (r[S.BUDGET], r[S.ENTRY]) for r in rr.iter_rows(named=True)}
        self.fits = {}
        n_fit = n_fallback_br = 0
        for (rid,), g in br.group_by(S.RUN_ID, maintain_order=True):
            budget, entry = info_of.get(str(rid), (0, None))
            info = _run_info(int(budget or 0), entry)
            s = by_run.get((rid,))
            pred = None
            if info is not None and s is not None and s.height:
                pred = self._run_outcomes(str(rid), g, s, info)
            else:
                self.fits[str(rid)] = None
            if pred is None:
                n_fallback_br += g.height
                continue
            n_fit += 1
            out[g["_row"].to_numpy()] = pred
        self.stats = {
            "runs": len(self.fits),
            "runs_fitted": n_fit,
            "runs_fallback": len(self.fits) - n_fit,
            "branches_fallback": n_fallback_br,
        }
        series = pl.Series("_lo", out, dtype=pl.Float64)
        return pl.select(
            pl.when(greedy.is_null()).then(None).otherwise(series).alias("_lo")
        ).to_series()

    def _run_outcomes(
        self, rid: str, g: pl.DataFrame, s: pl.DataFrame, info: _RunInfo
    ) -> np.ndarray | None:
        """Log outcomes of one run's branch rows ``g``; ``None`` when its law cannot be fitted."""
        T = info.budget
        lam = math.exp(-1.0 / (self.tau * T))
        step = s[S.STEP].to_numpy()
        n = int(step.max()) + 1 if step.size else 0
        loss = np.full(n, np.nan)
        eta = np.full(n, np.nan)
        loss[step] = s[S.LOSS].to_numpy()
        mult = s[S.LR_MULT].to_numpy()
        basef = s[S.BASE_FACTOR].to_numpy()
        eta[step] = mult * basef
        if not np.any(np.isfinite(eta)):  # no multiplier columns: the LR over its first value
            lr = s[S.LR].to_numpy()
            pos = lr[np.isfinite(lr) & (lr > 0)]
            if pos.size:
                eta[step] = lr / pos[0]
        mult_at = np.full(n, np.nan)
        mult_at[step] = mult
        fit = fit_annealing_law(eta, loss, lam=lam, smooth=self.smooth, min_r2=self.min_r2)
        self.fits[rid] = fit
        if fit is None:
            return None
        ds = g[S.STEP].to_numpy()
        acts = g[S.ACTION].to_numpy()
        hor = g[S.HORIZON].to_numpy()
        v = g[S.BRANCH_VAL_LOSS].to_numpy()
        ok = (ds >= 1) & (ds - 1 < n) & (acts < info.factors.size) & (hor >= 1) & (ds + hor <= T)
        m_prev = np.where(ok, mult_at[np.clip(ds - 1, 0, n - 1)], np.nan)
        ok &= np.isfinite(m_prev) & np.all(np.isfinite(eta[: max(int(ds.max()), 0)]))
        if not ok.any():
            return None
        m_a = np.clip(
            m_prev * info.factors[np.clip(acts, 0, info.factors.size - 1)], info.low, info.high
        )
        base = info.base
        peak = float(base.max()) if base.size else 0.0
        c = int(round(self.cooldown * T)) if base[-1] > 0.1 * peak else 0
        tail = np.concatenate([base, base[-1] * (1.0 - np.arange(c) / max(c, 1))])  # [T + c]
        # path of each branch: main LRs before its step, m_a * tail from it on
        main = np.nan_to_num(eta[:T], nan=0.0)
        main = np.pad(main, (0, T - main.size))
        h = np.clip(ds + hor, 1, T)
        s1h, s2h = branch_areas(main, tail, lam, ds, m_a, h)
        s1e, s2e = branch_areas(main, tail, lam, ds, m_a, np.full(ds.size, T + c))
        at_h = fit.predict(s1h, s2h)
        at_end = fit.predict(s1e, s2e)
        floor = max(1e-3 * fit.L0, 1e-9)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.anchor == "ratio":
                lo = np.log(v) + np.log(np.maximum(at_end, floor)) - np.log(np.maximum(at_h, floor))
            else:
                lo = np.log(np.maximum(v + at_end - at_h, floor))
        # rows the law cannot extrapolate keep their greedy outcome
        return np.where(ok & np.isfinite(at_h) & np.isfinite(at_end), lo, np.log(v))
