"""Hypergradient descent: LR grows while consecutive gradients align, stays within its bounds."""

from __future__ import annotations

import math

import pytest
import torch

from trajlib.errors import ConfigError
from trajlib.evaluate import train_task
from trajlib.evaluate._hypergradient import HypergradientLR
from trajlib.evaluate._schedules import hypergradient_method
from trajlib.tasks import get_task


def _quadratic(opt_cls, lr: float, beta: float, lo: float, hi: float, steps: int = 30, **kw):  # noqa: ANN001, ANN202
    theta = torch.nn.Parameter(torch.full((4,), 5.0))
    opt = opt_cls([theta], lr=lr, **kw)
    hd = HypergradientLR(opt, beta=beta, lr_min=lo, lr_max=hi)
    lrs = []
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (theta**2).sum()).backward()
        opt.step()
        hd.step()
        lrs.append(opt.param_groups[0]["lr"])
    hd.close()
    return lrs


def test_lr_increases_when_gradients_align() -> None:
    # f = |theta|^2 / 2 with a small LR: g_t . g_{t-1} > 0 every step -> LR strictly increases
    lrs = _quadratic(torch.optim.SGD, lr=0.01, beta=1e-3, lo=1e-4, hi=10.0, steps=10)
    assert all(b > a for a, b in zip(lrs, lrs[1:]))


def test_lr_increases_with_adamw_direction() -> None:
    lrs = _quadratic(
        torch.optim.AdamW, lr=0.01, beta=1e-3, lo=1e-4, hi=10.0, steps=10, weight_decay=0.0
    )
    assert lrs[-1] > lrs[0]


def test_lr_stays_within_bounds_and_never_negative() -> None:
    # LR 2.5 on f = |theta|^2 / 2 overshoots: consecutive gradients point against each other
    lrs = _quadratic(torch.optim.SGD, lr=2.5, beta=1.0, lo=1e-3, hi=3.0)
    assert min(lrs) == pytest.approx(1e-3) and all(lr > 0 for lr in lrs)
    up = _quadratic(torch.optim.SGD, lr=0.01, beta=10.0, lo=1e-3, hi=0.5)
    assert max(up) == pytest.approx(0.5) and all(1e-3 <= lr <= 0.5 for lr in up)


def test_invalid_bounds_are_rejected() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ConfigError, match="lr_min"):
        HypergradientLR(opt, beta=1e-3, lr_min=0.0, lr_max=1.0)


def test_hypergradient_method_in_harness_respects_bounds() -> None:
    task = get_task("tiny-mlp")
    tr = train_task(task, hypergradient_method(beta=1.0, lr_max_factor=4.0), 0, budget=80)
    lo, hi = task.default_lr * 1e-3, task.default_lr * 4.0
    assert all(lo * (1 - 1e-6) <= v <= hi * (1 + 1e-6) for v in tr.lr)
    assert "hypergradient_clamped" in tr.info and math.isfinite(tr.test_loss)
