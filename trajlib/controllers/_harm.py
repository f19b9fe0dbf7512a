"""The do-no-harm rule: act only when the best action's advantage over keep is confidently > 0.

With ``mean`` and ``std`` the ensemble's predicted advantages (``[A]``), the rule computes the
lower bound ``lb = mean - z * std`` of every action but keep, takes the action with the highest
bound and acts only if that bound exceeds ``margin``; otherwise it keeps. ``z = 0, margin = 0``
is the plain argmax (keep's advantage is 0 by definition), so growing ``z`` only ever keeps more.

:func:`calibrate_rule` picks ``z`` on the training data: members are refitted on folds grouped by
task family, the held-out rows' advantages are predicted, and for each ``z`` of a grid it measures
the acted share, the *precision* (share of acted decisions whose realized advantage is > 0) and
the mean realized advantage per decision (keep counts 0). It chooses the smallest ``z`` whose
precision reaches ``min_precision`` (or that never acts); when none does, the ``z`` with the
highest mean realized advantage. The rule and its table go to the checkpoint manifest
(``decision_rule``).

Per action (``per_action=True``): the pooled precision can hide an action that is right only half
the time behind one that is right 90 % of the time (on the generated tasks, held-out families'
LR cuts were right at most about half the time at any ``z`` while raises were right 73-89 %). Each
non-keep action ``a`` then gets its own ``z_a``: the smallest ``z`` of the grid at which the
decisions the rule takes ``a`` on (the other actions at the pooled ``z``) are right >= the
precision in at least ``min_acted`` held-out decisions; an action no ``z`` makes that precise is
never taken (``z_by_action`` entry ``None``). The rule reads ``z_a`` for each action's bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import GroupKFold

from trajlib.controllers._base import Controller
from trajlib.errors import CheckpointError, ConfigError

__all__ = ["HarmRule", "Z_GRID", "calibrate_rule", "per_action_z", "rule_actions", "rule_table"]

#: The z values calibration tries (standard deviations of the members' spread).
Z_GRID = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
RULE_KIND = "lower_bound"


@dataclass(frozen=True)
class HarmRule:
    """``act iff max_{a != keep} (mean_a - z_a * std_a) > margin``; else keep. ``z_a`` is ``z``,
    or ``z_by_action[a]`` when given (``None``: action ``a`` is never taken)."""

    z: float
    margin: float = 0.0
    calibration: Mapping[str, Any] = field(default_factory=dict)
    z_by_action: tuple[float | None, ...] | None = None

    def __post_init__(self) -> None:
        check_rule_values(self.z, self.margin)
        for v in self.z_by_action or ():
            if v is not None:
                check_rule_values(v, self.margin)

    @property
    def z_vector(self) -> float | np.ndarray:
        """``z``, or the per-action values with ``inf`` for an action never taken."""
        if self.z_by_action is None:
            return self.z
        return np.array([math.inf if v is None else float(v) for v in self.z_by_action])

    def actions_read(self, keep: int, n_actions: int) -> tuple[int, ...] | None:
        """The actions this rule may take, and ``keep``: what :meth:`choose` needs scored (None:
        every action)."""
        zs = self.z_by_action
        if zs is None or len(zs) != n_actions:
            return None
        only = tuple(a for a, z in enumerate(zs) if z is not None or a == keep)
        return None if len(only) == n_actions else only

    def choose(self, mean: np.ndarray, std: np.ndarray, keep: int) -> tuple[int, bool]:
        """``(action, kept_by_rule)``: ``kept_by_rule`` is True when the plain argmax would have
        moved and the rule keeps instead. A NaN ``mean`` is an action not scored (never taken;
        the plain argmax is over the others)."""
        # one row, in plain floats: what rule_actions does for a batch (the same bounds, the
        # first highest), without NumPy's per-call cost, which dominates on a few values
        m, sd = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        if m.ndim != 1 or sd.shape != m.shape:
            raise ConfigError("mean, std", "two [A] arrays of the same shape", (m.shape, sd.shape))
        n = m.shape[0]
        zs = self.z_by_action
        if zs is not None and len(zs) != n:
            raise ConfigError("decision_rule", f"z_by_action of {(n,)} actions", zs)
        z = [self.z] * n if zs is None else [math.inf if v is None else float(v) for v in zs]
        means = m.tolist()
        lbs = []
        for i, (mi, si, zi) in enumerate(zip(means, sd.tolist(), z, strict=True)):
            lb = -math.inf if i == keep or zi == math.inf else mi - zi * si
            lbs.append(-math.inf if lb != lb else lb)  # NaN (an action not scored): never
        best = max(range(n), key=lbs.__getitem__)
        a = best if lbs[best] > self.margin else keep
        scored = [i for i, v in enumerate(means) if v == v]
        if not scored:
            raise ValueError("HarmRule.choose: every action's mean is NaN")
        plain = max(scored, key=means.__getitem__)
        return a, a == keep and plain != keep

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": RULE_KIND, "z": float(self.z), "margin": float(self.margin)}
        if self.z_by_action is not None:
            d["z_by_action"] = [None if v is None else float(v) for v in self.z_by_action]
        d["calibration"] = dict(self.calibration)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HarmRule:
        """Parse a manifest's ``decision_rule``; :class:`CheckpointError` when malformed."""
        try:
            if d.get("kind") != RULE_KIND:
                raise ValueError(f"kind must be {RULE_KIND!r}, got {d.get('kind')!r}")
            zs = d.get("z_by_action")
            return cls(
                z=float(d["z"]),
                margin=float(d["margin"]),
                calibration=dict(d.get("calibration") or {}),
                z_by_action=None
                if zs is None
                else tuple(None if v is None else float(v) for v in zs),
            )
        except (AttributeError, KeyError, TypeError, ValueError, ConfigError) as e:
            raise CheckpointError(f"manifest.json: malformed decision_rule ({e})") from e


