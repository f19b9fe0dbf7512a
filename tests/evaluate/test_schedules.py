"""Static schedules: exact LR curves through the real harness; schedule-free train/eval toggling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import schedulefree
import torch

from trajlib.evaluate import Method, constant_method, cosine_method, train_task
from trajlib.evaluate._schedules import (
    one_cycle_method,
    plateau_method,
    schedule_free_method,
    step_decay_method,
    warmup_cosine_method,
)
from trajlib.tasks import get_task

T = 100
LR0 = 0.05  # tiny-mlp's default


def _lrs(method: Method) -> np.ndarray:
    tr = train_task(get_task("tiny-mlp"), method, 0, budget=T)
    assert not tr.diverged
    return tr.lr.astype(float)


def _one_cycle(t: int) -> float:
    # torch's OneCycleLR (cos anneal), total_steps = T + 1, pct_start 0.3, div 25, final div 1e4
    up_end, lo, lo_final = 0.3 * (T + 1) - 1, LR0 / 25, LR0 / 25 / 1e4

    def cos(a: float, b: float, p: float) -> float:
        return b + (a - b) / 2 * (1 + math.cos(math.pi * p))

    if t <= up_end:
        return cos(lo, LR0, t / up_end)
    return cos(LR0, lo_final, (t - up_end) / (T - up_end))


@pytest.mark.parametrize(
    ("method", "golden"),
    [
        (constant_method(), {0: LR0, 50: LR0, 99: LR0}),
        (step_decay_method(), {0: LR0, 49: LR0, 50: LR0 * 0.1, 74: LR0 * 0.1, 75: LR0 * 0.01}),
        (
            cosine_method(),
            {
                0: LR0,
                25: LR0 * (1 + math.cos(math.pi / 4)) / 2,
                50: LR0 / 2,
                99: LR0 * (1 + math.cos(math.pi * 0.99)) / 2,
            },
        ),
        (
            warmup_cosine_method(),
            {
                0: LR0 / 5,
                2: LR0 * 3 / 5,
                4: LR0,
                5: LR0,
                50: LR0 * (1 + math.cos(math.pi * 45 / 95)) / 2,
            },
        ),
        (one_cycle_method(), {t: _one_cycle(t) for t in (0, 10, 29, 30, 60, 99)}),
    ],
    ids=["constant", "step-decay", "cosine", "warmup-cosine", "one-cycle"],
)
def test_static_schedule_golden_values(method: Method, golden: dict[int, float]) -> None:
    lrs = _lrs(method)
    for t, want in golden.items():
        assert lrs[t] == pytest.approx(want, rel=1e-5), f"{method.name} at step {t}"


def test_plateau_halves_on_validation_plateau() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = plateau_method(factor=0.5, patience=2).build(opt, 100)
    for v in [1.0, 0.9, 0.95, 0.95]:  # best 0.9, then 2 bad validations: not yet
        sched.observe_validation(v)
        sched.step()
    assert opt.param_groups[0]["lr"] == 1.0
    sched.observe_validation(0.97)  # third bad one > patience
    assert opt.param_groups[0]["lr"] == 0.5
    # in the harness: the LR only ever changes at validation points
    lrs = _lrs(plateau_method(patience=0))
    changes = np.flatnonzero(np.diff(lrs)) + 1
    assert all(c % 20 == 0 for c in changes)


class _SpyScheduleFree(schedulefree.AdamWScheduleFree):
    calls: list[str]

    def train(self) -> None:
        self.calls.append("train")
        super().train()

    def eval(self) -> None:
        self.calls.append("eval")
        super().eval()


def test_schedule_free_toggles_train_and_eval() -> None:
    calls: list[str] = []

    def factory(task, params, lr, total):  # noqa: ANN001, ANN202
        opt = _SpyScheduleFree(params, lr=lr, warmup_steps=5)
        opt.calls = calls
        return opt

    method = Method(
        "sf-spy", lambda opt, T: schedule_free_method().build(opt, T), optimizer=factory
    )
    tr = train_task(get_task("tiny-mlp"), method, 0, budget=60)
    assert not tr.diverged and math.isfinite(tr.test_loss)
    evals = calls.count("eval")
    assert evals == len(tr.val_steps) + 1  # every validation and the final test evaluation
    # every eval is followed by a train (so optimizer.step() always runs in train mode)
    assert calls[0] == "train"
    assert all(calls[i + 1] == "train" for i, c in enumerate(calls) if c == "eval")


def test_schedule_free_method_uses_the_package() -> None:
    task = get_task("tiny-mlp")
    tr = train_task(task, schedule_free_method(), 0, budget=60)
    assert tr.method == "schedule-free" and not tr.diverged
    # SGD task: schedule-free SGD at lr0 / (1 - momentum), 5 % warm-up
    assert tr.lr[-1] == pytest.approx(LR0 / (1 - task.momentum), rel=1e-5)
    assert tr.lr[0] < tr.lr[-1]
