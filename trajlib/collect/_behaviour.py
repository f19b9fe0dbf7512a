"""Behaviour policies: how the collector picks actions at decision points.

Every behaviour is a policy over the recipe's action space: at each decision point it gives a
probability vector over the actions, one action is sampled from it, and both the action and the
probability it had (the propensity) are stored, so off-policy estimators can reweight later. The
LR multiplier ``m`` is constant between decisions (as when a controller is deployed), so a
branch's "keep" continues exactly what the run does when it keeps.

Families (``behaviour.kind``):

* ``random-walk``: keep with probability ``1 - p_move``, else any other action uniformly.
* ``keep``: always keep (constant LR, or the base schedule alone in residual mode).
* ``piecewise-constant``: a target multiplier that jumps at 1–4 random decision points to levels
  drawn log-uniformly in [1/10, 10] of the start.
* ``cosine``, ``step``, ``warmup-cosine``, ``one-cycle``: the classic schedule shapes, each with
  random parameters (drawn per run from its seed and stored in the run's entry).
* ``reduce-on-plateau``: the target drops by a random factor when the training loss has not
  improved for ``patience`` decisions.
* ``controller``: epsilon-exploration around a learned controller that the caller injects as a
  :class:`DecisionPolicy` (collect never imports controllers: they are to its right).

The schedule-shaped families *track* their target on the action grid: the action whose LR factor
brings ``m`` closest to the target (in log space) gets probability ``1 - epsilon``, the rest share
``epsilon`` uniformly. So every move is an action of the space with an exact propensity.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from trajlib.errors import ConfigError, UnknownNameError
from trajlib.spec import DEFAULT_EPSILON, DEFAULT_P_MOVE

__all__ = [
    "BEHAVIOURS",
    "BehaviourPolicy",
    "DecisionContext",
    "DecisionPolicy",
    "RandomWalk",
    "Keep",
    "ScheduleTracker",
    "PlateauTracker",
    "ControllerExploration",
    "draw_params",
    "make_behaviour",
    "target_multiplier",
]

SCHEDULE_FAMILIES = ("piecewise-constant", "cosine", "step", "warmup-cosine", "one-cycle")
BEHAVIOURS = ("random-walk", "keep", *SCHEDULE_FAMILIES, "reduce-on-plateau", "controller")


@runtime_checkable
class DecisionPolicy(Protocol):
    """A policy the caller injects for ``behaviour.kind = "controller"``.

    Called once per member per decision with that member's :class:`DecisionContext`:
    ``ctx.step``, ``ctx.budget``, ``ctx.every``, and ``ctx.history()``, the run's step table so
    far (rows ``0 .. step-1``: trajlib.schema step column names -> arrays [step], ``val_loss`` /
    ``val_acc`` NaN where not measured). Returns the probabilities [n_actions] of the recipe's
    actions (non-negative; normalised here).
    """

    def __call__(self, ctx: DecisionContext) -> np.ndarray: ...


@dataclass
class DecisionContext:
    """What a behaviour sees at a decision point of one member."""

    step: int
    budget: int
    every: int
    lr_mult: float  # current multiplier m
    lr_factors: np.ndarray  # [A] LR factor of each action (1 for actions not moving the LR)
    keep: int  # index of the keep action
    mult_bounds: tuple[float, float]
    history: Callable[[], dict[str, np.ndarray]]  # the step table so far (lazy)


class BehaviourPolicy(abc.ABC):
    """Chooses an action for one member at a decision point."""

    name = "base"
    needs_history = False

    def initial_mult(self) -> float:
        """The LR multiplier m at step 0."""
        return 1.0

    @abc.abstractmethod
    def probabilities(self, ctx: DecisionContext) -> np.ndarray:
        """Probabilities [n_actions] of the actions at this decision point."""

    def choose(self, rng: np.random.Generator, ctx: DecisionContext) -> tuple[int, float]:
        """The action index and its propensity."""
        p = np.asarray(self.probabilities(ctx), dtype=np.float64)
        a = int(rng.choice(len(p), p=p))
        return a, float(p[a])


def _explore(p: np.ndarray, epsilon: float) -> np.ndarray:
    return (1.0 - epsilon) * p + epsilon / len(p)


class RandomWalk(BehaviourPolicy):
    """Keep with probability 1 - p_move, else one of the other actions uniformly: a random walk
    of the LR in log space (clamped to the bounds)."""

    name = "random-walk"

    def __init__(self, p_move: float = DEFAULT_P_MOVE) -> None:
        self.p_move = p_move

    def probabilities(self, ctx: DecisionContext) -> np.ndarray:
        n = len(ctx.lr_factors)
        if n == 1:
            return np.ones(1)
        p = np.full(n, self.p_move / (n - 1))
        p[ctx.keep] = 1.0 - self.p_move
        return p


class Keep(BehaviourPolicy):
    """Always keep."""

    name = "keep"

    def probabilities(self, ctx: DecisionContext) -> np.ndarray:
        p = np.zeros(len(ctx.lr_factors))
        p[ctx.keep] = 1.0
        return p


def _track(ctx: DecisionContext, target: float) -> np.ndarray:
    """One-hot on the action that brings m closest to ``target`` (log space, within bounds)."""
    lo, hi = ctx.mult_bounds
    after = np.clip(ctx.lr_mult * ctx.lr_factors, lo, hi)
    err = np.abs(np.log(after) - math.log(min(max(target, lo), hi)))
    # ties: prefer keep, then the smaller move
    order = np.lexsort((np.abs(np.log(ctx.lr_factors)), np.arange(len(err)) != ctx.keep, err))
    p = np.zeros(len(err))
    p[order[0]] = 1.0
    return p


def target_multiplier(kind: str, params: Mapping[str, Any], progress: float) -> float:
    """The target LR multiplier of a schedule family at ``progress`` = step / budget."""
    q = min(max(progress, 0.0), 1.0)
    if kind == "piecewise-constant":
        level = 1.0
        for at, lv in zip(params["at"], params["levels"]):
            if q >= at:
                level = lv
        return level
    if kind == "cosine":
        end, span = params["final"], params["span"]
        c = 0.5 * (1 + math.cos(math.pi * min(q / span, 1.0)))
        return end + (1 - end) * c
    if kind == "step":
        return params["gamma"] ** math.floor(q / params["every"])
    if kind == "warmup-cosine":
        w, start, end = params["warmup"], params["start"], params["final"]
        if q < w:
            return start + (1 - start) * q / w
        c = 0.5 * (1 + math.cos(math.pi * (q - w) / max(1 - w, 1e-9)))
        return end + (1 - end) * c
    if kind == "one-cycle":
        pct, lo, end = params["pct"], 1.0 / params["div"], params["final"]
        if q < pct:
            return lo + (1 - lo) * 0.5 * (1 - math.cos(math.pi * q / pct))
        c = 0.5 * (1 + math.cos(math.pi * (q - pct) / max(1 - pct, 1e-9)))
        return end + (1 - end) * c
    raise UnknownNameError("schedule family", kind, list(SCHEDULE_FAMILIES))


class ScheduleTracker(BehaviourPolicy):
    """A classic schedule shape (random parameters), tracked on the action grid."""

    def __init__(
        self, kind: str, params: Mapping[str, Any], epsilon: float = DEFAULT_EPSILON
    ) -> None:
        self.name, self.params, self.epsilon = kind, dict(params), epsilon

    def initial_mult(self) -> float:
        return target_multiplier(self.name, self.params, 0.0)

    def probabilities(self, ctx: DecisionContext) -> np.ndarray:
        mid = (ctx.step + 0.5 * ctx.every) / ctx.budget  # the target over the next interval
        return _explore(_track(ctx, target_multiplier(self.name, self.params, mid)), self.epsilon)


class PlateauTracker(BehaviourPolicy):
    """Reduce-on-plateau: the target drops by ``factor`` when the mean training loss of the last
    interval has not improved on the best by a relative ``threshold`` for ``patience`` decisions."""

    name = "reduce-on-plateau"
    needs_history = True

    def __init__(self, params: Mapping[str, Any], epsilon: float = DEFAULT_EPSILON) -> None:
        self.factor = float(params["factor"])
        self.patience = int(params["patience"])
        self.threshold = float(params.get("threshold", 1e-3))
        self.epsilon = epsilon
        self.target = 1.0
        self.best = math.inf
        self.bad = 0

    def probabilities(self, ctx: DecisionContext) -> np.ndarray:
        loss = ctx.history()["loss"][-ctx.every :]
        cur = float(np.nanmean(loss)) if len(loss) and np.isfinite(loss).any() else math.inf
        if cur < self.best * (1 - self.threshold):
            self.best, self.bad = cur, 0
        else:
            self.bad += 1
            if self.bad >= self.patience:
                self.target *= self.factor
                self.bad = 0
        return _explore(_track(ctx, self.target), self.epsilon)


class ControllerExploration(BehaviourPolicy):
    """Epsilon-exploration around an injected :class:`DecisionPolicy`."""

    name = "controller"
    needs_history = True

    def __init__(self, policy: DecisionPolicy, epsilon: float = 0.2) -> None:
        self.policy, self.epsilon = policy, epsilon

    def probabilities(self, ctx: DecisionContext) -> np.ndarray:
        p = np.asarray(self.policy(ctx), dtype=np.float64).reshape(-1)
        n = len(ctx.lr_factors)
        if p.shape != (n,) or not np.all(np.isfinite(p)) or (p < 0).any() or p.sum() <= 0:
            p = np.zeros(n)  # a policy that misbehaves falls back to keep (plus exploration)
            p[ctx.keep] = 1.0
        return _explore(p / p.sum(), self.epsilon)


def draw_params(kind: str, rng: np.random.Generator) -> dict[str, Any]:
    """Random parameters of a behaviour family (stored in the run's entry)."""

    def logu(lo: float, hi: float) -> float:
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    if kind == "piecewise-constant":
        n = int(rng.integers(1, 5))
        at = sorted(float(a) for a in rng.uniform(0.1, 0.9, size=n))
        return {"at": at, "levels": [logu(0.1, 10.0) for _ in range(n)]}
    if kind == "cosine":
        return {"final": logu(1e-3, 0.1), "span": float(rng.uniform(0.7, 1.0))}
    if kind == "step":
        return {"gamma": float(rng.uniform(0.1, 0.5)), "every": float(rng.uniform(0.2, 0.5))}
    if kind == "warmup-cosine":
        return {
            "warmup": float(rng.uniform(0.02, 0.2)),
            "start": logu(0.01, 0.3),
            "final": logu(1e-3, 0.1),
        }
    if kind == "one-cycle":
        return {
            "pct": float(rng.uniform(0.2, 0.4)),
            "div": float(rng.uniform(10.0, 30.0)),
            "final": logu(1e-4, 1e-2),
        }
    if kind == "reduce-on-plateau":
        return {
            "factor": float(rng.uniform(0.2, 0.5)),
            "patience": int(rng.integers(2, 5)),
            "threshold": 1e-3,
        }
    return {}


def make_behaviour(
    kind: str,
    p_move: float = DEFAULT_P_MOVE,
    *,
    params: Mapping[str, Any] | None = None,
    epsilon: float = DEFAULT_EPSILON,
    policy: DecisionPolicy | None = None,
) -> BehaviourPolicy:
    """The behaviour policy of one run from its spec (``params`` from :func:`draw_params`)."""
    if kind == "random-walk":
        return RandomWalk(p_move)
    if kind == "keep":
        return Keep()
    if kind in SCHEDULE_FAMILIES:
        return ScheduleTracker(kind, params or {}, epsilon)
    if kind == "reduce-on-plateau":
        return PlateauTracker(params or {}, epsilon)
    if kind == "controller":
        if policy is None:
            raise ConfigError(
                "behaviour.kind",
                "'controller' only with a policy injected by the caller",
                kind,
                "run it through `trajlib iterate`, which loads behaviour.checkpoint",
            )
        return ControllerExploration(policy, epsilon)
    raise UnknownNameError("behaviour", kind, list(BEHAVIOURS))
