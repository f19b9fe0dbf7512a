"""The Task abstraction: a model factory, fixed data splits, a loss, a metric and defaults."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trajlib.errors import ConfigError, UnknownNameError

__all__ = [
    "Task",
    "TaskData",
    "batch_slot",
    "epoch_order",
    "register_task",
    "get_task",
    "list_tasks",
    "LOSSES",
    "OPTIMIZERS",
]

LOSSES = ("cross_entropy", "mse")
# The optimizers a task may name; Task.make_optimizer gives each as torch.optim (the collector's
# populations implement the same updates on stacked parameters). Adam/AdamW's beta1 and RMSprop's
# momentum are the task's ``momentum``; the other constants are torch.optim's defaults.
OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "nadam")


@dataclass(frozen=True)
class TaskData:
    """Fixed splits as tensors. Classification targets are int64 class ids; regression float32.

    ``x_*``: [n, *input_shape] float32 (or int64 token ids); ``y_*``: [n] int64 or [n, d] float32.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device: str | torch.device) -> TaskData:
        return TaskData(*(t.to(device) for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.x_train, self.y_train, self.x_val, self.y_val, self.x_test, self.y_test)


@dataclass(frozen=True)
class Task:
    """A training problem.

    ``make_model()`` builds a freshly initialised ``nn.Module`` from torch's global RNG (the caller
    seeds it). BatchNorm (its running statistics are kept per run) and dropout (a run's masks are a
    function of its seed and step) are fine; other randomness in ``forward`` should come from
    torch's global RNG, so that populations and branches stay exact. ``make_data()`` returns
    the same splits every call. ``family`` groups related tasks for held-out evaluation.
    """

    name: str
    family: str
    make_model: Callable[[], nn.Module]
    make_data: Callable[[], TaskData]
    loss: str = "cross_entropy"
    optimizer: str = "sgd"
    default_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    budget: int = 2000
    batch_size: int = 128
    val_every: int = 50
    description: str = ""
    best_lr: float | None = None  # best constant LR found by scripts/sweep_tasks.py (docs/tasks.md)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"task {self.name}.loss", f"one of {LOSSES}", self.loss)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"task {self.name}.optimizer", f"one of {OPTIMIZERS}", self.optimizer)
        for k in ("budget", "batch_size", "val_every"):
            v = getattr(self, k)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"task {self.name}.{k}", "a positive integer", v)
        if not self.default_lr > 0:
            raise ConfigError(f"task {self.name}.default_lr", "> 0", self.default_lr)
        if self.best_lr is not None and not self.best_lr > 0:
            raise ConfigError(f"task {self.name}.best_lr", "> 0 or None", self.best_lr)

    @property
    def is_classification(self) -> bool:
        return self.loss == "cross_entropy"

    def loss_value(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of model output ``out`` against ``y`` (a mean over the batch and,
        for sequence tasks, over every position). The one definition the collector, the
        evaluation harness and the baselines share."""
        if self.loss == "mse":
            return ((out - y) ** 2).mean()
        return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    def make_optimizer(
        self,
        params: Any,
        lr: float,
        momentum: float | None = None,
        weight_decay: float | None = None,
    ) -> torch.optim.Optimizer:
        """The task's optimizer as ``torch.optim`` over ``params`` at learning rate ``lr``
        (``momentum`` / ``weight_decay``: the task's unless given). ``sgd``: SGD with momentum;
        ``nesterov``: SGD(nesterov=True); ``adam``: Adam (L2 weight decay); ``adamw``: AdamW
        (decoupled); ``rmsprop``: RMSprop; ``adagrad``: Adagrad (no momentum); ``nadam``: NAdam.
        Adam/AdamW/NAdam use ``betas=(momentum, 0.999)``."""
        mom = self.momentum if momentum is None else float(momentum)
        wd = self.weight_decay if weight_decay is None else float(weight_decay)
        opt = self.optimizer
        if opt in ("sgd", "nesterov"):
            return torch.optim.SGD(
                params, lr=lr, momentum=mom, weight_decay=wd, nesterov=opt == "nesterov"
            )
        if opt == "adam":
            return torch.optim.Adam(params, lr=lr, betas=(mom, 0.999), weight_decay=wd)
        if opt == "adamw":
            return torch.optim.AdamW(params, lr=lr, betas=(mom, 0.999), weight_decay=wd)
        if opt == "nadam":
            return torch.optim.NAdam(params, lr=lr, betas=(mom, 0.999), weight_decay=wd)
        if opt == "adagrad":
            return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
        return torch.optim.RMSprop(params, lr=lr, alpha=0.99, momentum=mom, weight_decay=wd)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "loss": self.loss,
            "optimizer": self.optimizer,
            "default_lr": self.default_lr,
            "best_lr": self.best_lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "budget": self.budget,
            "batch_size": self.batch_size,
            "val_every": self.val_every,
        }


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The order [n] in which a run seeded ``seed`` visits the training split in ``epoch``.

    A pure function of ``(seed, epoch)``, so every run of a seed — collected, branched, evaluated
    or in a population — sees the same batches at the same step (common random numbers).
    """
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


def batch_slot(t: int, n: int, batch_size: int) -> tuple[int, int]:
    """``(epoch, start)`` of batch ``t`` over ``n`` training examples: the batch is
    ``epoch_order(seed, epoch)[start : start + batch_size]`` (a last partial batch is dropped)."""
    epoch, pos = divmod(t, max(n // batch_size, 1))
    return epoch, pos * batch_size


_REGISTRY: dict[str, Callable[[], Task]] = {}


def register_task(name: str) -> Callable[[Callable[[], Task]], Callable[[], Task]]:
    """Decorator registering a zero-argument task factory under ``name``."""

    def deco(fn: Callable[[], Task]) -> Callable[[], Task]:
        _REGISTRY[name] = fn
        return fn

    return deco


def list_tasks() -> list[str]:
    """Names of the built-in tasks."""
    return sorted(_REGISTRY)


_CACHE: dict[str, Task] = {}
#: The name prefix of each version of the generated-task distribution (``<prefix><index>``;
#: :mod:`trajlib.tasks._generated`).
GENERATED_VERSIONS: dict[int, str] = {1: "gen-", 2: "gen2-", 3: "gen3-"}
_GENERATED = re.compile(r"^(gen\d*-)(\d{1,6})$")


def _generated_index(name: str) -> tuple[int, int] | None:
    """(index, generator version) of a generated task's name (a prefix of
    :data:`GENERATED_VERSIONS`); None for any other name."""
    m = _GENERATED.match(name)
    for version, prefix in GENERATED_VERSIONS.items():
        if m and m.group(1) == prefix:
            return int(m.group(2)), version
    return None


def get_task(name: str) -> Task:
    """A built-in task by name, a generated task ``gen-<i>`` / ``gen2-<i>`` / ``gen3-<i>``
    (:mod:`trajlib.tasks._generated`), or a user task given as ``module:function`` (returning a
    Task)."""
    if not isinstance(name, str) or not name:
        raise ConfigError("task", "a task name or 'module:function'", name)
    if name in _CACHE:
        return _CACHE[name]
    if name in _REGISTRY:
        task = _REGISTRY[name]()
    elif (gen := _generated_index(name)) is not None:
        from trajlib.tasks._generated import generated_task

        task = generated_task(*gen)
    elif ":" in name:
        mod_name, _, fn_name = name.partition(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise ConfigError("task", "an importable 'module:function'", name, str(e)) from None
        fn = getattr(mod, fn_name, None)
        if not callable(fn):
            raise ConfigError("task", f"a callable {fn_name!r} in module {mod_name!r}", name)
        task = fn()
        if not isinstance(task, Task):
            raise ConfigError("task", f"{name} to return a trajlib Task", type(task).__name__)
    else:
        raise UnknownNameError("task", name, list_tasks())
    _CACHE[name] = task
    return task
