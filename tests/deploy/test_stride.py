"""A scheduler whose probe measures every 4th step (``stats_every``): the left-out steps reach the
online features as rows without statistics whose finiteness is unknown (not as skipped, non-finite
steps), and the buffered rows keep that through a state_dict round trip."""

from __future__ import annotations

import io

import numpy as np
import torch
from torch import nn

from tests.deploy._helpers import batch, make_model
from trajlib.deploy import ControllerScheduler
from trajlib.deploy._probe import StepProbe
from trajlib.measure import stride_masks


def _strided(opt: torch.optim.Optimizer, ckpt, total: int) -> ControllerScheduler:
    """The checkpoint's scheduler with its probe replaced by a stride-4 one (no controller is
    fitted on a strided feature set; the benchmark does the same)."""
    sched = ControllerScheduler(opt, ckpt, total_steps=total)
    dots = sched._probe.dots
    sched._probe.remove()
    sched._probe = StepProbe(opt, dots=dots, stats_every=4)
    return sched


def _train(model: nn.Module, opt, sched, steps: range) -> None:
    for t in steps:
        x, y = batch(t)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.observe(loss)
        sched.step()


def test_strided_rows_are_neither_skipped_nor_nonfinite(tiny_checkpoint):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = _strided(opt, tiny_checkpoint, 300)
    every = sched.every
    _train(model, opt, sched, range(2 * every + 7))
    assert sched.events["skipped_steps"] == 0 and sched.events["errors"] == 0
    assert sched.events["decisions"] + sched.events["held_nonfinite"] == 2
    feats = sched.units[0].features.values_dict()
    assert feats["nonfinite_frac"] == 0.0 and feats["nonfinite_frac_50"] == 0.0
    assert np.isfinite(feats["grad_norm_cv_100"]) and np.isfinite(feats["grad_cos_ema_50"])
    rows = sched.state_dict()["trajlib"]["rows"]
    measured, _ = stride_masks(np.array(rows["step"]), 4, sched._probe.dots)
    assert rows["measured"] == measured.tolist() and len(rows["step"]) == 7
    assert rows["strided"] == (~measured).tolist()
    assert sched._probe.steps_seen == 2 * every + 7


def test_strided_rows_survive_a_state_dict_round_trip(tiny_checkpoint):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = _strided(opt, tiny_checkpoint, 300)
    _train(model, opt, sched, range(sched.every + 6))
    buf = io.BytesIO()  # saved and loaded as a user would: nothing shared with the original
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    state = sched.state_dict()
    model2 = make_model(1)
    model2.load_state_dict(saved["model"])
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
    opt2.load_state_dict(saved["opt"])
    sched2 = _strided(opt2, tiny_checkpoint, 300)
    sched2.load_state_dict(state)
    again = sched2.state_dict()
    assert again["trajlib"]["rows"]["strided"] == state["trajlib"]["rows"]["strided"]
    assert again["trajlib"]["rows"]["measured"] == state["trajlib"]["rows"]["measured"]
    assert (
        again["trajlib"]["probe"]["index"] == state["trajlib"]["probe"]["index"] == sched.every + 6
    )
    # both continue identically: same rows, same decisions
    steps = range(sched.every + 6, 2 * sched.every + 3)
    _train(model, opt, sched, steps)
    _train(model2, opt2, sched2, steps)
    assert sched.actions_taken == sched2.actions_taken
    a, b = sched.state_dict()["trajlib"]["rows"], sched2.state_dict()["trajlib"]["rows"]
    assert a["strided"] == b["strided"]
    torch.testing.assert_close(a["stats"], b["stats"], equal_nan=True)


def test_next_step_aligns_the_stride_with_a_schedulers_count():
    """The stride counts ``take()`` calls unless told otherwise: after ``next_step = 5`` the next
    steps are 5, 6, 7, 8 (measured: 7 and 8 with the cosines' step before)."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = StepProbe(opt, stats_every=4)
    assert probe.next_step == 0
    probe.next_step = 5
    got = []
    for t in range(4):
        x, y = batch(t)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        got.append(isinstance(probe.take(), tuple))
    assert got == [False, False, True, True] and probe.next_step == 9