def check_rule_values(z: Any, margin: Any) -> None:
    """ConfigError unless ``z`` is a finite number >= 0 and ``margin`` a finite number."""
    if isinstance(z, bool) or not isinstance(z, int | float) or not (math.isfinite(z) and z >= 0):
        raise ConfigError("harm_z", "a finite number >= 0", z)
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin):
        raise ConfigError("harm_margin", "a finite number", margin)


def rule_actions(
    mean: np.ndarray, std: np.ndarray, keep: int, z: float | np.ndarray, margin: float
) -> np.ndarray:
    """``[n]`` actions the rule takes for ``[n, A]`` means and spreads; ``z`` a number or ``[A]``
    per-action values (``inf``: never that action)."""
    zz = np.asarray(z, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf * 0 spread: NaN, i.e. never
        lb = np.asarray(mean, dtype=np.float64) - zz * np.asarray(std, dtype=np.float64)
    lb = np.where(np.isnan(lb) | np.isinf(zz), -np.inf, lb)
    lb[:, keep] = -np.inf
    best = lb.argmax(axis=1)
    ok = lb[np.arange(lb.shape[0]), best] > float(margin)
    return np.where(ok, best, keep)


def _rule_stats(
    a: np.ndarray, T: np.ndarray, keep: int, only: int | None = None
) -> dict[str, float | None]:
    """Acted share, precision and mean realized advantage of actions ``a`` (``only``: the
    precision and count of the decisions that took that action)."""
    realized = np.where(a == keep, 0.0, T[np.arange(T.shape[0]), a])
    known = ~np.isnan(realized)
    acted = known & (a != keep) & (True if only is None else a == only)
    n = int(known.sum())
    return {
        "n_rows": float(n),
        "n_acted": float(acted.sum()),
        "acted_share": float(acted.sum() / n) if n else None,
        "precision": float((realized[acted] > 0).mean()) if acted.any() else None,
        "mean_realized": float(realized[known].mean()) if n else None,
    }


def rule_table(
    mean: np.ndarray,
    std: np.ndarray,
    T: np.ndarray,
    keep: int,
    z_grid: Sequence[float] = Z_GRID,
    margin: float = 0.0,
) -> list[dict[str, float | None]]:
    """Per ``z``: ``z``, ``acted_share``, ``precision``, ``mean_realized``, ``n_rows`` on rows
    whose targets are known (``T`` ``[n, A]``, NaN = unknown; keep realises 0)."""
    out: list[dict[str, float | None]] = []
    for z in z_grid:
        st = _rule_stats(rule_actions(mean, std, keep, z, margin), T, keep)
        st.pop("n_acted")
        out.append({"z": float(z), **st})
    return out


def per_action_z(
    mean: np.ndarray,
    std: np.ndarray,
    T: np.ndarray,
    keep: int,
    z_pooled: float,
    min_precision: float,
    *,
    z_grid: Sequence[float] = Z_GRID,
    margin: float = 0.0,
    min_acted: int = 30,
) -> tuple[tuple[float | None, ...], dict[str, Any]]:
    """Each non-keep action's ``z`` (module docstring; ``None``: never; keep's entry is the pooled
    ``z``, which the rule does not read) and, per action and ``z``, the decisions taking it and
    their precision."""
    n_act = T.shape[1]
    chosen: list[float | None] = [None] * n_act
    chosen[keep] = float(z_pooled)
    tables: dict[str, Any] = {}
    for a in range(n_act):
        if a == keep:
            continue
        rows = []
        for z in z_grid:
            zv = np.full(n_act, float(z_pooled))
            zv[a] = float(z)
            st = _rule_stats(rule_actions(mean, std, keep, zv, margin), T, keep, only=a)
            rows.append({"z": float(z), "n_acted": st["n_acted"], "precision": st["precision"]})
            ok = (st["precision"] or 0.0) >= min_precision and (st["n_acted"] or 0) >= min_acted
            if ok and chosen[a] is None:
                chosen[a] = float(z)
        tables[str(a)] = rows
    return tuple(chosen), tables


def choose_z(table: list[dict[str, float | None]], min_precision: float) -> float:
    """The smallest ``z`` whose precision reaches ``min_precision`` or that never acts; when none
    does, the ``z`` with the highest mean realized advantage (ties: the larger ``z``)."""
    for row in table:
        prec, acted = row["precision"], row["acted_share"]
        if (acted is not None and acted == 0.0) or (prec is not None and prec >= min_precision):
            return float(row["z"] or 0.0)
    scored = [(r["mean_realized"] or -math.inf, r["z"] or 0.0) for r in table]
    return float(max(scored)[1])


def calibrate_rule(
    proto: Controller,
    X: np.ndarray,
    T: np.ndarray,
    runs: np.ndarray,
    steps: np.ndarray,
    families: np.ndarray,
    keep: int,
    *,
    z_grid: Sequence[float] = Z_GRID,
    margin: float = 0.0,
    min_precision: float = 0.6,
    n_folds: int = 5,
    per_action: bool = False,
    min_acted: int = 30,
) -> HarmRule:
    """Calibrate ``z`` with cross-validation grouped by ``families`` (``[n]`` labels; by run when
    there is only one family). Every fold refits a clone of ``proto`` (an unfitted ensemble) on
    the other families and predicts the held-out rows' mean and spread. ``per_action``: also
    each action's own ``z`` (:func:`per_action_z`)."""
    if not 0.0 < float(min_precision) <= 1.0:
        raise ConfigError("harm_precision", "a share in (0, 1]", min_precision)
    fam = np.asarray(families).astype(str)
    group, by = (
        (fam, "family") if len(np.unique(fam)) >= 2 else (np.asarray(runs).astype(str), "run")
    )
    k = min(int(n_folds), len(np.unique(group)))
    if k < 2:
        raise ConfigError("table", "at least 2 runs to calibrate the do-no-harm rule", k)
    mean = np.full(T.shape, np.nan)
    std = np.full(T.shape, np.nan)
    for train, test in GroupKFold(n_splits=k).split(X, groups=group):
        ctl = clone(proto).fit(X[train], T[train], groups=runs[train], order=steps[train])
        m, s = ctl.predict_spread(X[test], groups=runs[test], order=steps[test])
        mean[test], std[test] = m, s
    table = rule_table(mean, std, T, keep, z_grid, margin)
    z = choose_z(table, float(min_precision))
    calibration: dict[str, Any] = {
        "grouped_by": by,
        "n_folds": k,
        "n_groups": int(len(np.unique(group))),
        "min_precision": float(min_precision),
        "table": table,
    }
    z_by_action = None
    if per_action:
        z_by_action, per = per_action_z(
            mean, std, T, keep, z, float(min_precision),
            z_grid=z_grid, margin=margin, min_acted=min_acted,
        )  # fmt: skip
        zv = np.array([math.inf if v is None else v for v in z_by_action])
        calibration["per_action"] = {
            "min_acted": int(min_acted),
            "tables": per,
            "result": _rule_stats(rule_actions(mean, std, keep, zv, margin), T, keep),
        }
    return HarmRule(z=z, margin=float(margin), calibration=calibration, z_by_action=z_by_action)
