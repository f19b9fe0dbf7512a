"""The decision contract: what a controller decides over (:class:`DecisionSpec`) and what one
collected run is (:class:`RunConfig`), each a frozen, typed object passed from recipe to runner to
checkpoint to scheduler. Defaults are written here, once.

It sits at the far left of the stages (imports only :mod:`trajlib.space`, :mod:`trajlib.schema`
and :mod:`trajlib.errors`), so every stage can use it.

``to_dict`` / ``from_dict`` give the JSON forms stored in a run's ``entry`` column and in a
checkpoint's ``manifest.json``. A run's id is ``<task>-<index:04d>-<sha256 of RunConfig.to_dict()
as sorted JSON, first 10 hex digits>``; every field of the id is listed in ``to_dict``. A task name
with characters a file name cannot hold (a user task ``mypkg.tasks:make_task``) enters the id
readable, each such character as ``-`` (``mypkg.tasks-make_task-0000-...``); the hash still covers
the exact name, and the names of built-in tasks are their own id prefix, unchanged. Fields
added after the first format (``layer_lr_walk``) are written only when set away from their
default, so the ids of runs collected before they existed stay as they were.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from trajlib.errors import ConfigError
from trajlib.space import (
    BASE_SCHEDULES,
    DEFAULT_LR_MULTIPLIERS,
    ActionSpace,
    HyperParam,
    HyperparameterSpace,
    lr_action_space,
)

__all__ = [
    "DEFAULT_EPSILON",
    "DEFAULT_EVERY",
    "DEFAULT_LR_MULTIPLIERS",
    "DEFAULT_P_MOVE",
    "MODES",
    "BehaviourConfig",
    "BranchConfig",
    "DecisionSpec",
    "FeatureSetRef",
    "RunConfig",
    "SpaceConfig",
    "StartValues",
    "task_id_part",
]

MODES = ("free", "residual")
DEFAULT_EVERY = 50  # steps between decision points
DEFAULT_P_MOVE = 0.6  # random-walk behaviour: probability of moving at a decision point
DEFAULT_EPSILON = 0.1  # controller behaviour: exploration around the controller's choice
# Run ids are file names in a store: [A-Za-z0-9_.=+-], starting with a letter or digit, <= 200.
_NOT_IN_ID = re.compile(r"[^A-Za-z0-9_.=+-]")
_TASK_IN_ID_MAX = 160  # characters of the task name kept in an id (room for "-0000-<10 hex>")


def task_id_part(task: str) -> str:
    """The task name as it appears in run ids: characters a store's file names cannot hold
    become ``-`` (``mypkg.tasks:make_task`` -> ``mypkg.tasks-make_task``), a leading character
    that is not a letter or digit gets a ``t`` before it, and it is cut to 160 characters. A
    built-in task's name is returned as it is."""
    part = _NOT_IN_ID.sub("-", task)[:_TASK_IN_ID_MAX]
    if not part[:1].isascii() or not part[:1].isalnum():
        part = "t" + part[: _TASK_IN_ID_MAX - 1]
    return part


def _positive_int(where: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(where, "a positive integer", v)
    return v


# ----------------------------------------------------------------------------------- decisions
@dataclass(frozen=True, kw_only=True)
class FeatureSetRef:
    """The feature set a controller was fitted on: name, version, content hash, column order."""

    name: str
    version: str
    hash: str
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not (isinstance(self.hash, str) and self.hash):
            raise ConfigError("feature_set_hash", "a non-empty hex string", self.hash)
        names = tuple(str(n) for n in self.names)
        if len(set(names)) != len(names):
            raise ConfigError("feature_names", "unique names", list(names))
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "version", str(self.version))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "hash": self.hash,
            "names": list(self.names),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSetRef:
        return cls(
            name=str(d.get("name", "")),
            version=str(d.get("version", "")),
            hash=str(d["hash"]),
            names=tuple(str(n) for n in d["names"]),
        )


