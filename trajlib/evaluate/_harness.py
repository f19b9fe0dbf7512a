"""The evaluation harness: plain PyTorch training loops driven by a method's scheduler.

Every method trains the same model from the same initialisation on the same batches (per seed), so
comparisons are paired. A *method* builds a scheduler-like object for an optimizer; the loop calls
``observe(loss)`` / ``observe_validation(val_loss, val_acc)`` when the object has them, then
``step()``. Optimizers with ``train()`` / ``eval()`` modes (schedule-free) are switched to ``eval``
around every validation and test evaluation and back to ``train`` for training.

:class:`TrainRun` is the loop's state, advanced step by step; strategies that drive several runs
(grid search, successive halving, PBT) use it directly so that their runs see the very same
initialisation and batch order as a plain :func:`train_task`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trajlib.errors import ConfigError
from trajlib.tasks import Task, TaskData
from trajlib.tasks._base import batch_slot, epoch_order

__all__ = [
    "Method",
    "OptimizerFactory",
    "Trace",
    "TrainRun",
    "train_task",
    "make_optimizer",
    "constant_method",
    "cosine_method",
    "controller_method",
]

#: ``(task, params, lr, total_steps) -> optimizer``; ``None`` in a Method means the task's default.
OptimizerFactory = Callable[[Task, Any, float, int], torch.optim.Optimizer]
#: Called after every validation with ``(step, val_loss)``; returning ``True`` stops the run.
ValidationCallback = Callable[[int, float], bool]


@dataclass(frozen=True)
class Method:
    """A named way to schedule hyperparameters: ``build(optimizer, total_steps) -> scheduler``.

    ``lr_scale`` multiplies the task's default LR before the optimizer is built (e.g. 10x off).
    ``cost`` is the compute charged, in training runs of the full budget (e.g. 8 for an 8-LR grid).
    ``optimizer`` replaces the task's default optimizer (e.g. schedule-free AdamW) when given.
    """

    name: str
    build: Callable[[torch.optim.Optimizer, int], Any]
    lr_scale: float = 1.0
    cost: float = 1.0
    optimizer: OptimizerFactory | None = None


@dataclass
class Trace:
    """One evaluated training run. Arrays: ``train_loss``/``lr`` [steps]; ``val_steps``/``val_loss``/
    ``val_acc`` [n_validations] (step = number of updates done when measured).

    ``cost`` is the compute charged in runs of the full budget (``cost_steps`` = cost x budget);
    ``wall_time_s`` is the wall time of everything charged (all runs of a search strategy).
    """

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
    def budget(self) -> int:
        """Steps of the budget (length of the per-step arrays)."""
        return len(self.train_loss)

    @property
    def cost_steps(self) -> float:
        """Compute charged in training steps (runs x steps)."""
        return self.cost * self.budget

    @property
    def final_val_loss(self) -> float:
        return float(self.val_loss[-1]) if len(self.val_loss) and not self.diverged else math.nan

    @property
    def final_val_acc(self) -> float:
        return float(self.val_acc[-1]) if len(self.val_acc) and not self.diverged else math.nan

    def steps_to(self, target: float) -> float:
        """First validation step at which validation loss <= target (NaN if never)."""
        if not math.isfinite(target):
            return math.nan
        hit = np.flatnonzero(self.val_loss <= target)
        return float(self.val_steps[hit[0]]) if len(hit) else math.nan

    def val_auc(self) -> float:
        """Area under the log validation-loss curve, normalised by the budget.

        The curve is a step function: each validation value holds over the steps since the previous
        validation (the first from step 0), i.e. ``sum_i log(val_loss_i) * (s_i - s_{i-1}) / budget``.
        NaN for a diverged run or when the validations do not reach the budget.
        """
        if self.diverged or not len(self.val_loss) or self.val_steps[-1] < self.budget:
            return math.nan
        widths = np.diff(np.concatenate([[0], self.val_steps]))
        return float(np.sum(np.log(np.maximum(self.val_loss, 1e-12)) * widths) / self.budget)


def make_optimizer(task: Task, params: Any, lr: float) -> torch.optim.Optimizer:
    """The task's default optimizer at learning rate ``lr`` (:meth:`Task.make_optimizer`)."""
    return task.make_optimizer(params, lr)


def _default_factory(task: Task, params: Any, lr: float, total_steps: int) -> torch.optim.Optimizer:
    return make_optimizer(task, params, lr)


