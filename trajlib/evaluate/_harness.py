"""The evaluation harness: plain PyTorch training loops driven by a method's scheduler.

Every method trains the same model from the same initialisation on the same batches (per seed), so
comparisons are paired. A *method* builds a scheduler-like object for an optimizer; the loop calls
``observe(loss)`` / ``observe_validation(val)`` when the object has them, then ``step()``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from trajlib.tasks import Task

__all__ = [
    "Method",
    "Trace",
    "train_task",
    "make_optimizer",
    "constant_method",
    "cosine_method",
    "controller_method",
]


class _Sched(Protocol):
    def step(self) -> None: ...


@dataclass(frozen=True)
class Method:
    """A named way to schedule hyperparameters: ``build(optimizer, total_steps) -> scheduler``.

    ``lr_scale`` multiplies the task's default LR before the optimizer is built (e.g. 10x off).
    ``cost`` is the compute charged, in training runs (e.g. 8 for an 8-LR grid search).
    """

    name: str
    build: Callable[[torch.optim.Optimizer, int], Any]
    lr_scale: float = 1.0
    cost: float = 1.0


@dataclass
class Trace:
    """One evaluated training run. Arrays: ``train_loss``/``lr`` [steps]; ``val_steps``/``val_loss``/
    ``val_acc`` [n_validations] (step = number of updates done when measured)."""

    task: str
    method: str
    seed: int
    train_loss: np.ndarray
    lr: np.ndarray
    val_steps: np.ndarray
    val_loss: np.ndarray
    val_acc: np.ndarray
    test_loss: float
    test_acc: float
    diverged: bool
    wall_time_s: float
    cost: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def final_val_loss(self) -> float:
        return float(self.val_loss[-1]) if len(self.val_loss) and not self.diverged else math.nan

    @property
    def final_val_acc(self) -> float:
        return float(self.val_acc[-1]) if len(self.val_acc) and not self.diverged else math.nan

    def steps_to(self, target: float) -> float:
        """First step at which validation loss <= target (NaN if never)."""
        hit = np.flatnonzero(self.val_loss <= target)
        return float(self.val_steps[hit[0]]) if len(hit) else math.nan


def make_optimizer(task: Task, params: Any, lr: float) -> torch.optim.Optimizer:
    """The task's default optimizer at learning rate ``lr``."""
    if task.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=lr, betas=(task.momentum, 0.999), weight_decay=task.weight_decay
        )
    return torch.optim.SGD(params, lr=lr, momentum=task.momentum, weight_decay=task.weight_decay)


def constant_method(lr_scale: float = 1.0) -> Method:
    return Method(
        "constant" if lr_scale == 1 else f"constant x{lr_scale:g}",
        lambda opt, T: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0),
        lr_scale,
    )


def cosine_method(lr_scale: float = 1.0, name: str | None = None, cost: float = 1.0) -> Method:
    return Method(
        name or ("cosine" if lr_scale == 1 else f"cosine x{lr_scale:g}"),
        lambda opt, T: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T),
        lr_scale,
        cost,
    )


def _loss(task: Task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task.loss == "mse":
        return ((out - y) ** 2).mean()
    return torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


@torch.no_grad()
def _eval(
    task: Task, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    out = model(x)
    loss = float(_loss(task, out, y))
    acc = float((out.argmax(-1) == y).float().mean()) if task.is_classification else math.nan
    return loss, acc


def train_task(
    task: Task,
    method: Method,
    seed: int,
    *,
    budget: int | None = None,
    device: str = "cpu",
    divergence_factor: float = 1e3,
) -> Trace:
    """Train ``task`` once with ``method``; validation every ``task.val_every`` steps and at the end."""
    T = budget or task.budget
    data = task.make_data().to(device)
    torch.manual_seed(seed)
    model = task.make_model().to(device)
    opt = make_optimizer(task, model.parameters(), task.default_lr * method.lr_scale)
    sched = method.build(opt, T)
    observe = getattr(sched, "observe", None)
    observe_val = getattr(sched, "observe_validation", None)
    n, B = data.x_train.shape[0], task.batch_size
    per_epoch = max(n // B, 1)
    train_loss = np.full(T, np.nan, dtype=np.float32)
    lrs = np.zeros(T, dtype=np.float32)
    vs, vl, va = [], [], []
    perm = None
    diverged = False
    first = None
    t0 = time.perf_counter()
    for t in range(T):
        epoch, pos = divmod(t, per_epoch)
        if pos == 0 or perm is None:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perm = torch.randperm(n, generator=g).to(device)
        idx = perm[pos * B : pos * B + B]
        lrs[t] = opt.param_groups[0]["lr"]
        model.train()
        loss = _loss(task, model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if observe is not None:
            observe(loss)
        lv = float(loss.detach())
        train_loss[t] = lv
        first = first if first is not None else abs(lv) + 1e-12
        if not math.isfinite(lv) or lv > divergence_factor * first:
            diverged = True
            break
        if (t + 1) % task.val_every == 0 or t + 1 == T:
            model.eval()
            l_, a_ = _eval(task, model, data.x_val, data.y_val)
            vs.append(t + 1)
            vl.append(l_)
            va.append(a_)
            if observe_val is not None:
                observe_val(l_, None if math.isnan(a_) else a_)
        sched.step()
    wall = time.perf_counter() - t0
    model.eval()
    tl, ta = _eval(task, model, data.x_test, data.y_test) if not diverged else (math.nan, math.nan)
    info = {}
    if hasattr(sched, "events"):
        info["events"] = dict(sched.events)
    if hasattr(sched, "close"):
        sched.close()
    return Trace(
        task.name,
        method.name,
        seed,
        train_loss,
        lrs,
        np.asarray(vs),
        np.asarray(vl, dtype=float),
        np.asarray(va, dtype=float),
        tl,
        ta,
        diverged,
        wall,
        method.cost,
        info,
    )


def controller_method(checkpoint: Any, lr_scale: float = 1.0, name: str | None = None) -> Method:
    """A learned controller (checkpoint path or loaded) driving the LR through ControllerScheduler."""
    from trajlib.controllers import LoadedController, load_controller
    from trajlib.deploy import ControllerScheduler

    loaded = checkpoint if isinstance(checkpoint, LoadedController) else load_controller(checkpoint)
    label = name or f"trajlib-{loaded.manifest['kind']}" + (
        "" if lr_scale == 1 else f" x{lr_scale:g}"
    )
    return Method(label, lambda opt, T: ControllerScheduler(opt, loaded, T), lr_scale)