@dataclass(frozen=True, kw_only=True)
class DecisionSpec:
    """What a controller decides over, and how often.

    ``action_space``: the moves at a decision point; ``hp_space``: bounds and scales of the
    hyperparameters they move (every hyperparameter an action moves has bounds here); ``every``:
    steps between decision points; ``mode``: ``free`` (the controller's multiplier is the LR
    factor) or ``residual`` (it multiplies ``base_schedule``); ``feature_set``: what the
    controller reads (``None`` before a controller is fitted, e.g. in a collected run).
    """

    action_space: ActionSpace = field(default_factory=lr_action_space)
    hp_space: HyperparameterSpace
    every: int = DEFAULT_EVERY
    mode: str = "free"
    base_schedule: str = "constant"
    feature_set: FeatureSetRef | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.action_space, ActionSpace):
            raise ConfigError("action_space", "an ActionSpace", type(self.action_space).__name__)
        if not isinstance(self.hp_space, HyperparameterSpace):
            raise ConfigError("hp_space", "a HyperparameterSpace", type(self.hp_space).__name__)
        unknown = [h for h in self.action_space.hyperparameters if h not in self.hp_space]
        if unknown:
            raise ConfigError(
                "hp_space",
                f"bounds for every hyperparameter the actions move {unknown}",
                self.hp_space.names,
            )
        _positive_int("every", self.every)
        if self.mode not in MODES:
            raise ConfigError("mode", f"one of {MODES}", self.mode)
        if self.base_schedule not in BASE_SCHEDULES:
            raise ConfigError("base_schedule", f"one of {BASE_SCHEDULES}", self.base_schedule)
        if self.feature_set is not None and not isinstance(self.feature_set, FeatureSetRef):
            raise ConfigError("feature_set", "a FeatureSetRef or None", self.feature_set)

    def with_feature_set(self, feature_set: FeatureSetRef) -> DecisionSpec:
        """This spec, for a controller that reads ``feature_set``."""
        return replace(self, feature_set=feature_set)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the decision fields of a checkpoint's ``manifest.json``)."""
        d: dict[str, Any] = {}
        if self.feature_set is not None:
            d["feature_set"] = self.feature_set.to_dict()
        d["action_space"] = self.action_space.to_dict()
        d["hp_space"] = self.hp_space.to_dict()
        d["mode"] = self.mode
        d["base_schedule"] = self.base_schedule
        d["every"] = self.every
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DecisionSpec:
        """Inverse of :meth:`to_dict`; other keys (of a manifest) are ignored."""
        fs = d.get("feature_set")
        return cls(
            action_space=ActionSpace.from_dict(d["action_space"]),
            hp_space=HyperparameterSpace.from_dict(d["hp_space"]),
            every=d["every"],
            feature_set=None if fs is None else FeatureSetRef.from_dict(fs),
            **{k: d[k] for k in ("mode", "base_schedule") if k in d},
        )


# ------------------------------------------------------------------------------------------ runs
L2_BOUNDS = (1e-8, 1.0)  # log scale
INPUT_NOISE_BOUNDS = (0.0, 2.0)  # linear scale, in units of the (standardised) input


@dataclass(frozen=True, kw_only=True)
class SpaceConfig:
    """A recipe's ``[space]``: start-value ranges and bounds of each hyperparameter.

    ``*_range`` are log-uniform factors around a centre (1 = no randomization; the start LRs'
    centre is the task's default or best LR times ``lr_shift``); ``lr_min`` /
    ``lr_max`` are multipliers of each run's start LR; ``layer_lr_walk`` is the log-space std of
    each per-layer LR multiplier's step per decision (0 = fixed for the run).
    """

    lr_center: str = "default"  # start LRs are drawn around the task's default_lr or best_lr
    lr_shift: float = 1.0  # ... times this factor (> 1: more runs start above the centre)
    lr_range: float = 30.0
    lr_min: float = 1e-3
    lr_max: float = 1e2
    mode: str = "free"
    base_schedule: str = "constant"
    momentum_range: float = 1.0
    momentum_min: float = 0.5
    momentum_max: float = 0.999
    weight_decay_range: float = 1.0
    weight_decay_min: float = 1e-6
    weight_decay_max: float = 0.3
    l2: float = 0.0
    l2_range: float = 1.0
    input_noise: float = 0.0
    input_noise_range: float = 1.0
    layer_lr_range: float = 1.0
    layer_lr_min: float = 0.1
    layer_lr_max: float = 10.0
    layer_lr_walk: float = 0.0

    @property
    def hp_space(self) -> HyperparameterSpace:
        """Bounds and scales. ``lr`` bounds are multipliers of each run's start LR;
        ``layer_lr`` bounds hold for every layer's LR multiplier."""
        return HyperparameterSpace(
            (
                HyperParam("lr", self.lr_min, self.lr_max, "log"),
                HyperParam("momentum", self.momentum_min, self.momentum_max, "logit"),
                HyperParam("weight_decay", self.weight_decay_min, self.weight_decay_max, "log"),
                HyperParam("l2", *L2_BOUNDS, "log"),
                HyperParam("input_noise", *INPUT_NOISE_BOUNDS, "linear"),
                HyperParam("layer_lr", self.layer_lr_min, self.layer_lr_max, "log"),
            )
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "lr_center": self.lr_center,
            "lr_range": self.lr_range,
            "lr_min": self.lr_min,
            "lr_max": self.lr_max,
            "mode": self.mode,
            "base_schedule": self.base_schedule,
            "momentum_range": self.momentum_range,
            "momentum_min": self.momentum_min,
            "momentum_max": self.momentum_max,
            "weight_decay_range": self.weight_decay_range,
            "weight_decay_min": self.weight_decay_min,
            "weight_decay_max": self.weight_decay_max,
            "l2": self.l2,
            "l2_range": self.l2_range,
            "input_noise": self.input_noise,
            "input_noise_range": self.input_noise_range,
            "layer_lr_range": self.layer_lr_range,
            "layer_lr_min": self.layer_lr_min,
            "layer_lr_max": self.layer_lr_max,
        }
        if self.layer_lr_walk:  # added after format 1: written only when set
            d["layer_lr_walk"] = self.layer_lr_walk
        if self.lr_shift != 1.0:  # added after format 1: written only when set
            d["lr_shift"] = self.lr_shift
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpaceConfig:
        return cls(**{k: d[k] for k in _field_names(cls) if k in d})