def constant_method(lr_scale: float = 1.0) -> Method:
    """The task's default LR (times ``lr_scale``), unchanged for the whole budget."""
    return Method(
        "constant" if lr_scale == 1 else f"constant x{lr_scale:g}",
        lambda opt, T: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0),
        lr_scale,
    )


def cosine_method(lr_scale: float = 1.0, name: str | None = None, cost: float = 1.0) -> Method:
    """Cosine annealing from the default LR (times ``lr_scale``) to 0 at the budget."""
    return Method(
        name or ("cosine" if lr_scale == 1 else f"cosine x{lr_scale:g}"),
        lambda opt, T: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T),
        lr_scale,
        cost,
    )


class TrainRun:
    """One training run of ``task`` at ``seed``, advanced one step at a time.

    The model is initialised from ``torch.manual_seed(seed)``; batch ``t`` is a fixed function of
    ``(seed, t)`` (a per-epoch permutation), so two runs of one seed see the same batches in the same
    order whatever their hyperparameters, and a run restored at step ``t`` continues on batch ``t``.
    Records: ``train_loss``/``lr`` [budget], validations as lists.
    """

    def __init__(
        self,
        task: Task,
        seed: int,
        lr: float,
        *,
        budget: int | None = None,
        device: str = "cpu",
        optimizer: OptimizerFactory | None = None,
        data: TaskData | None = None,
        divergence_factor: float = 1e3,
    ) -> None:
        self.task = task
        self.seed = int(seed)
        self.budget = int(budget or task.budget)
        if self.budget <= 0:
            raise ConfigError("budget", "a positive integer", budget)
        self.device = device
        self.data = data if data is not None else task.make_data().to(device)
        torch.manual_seed(self.seed)
        self.model = task.make_model().to(device)
        factory = optimizer or _default_factory
        self.optimizer = factory(task, self.model.parameters(), float(lr), self.budget)
        self.divergence_factor = divergence_factor
        self.step = 0
        self.train_loss = np.full(self.budget, np.nan, dtype=np.float32)
        self.lr = np.zeros(self.budget, dtype=np.float32)
        self.val_steps: list[int] = []
        self.val_loss: list[float] = []
        self.val_acc: list[float] = []
        self.diverged = False
        self._first: float | None = None
        self._perm: tuple[int, torch.Tensor] | None = None
        self._set_mode(train=True)

    # ------------------------------------------------------------------------------ batches
    def batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of batch ``t`` (deterministic in ``seed`` and ``t``)."""
        n, B = self.data.x_train.shape[0], self.task.batch_size
        epoch, start = batch_slot(t, n, B)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_order(self.seed, epoch, n).to(self.device))
        idx = self._perm[1][start : start + B]
        return self.data.x_train[idx], self.data.y_train[idx]

    # ------------------------------------------------------------------------------ modes
    def _set_mode(self, train: bool) -> None:
        fn = getattr(self.optimizer, "train" if train else "eval", None)
        if callable(fn):
            fn()

    @property
    def done(self) -> bool:
        return self.diverged or self.step >= self.budget

    # ------------------------------------------------------------------------------ stepping
    def train_step(
        self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """One optimizer step on batch ``self.step``; returns the loss tensor (detached).

        ``loss_fn(x, y)`` replaces the task loss of the model's output (e.g. with a penalty).
        Marks the run diverged when the loss is not finite or exceeds ``divergence_factor`` times
        the first loss.
        """
        t = self.step
        x, y = self.batch(t)
        self.model.train()
        loss = loss_fn(x, y) if loss_fn is not None else self.task.loss_value(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        g0 = self.optimizer.param_groups[0]
        self.lr[t] = g0.get("scheduled_lr", g0["lr"])  # read after the step: what it used
        self.record_loss(loss)
        return loss.detach()

    def record_loss(self, loss: torch.Tensor) -> None:
        """Record the loss of step ``self.step``, check divergence, advance the step counter."""
        lv = float(loss.detach())
        self.train_loss[self.step] = lv
        self._first = self._first if self._first is not None else abs(lv) + 1e-12
        if not math.isfinite(lv) or lv > self.divergence_factor * self._first:
            self.diverged = True
        self.step += 1

    @property
    def due_validation(self) -> bool:
        """Whether the step just done is a validation point (every ``val_every`` and at the end)."""
        return self.step > 0 and (self.step % self.task.val_every == 0 or self.step == self.budget)

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> tuple[float, float]:
        """Loss and accuracy (NaN for regression) on ``split`` ('val' or 'test'), in eval modes."""
        x, y = (
            (self.data.x_val, self.data.y_val)
            if split == "val"
            else (self.data.x_test, self.data.y_test)
        )
        self.model.eval()
        self._set_mode(train=False)
        try:
            out = self.model(x)
            loss = float(self.task.loss_value(out, y))
            acc = (
                float((out.argmax(-1) == y).float().mean())
                if self.task.is_classification
                else math.nan
            )
        finally:
            self._set_mode(train=True)
        return loss, acc

    def validate(self) -> tuple[float, float]:
        """Evaluate on the validation split and record it at the current step."""
        loss, acc = self.evaluate("val")
        self.val_steps.append(self.step)
        self.val_loss.append(loss)
        self.val_acc.append(acc)
        return loss, acc

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer and record state: tensors, numpy arrays and plain Python values only."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "train_loss": torch.from_numpy(self.train_loss.copy()),
            "lr": torch.from_numpy(self.lr.copy()),
            "val_steps": list(self.val_steps),
            "val_loss": list(self.val_loss),
            "val_acc": list(self.val_acc),
            "diverged": self.diverged,
            "first": self._first,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (weights, optimizer, records: the run's lineage)."""
        self.model.load_state_dict(state["model"])
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for g, lr in zip(self.optimizer.param_groups, lrs):  # hyperparameters stay the receiver's
            g["lr"] = lr
        self.step = int(state["step"])
        self.train_loss = np.asarray(state["train_loss"], dtype=np.float32).copy()
        self.lr = np.asarray(state["lr"], dtype=np.float32).copy()
        self.val_steps = [int(v) for v in state["val_steps"]]
        self.val_loss = [float(v) for v in state["val_loss"]]
        self.val_acc = [float(v) for v in state["val_acc"]]
        self.diverged = bool(state["diverged"])
        self._first = state["first"]

    def to_trace(
        self,
        method: str,
        *,
        cost: float = 1.0,
        wall_time_s: float = math.nan,
        info: dict[str, Any] | None = None,
        test: bool = True,
    ) -> Trace:
        """The run as a :class:`Trace`, scored on the test split (NaN when diverged)."""
        tl, ta = self.evaluate("test") if test and not self.diverged else (math.nan, math.nan)
        return Trace(
            self.task.name,
            method,
            self.seed,
            self.train_loss.copy(),
            self.lr.copy(),
            np.asarray(self.val_steps, dtype=np.int64),
            np.asarray(self.val_loss, dtype=float),
            np.asarray(self.val_acc, dtype=float),
            tl,
            ta,
            self.diverged,
            wall_time_s,
            cost,
            dict(info or {}),
        )


