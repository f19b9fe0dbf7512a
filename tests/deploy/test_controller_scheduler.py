"""ControllerScheduler in a plain PyTorch loop: decisions, bounds, safety, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.deploy._helpers import nan_steps, with_policy
from trajlib.controllers import load_controller
from trajlib.deploy import ControllerScheduler
from trajlib.space import HyperParam, HyperparameterSpace
from trajlib.tasks import get_task


def _loop(sched_factory, steps: int = 120, seed: int = 0, lr: float = 0.02, start=None):
    task = get_task("digits-mlp")
    data = task.make_data()
    torch.manual_seed(seed)
    model = task.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    sched = sched_factory(opt)
    if start is not None:
        start(model, opt, sched)
    g = torch.Generator().manual_seed(seed)
    lrs, losses = [], []
    for t in range(steps):
        idx = torch.randint(0, len(data.x_train), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.observe(loss)
        if (t + 1) % 25 == 0:
            with torch.no_grad():
                sched.observe_validation(
                    float(torch.nn.functional.cross_entropy(model(data.x_val), data.y_val))
                )
        lrs.append(opt.param_groups[0]["lr"])
        losses.append(float(loss.detach()))
        sched.step()
    return model, opt, sched, lrs, losses


def test_controller_decides_every_n_steps_and_lr_stays_in_bounds(tiny_checkpoint):
    loaded = load_controller(tiny_checkpoint)
    _, opt, sched, lrs, _ = _loop(lambda o: ControllerScheduler(o, loaded, total_steps=120))
    assert sched.events["decisions"] == 120 // loaded.every - (120 % loaded.every == 0)
    assert sched.events["errors"] == 0
    # the LR only changes at decision points
    changes = [t for t in range(1, len(lrs)) if lrs[t] != lrs[t - 1]]
    assert all(t % loaded.every == 0 for t in changes)
    assert sched.get_last_lr() == [opt.param_groups[0]["lr"]]
    # a controller that always doubles runs into the checkpoint's upper bound and stays there,
    # and one that always halves into the lower bound (decisions at the validations)
    space = HyperparameterSpace((HyperParam("lr", 0.25, 4.0, "log"),))
    for action, bound in ((4, 4.0), (0, 0.25)):
        scripted = with_policy(loaded, lambda x, a=action: a, hp_space=space)
        _, _, sched, lrs, _ = _loop(
            lambda o, c=scripted: ControllerScheduler(o, c, total_steps=400, every=25),
            steps=80,
        )
        factor = 2.0 if action == 4 else 0.5
        expected = [0.02 * min(max(factor ** (t // 25), 0.25), 4.0) for t in range(80)]
        assert lrs == pytest.approx(expected, rel=1e-12)
        assert sched.lr_multipliers == [bound] and lrs[-1] == pytest.approx(0.02 * bound)


def test_an_exception_in_the_controller_holds_the_lr_and_never_reaches_training(tiny_checkpoint):
    loaded = load_controller(tiny_checkpoint)

    def boom(x, state=None):
        raise RuntimeError("controller broke")

    loaded.controller.decide_values = boom  # type: ignore[method-assign]
    with pytest.warns(RuntimeWarning, match="holding"):
        _, _, sched, lrs, _ = _loop(lambda o: ControllerScheduler(o, loaded, total_steps=120))
    assert sched.events["errors"] >= 1
    assert len(set(lrs)) == 1


def test_non_finite_losses_do_not_crash_and_lr_is_held(tiny_checkpoint):
    loaded = load_controller(tiny_checkpoint)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # without the guard (with it, a start that is never finite is rescued: tests/deploy/test_guard)
    sched = ControllerScheduler(opt, loaded, total_steps=100, guard=None)
    nan_steps(model, opt, sched, 60)
    assert all(math.isfinite(v) for v in sched.get_last_lr())
    assert sched.get_last_lr() == [0.1]


def test_wrong_arguments_fail_up_front(tiny_checkpoint):
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="total_steps"):
        ControllerScheduler(opt, tiny_checkpoint, total_steps=0)
    with pytest.raises(ValueError, match="optimizer"):
        ControllerScheduler(object(), tiny_checkpoint, total_steps=10)  # type: ignore[arg-type]


def test_probe_statistics_match_a_direct_computation():
    from trajlib.deploy._probe import PROBE_COLUMNS, StepProbe, summarise

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = StepProbe(opt)
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    prev_g = prev_u = prev_norms = None
    for _ in range(3):
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        before = [p.detach().clone() for p in model.parameters()]
        grads = [p.grad.detach().clone() for p in model.parameters()]
        opt.step()
        layer_stats, present = probe.take()
        assert present is None
        row, prev_norms = summarise(layer_stats[None], None, prev_norms)
        stats = dict(zip(PROBE_COLUMNS, row[0].tolist()))
        upd = [p.detach() - b for p, b in zip(model.parameters(), before)]
        flat = lambda ts: torch.cat([t.reshape(-1) for t in ts])  # noqa: E731
        assert stats["grad_norm"] == pytest.approx(float(flat(grads).norm()), rel=1e-5)
        assert stats["weight_norm"] == pytest.approx(float(flat(before).norm()), rel=1e-5)
        assert stats["update_norm"] == pytest.approx(float(flat(upd).norm()), rel=1e-5)
        ratios = np.array([float(u.norm() / b.norm()) for u, b in zip(upd, before)])
        assert stats["upd_ratio_max"] == pytest.approx(ratios.max(), rel=1e-5)
        assert stats["upd_ratio_mean"] == pytest.approx(ratios.mean(), rel=1e-5)
        if prev_g is not None:
            cos = float(flat(grads) @ prev_g / (flat(grads).norm() * prev_g.norm()))
            assert stats["grad_cos"] == pytest.approx(cos, rel=1e-4, abs=1e-6)
            ucos = float(flat(upd) @ prev_u / (flat(upd).norm() * prev_u.norm()))
            assert stats["update_cos"] == pytest.approx(ucos, rel=1e-4, abs=1e-6)
        else:
            assert math.isnan(stats["grad_cos"])
        prev_g, prev_u = flat(grads), flat(upd)