@dataclass(frozen=True, kw_only=True)
class StartValues:
    """A run's start hyperparameters besides the LR (the entry's ``hp0``).

    ``momentum`` / ``weight_decay`` ``None``: the task's own. Per-layer LR multipliers are drawn
    log-uniform in ``[1/layer_lr_range, layer_lr_range]`` from ``layer_lr_seed``, and walk with
    std ``layer_lr_walk`` per decision.
    """

    momentum: float | None = None
    weight_decay: float | None = None
    l2: float = 0.0
    input_noise: float = 0.0
    layer_lr_range: float = 1.0
    layer_lr_seed: int = 0
    layer_lr_walk: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "l2": self.l2,
            "input_noise": self.input_noise,
            "layer_lr_range": self.layer_lr_range,
            "layer_lr_seed": self.layer_lr_seed,
        }
        if self.layer_lr_walk > 0:  # added after format 1: written only when set
            d["layer_lr_walk"] = self.layer_lr_walk
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StartValues:
        return cls(**{k: d[k] for k in _field_names(cls) if k in d})


@dataclass(frozen=True, kw_only=True)
class BehaviourConfig:
    """How a run's hyperparameters move at decision points (the behaviour policy).

    ``kind``: a registered behaviour; ``p_move``: random-walk probability of moving; ``epsilon``:
    exploration around an injected controller; ``checkpoint``: that controller's folder;
    ``params``: the behaviour's drawn parameters; ``seed``: its choices use
    ``numpy.random.default_rng([seed, 7])``.
    """

    kind: str = "random-walk"
    p_move: float = DEFAULT_P_MOVE
    epsilon: float = DEFAULT_EPSILON
    checkpoint: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "p_move": self.p_move,
            "epsilon": self.epsilon,
            "checkpoint": self.checkpoint,
            "params": dict(self.params),
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BehaviourConfig:
        kw = {k: d[k] for k in _field_names(cls) if k in d and d[k] is not None}
        return cls(**kw)


