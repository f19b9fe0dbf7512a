"""Collection recipes (``collectors/*.toml``): parsed and validated before anything runs.

Every key is checked: an unknown key, a value of the wrong type or out of range, or an unknown task
is a :class:`~trajlib.errors.ConfigError` naming the key (``section.key``), what was expected and
what was found.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trajlib.collect._behaviour import BEHAVIOURS, draw_params
from trajlib.errors import ConfigError, TrajlibError
from trajlib.space import (
    BASE_SCHEDULES,
    Action,
    ActionSpace,
    HyperParam,
    HyperparameterSpace,
)
from trajlib.tasks import get_task

__all__ = ["Recipe", "RunSpec", "load_recipe", "parse_recipe", "build_action_space", "BEHAVIOURS"]

MODES = ("free", "residual")
EXECUTORS = ("local", "ray")
LR_CENTERS = ("default", "best")
ACTION_COMBINE = ("union", "product")
# Weight decay a task with weight_decay = 0 is randomized around (when weight_decay_range > 1).
TYPICAL_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 1e-2}
L2_BOUNDS = (1e-8, 1.0)  # log scale
INPUT_NOISE_BOUNDS = (0.0, 2.0)  # linear scale, in units of the (standardised) input


@dataclass(frozen=True)
class CollectSection:
    tasks: tuple[str, ...]
    runs_per_task: int = 4
    seed: int = 0
    budget: int | None = None  # None: each task's own budget
    every: int = 50
    val_every: int | None = None  # None: each task's own
    population: int = 1
    device: str = "cpu"
    divergence_factor: float = 1e3


@dataclass(frozen=True)
class SpaceSection:
    """Start-value ranges and bounds of each hyperparameter (see ``Recipe.hp_space``)."""

    lr_center: str = "default"  # start LRs are drawn around the task's default_lr or best_lr
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
    layer_lr_walk: float = 0.0  # log-space std of each layer multiplier's step per decision


@dataclass(frozen=True)
class BehaviourSection:
    kind: str | tuple[str, ...] = "random-walk"
    p_move: float = 0.6
    epsilon: float = 0.1
    checkpoint: str = ""

    @property
    def kinds(self) -> tuple[str, ...]:
        return (self.kind,) if isinstance(self.kind, str) else tuple(self.kind)


@dataclass(frozen=True)
class BranchSection:
    enabled: bool = True
    horizon: int = 50
    cooldown: int = 10


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
    space: SpaceSection = field(default_factory=SpaceSection)
    actions: tuple[float, ...] = (0.5, 0.7, 1.0, 1.4, 2.0)
    behaviour: BehaviourSection = field(default_factory=BehaviourSection)
    branch: BranchSection = field(default_factory=BranchSection)
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
        """Bounds and scales. ``lr`` bounds are multipliers of each run's start LR; ``layer_lr``
        bounds hold for every layer's LR multiplier."""
        sp = self.space
        return HyperparameterSpace(
            (
                HyperParam("lr", sp.lr_min, sp.lr_max, "log"),
                HyperParam("momentum", sp.momentum_min, sp.momentum_max, "logit"),
                HyperParam("weight_decay", sp.weight_decay_min, sp.weight_decay_max, "log"),
                HyperParam("l2", *L2_BOUNDS, "log"),
                HyperParam("input_noise", *INPUT_NOISE_BOUNDS, "linear"),
                HyperParam("layer_lr", sp.layer_lr_min, sp.layer_lr_max, "log"),
            )
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source", None)
        return d

    def run_specs(self) -> list[RunSpec]:
        """Every run this recipe asks for, with deterministic ids and start values."""
        space_entry = asdict(self.space)
        if not space_entry["layer_lr_walk"]:  # the run ids of walk-free recipes stay as they were
            del space_entry["layer_lr_walk"]
        out = []
        kinds = self.behaviour.kinds
        space = self.hp_space
        action_space = self.action_space
        for task_name in self.collect.tasks:
            task = get_task(task_name)
            for i in range(self.collect.runs_per_task):
                seed = self.collect.seed * 100_003 + i
                h = hashlib.sha256(f"{self.collect.seed}/{task_name}/{i}".encode()).digest()
                rng = np.random.default_rng(int.from_bytes(h[:8], "big"))
                kind = kinds[i % len(kinds)]
                entry = {
                    "recipe": self.name,
                    "task": task_name,
                    "index": i,
                    "seed": seed,
                    "lr0": self._start_lr(task, rng),
                    "hp0": self._start_hps(task, space, rng),
                    "budget": self.collect.budget or task.budget,
                    "every": self.collect.every,
                    "val_every": self.collect.val_every or task.val_every,
                    "behaviour": {
                        "kind": kind,
                        "p_move": self.behaviour.p_move,
                        "epsilon": self.behaviour.epsilon,
                        "checkpoint": self.behaviour.checkpoint,
                        "params": draw_params(kind, rng),
                        "seed": seed,  # the choices use numpy default_rng([seed, 7])
                    },
                    "space": space_entry,
                    "hp_space": space.to_dict(),
                    "actions": list(self.actions),
                    "action_space": action_space.to_dict(),
                    "branch": asdict(self.branch),
                }
                digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:10]
                out.append(RunSpec(f"{task_name}-{i:04d}-{digest}", entry))
        return out

    def _start_lr(self, task: Any, rng: np.random.Generator) -> float:
        center = task.default_lr
        if self.space.lr_center == "best" and task.best_lr is not None:
            center = task.best_lr
        r = math.log(self.space.lr_range)
        return float(center * math.exp(rng.uniform(-r, r)))

    def _start_hps(
        self, task: Any, space: HyperparameterSpace, rng: np.random.Generator
    ) -> dict[str, Any]:
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
        hp0 = {
            "momentum": float(mom),
            "weight_decay": float(wd),
            "l2": float(l2),
            "input_noise": float(noise),
            "layer_lr_range": sp.layer_lr_range,
            "layer_lr_seed": int(rng.integers(2**31)),
        }
        if sp.layer_lr_walk > 0:  # only then: run ids of recipes without a walk stay as they were
            hp0["layer_lr_walk"] = sp.layer_lr_walk
        return hp0


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    entry: dict[str, Any]


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
    "space": SpaceSection,
    "behaviour": BehaviourSection,
    "branch": BranchSection,
    "executor": ExecutorSection,
}
_TOP = {"name", "description", "collect", "space", "actions", "behaviour", "branch", "executor"}


