"""Static LR schedules and single-run adaptive baselines, each as a :class:`Method`.

All start from the task's default LR (``lr_scale`` = 1) unless stated; the LR the loop records at
step ``t`` (0-based) is the LR used by update ``t``:

- ``constant``: ``lr0``.
- ``step decay``: ``lr0 * 0.1 ** (#milestones passed)``, milestones at 50 % and 75 % of the budget.
- ``cosine``: ``lr0 * (1 + cos(pi t / T)) / 2``.
- ``warmup+cosine``: linear warm-up ``lr0 * (t + 1) / W`` for ``t < W`` (``W`` = 5 % of the budget),
  then cosine from ``lr0`` to 0 over the remaining ``T - W`` steps.
- ``one-cycle``: :class:`torch.optim.lr_scheduler.OneCycleLR` with ``max_lr = lr0``, 30 % up
  (from ``lr0 / 25``), cosine down to ``lr0 / 25e4``; momentum is *not* cycled (only the LR moves).
- ``plateau``: ``ReduceLROnPlateau`` on the validation loss (×0.5 after 2 validations without a
  1e-3 relative improvement), fed by ``observe_validation``.
- ``schedule-free``: ``schedulefree.AdamWScheduleFree`` at ``lr0`` (AdamW tasks) or
  ``SGDScheduleFree`` at ``lr0 / (1 - momentum)`` (SGD tasks: the effective step of heavy-ball SGD,
  which schedule-free SGD's interpolation does not amplify), 5 % warm-up; the harness switches its
  ``train()``/``eval()`` modes around every evaluation.
- ``hypergradient``: :class:`HypergradientLR` (Baydin et al. 2018).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trajlib.errors import ConfigError
from trajlib.evaluate._harness import Method, constant_method, cosine_method
from trajlib.evaluate._hypergradient import HypergradientLR
from trajlib.tasks import Task

__all__ = [
    "constant_method",
    "cosine_method",
    "step_decay_method",
    "warmup_cosine_method",
    "one_cycle_method",
    "plateau_method",
    "schedule_free_method",
    "hypergradient_method",
    "static_methods",
]


def _lambda(fn: Any) -> Any:
    return lambda opt, T: torch.optim.lr_scheduler.LambdaLR(opt, lambda t: fn(t, T))


def step_decay_method(
    milestones: tuple[float, ...] = (0.5, 0.75), gamma: float = 0.1, lr_scale: float = 1.0
) -> Method:
    """LR x ``gamma`` at each milestone (fractions of the budget)."""
    if not 0 < gamma < 1:
        raise ConfigError("gamma", "a factor in (0, 1)", gamma)
    if any(not 0 < m < 1 for m in milestones):
        raise ConfigError("milestones", "fractions of the budget in (0, 1)", milestones)

    def f(t: int, T: int) -> float:
        return gamma ** sum(t >= round(m * T) for m in milestones)

    return Method("step decay", _lambda(f), lr_scale)


def warmup_cosine_method(warmup: float = 0.05, lr_scale: float = 1.0) -> Method:
    """Linear warm-up over ``warmup`` x budget steps, then cosine to 0."""
    if not 0 < warmup < 1:
        raise ConfigError("warmup", "a fraction of the budget in (0, 1)", warmup)

    def f(t: int, T: int) -> float:
        W = max(1, round(warmup * T))
        if t < W:
            return (t + 1) / W
        return 0.5 * (1 + math.cos(math.pi * (t - W) / max(T - W, 1)))

    return Method("warmup+cosine", _lambda(f), lr_scale)


def one_cycle_method(pct_start: float = 0.3, lr_scale: float = 1.0) -> Method:
    """torch's OneCycleLR peaking at the default LR; the momentum is left as the task sets it."""

    def build(opt: torch.optim.Optimizer, T: int) -> Any:
        return torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=[g["lr"] for g in opt.param_groups],
            total_steps=T + 1,  # the harness steps once after the last update
            pct_start=pct_start,
            cycle_momentum=False,
        )

    return Method("one-cycle", build, lr_scale)


class _Plateau:
    """ReduceLROnPlateau driven by validation loss through ``observe_validation``."""

    def __init__(self, opt: torch.optim.Optimizer, factor: float, patience: int) -> None:
        self.inner = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=factor, patience=patience, threshold=1e-3
        )

    def observe_validation(self, val_loss: float, val_acc: float | None = None) -> None:
        self.inner.step(val_loss)

    def step(self) -> None:
        """Per-step call: nothing; the LR only changes at validations."""

    def get_last_lr(self) -> list[float]:
        return [float(v) for v in self.inner.get_last_lr()]


def plateau_method(factor: float = 0.5, patience: int = 2, lr_scale: float = 1.0) -> Method:
    """Halve the LR after ``patience`` validations without improvement of the validation loss."""
    if not 0 < factor < 1:
        raise ConfigError("factor", "a factor in (0, 1)", factor)
    return Method("plateau", lambda opt, T: _Plateau(opt, factor, patience), lr_scale)


class _NoSchedule:
    def step(self) -> None:
        """Nothing to do: the optimizer schedules itself."""


def schedule_free_method(warmup: float = 0.05, lr_scale: float = 1.0) -> Method:
    """Schedule-free AdamW / SGD (Defazio et al. 2024) at the default LR, no schedule."""
    try:
        import schedulefree
    except ImportError as e:  # pragma: no cover - optional dependency
        raise ConfigError(
            "schedule-free",
            "the `schedulefree` package",
            "not installed",
            "pip install trajlib[baselines]",
        ) from e

    def factory(task: Task, params: Any, lr: float, T: int) -> torch.optim.Optimizer:
        W = max(1, round(warmup * T))
        if task.optimizer == "adamw":
            return schedulefree.AdamWScheduleFree(
                params,
                lr=lr,
                betas=(task.momentum, 0.999),
                weight_decay=task.weight_decay,
                warmup_steps=W,
            )
        # SGD+momentum's effective step is lr / (1 - momentum); schedule-free SGD has no such
        # amplification (its "momentum" interpolates), so it starts at that effective LR.
        return schedulefree.SGDScheduleFree(
            params,
            lr=lr / (1.0 - task.momentum),
            momentum=task.momentum,
            weight_decay=task.weight_decay,
            warmup_steps=W,
        )

    return Method("schedule-free", lambda opt, T: _NoSchedule(), lr_scale, optimizer=factory)


def hypergradient_method(
    beta: float | None = None,
    lr_min_factor: float = 1e-3,
    lr_max_factor: float = 10.0,
    lr_scale: float = 1.0,
) -> Method:
    """Hypergradient descent on the LR (Baydin et al. 2018), bounded to
    ``[lr_min_factor, lr_max_factor] x`` the start LR. ``beta=None``: the paper's 1e-3 for SGD,
    1e-7 for Adam(W)."""

    def build(opt: torch.optim.Optimizer, T: int) -> HypergradientLR:
        b = beta
        if b is None:
            b = 1e-7 if isinstance(opt, torch.optim.Adam | torch.optim.AdamW) else 1e-3
        lr0 = float(opt.param_groups[0]["lr"])
        return HypergradientLR(opt, beta=b, lr_min=lr0 * lr_min_factor, lr_max=lr0 * lr_max_factor)

    return Method("hypergradient", build, lr_scale)


def static_methods() -> list[Method]:
    """The six static schedules, all from the task's default LR."""
    return [
        constant_method(),
        step_decay_method(),
        cosine_method(),
        warmup_cosine_method(),
        one_cycle_method(),
        plateau_method(),
    ]