@dataclass(frozen=True, kw_only=True)
class BranchConfig:
    """Branching at decision points: try every action for ``horizon`` steps on the same batches,
    then cool down linearly to LR 0 over ``cooldown`` steps. ``stride`` k > 1 branches every
    k-th decision point only (the 1st, k+1-th, ...; the others are decided without branches), a
    branch budget for large collections."""

    enabled: bool = True
    horizon: int = 50
    cooldown: int = 10
    stride: int = 1

    def branches_at(self, decision_number: int) -> bool:
        """Whether decision point number ``decision_number`` (0-based) is branched."""
        return self.enabled and decision_number % self.stride == 0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "enabled": self.enabled,
            "horizon": self.horizon,
            "cooldown": self.cooldown,
        }
        if self.stride != 1:  # written only when set, so older run ids stay the same
            d["stride"] = self.stride
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BranchConfig:
        return cls(**{k: d[k] for k in _field_names(cls) if k in d})


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(cls.__dataclass_fields__)  # type: ignore[attr-defined]


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One collected run: the task, seeds, start values, behaviour and decision settings.

    ``decision`` holds the action space, hyperparameter bounds, decision interval, mode and base
    schedule (its ``mode`` / ``base_schedule`` are ``space``'s); ``lr_actions`` the recipe's LR
    multipliers; ``space`` the recipe's start-value ranges and bounds. ``run_id`` is derived from
    :meth:`to_dict` (see the module docstring).
    """

    recipe: str
    task: str
    index: int
    seed: int
    lr0: float
    start: StartValues
    budget: int
    val_every: int
    decision: DecisionSpec
    lr_actions: tuple[float, ...] = DEFAULT_LR_MULTIPLIERS
    space: SpaceConfig = field(default_factory=SpaceConfig)
    behaviour: BehaviourConfig = field(default_factory=BehaviourConfig)
    branch: BranchConfig = field(default_factory=BranchConfig)

    def __post_init__(self) -> None:
        _positive_int("budget", self.budget)
        _positive_int("val_every", self.val_every)
        if not (math.isfinite(self.lr0) and self.lr0 > 0):
            raise ConfigError("lr0", "a positive finite learning rate", self.lr0)
        d, sp = self.decision, self.space
        if (d.mode, d.base_schedule) != (sp.mode, sp.base_schedule):
            raise ConfigError(
                "decision",
                f"mode and base_schedule of the space ({sp.mode!r}, {sp.base_schedule!r})",
                (d.mode, d.base_schedule),
            )

    @property
    def every(self) -> int:
        return self.decision.every

    @functools.cached_property
    def run_id(self) -> str:
        """``<task>-<index:04d>-<10 hex digits of sha256 of to_dict()>``; deterministic. The task
        part is :func:`task_id_part` of the task name (built-in names unchanged)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        return f"{task_id_part(self.task)}-{self.index:04d}-{digest}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in the run's ``entry`` column; every key enters the run id."""
        return {
            "recipe": self.recipe,
            "task": self.task,
            "index": self.index,
            "seed": self.seed,
            "lr0": self.lr0,
            "hp0": self.start.to_dict(),
            "budget": self.budget,
            "every": self.decision.every,
            "val_every": self.val_every,
            "behaviour": self.behaviour.to_dict(),
            "space": self.space.to_dict(),
            "hp_space": self.decision.hp_space.to_dict(),
            "actions": list(self.lr_actions),
            "action_space": self.decision.action_space.to_dict(),
            "branch": self.branch.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`. Reads entries of older collections too (no ``hp0``,
        ``hp_space`` or ``action_space``: the task's start values, LR-only bounds from
        ``space.lr_min`` / ``lr_max``, LR actions from ``actions``); keys the runner adds after
        the run (``layer_lr``, ``layer_lr_path``) are ignored."""
        space = SpaceConfig.from_dict(d.get("space", {}))
        lr_actions = tuple(float(m) for m in d.get("actions", DEFAULT_LR_MULTIPLIERS))
        if "action_space" in d:
            action_space = ActionSpace.from_dict(d["action_space"])
        else:
            action_space = lr_action_space(lr_actions)
        if "hp_space" in d:
            hp_space = HyperparameterSpace.from_dict(d["hp_space"])
        else:
            hp_space = HyperparameterSpace((HyperParam("lr", space.lr_min, space.lr_max, "log"),))
        decision = DecisionSpec(
            action_space=action_space,
            hp_space=hp_space,
            every=d["every"],
            mode=space.mode,
            base_schedule=space.base_schedule,
        )
        return cls(
            recipe=str(d.get("recipe", "")),
            task=str(d["task"]),
            index=int(d.get("index", 0)),
            seed=int(d["seed"]),
            lr0=float(d["lr0"]),
            start=StartValues.from_dict(d.get("hp0", {})),
            budget=d["budget"],
            val_every=d["val_every"],
            decision=decision,
            lr_actions=lr_actions,
            space=space,
            behaviour=BehaviourConfig.from_dict(d.get("behaviour", {})),
            branch=BranchConfig.from_dict(d.get("branch", {})),
        )
