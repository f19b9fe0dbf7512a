"""``ControllerScheduler.summary()``: what the controller did, read back from a real run."""

from __future__ import annotations

import warnings
from itertools import cycle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tests.deploy._helpers import make_model, train, with_policy
from trajlib.controllers import load_controller
from trajlib.deploy import ControllerScheduler

STEPS = 200


def _scripted(tiny_checkpoint: Path, plan: list[str]) -> Any:
    """The tiny checkpoint with a controller that takes ``plan``'s moves in turn ("up": the
    largest LR raise, "down": the largest cut, "keep")."""
    loaded = load_controller(tiny_checkpoint)
    lr = [a.moves.get("lr", 0.0) for a in loaded.action_space.actions]
    index = {
        "up": max(range(len(lr)), key=lambda i: lr[i]),
        "down": min(range(len(lr)), key=lambda i: lr[i]),
        "keep": loaded.action_space.keep_index,
    }
    moves = cycle(plan)
    return with_policy(loaded, lambda x: index[next(moves)])


def _run(ckpt: Any, *, val_every: int = 20, **kw: Any) -> ControllerScheduler:
    model = make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = ControllerScheduler(opt, ckpt, total_steps=STEPS, model=model, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(model, opt, sched, 0, STEPS, val_every)
    return sched


def test_the_summary_counts_the_moves_the_run_took(tiny_checkpoint: Path) -> None:
    sched = _run(_scripted(tiny_checkpoint, ["up", "keep", "down"]), guard=None)
    decisions = sched.events["decisions"]
    assert decisions == (STEPS - 1) // sched.every
    raises = len(range(0, decisions, 3))
    cuts = len(range(2, decisions, 3))
    text = sched.summary()
    lines = text.splitlines()
    assert lines[0].startswith(f"ControllerScheduler: {STEPS} of {STEPS} steps")
    assert f"{decisions} decisions: {raises} LR raises, {cuts} LR cuts" in lines[0]
    assert f"{decisions - raises - cuts} kept" in lines[0]
    assert lines[1] == f"LR multiplier now (x the base schedule): {sched.mult:.3g}"
    assert "raise guard: off" in lines
    assert f"validation: {STEPS // 20} reports" in lines
    assert lines[-1] == "problems: none"
    assert sched.events["validation_reports"] == STEPS // 20


def test_the_summary_says_when_no_validation_was_reported(tiny_checkpoint: Path) -> None:
    sched = _run(_scripted(tiny_checkpoint, ["keep"]), val_every=STEPS + 1)
    text = sched.summary()
    assert "validation: none reported (decisions from training signals alone)" in text
    assert "raise guard: nothing undone" in text
    assert sched.events["validation_reports"] == 0


def test_the_summary_names_the_guard_and_the_problems(tiny_checkpoint: Path) -> None:
    """A raise whose loss blows up is reverted; step() calls without observe() are counted."""
    ckpt = _scripted(tiny_checkpoint, ["up"])
    model = make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = ControllerScheduler(opt, ckpt, total_steps=STEPS, model=model)
    every = sched.every
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(model, opt, sched, 0, 3 * every, observed=lambda t, _: 1.0 if t < every else 10.0)
        for _ in range(3):  # optimizer steps the loop never reports a loss for
            loss = nn.functional.mse_loss(model(torch.randn(4, 8)).sum(1), torch.zeros(4))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    assert sched.events["guard_reverts"] == 1 and sched.events["missing_loss"] == 3
    text = sched.summary()
    assert "raise guard: 1 raise reverted" in text  # one, singular; several, plural
    assert "3 steps without observe()" in text.splitlines()[-1]
    sched.events["guard_reverts"] = 2
    assert "raise guard: 2 raises reverted" in sched.summary()


def test_the_validation_count_survives_a_state_dict(tiny_checkpoint: Path) -> None:
    sched = _run(_scripted(tiny_checkpoint, ["keep"]))
    model = make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    again = ControllerScheduler(opt, _scripted(tiny_checkpoint, ["keep"]), total_steps=STEPS)
    again.load_state_dict(sched.state_dict())
    assert again.events["validation_reports"] == STEPS // 20
    assert again.summary().splitlines()[3] == f"validation: {STEPS // 20} reports"
