"""Small user-style tasks (``module:function``) for the collector's generality tests: BatchNorm,
dropout, and each optimizer trajlib populations implement."""

from __future__ import annotations

import torch
from torch import nn

from trajlib.tasks import Task, TaskData


def _data() -> TaskData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 8, generator=g)
    y = ((x[:, 0] + 0.5 * x[:, 1] > 0).long() + (x[:, 2] > 1).long()).clamp(max=2)
    return TaskData(x[:96], y[:96], x[96:128], y[96:128], x[128:], y[128:])


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


# No bias before BatchNorm (it would have a zero gradient, up to rounding, that Adam's
# normalisation turns into lr-sized moves of noise).
def bn_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3)
    )


def bn_dropout_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(8, 16, bias=False),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(16, 3),
    )


def task(model: str = "mlp", optimizer: str = "sgd", **kw: object) -> Task:
    makers = {"mlp": mlp, "bn": bn_mlp, "bn_dropout": bn_dropout_mlp}
    args: dict = dict(
        name=f"user-{model}-{optimizer}",
        family="user",
        make_model=makers[model],
        make_data=_data,
        optimizer=optimizer,
        default_lr=0.05,
        momentum=0.9,
        budget=40,
        batch_size=16,
        val_every=10,
    )
    args.update(kw)
    return Task(**args)


def bn_dropout_task() -> Task:
    return task("bn_dropout", "adam", default_lr=0.01)


def bn_task() -> Task:
    return task("bn", "nesterov")