def train_task(
    task: Task,
    method: Method,
    seed: int,
    *,
    budget: int | None = None,
    device: str = "cpu",
    divergence_factor: float = 1e3,
    callback: ValidationCallback | None = None,
    lr: float | None = None,
    data: TaskData | None = None,
) -> Trace:
    """Train ``task`` once with ``method``; validation every ``task.val_every`` steps and at the end.

    The LR starts at ``lr`` when given, else ``task.default_lr * method.lr_scale``. ``callback(step,
    val_loss)`` runs after each validation; returning ``True`` stops the run (e.g. an Optuna
    pruner): the trace then records ``info['stopped_at']`` and is charged only the steps it ran.
    """
    run = TrainRun(
        task,
        seed,
        task.default_lr * method.lr_scale if lr is None else lr,
        budget=budget,
        device=device,
        optimizer=method.optimizer,
        data=data,
        divergence_factor=divergence_factor,
    )
    T = run.budget
    sched = method.build(run.optimizer, T)
    observe = getattr(sched, "observe", None)
    observe_val = getattr(sched, "observe_validation", None)
    stopped_at: int | None = None
    t0 = time.perf_counter()
    while not run.done:
        loss = run.train_step()
        if observe is not None:
            observe(loss)
        if run.diverged:
            break
        if run.due_validation:
            l_, a_ = run.validate()
            if observe_val is not None:
                observe_val(l_, None if math.isnan(a_) else a_)
            if callback is not None and run.step < T and callback(run.step, l_):
                stopped_at = run.step
                break
        sched.step()
    wall = time.perf_counter() - t0
    info: dict[str, Any] = {}
    if hasattr(sched, "events"):
        info["events"] = dict(sched.events)
    if hasattr(sched, "info"):
        info.update(sched.info())
    if hasattr(sched, "close"):
        sched.close()
    cost = method.cost
    if stopped_at is not None:
        info["stopped_at"] = stopped_at
        cost = method.cost * stopped_at / T
    return run.to_trace(
        method.name, cost=cost, wall_time_s=wall, info=info, test=stopped_at is None
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
