"""A small, fully deterministic training loop around a ControllerScheduler (for many tests)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from trajlib.controllers import LoadedController
from trajlib.space import ActionSpace


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def batch(t: int, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch of step ``t``: a deterministic function of ``t`` (so a resumed run sees the same)."""
    g = torch.Generator().manual_seed(10_000 + t)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


def optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, t: int) -> torch.Tensor:
    """One optimizer step on ``batch(t)``; its loss."""
    x, y = batch(t)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def two_groups(model: nn.Module, lr: float = 0.05, momentum: float = 0.9) -> torch.optim.SGD:
    """SGD with two param groups (first layer, last layer) of different initial LRs."""
    return torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": lr},
            {"params": model[2].parameters(), "lr": lr / 5},
        ],
        lr=lr,
        momentum=momentum,
    )


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    start: int,
    stop: int,
    val_every: int = 20,
    observed: Callable[[int, float], float] | None = None,
    val_of: Callable[[int, float], float] | None = None,
) -> tuple[list[list[float]], list[float]]:
    """Train steps ``start .. stop - 1``; returns (LRs used by each step per group, losses).
    ``observed(t, loss)``: what the scheduler is told the loss of step ``t`` was (default: it);
    ``val_of(t, val_loss)``: the same for the validation loss reported after step ``t``."""
    lrs, losses = [], []
    for t in range(start, stop):
        x, y = batch(t)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.observe(loss if observed is None else observed(t, float(loss.detach())))
        if (t + 1) % val_every == 0:
            with torch.no_grad():
                xv, yv = batch(99_999, 128)
                val = float(nn.functional.cross_entropy(model(xv), yv))
                sched.observe_validation(val if val_of is None else val_of(t, val))
        losses.append(float(loss.detach()))
        sched.step()
    return lrs, losses


def nan_steps(model: nn.Module, opt: torch.optim.Optimizer, sched: Any, n: int) -> None:
    """``n`` steps of a ``Linear(k, 1)``-style model whose loss is NaN (real NaN gradients)."""
    for _ in range(n):
        loss = (model(torch.randn(4, model.in_features)) * float("nan")).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.observe(loss)
        sched.step()


def with_policy(
    loaded: LoadedController,
    policy: Callable[[np.ndarray], int],
    actions: ActionSpace | None = None,
    hp_space: Any = None,
) -> LoadedController:
    """A copy of ``loaded`` whose controller picks ``policy(features)`` (a scripted controller,
    to test what the scheduler does with a decision), optionally with another action/hp space."""
    import copy

    ctrl = copy.deepcopy(loaded.controller)
    n = len(actions) if actions is not None else len(loaded.action_space)

    def decide_values(x: np.ndarray, state: Any = None) -> tuple[np.ndarray, Any]:
        v = np.zeros(n)
        v[policy(np.asarray(x))] = 1.0
        return v, state

    ctrl.decide_values = decide_values  # type: ignore[method-assign]
    spec_changes: dict[str, Any] = {}
    if actions is not None:
        spec_changes["action_space"] = actions
    if hp_space is not None:
        spec_changes["hp_space"] = hp_space
    spec = dataclasses.replace(loaded.spec, **spec_changes)
    return dataclasses.replace(loaded, controller=ctrl, spec=spec)
