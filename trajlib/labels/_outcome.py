"""``outcome``: labels from the logged trajectory alone (no branches), for recorded runs.

Runs recorded without branches (framework callbacks, the ``Recorder`` without ``train_step``) only
show what happened after the action the behaviour *took*. :class:`OutcomeLabels` turns that into
the same per-action advantage table as :func:`~trajlib.labels.make_labels`:

1. **Outcome** of decision ``t`` (action ``a_t``, propensity ``p_t``):
   ``d_t = log L(t + H) - log L(t)``, the log-loss change over the next ``H`` steps. With
   ``source="train"`` ``L`` is the training loss averaged over the ``window`` steps before each
   end (smoothing the minibatch noise, like a branch's ``train_loss``); with ``source="val"`` it is
   the last validation loss logged before each end.
2. **Baseline** (what "keep" would have done): an importance-weighted kernel regression of
   ``d`` over the *keep* decisions of the same run, ``b_t = sum_s k(t, s) w_s d_s / sum_s k w_s``
   with ``w_s = min(1 / p_s, clip)`` and a Gaussian kernel over steps of width
   ``bandwidth * H``. Weighting by the inverse propensity makes the baseline estimate the keep
   policy's outcome rather than the behaviour's mix. A run with no keep decision falls back to the
   same weighted regression over all its decisions (the behaviour policy's value).
3. **Target**: ``adv_{a_t} = b_t - d_t`` (higher is better, log-loss units like branch labels);
   ``adv_keep = 0`` where ``a_t`` is keep; **every other action is NaN** (unobserved, masked
   out by every controller kind). A decision whose next ``H`` steps hit a non-finite loss gets
   ``adv_{a_t} = -diverged_penalty``; a decision whose ``t + H`` lies past the run's end has no
   known target and is dropped.

Rows also carry ``weight`` = ``min(1 / p_t, clip)`` and ``propensity``; ``best_action`` is the
taken action when its advantage beats ``tie_tol``, else keep.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl

from trajlib import schema as S
from trajlib.errors import ConfigError
from trajlib.labels._base import LabelStrategy

__all__ = ["OutcomeLabels", "WEIGHT", "trajectory_labels"]

WEIGHT = "weight"
_SOURCES = ("train", "val")


class OutcomeLabels(LabelStrategy):
    """Outcome regression of the taken action over the next ``horizon`` steps (no branches).

    Parameters
    ----------
    horizon: steps after the decision over which the outcome is measured; ``None`` uses each
        run's decision interval (the gap between its decisions).
    source: ``"train"`` (smoothed training loss, always logged) or ``"val"`` (validation loss).
    window: steps averaged at each end with ``source="train"``; ``None`` = ``max(1, H // 4)``.
    bandwidth: width of the baseline kernel in units of ``H``.
    clip: largest importance weight ``1 / propensity``.
    """

    name = "outcome"
    needs_branches = False
    required_columns = (S.RUN_ID, S.STEP, S.ACTION, S.PROPENSITY)

    def __init__(
        self,
        horizon: int | None = None,
        source: str = "train",
        window: int | None = None,
        bandwidth: float = 1.0,
        clip: float = 20.0,
        tie_tol: float = 1e-3,
        diverged_penalty: float = 1.0,
    ) -> None:
        super().__init__(tie_tol=tie_tol, diverged_penalty=diverged_penalty)
        for field, v in (("horizon", horizon), ("window", window)):
            if v is not None and not (isinstance(v, int) and v >= 1):
                raise ConfigError(field, "an integer >= 1 or None", v)
        if source not in _SOURCES:
            raise ConfigError("source", f"one of {_SOURCES}", source)
        for field, x in (("bandwidth", bandwidth), ("clip", clip)):
            if not (isinstance(x, int | float) and math.isfinite(x) and x > 0):
                raise ConfigError(field, "a finite number > 0", x)
        if clip < 1:
            raise ConfigError("clip", "a number >= 1 (1 / propensity is >= 1)", clip)
        self.horizon = horizon
        self.source = source
        self.window = window
        self.bandwidth = float(bandwidth)
        self.clip = float(clip)

    def params(self) -> dict[str, Any]:
        return {
            "horizon": self.horizon,
            "source": self.source,
            "window": self.window,
            "bandwidth": self.bandwidth,
            "clip": self.clip,
            **super().params(),
        }

    def log_outcome(self) -> pl.Expr:
        raise ConfigError(
            "label strategy",
            "a branch label strategy for make_labels",
            "'outcome'",
            hint="'outcome' labels come from the trajectory: use trajectory_labels(steps, "
            "decisions, ...) or fit_store(..., labels='outcome')",
        )

    # ------------------------------------------------------------------ the labels
    def labels(
        self,
        steps: pl.DataFrame | pl.LazyFrame,
        decisions: pl.DataFrame,
        keep_index: int,
        n_actions: int,
    ) -> pl.DataFrame:
        """Per-decision labels from the step table and the decisions (see the module doc)."""
        self.check(decisions)
        if decisions.height == 0:
            raise ConfigError("decisions", "a non-empty decisions table", "0 rows")
        if not 0 <= keep_index < n_actions:
            raise ConfigError("keep_index", f"an action index in [0, {n_actions - 1}]", keep_index)
        dec = decisions.select(
            pl.col(S.RUN_ID).cast(pl.String),
            pl.col(S.STEP).cast(pl.Int64),
            pl.col(S.ACTION).cast(pl.Int64),
            pl.col(S.PROPENSITY).cast(pl.Float64),
        ).sort(S.RUN_ID, S.STEP)
        bad = dec.filter(
            (pl.col(S.ACTION) < 0)
            | (pl.col(S.ACTION) >= n_actions)
            | ~(pl.col(S.PROPENSITY) > 0)
            | (pl.col(S.PROPENSITY) > 1.0 + 1e-6)
        )
        if bad.height:
            raise ConfigError(
                "decisions",
                f"actions in [0, {n_actions - 1}] and propensities in (0, 1]",
                bad.row(0, named=True),
            )
        ids = dec[S.RUN_ID].unique().implode()
        col = S.LOSS if self.source == "train" else S.VAL_LOSS
        lazy = steps.lazy() if isinstance(steps, pl.DataFrame) else steps
        st = (
            lazy.filter(pl.col(S.RUN_ID).is_in(ids))
            .select(
                pl.col(S.RUN_ID).cast(pl.String),
                pl.col(S.STEP).cast(pl.Int64),
                pl.col(col).cast(pl.Float64).alias("_l"),
            )
            .collect()
            .sort(S.RUN_ID, S.STEP)
        )
        by_run = {k[0]: g for k, g in st.group_by(S.RUN_ID)}
        parts = []
        for (rid,), g in dec.group_by(S.RUN_ID, maintain_order=True):
            s = by_run.get(rid)
            if s is None:
                continue
            parts.append(self._run_labels(str(rid), g, s, keep_index, n_actions))
        if not parts:
            raise ConfigError("steps", "the step rows of the decisions' runs", "none found")
        out = pl.concat(parts)
        if out.height == 0:
            raise ConfigError(
                "decisions",
                "decision points followed by at least `horizon` logged steps",
                "none",
                hint=f"horizon={self.horizon}",
            )
        return out

    def _run_labels(
        self, rid: str, dec: pl.DataFrame, steps: pl.DataFrame, keep: int, A: int
    ) -> pl.DataFrame:
        t = dec[S.STEP].to_numpy()
        a = dec[S.ACTION].to_numpy()
        p = dec[S.PROPENSITY].to_numpy()
        H = self.horizon
        if H is None:
            gaps = np.diff(t)
            H = int(np.median(gaps)) if gaps.size else None
            if not H:  # one decision: no interval to infer
                H = int(steps[S.STEP].max() - t[0]) or 1  # type: ignore[operator]
        sstep = steps[S.STEP].to_numpy()
        loss = steps["_l"].to_numpy()
        last = int(sstep.max())
        d = np.full(t.shape, np.nan)
        diverged = np.zeros(t.shape, dtype=bool)
        for i, ti in enumerate(t):
            if ti + H > last + 1:
                continue  # the run ended before the outcome
            span = loss[(sstep >= ti) & (sstep < ti + H)]
            if self.source == "train":
                if np.any(~np.isfinite(span)):
                    diverged[i] = True
                    continue
                w = self.window or max(1, H // 4)
                end = loss[(sstep >= ti + H - w) & (sstep < ti + H)]
                start = loss[(sstep >= max(0, ti - w)) & (sstep < ti)]
                if start.size == 0:
                    start = loss[sstep == ti]
                d[i] = np.log(np.mean(end)) - np.log(np.mean(start))
            else:
                if np.any(np.isinf(span)):
                    diverged[i] = True
                    continue
                end = loss[(sstep < ti + H) & (sstep >= ti) & ~np.isnan(loss)]
                start = loss[(sstep < ti) & ~np.isnan(loss)]
                if end.size and start.size:
                    d[i] = np.log(end[-1]) - np.log(start[-1])
                    if not np.isfinite(d[i]):
                        diverged[i], d[i] = True, np.nan
        w_is = np.minimum(1.0 / p, self.clip)
        ok = np.isfinite(d)
        base_rows = ok & (a == keep)
        if not base_rows.any():
            base_rows = ok
        k = np.exp(-0.5 * ((t[:, None] - t[None, :]) / (self.bandwidth * H)) ** 2)
        kw = k * (w_is * base_rows)[None, :]
        den = kw.sum(axis=1)
        base = np.where(den > 0, (kw * np.where(ok, d, 0.0)[None, :]).sum(axis=1), np.nan)
        base = base / np.where(den > 0, den, 1.0)
        adv_taken = np.where(diverged, -self.diverged_penalty, base - d)
        adv_taken = np.where(a == keep, np.where(diverged | ok, 0.0, np.nan), adv_taken)
        keep_rows = np.isfinite(adv_taken)
        adv = np.full((t.size, A), np.nan)
        adv[np.arange(t.size), a] = adv_taken
        adv, t, a, p, w_is = (
            adv[keep_rows],
            t[keep_rows],
            a[keep_rows],
            p[keep_rows],
            w_is[keep_rows],
        )
        at = adv[np.arange(t.size), a]
        best = np.where((a != keep) & (at > self.tie_tol), a, keep)
        return pl.DataFrame(
            {
                S.RUN_ID: [rid] * t.size,
                S.STEP: pl.Series(t, dtype=pl.Int32),
                "best_action": pl.Series(best, dtype=pl.Int16),
                **{f"adv_{i}": pl.Series(adv[:, i], dtype=pl.Float64) for i in range(A)},
                "n_valid": pl.Series(np.ones(t.size), dtype=pl.Int16),
                S.PROPENSITY: pl.Series(p, dtype=pl.Float64),
                WEIGHT: pl.Series(w_is, dtype=pl.Float64),
            }
        )


def trajectory_labels(
    steps: pl.DataFrame | pl.LazyFrame,
    decisions: pl.DataFrame,
    keep_index: int,
    n_actions: int,
    strategy: str | LabelStrategy = "outcome",
    **params: Any,
) -> pl.DataFrame:
    """Labels for runs without branches: :meth:`OutcomeLabels.labels` by name or instance."""
    strat = OutcomeLabels(**params) if strategy == "outcome" else strategy
    if not isinstance(strat, OutcomeLabels):
        raise ConfigError("strategy", "'outcome' or an OutcomeLabels instance", strategy)
    return strat.labels(steps, decisions, keep_index, n_actions)
