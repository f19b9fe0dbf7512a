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

from trajlib.errors import ConfigError, TrajlibError
from trajlib.space import (
    BASE_SCHEDULES,
    ActionSpace,
    HyperParam,
    HyperparameterSpace,
    lr_action_space,
)
from trajlib.tasks import get_task

__all__ = ["Recipe", "RunSpec", "load_recipe", "parse_recipe", "BEHAVIOURS"]

BEHAVIOURS = ("random-walk", "keep")
MODES = ("free", "residual")
EXECUTORS = ("local", "ray")


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
    lr_range: float = 30.0
    lr_min: float = 1e-3
    lr_max: float = 1e2
    mode: str = "free"
    base_schedule: str = "constant"


@dataclass(frozen=True)
class BehaviourSection:
    kind: str = "random-walk"
    p_move: float = 0.6


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
    """A validated recipe. ``hp_space`` bounds for ``lr`` are multipliers of each run's start LR."""

    name: str
    collect: CollectSection
    space: SpaceSection = field(default_factory=SpaceSection)
    actions: tuple[float, ...] = (0.5, 0.7, 1.0, 1.4, 2.0)
    behaviour: BehaviourSection = field(default_factory=BehaviourSection)
    branch: BranchSection = field(default_factory=BranchSection)
    executor: ExecutorSection = field(default_factory=ExecutorSection)
    description: str = ""
    source: str = ""

    @property
    def action_space(self) -> ActionSpace:
        return lr_action_space(self.actions)

    @property
    def hp_space(self) -> HyperparameterSpace:
        return HyperparameterSpace((HyperParam("lr", self.space.lr_min, self.space.lr_max, "log"),))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source", None)
        return d

    def run_specs(self) -> list[RunSpec]:
        """Every run this recipe asks for, with deterministic ids and start values."""
        out = []
        for task_name in self.collect.tasks:
            task = get_task(task_name)
            for i in range(self.collect.runs_per_task):
                seed = self.collect.seed * 100_003 + i
                h = int.from_bytes(
                    hashlib.sha256(f"{self.collect.seed}/{task_name}/{i}".encode()).digest()[:8],
                    "big",
                )
                u = (h % 1_000_000) / 1_000_000.0
                r = math.log(self.space.lr_range)
                lr0 = task.default_lr * math.exp(-r + 2 * r * u)
                entry = {
                    "recipe": self.name,
                    "task": task_name,
                    "index": i,
                    "seed": seed,
                    "lr0": lr0,
                    "budget": self.collect.budget or task.budget,
                    "every": self.collect.every,
                    "val_every": self.collect.val_every or task.val_every,
                    "behaviour": asdict(self.behaviour),
                    "space": asdict(self.space),
                    "actions": list(self.actions),
                    "branch": asdict(self.branch),
                }
                digest = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:10]
                out.append(RunSpec(f"{task_name}-{i:04d}-{digest}", entry))
        return out


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    entry: dict[str, Any]


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
    if not space.lr_range >= 1:
        raise ConfigError("space.lr_range", ">= 1", space.lr_range)
    if not 0 < space.lr_min <= 1 <= space.lr_max:
        raise ConfigError(
            "space.lr_min/lr_max",
            "0 < lr_min <= 1 <= lr_max (multipliers of the start LR)",
            (space.lr_min, space.lr_max),
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

    raw_actions = data.get("actions", {"lr": [0.5, 0.7, 1.0, 1.4, 2.0]})
    if not isinstance(raw_actions, dict) or set(raw_actions) - {"lr"}:
        raise ConfigError(
            "actions", "a table with key 'lr' (a list of LR multipliers)", raw_actions
        )
    mults = raw_actions.get("lr")
    if (
        not isinstance(mults, list)
        or not mults
        or not all(isinstance(m, int | float) and not isinstance(m, bool) and m > 0 for m in mults)
    ):
        raise ConfigError("actions.lr", "a non-empty list of positive numbers", mults)
    if 1 not in mults and 1.0 not in mults:
        raise ConfigError("actions.lr", "a list that contains 1 (the keep action)", mults)

    behaviour: BehaviourSection = _section("behaviour", data.get("behaviour", {}))
    if behaviour.kind not in BEHAVIOURS:
        raise ConfigError("behaviour.kind", f"one of {BEHAVIOURS}", behaviour.kind)
    if not 0 <= behaviour.p_move <= 1:
        raise ConfigError("behaviour.p_move", "a probability in [0, 1]", behaviour.p_move)
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
        actions=tuple(float(m) for m in mults),
        behaviour=behaviour,
        branch=branch,
        executor=executor,
        description=str(data.get("description", "")),
        source=source,
    )


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
