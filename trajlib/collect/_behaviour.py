"""Behaviour policies: how the collector picks actions at decision points.

Each returns, per member, the chosen action index and the probability it had of choosing it
(the propensity), so that off-policy estimators can reweight the data later.
"""

from __future__ import annotations

import numpy as np

from trajlib.errors import UnknownNameError

__all__ = ["BehaviourPolicy", "RandomWalk", "Keep", "make_behaviour"]


class BehaviourPolicy:
    """Chooses actions for K members at a decision point."""

    name = "base"

    def probabilities(self, n_actions: int, keep: int) -> np.ndarray:
        raise NotImplementedError

    def choose(
        self, rng: np.random.Generator, k: int, n_actions: int, keep: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Actions [k] (int) and their propensities [k] (float)."""
        p = self.probabilities(n_actions, keep)
        a = rng.choice(n_actions, size=k, p=p)
        return a.astype(np.int64), p[a]


class RandomWalk(BehaviourPolicy):
    """Keep with probability 1 - p_move, else one of the other actions uniformly: a random walk
    of the LR in log space (clamped to the bounds)."""

    name = "random-walk"

    def __init__(self, p_move: float = 0.6) -> None:
        self.p_move = p_move

    def probabilities(self, n_actions: int, keep: int) -> np.ndarray:
        if n_actions == 1:
            return np.ones(1)
        p = np.full(n_actions, self.p_move / (n_actions - 1))
        p[keep] = 1.0 - self.p_move
        return p


class Keep(BehaviourPolicy):
    """Always keep (a constant-LR run, or the base schedule alone in residual mode)."""

    name = "keep"

    def probabilities(self, n_actions: int, keep: int) -> np.ndarray:
        p = np.zeros(n_actions)
        p[keep] = 1.0
        return p


def make_behaviour(kind: str, p_move: float = 0.6) -> BehaviourPolicy:
    if kind == "random-walk":
        return RandomWalk(p_move)
    if kind == "keep":
        return Keep()
    raise UnknownNameError("behaviour", kind, ["random-walk", "keep"])
