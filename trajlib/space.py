"""Hyperparameter space, action space and base schedules: the vocabulary every stage shares.

An *action* moves one or more hyperparameters by a step in their **scale space** (log for the LR,
logit for momentum, ...). For a log-scale hyperparameter a move of ``log(2)`` is "multiply by 2", so
actions are relative and transfer across tasks; absolute values do not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trajlib.errors import ConfigError

__all__ = [
    "HyperParam",
    "HyperparameterSpace",
    "Action",
    "ActionSpace",
    "BASE_SCHEDULES",
    "base_factor",
    "default_space",
    "lr_action_space",
    "DEFAULT_LR_MULTIPLIERS",
]

SCALES = ("log", "linear", "logit")
# The default LR action grid: x{0.5, 0.7, 1, 1.4, 2} (about +-sqrt(2) steps around keep).
DEFAULT_LR_MULTIPLIERS: tuple[float, ...] = (0.5, 0.7, 1.0, 1.4, 2.0)


@dataclass(frozen=True)
class HyperParam:
    """One controlled hyperparameter with bounds and the scale actions move it on.

    ``low``/``high`` are inclusive bounds in natural units. ``scale`` is ``log`` (needs low > 0),
    ``linear`` or ``logit`` (needs 0 < low <= high < 1).
    """

    name: str
    low: float
    high: float
    scale: str = "log"

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ConfigError(f"{self.name}.scale", f"one of {SCALES}", self.scale)
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise ConfigError(f"{self.name}.bounds", "finite low <= high", (self.low, self.high))
        if self.scale == "log" and self.low <= 0:
            raise ConfigError(f"{self.name}.low", "> 0 for a log-scale hyperparameter", self.low)
        if self.scale == "logit" and not (0 < self.low and self.high < 1):
            raise ConfigError(
                f"{self.name}.bounds",
                "inside (0, 1) for a logit-scale hyperparameter",
                (self.low, self.high),
            )

    def to_scale(self, value: float) -> float:
        """Natural units -> scale space."""
        if self.scale == "log":
            return math.log(value)
        if self.scale == "logit":
            return math.log(value / (1.0 - value))
        return float(value)

    def from_scale(self, z: float) -> float:
        """Scale space -> natural units."""
        if self.scale == "log":
            return math.exp(z)
        if self.scale == "logit":
            return 1.0 / (1.0 + math.exp(-z))
        return float(z)

    def clamp(self, value: float) -> float:
        """Clamp into ``[low, high]``; a non-finite value becomes the nearest bound of the scale's middle."""
        if not math.isfinite(value):
            return self.low if value == -math.inf else self.high if value == math.inf else self.low
        return min(max(value, self.low), self.high)

    def move(self, value: float, delta: float) -> float:
        """Apply a scale-space step and clamp to the bounds."""
        return self.clamp(self.from_scale(self.to_scale(self.clamp(value)) + delta))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "low": self.low, "high": self.high, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HyperParam:
        return cls(str(d["name"]), float(d["low"]), float(d["high"]), str(d.get("scale", "log")))


@dataclass(frozen=True)
class HyperparameterSpace:
    """An ordered set of controlled hyperparameters (``lr`` first)."""

    params: tuple[HyperParam, ...]

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ConfigError("hyperparameters", "unique names", names)

    def __getitem__(self, name: str) -> HyperParam:
        for p in self.params:
            if p.name == name:
                return p
        raise ConfigError("hyperparameter", f"one of {self.names}", name)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.params)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def clamp(self, values: Mapping[str, float]) -> dict[str, float]:
        return {k: (self[k].clamp(v) if k in self else v) for k, v in values.items()}

    def to_dict(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.params]

    @classmethod
    def from_dict(cls, items: Iterable[Mapping[str, Any]]) -> HyperparameterSpace:
        return cls(tuple(HyperParam.from_dict(d) for d in items))


