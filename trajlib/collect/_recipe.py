"""Collection recipes (``collectors/*.toml``): parsed and validated before anything runs.

Every key is checked: an unknown key, a value of the wrong type or out of range, or an unknown task
is a :class:`~trajlib.errors.ConfigError` naming the key (``section.key``), what was expected and
what was found. Types and unknown keys are checked by pydantic (strict mode, against each section's
dataclass); ranges and cross-field rules by the checks below. A recipe expands into
:class:`~trajlib.spec.RunConfig` objects, one per run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydantic

from trajlib.collect._behaviour import BEHAVIOURS, draw_params
from trajlib.errors import ConfigError, TrajlibError
from trajlib.space import BASE_SCHEDULES, Action, ActionSpace, HyperparameterSpace
from trajlib.spec import (
    DEFAULT_EPSILON,
    DEFAULT_EVERY,
    DEFAULT_LR_MULTIPLIERS,
    DEFAULT_P_MOVE,
    INPUT_NOISE_BOUNDS,
    L2_BOUNDS,
    MODES,
    BehaviourConfig,
    BranchConfig,
    DecisionSpec,
    RunConfig,
    SpaceConfig,
    StartValues,
)
from trajlib.tasks import get_task

__all__ = ["Recipe", "load_recipe", "parse_recipe", "build_action_space", "BEHAVIOURS"]

EXECUTORS = ("local", "ray")
LR_CENTERS = ("default", "best")
ACTION_COMBINE = ("union", "product")
# Weight decay a task with weight_decay = 0 is randomized around (when weight_decay_range > 1).
TYPICAL_WEIGHT_DECAY = {
    "sgd": 5e-4,
    "nesterov": 5e-4,
    "adam": 1e-4,
    "adamw": 1e-2,
    "rmsprop": 1e-4,
    "adagrad": 1e-4,
    "nadam": 1e-4,
}


@dataclass(frozen=True)
class CollectSection:
    tasks: tuple[str, ...] = ()
    runs_per_task: int = 4
    seed: int = 0
    budget: int | None = None  # None: each task's own budget
    every: int = DEFAULT_EVERY
    val_every: int | None = None  # None: each task's own
    population: int = 1
    device: str = "cpu"
    divergence_factor: float = 1e3
    # generated tasks (trajlib.tasks._generated): ``generated`` tasks gen-<start>, gen-<start+1>...
    # whose family is in ``generated_families`` (all when empty), appended to ``tasks``;
    # ``generated_version`` 2 gives gen2-<i> (a wider choice of optimizers), 3 gen3-<i> (version 2
    # with budgets up to 5,000 steps; see trajlib.tasks)
    generated: int = 0
    generated_start: int = 0
    generated_families: tuple[str, ...] = ()
    generated_version: int = 1
    # with ``space.lr_center = "best"``: a CSV (``trajlib store best-lr``) of each task's measured
    # best start LR, the centre for tasks without a ``best_lr`` of their own (generated tasks)
    best_lr_table: str = ""

    @property
    def task_names(self) -> tuple[str, ...]:
        """``tasks`` followed by the generated tasks' names."""
        if not self.generated:
            return self.tasks
        from trajlib.tasks._generated import generated_tasks

        fams = self.generated_families or None
        gen = generated_tasks(self.generated, self.generated_start, fams, self.generated_version)
        return self.tasks + tuple(t.name for t in gen)


@dataclass(frozen=True)
class ActionsSection:
    """``lr``: LR multipliers; ``momentum``: logit-space deltas; ``weight_decay``: multipliers;
    ``combine``: ``union`` or ``product``."""

    lr: tuple[float, ...] = DEFAULT_LR_MULTIPLIERS
    momentum: tuple[float, ...] = ()
    weight_decay: tuple[float, ...] = ()
    combine: str = "union"


