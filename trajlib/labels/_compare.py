"""``compare_labels``: how far trajectory labels agree with branch labels on the same decisions."""

from __future__ import annotations

import numpy as np
import polars as pl

from trajlib import schema as S
from trajlib.errors import ConfigError

__all__ = ["compare_labels", "rank_agreement"]


def _rank(x: np.ndarray) -> np.ndarray:
    return pl.Series(x).rank("average").to_numpy().astype(np.float64)


def compare_labels(
    outcome: pl.DataFrame,
    reference: pl.DataFrame,
    decisions: pl.DataFrame,
    keep_index: int,
    tie_tol: float = 1e-3,
) -> dict[str, float]:
    """Compare labels of the *taken* action (e.g. ``outcome``) with branch labels (e.g. ``greedy``).

    Both frames are label tables (``run_id, step, best_action, adv_*``); ``decisions`` gives the
    action taken. Over the decision points in both tables:

    - ``spearman``: rank correlation of the taken action's advantage in the two tables, over the
      points where the taken action is not keep (keep is 0 in both by construction);
    - ``sign_agreement``: share of those points where both agree whether the taken action beat keep
      by more than ``tie_tol``;
    - ``argmax_agreement``: share of all points where both tables name the same best action (the
      outcome table can only name the taken action or keep, so this is bounded by how often the
      reference's best is one of those two);
    - ``reachable_share``: share of points whose reference best is the taken action or keep, and
      ``argmax_agreement_reachable``: the argmax agreement over those points only;
    - ``n_points`` and ``n_moves`` (points where the taken action is not keep).
    """
    need = [S.RUN_ID, S.STEP, "best_action"]
    for name, f in (("outcome", outcome), ("reference", reference)):
        if any(c not in f.columns for c in need):
            raise ConfigError(name, f"a labels frame with {need}", f.columns)
    keys = [S.RUN_ID, S.STEP]

    def norm(f: pl.DataFrame) -> pl.DataFrame:
        return f.with_columns(pl.col(S.RUN_ID).cast(pl.String), pl.col(S.STEP).cast(pl.Int64))

    j = (
        norm(outcome)
        .join(norm(reference), on=keys, suffix="_ref")
        .join(norm(decisions.select(*keys, S.ACTION)), on=keys)
    )
    if j.height == 0:
        raise ConfigError("labels", "decision points present in both label tables", "none")
    a = j[S.ACTION].to_numpy().astype(np.int64)
    idx = np.arange(j.height)
    n_act = sum(1 for c in outcome.columns if c.startswith("adv_"))
    adv_o = j.select([f"adv_{i}" for i in range(n_act)]).to_numpy()[idx, a]
    adv_r = j.select([f"adv_{i}_ref" for i in range(n_act)]).to_numpy()[idx, a]
    moves = (a != keep_index) & np.isfinite(adv_o) & np.isfinite(adv_r)
    best_o = j["best_action"].to_numpy()
    best_r = j["best_action_ref"].to_numpy()
    reach = (best_r == a) | (best_r == keep_index)
    out = {
        "n_points": float(j.height),
        "n_moves": float(moves.sum()),
        "argmax_agreement": float(np.mean(best_o == best_r)),
        "reachable_share": float(np.mean(reach)),
        "argmax_agreement_reachable": (
            float(np.mean(best_o[reach] == best_r[reach])) if reach.any() else float("nan")
        ),
        "sign_agreement": float("nan"),
        "spearman": float("nan"),
    }
    if moves.any():
        x, y = adv_o[moves], adv_r[moves]
        out["sign_agreement"] = float(np.mean((x > tie_tol) == (y > tie_tol)))
        if moves.sum() >= 3 and np.std(x) > 0 and np.std(y) > 0:
            out["spearman"] = float(np.corrcoef(_rank(x), _rank(y))[0, 1])
    return out


def rank_agreement(labels: pl.DataFrame, reference: pl.DataFrame) -> dict[str, float]:
    """How well each decision's action ranking in ``labels`` matches ``reference``'s.

    Both are label tables (``run_id, step, best_action, adv_*``), e.g. a strategy's labels and
    labels from branches run to the end of the budget. Over the decision points in both, with at
    least 3 actions known in both and not all tied in either:

    - ``spearman_mean`` / ``spearman_median``: the per-decision Spearman correlation of the
      actions' advantages (ties averaged);
    - ``top1``: share of decisions where both name the same best action;
    - ``regret``: mean of ``reference adv[reference best] - reference adv[labels' best]`` (log-loss
      given up at the end by following ``labels``; 0 is perfect);
    - ``n_points``: decisions compared.
    """
    need = [S.RUN_ID, S.STEP, "best_action"]
    for name, f in (("labels", labels), ("reference", reference)):
        if any(c not in f.columns for c in need):
            raise ConfigError(name, f"a labels frame with {need}", f.columns)
    n_act = sum(1 for c in reference.columns if c.startswith("adv_"))
    cols = [f"adv_{i}" for i in range(n_act)]
    keys = [S.RUN_ID, S.STEP]

    def norm(f: pl.DataFrame) -> pl.DataFrame:
        return f.select(
            pl.col(S.RUN_ID).cast(pl.String),
            pl.col(S.STEP).cast(pl.Int64),
            pl.col("best_action").cast(pl.Int64),
            *[pl.col(c).cast(pl.Float64) for c in cols],
        )

    j = norm(labels).join(norm(reference), on=keys, suffix="_ref")
    x = j.select(cols).to_numpy()
    y = j.select([f"{c}_ref" for c in cols]).to_numpy()
    both = np.isfinite(x) & np.isfinite(y)
    rhos, top1, regret = [], [], []
    for i in range(j.height):
        m = both[i]
        if m.sum() < 3 or np.ptp(x[i, m]) == 0 or np.ptp(y[i, m]) == 0:
            continue
        rhos.append(float(np.corrcoef(_rank(x[i, m]), _rank(y[i, m]))[0, 1]))
        b, b_ref = int(j["best_action"][i]), int(j["best_action_ref"][i])
        top1.append(b == b_ref)
        if np.isfinite(y[i, b]) and np.isfinite(y[i, b_ref]):
            regret.append(float(y[i, b_ref] - y[i, b]))
    nan = float("nan")
    return {
        "n_points": float(len(rhos)),
        "spearman_mean": float(np.mean(rhos)) if rhos else nan,
        "spearman_median": float(np.median(rhos)) if rhos else nan,
        "top1": float(np.mean(top1)) if top1 else nan,
        "regret": float(np.mean(regret)) if regret else nan,
    }
