"""Tiny real tasks for the evaluation tests (seconds on one CPU thread)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from trajlib.tasks import Task, TaskData, register_task


@functools.cache
def _linear_data(val_mode: str) -> TaskData:
    """Linear regression ``y = x w* + noise``; the validation targets depend on ``val_mode``:
    ``same`` (same law), ``zero`` (val wants a smaller model), ``double`` (val wants 2 w*)."""
    g = torch.Generator().manual_seed(0)
    d = 8
    w = torch.randn(d, 1, generator=g)
    x = torch.randn(1200, d, generator=g)
    y = x @ w + 0.3 * torch.randn(1200, 1, generator=g)
    xv = torch.randn(400, d, generator=g)
    yv = {"same": xv @ w, "zero": torch.zeros(400, 1), "double": 2 * xv @ w}[val_mode]
    return TaskData(x[:800], y[:800], xv, yv, x[800:], y[800:])


def linear_task(val_mode: str = "same", *, lr: float = 0.05, budget: int = 100) -> Task:
    return Task(
        f"tiny-linear-{val_mode}",
        "tiny",
        lambda: nn.Linear(8, 1, bias=False),
        functools.partial(_linear_data, val_mode),
        loss="mse",
        optimizer="sgd",
        default_lr=lr,
        momentum=0.0,
        budget=budget,
        batch_size=32,
        val_every=20,
    )


@register_task("tiny-mlp")
def tiny_mlp() -> Task:
    """A 2-class MLP on Gaussian blobs: the smallest classification task with a real loss curve."""

    @functools.cache
    def data() -> TaskData:
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1500, 10, generator=g)
        y = (x[:, :3].sum(1) + 0.5 * torch.randn(1500, generator=g) > 0).long()
        return TaskData(x[:900], y[:900], x[900:1200], y[900:1200], x[1200:], y[1200:])

    return Task(
        "tiny-mlp",
        "tiny",
        lambda: nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2)),
        data,
        optimizer="sgd",
        default_lr=0.05,
        momentum=0.9,
        budget=100,
        batch_size=32,
        val_every=20,
    )