@dataclass(frozen=True)
class Action:
    """A move: hyperparameter name -> step in its scale space. ``{}`` means keep."""

    moves: Mapping[str, float] = field(default_factory=dict)
    label: str = ""

    def apply(self, values: Mapping[str, float], space: HyperparameterSpace) -> dict[str, float]:
        out = dict(values)
        for name, delta in self.moves.items():
            out[name] = space[name].move(out[name], delta)
        return out

    def lr_factor(self) -> float:
        """Multiplicative LR factor of this action (1.0 when it does not move the LR)."""
        return math.exp(self.moves.get("lr", 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {"moves": dict(self.moves), "label": self.label}


@dataclass(frozen=True)
class ActionSpace:
    """The discrete actions a controller may take at a decision point."""

    actions: tuple[Action, ...]

    def __post_init__(self) -> None:
        if not self.actions:
            raise ConfigError("actions", "at least one action", [])

    def __len__(self) -> int:
        return len(self.actions)

    def __getitem__(self, i: int) -> Action:
        return self.actions[i]

    @property
    def labels(self) -> list[str]:
        return [a.label for a in self.actions]

    @property
    def keep_index(self) -> int:
        """Index of the action that moves nothing (or the smallest move)."""
        sizes = [sum(abs(v) for v in a.moves.values()) for a in self.actions]
        return int(min(range(len(sizes)), key=sizes.__getitem__))

    @property
    def hyperparameters(self) -> list[str]:
        names: list[str] = []
        for a in self.actions:
            for k in a.moves:
                if k not in names:
                    names.append(k)
        return names

    def to_dict(self) -> list[dict[str, Any]]:
        return [a.to_dict() for a in self.actions]

    @classmethod
    def from_dict(cls, items: Iterable[Mapping[str, Any]]) -> ActionSpace:
        return cls(
            tuple(
                Action({k: float(v) for k, v in d["moves"].items()}, d.get("label", ""))
                for d in items
            )
        )


def lr_action_space(multipliers: Sequence[float] = DEFAULT_LR_MULTIPLIERS) -> ActionSpace:
    """Multiplicative LR actions, e.g. x{0.5, 0.7, 1, 1.4, 2}."""
    bad = [
        m for m in multipliers if not (isinstance(m, int | float) and m > 0 and math.isfinite(m))
    ]
    if bad or not multipliers:
        raise ConfigError(
            "actions.lr", "a non-empty list of positive finite multipliers", list(multipliers)
        )
    return ActionSpace(
        tuple(Action({"lr": math.log(m)} if m != 1.0 else {}, f"lr x{m:g}") for m in multipliers)
    )


def default_space(lr: float, lr_range: float = 1e4) -> HyperparameterSpace:
    """An LR-only space around ``lr``: bounds ``lr / lr_range`` .. ``lr * 100`` on a log scale."""
    return HyperparameterSpace((HyperParam("lr", lr / lr_range, lr * 100.0, "log"),))


# ------------------------------------------------------------------------------- base schedules
BASE_SCHEDULES = ("constant", "cosine", "wsd")


def base_factor(kind: str, progress: float, *, warmup: float = 0.0, decay: float = 0.2) -> float:
    """Factor in [0, 1] of a base schedule at ``progress`` = step / budget.

    * ``constant``: 1.
    * ``cosine``: half-cosine from 1 to 0 over the budget (after an optional linear warm-up).
    * ``wsd``: warm-up, stable at 1, then linear decay to 0 over the last ``decay`` fraction.
    The residual mode of acting is ``lr(t) = base_lr * base_factor(t) * m(t)``.
    """
    p = min(max(progress, 0.0), 1.0)
    if warmup > 0 and p < warmup:
        return (p + 1e-12) / warmup
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        q = (p - warmup) / max(1.0 - warmup, 1e-12)
        return 0.5 * (1.0 + math.cos(math.pi * q))
    if kind == "wsd":
        start = 1.0 - decay
        return 1.0 if p < start else max(0.0, (1.0 - p) / max(decay, 1e-12))
    raise ConfigError("base_schedule", f"one of {BASE_SCHEDULES}", kind)