@dataclass(frozen=True)
class BehaviourSection:
    kind: str | tuple[str, ...] = "random-walk"
    p_move: float = DEFAULT_P_MOVE
    epsilon: float = DEFAULT_EPSILON
    checkpoint: str = ""

    @property
    def kinds(self) -> tuple[str, ...]:
        return (self.kind,) if isinstance(self.kind, str) else tuple(self.kind)


@dataclass(frozen=True)
class ExecutorSection:
    kind: str = "local"
    workers: int = 2
    address: str | None = None


@dataclass(frozen=True)
class Recipe:
    """A validated recipe.

    ``actions`` are LR multipliers, ``momentum_actions`` logit-space deltas of the momentum (or
    Adam's beta1; +0.7 is about halving 1 - m near m = 0.9), ``weight_decay_actions`` multipliers
    of the weight decay; ``action_combine`` = ``union`` (one hyperparameter moves per action, one
    shared keep) or ``product`` (every combination).
    """

    name: str
    collect: CollectSection
    space: SpaceConfig = field(default_factory=SpaceConfig)
    actions: tuple[float, ...] = DEFAULT_LR_MULTIPLIERS
    behaviour: BehaviourSection = field(default_factory=BehaviourSection)
    branch: BranchConfig = field(default_factory=BranchConfig)
    executor: ExecutorSection = field(default_factory=ExecutorSection)
    description: str = ""
    source: str = ""
    momentum_actions: tuple[float, ...] = ()
    weight_decay_actions: tuple[float, ...] = ()
    action_combine: str = "union"

    @property
    def action_space(self) -> ActionSpace:
        return build_action_space(
            self.actions, self.momentum_actions, self.weight_decay_actions, self.action_combine
        )

    @property
    def hp_space(self) -> HyperparameterSpace:
        """Bounds and scales (see :attr:`SpaceConfig.hp_space`)."""
        return self.space.hp_space

    @property
    def decision_spec(self) -> DecisionSpec:
        """The decision settings every run of this recipe shares (no feature set yet)."""
        return DecisionSpec(
            action_space=self.action_space,
            hp_space=self.hp_space,
            every=self.collect.every,
            mode=self.space.mode,
            base_schedule=self.space.base_schedule,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return d

    def run_configs(self) -> list[RunConfig]:
        """Every run this recipe asks for, with deterministic ids and start values."""
        decision = self.decision_spec
        kinds = self.behaviour.kinds
        out = []
        for task_name in self.collect.task_names:
            task = get_task(task_name)
            for i in range(self.collect.runs_per_task):
                seed = self.collect.seed * 100_003 + i
                h = hashlib.sha256(f"{self.collect.seed}/{task_name}/{i}".encode()).digest()
                rng = np.random.default_rng(int.from_bytes(h[:8], "big"))
                kind = kinds[i % len(kinds)]
                # the draws happen in this order (lr0, hp0, behaviour params): keep it
                lr0 = self._start_lr(task, rng)
                start = self._start_values(task, decision.hp_space, rng)
                behaviour = BehaviourConfig(
                    kind=kind,
                    p_move=self.behaviour.p_move,
                    epsilon=self.behaviour.epsilon,
                    checkpoint=self.behaviour.checkpoint,
                    params=draw_params(kind, rng),
                    seed=seed,
                )
                out.append(
                    RunConfig(
                        recipe=self.name,
                        task=task_name,
                        index=i,
                        seed=seed,
                        lr0=lr0,
                        start=start,
                        budget=self.collect.budget or task.budget,
                        val_every=self.collect.val_every or task.val_every,
                        decision=decision,
                        lr_actions=self.actions,
                        space=self.space,
                        behaviour=behaviour,
                        branch=self.branch,
                    )
                )
        return out

    @functools.cached_property
    def _best_lrs(self) -> dict[str, float]:
        from trajlib.collect._best_lr import read_best_lr_table

        path = self.collect.best_lr_table
        return read_best_lr_table(path) if path else {}

    def _start_lr(self, task: Any, rng: np.random.Generator) -> float:
        center = task.default_lr
        if self.space.lr_center == "best":
            if task.best_lr is not None:
                center = task.best_lr
            elif self.collect.best_lr_table:
                if task.name not in self._best_lrs:
                    raise ConfigError(
                        "collect.best_lr_table",
                        "a best_lr for every task of the recipe",
                        task.name,
                        f"missing from {self.collect.best_lr_table}",
                    )
                center = self._best_lrs[task.name]
        r = math.log(self.space.lr_range)
        return float(center * self.space.lr_shift * math.exp(rng.uniform(-r, r)))

    def _start_values(
        self, task: Any, space: HyperparameterSpace, rng: np.random.Generator
    ) -> StartValues:
        sp = self.space

        def logu(center: float, r: float) -> float:
            return float(center * math.exp(rng.uniform(-math.log(r), math.log(r))))

        mom = task.momentum
        if sp.momentum_range > 1:
            mom = space["momentum"].clamp(1.0 - logu(1.0 - task.momentum, sp.momentum_range))
        wd = task.weight_decay
        if sp.weight_decay_range > 1:
            center = wd if wd > 0 else TYPICAL_WEIGHT_DECAY[task.optimizer]
            wd = space["weight_decay"].clamp(logu(center, sp.weight_decay_range))
        l2 = space["l2"].clamp(logu(sp.l2, sp.l2_range)) if sp.l2 > 0 else 0.0
        noise = (
            space["input_noise"].clamp(logu(sp.input_noise, sp.input_noise_range))
            if sp.input_noise > 0
            else 0.0
        )
        return StartValues(
            momentum=float(mom),
            weight_decay=float(wd),
            l2=float(l2),
            input_noise=float(noise),
            layer_lr_range=sp.layer_lr_range,
            layer_lr_seed=int(rng.integers(2**31)),
            layer_lr_walk=sp.layer_lr_walk,
        )


def build_action_space(
    lr: tuple[float, ...],
    momentum: tuple[float, ...] = (),
    weight_decay: tuple[float, ...] = (),
    combine: str = "union",
) -> ActionSpace:
    """The action space of a recipe: LR multipliers, momentum logit deltas, WD multipliers."""
    lr_moves = [({"lr": math.log(m)} if m != 1 else {}, f"lr x{m:g}") for m in lr]
    mom_moves = [({"momentum": d} if d != 0 else {}, f"mom {d:+g}") for d in momentum]
    wd_moves = [
        ({"weight_decay": math.log(m)} if m != 1 else {}, f"wd x{m:g}") for m in weight_decay
    ]
    if combine == "product":
        combos: list[tuple[dict[str, float], str]] = [({}, "")]
        for group in (lr_moves, mom_moves, wd_moves):
            if group:
                combos = [({**a, **b}, f"{la} {lb}".strip()) for a, la in combos for b, lb in group]
        return ActionSpace(tuple(Action(m, label) for m, label in combos))
    acts = [Action(m, label) for m, label in lr_moves]
    acts += [Action(m, label) for m, label in mom_moves + wd_moves if m]
    return ActionSpace(tuple(acts))


_SECTIONS: dict[str, type] = {
    "collect": CollectSection,
    "space": SpaceConfig,
    "actions": ActionsSection,
    "behaviour": BehaviourSection,
    "branch": BranchConfig,
    "executor": ExecutorSection,
}
_TOP = {"name", "description", *_SECTIONS}


@functools.cache
def _validator(cls: type) -> type[pydantic.BaseModel]:
    """A strict pydantic model with ``cls``'s fields, annotations and defaults (no unknown keys;
    no bool for a number, no number for a string; ints are accepted for floats)."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            fields[f.name] = (hints[f.name], f.default)
        elif f.default_factory is not dataclasses.MISSING:
            fields[f.name] = (hints[f.name], f.default_factory())
        else:
            fields[f.name] = (hints[f.name], ...)
    config = pydantic.ConfigDict(extra="forbid", strict=True)
    model: type[pydantic.BaseModel] = pydantic.create_model(
        cls.__name__, __config__=config, **fields
    )
    return model


def _describe(tp: Any) -> str:
    """What a value of annotation ``tp`` is, in words ("an integer", "a list of strings")."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if typing.get_origin(tp) is tuple:
        return {str: "a list of strings", float: "a list of numbers"}.get(args[0], "a list")
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return words.get(tp, getattr(tp, "__name__", str(tp)))


def _section(name: str, raw: Any) -> Any:
    """Validate the table ``[name]`` into its section dataclass; a ConfigError names the key."""
    cls = _SECTIONS[name]
    if not isinstance(raw, dict):
        raise ConfigError(name, "a table", raw)
    try:
        model = _validator(cls).model_validate_json(json.dumps(raw))
    except (TypeError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        errors = e.errors() if isinstance(e, pydantic.ValidationError) else []
        if not errors:
            raise ConfigError(name, "a table of TOML values", raw, str(e)) from None
        first = min(errors, key=lambda er: er["type"] != "extra_forbidden")
        key = str(first["loc"][0])
        if first["type"] == "extra_forbidden":
            keys = sorted(f.name for f in dataclasses.fields(cls))
            raise ConfigError(
                f"{name}.{key}", f"one of the keys {keys}", key, "unknown key"
            ) from None
        if first["type"] == "missing":
            raise ConfigError(f"{name}.{key}", "present", None, first["msg"]) from None
        expected = _describe(typing.get_type_hints(cls)[key])
        raise ConfigError(f"{name}.{key}", expected, raw.get(key)) from None
    return cls(**{k: getattr(model, k) for k in model.model_fields_set})


def _positive(where: str, v: Any) -> None:
    if not (isinstance(v, int) and v > 0):
        raise ConfigError(where, "a positive integer", v)


def parse_recipe(data: dict[str, Any], *, name: str = "recipe", source: str = "") -> Recipe:
    """Validate a recipe given as a dict (the parsed TOML)."""
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise ConfigError(
            unknown[0], f"one of the top-level keys {sorted(_TOP)}", unknown[0], "unknown key"
        )
    if "collect" not in data:
        raise ConfigError("collect", "a [collect] table", None)
    collect: CollectSection = _section("collect", data["collect"])
    _check_collect(collect)
    space: SpaceConfig = _section("space", data.get("space", {}))
    _check_space(space)
    if collect.best_lr_table:
        if space.lr_center != "best":
            raise ConfigError(
                "space.lr_center",
                "'best' when collect.best_lr_table is set (the table is the start LRs' centre)",
                space.lr_center,
            )
        from trajlib.collect._best_lr import read_best_lr_table

        read_best_lr_table(collect.best_lr_table)  # a bad table fails here, naming the key
    actions: ActionsSection = _section("actions", data.get("actions", {}))
    _check_actions(actions, set(data.get("actions", {})))
    behaviour: BehaviourSection = _section("behaviour", data.get("behaviour", {}))
    _check_behaviour(behaviour)
    branch: BranchConfig = _section("branch", data.get("branch", {}))
    _positive("branch.horizon", branch.horizon)
    if not (isinstance(branch.cooldown, int) and branch.cooldown >= 0):
        raise ConfigError("branch.cooldown", "an integer >= 0", branch.cooldown)
    _positive("branch.stride", branch.stride)
    executor: ExecutorSection = _section("executor", data.get("executor", {}))
    if executor.kind not in EXECUTORS:
        raise ConfigError("executor.kind", f"one of {EXECUTORS}", executor.kind)
    _positive("executor.workers", executor.workers)
    rname = data.get("name", name)
    if not isinstance(rname, str) or not rname:
        raise ConfigError("name", "a non-empty string", rname)
    return Recipe(
        name=rname,
        collect=collect,
        space=space,
        actions=actions.lr,
        momentum_actions=actions.momentum,
        weight_decay_actions=actions.weight_decay,
        action_combine=actions.combine,
        behaviour=behaviour,
        branch=branch,
        executor=executor,
        description=str(data.get("description", "")),
        source=source,
    )


def _check_collect(collect: CollectSection) -> None:
    if not isinstance(collect.generated, int) or collect.generated < 0:
        raise ConfigError("collect.generated", "an integer >= 0", collect.generated)
    if not isinstance(collect.generated_start, int) or collect.generated_start < 0:
        raise ConfigError("collect.generated_start", "an integer >= 0", collect.generated_start)
    from trajlib.tasks._generated import GENERATED_FAMILIES, GENERATED_VERSIONS

    if collect.generated_version not in GENERATED_VERSIONS:
        raise ConfigError(
            "collect.generated_version",
            f"one of {sorted(GENERATED_VERSIONS)}",
            collect.generated_version,
        )
    for fam in collect.generated_families:
        if fam not in GENERATED_FAMILIES:
            raise ConfigError(
                "collect.generated_families", f"families among {list(GENERATED_FAMILIES)}", fam
            )
    if not collect.tasks and not collect.generated:
        raise ConfigError(
            "collect.tasks",
            "a non-empty list of task names (or collect.generated > 0)",
            list(collect.tasks),
        )
    for t in collect.tasks:
        try:
            get_task(t)
        except TrajlibError as e:
            raise ConfigError(
                "collect.tasks", "known task names or 'module:function'", t, str(e)
            ) from None
    _positive("collect.runs_per_task", collect.runs_per_task)
    _positive("collect.every", collect.every)
    _positive("collect.population", collect.population)
    if collect.budget is not None:
        _positive("collect.budget", collect.budget)
    if collect.val_every is not None:
        _positive("collect.val_every", collect.val_every)
    if collect.device not in ("cpu", "cuda") and not collect.device.startswith("cuda:"):
        raise ConfigError("collect.device", "'cpu', 'cuda' or 'cuda:N'", collect.device)
    if not collect.divergence_factor > 1:
        raise ConfigError("collect.divergence_factor", "> 1", collect.divergence_factor)


def _check_behaviour(behaviour: BehaviourSection) -> None:
    if not behaviour.kinds:
        raise ConfigError("behaviour.kind", "a string or a non-empty list of strings", [])
    for kind in behaviour.kinds:
        if kind not in BEHAVIOURS:
            raise ConfigError("behaviour.kind", f"one of {BEHAVIOURS}", kind)
    if "controller" in behaviour.kinds and not behaviour.checkpoint:
        raise ConfigError(
            "behaviour.checkpoint",
            "a controller checkpoint path when behaviour.kind includes 'controller'",
            behaviour.checkpoint,
        )
    if not 0 <= behaviour.p_move <= 1:
        raise ConfigError("behaviour.p_move", "a probability in [0, 1]", behaviour.p_move)
    if not 0 <= behaviour.epsilon <= 1:
        raise ConfigError("behaviour.epsilon", "a probability in [0, 1]", behaviour.epsilon)


def _range(where: str, v: float) -> None:
    if not (math.isfinite(v) and v >= 1):
        raise ConfigError(where, "a finite factor >= 1 (1 = no randomization)", v)


def _check_space(space: SpaceConfig) -> None:
    if space.lr_center not in LR_CENTERS:
        raise ConfigError("space.lr_center", f"one of {LR_CENTERS}", space.lr_center)
    for key in ("lr_range", "momentum_range", "weight_decay_range", "l2_range"):
        _range(f"space.{key}", getattr(space, key))
    if not (math.isfinite(space.lr_shift) and 1e-3 <= space.lr_shift <= 1e3):
        raise ConfigError(
            "space.lr_shift", "a factor in [0.001, 1000] on the start LRs' centre", space.lr_shift
        )
    _range("space.input_noise_range", space.input_noise_range)
    _range("space.layer_lr_range", space.layer_lr_range)
    if not (math.isfinite(space.layer_lr_walk) and 0 <= space.layer_lr_walk <= 2):
        raise ConfigError(
            "space.layer_lr_walk",
            "a log-space step size in [0, 2] (0 = per-layer multipliers fixed for the run)",
            space.layer_lr_walk,
        )
    if not 0 < space.lr_min <= 1 <= space.lr_max < math.inf:
        raise ConfigError(
            "space.lr_min/lr_max",
            "0 < lr_min <= 1 <= lr_max (multipliers of the start LR)",
            (space.lr_min, space.lr_max),
        )
    if not 0 < space.momentum_min <= space.momentum_max < 1:
        raise ConfigError(
            "space.momentum_min/momentum_max",
            "0 < momentum_min <= momentum_max < 1 (logit scale)",
            (space.momentum_min, space.momentum_max),
        )
    if not 0 < space.weight_decay_min <= space.weight_decay_max <= 1:
        raise ConfigError(
            "space.weight_decay_min/weight_decay_max",
            "0 < weight_decay_min <= weight_decay_max <= 1 (log scale)",
            (space.weight_decay_min, space.weight_decay_max),
        )
    if not L2_BOUNDS[0] <= space.l2 <= L2_BOUNDS[1] and space.l2 != 0:
        raise ConfigError("space.l2", f"0 (off) or in {list(L2_BOUNDS)}", space.l2)
    if not INPUT_NOISE_BOUNDS[0] <= space.input_noise <= INPUT_NOISE_BOUNDS[1]:
        raise ConfigError("space.input_noise", f"in {list(INPUT_NOISE_BOUNDS)}", space.input_noise)
    if not 0 < space.layer_lr_min <= 1 <= space.layer_lr_max < math.inf:
        raise ConfigError(
            "space.layer_lr_min/layer_lr_max",
            "0 < layer_lr_min <= 1 <= layer_lr_max",
            (space.layer_lr_min, space.layer_lr_max),
        )
    if space.mode not in MODES:
        raise ConfigError("space.mode", f"one of {MODES}", space.mode)
    if space.base_schedule not in BASE_SCHEDULES:
        raise ConfigError("space.base_schedule", f"one of {BASE_SCHEDULES}", space.base_schedule)
    if space.mode == "free" and space.base_schedule != "constant":
        raise ConfigError(
            "space.base_schedule",
            "'constant' when mode = 'free'",
            space.base_schedule,
            "use mode = 'residual' to act on top of a base schedule",
        )


def _numbers(where: str, v: tuple[float, ...], positive: bool, must_hold: float) -> None:
    if not v or not all(math.isfinite(m) and (m > 0 or not positive) for m in v):
        kind = "positive numbers" if positive else "finite numbers"
        raise ConfigError(where, f"a non-empty list of {kind}", list(v))
    if must_hold not in v:
        raise ConfigError(where, f"a list that contains {must_hold:g} (the keep action)", list(v))


def _check_actions(actions: ActionsSection, given: set[str]) -> None:
    _numbers("actions.lr", actions.lr, True, 1.0)
    if "momentum" in given:
        _numbers("actions.momentum", actions.momentum, False, 0.0)
    if "weight_decay" in given:
        _numbers("actions.weight_decay", actions.weight_decay, True, 1.0)
    if actions.combine not in ACTION_COMBINE:
        raise ConfigError("actions.combine", f"one of {ACTION_COMBINE}", actions.combine)
    n = len(actions.lr) * max(len(actions.momentum), 1) * max(len(actions.weight_decay), 1)
    if actions.combine == "product" and n > 64:
        raise ConfigError("actions", "at most 64 actions in product mode", n)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a TOML recipe."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("RECIPE", "an existing .toml file", str(p))
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("RECIPE", "valid TOML", str(p), str(e)) from None
    return parse_recipe(data, name=p.stem, source=str(p))