def _typed(section: str, key: str, value: Any, default: Any, annotation: str) -> Any:
    where = f"{section}.{key}"
    if "str | tuple" in annotation:
        if isinstance(value, str):
            return value
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(where, "a string or a non-empty list of strings", value)
        return tuple(value)
    if "int" in annotation and "float" not in annotation:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, "an integer", value)
    elif "float" in annotation:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(where, "a number", value)
        value = float(value)
    elif "bool" in annotation:
        if not isinstance(value, bool):
            raise ConfigError(where, "true or false", value)
    elif "tuple" in annotation:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(where, "a list of strings", value)
        value = tuple(value)
    elif "str" in annotation and not isinstance(value, str):
        raise ConfigError(where, "a string", value)
    return value


def _section(name: str, raw: Any) -> Any:
    cls = _SECTIONS[name]
    if not isinstance(raw, dict):
        raise ConfigError(name, "a table", raw)
    fields = cls.__dataclass_fields__
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{name}.{unknown[0]}", f"one of the keys {sorted(fields)}", unknown[0], "unknown key"
        )
    kwargs = {k: _typed(name, k, v, fields[k].default, str(fields[k].type)) for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        missing = [
            k
            for k, f in fields.items()
            if f.default is MISSING and f.default_factory is MISSING and k not in raw
        ]
        raise ConfigError(
            f"{name}.{missing[0] if missing else '?'}", "present", None, str(e)
        ) from None


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
    if not collect.tasks:
        raise ConfigError("collect.tasks", "a non-empty list of task names", list(collect.tasks))
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

    space: SpaceSection = _section("space", data.get("space", {}))
    _check_space(space)
    lr_acts, mom_acts, wd_acts, combine = _parse_actions(data.get("actions"))

    behaviour: BehaviourSection = _section("behaviour", data.get("behaviour", {}))
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
    branch: BranchSection = _section("branch", data.get("branch", {}))
    _positive("branch.horizon", branch.horizon)
    if not (isinstance(branch.cooldown, int) and branch.cooldown >= 0):
        raise ConfigError("branch.cooldown", "an integer >= 0", branch.cooldown)
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
        actions=lr_acts,
        momentum_actions=mom_acts,
        weight_decay_actions=wd_acts,
        action_combine=combine,
        behaviour=behaviour,
        branch=branch,
        executor=executor,
        description=str(data.get("description", "")),
        source=source,
    )


def _range(where: str, v: float) -> None:
    if not (math.isfinite(v) and v >= 1):
        raise ConfigError(where, "a finite factor >= 1 (1 = no randomization)", v)


def _check_space(space: SpaceSection) -> None:
    if space.lr_center not in LR_CENTERS:
        raise ConfigError("space.lr_center", f"one of {LR_CENTERS}", space.lr_center)
    for key in ("lr_range", "momentum_range", "weight_decay_range", "l2_range"):
        _range(f"space.{key}", getattr(space, key))
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


def _numbers(where: str, v: Any, positive: bool, must_hold: float) -> tuple[float, ...]:
    ok = (
        isinstance(v, list)
        and v
        and all(
            isinstance(m, int | float)
            and not isinstance(m, bool)
            and math.isfinite(m)
            and (m > 0 or not positive)
            for m in v
        )
    )
    if not ok:
        kind = "positive numbers" if positive else "finite numbers"
        raise ConfigError(where, f"a non-empty list of {kind}", v)
    if must_hold not in v:
        raise ConfigError(where, f"a list that contains {must_hold:g} (the keep action)", v)
    return tuple(float(m) for m in v)


def _parse_actions(raw: Any) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], str]:
    if raw is None:
        raw = {"lr": [0.5, 0.7, 1.0, 1.4, 2.0]}
    keys = {"lr", "momentum", "weight_decay", "combine"}
    if not isinstance(raw, dict):
        raise ConfigError("actions", "a table with keys " + ", ".join(sorted(keys)), raw)
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise ConfigError(
            f"actions.{unknown[0]}", f"one of the keys {sorted(keys)}", unknown[0], "unknown key"
        )
    lr = _numbers("actions.lr", raw.get("lr", [0.5, 0.7, 1.0, 1.4, 2.0]), True, 1.0)
    mom = _numbers("actions.momentum", raw["momentum"], False, 0.0) if "momentum" in raw else ()
    wd = (
        _numbers("actions.weight_decay", raw["weight_decay"], True, 1.0)
        if "weight_decay" in raw
        else ()
    )
    combine = raw.get("combine", "union")
    if combine not in ACTION_COMBINE:
        raise ConfigError("actions.combine", f"one of {ACTION_COMBINE}", combine)
    n = len(lr) * max(len(mom), 1) * max(len(wd), 1)
    if combine == "product" and n > 64:
        raise ConfigError("actions", "at most 64 actions in product mode", n)
    return lr, mom, wd, combine


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
