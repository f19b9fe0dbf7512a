"""``copy.deepcopy``, ``pickle`` and ``torch.save`` of a scheduler mid-run: the copy continues
exactly as the original would have, with its own hooks on the copied optimizer."""

from __future__ import annotations

import copy
import dataclasses
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.deploy._helpers import make_model, train, two_groups, with_policy
from trajlib.controllers import load_controller
from trajlib.deploy import ControllerScheduler, Lookahead

N = 70  # mid-window: buffered rows travel with the copy
TOTAL = 140


def _sensitive(x: np.ndarray) -> int:
    """A scripted policy whose action changes with any feature's last digits."""
    return int(abs(np.nansum(x)) * 1e6) % 5


def _fresh(loaded: Any) -> tuple[Any, Any, ControllerScheduler]:
    model = make_model()
    opt = two_groups(model)
    return model, opt, ControllerScheduler(opt, loaded, total_steps=TOTAL, every=20, model=model)


def _torch_round_trip(obj: Any) -> Any:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)  # a whole object: the user's own choice


COPIES = {
    "deepcopy": copy.deepcopy,
    "pickle": lambda o: pickle.loads(pickle.dumps(o)),
    "torch.save": _torch_round_trip,
}


@pytest.mark.parametrize("how", list(COPIES))
def test_a_copy_mid_run_continues_exactly(tiny_checkpoint: Path, how: str) -> None:
    loaded = load_controller(tiny_checkpoint)
    if how == "deepcopy":  # a deep copy shares the controller, so a scripted one works too
        loaded = with_policy(loaded, _sensitive)
    model, opt, sched = _fresh(loaded)
    lrs_straight, losses_straight = train(model, opt, sched, 0, TOTAL)

    model, opt, sched = _fresh(loaded)
    lrs_a, losses_a = train(model, opt, sched, 0, N)
    c = COPIES[how]({"model": model, "opt": opt, "sched": sched})
    assert c["sched"].optimizer is c["opt"] and c["opt"] is not opt
    if how == "deepcopy":
        assert c["sched"].loaded is loaded  # read-only: shared
    # the original goes on, untouched by its copy ...
    lrs_b, losses_b = train(model, opt, sched, N, TOTAL)
    # ... and so does the copy, measured by its own hooks on its own optimizer
    lrs_c, losses_c = train(c["model"], c["opt"], c["sched"], N, TOTAL)
    assert lrs_a + lrs_b == lrs_straight and losses_a + losses_b == losses_straight
    assert lrs_a + lrs_c == lrs_straight and losses_a + losses_c == losses_straight
    assert c["sched"].events == sched.events and sched.events["decisions"] > 0
    assert c["sched"].actions_taken == sched.actions_taken
    assert str(c["sched"].state_dict()) == str(sched.state_dict())
    if how == "deepcopy":  # the scripted policy moved the LR after the copy too
        assert any(a != lrs_straight[N] for a in lrs_straight[N:])


def _raiser(tiny_checkpoint: Path) -> Any:
    loaded = load_controller(tiny_checkpoint)
    lr_moves = [a.moves.get("lr", 0.0) for a in loaded.action_space.actions]
    up = max(range(len(lr_moves)), key=lambda i: lr_moves[i])
    return with_policy(loaded, lambda x: up)


def test_a_copy_mid_trial_still_rolls_back_to_the_raise(tiny_checkpoint: Path) -> None:
    """Copied while a raise is on trial, the copy keeps the guard's weights copy (mapped onto
    the copied parameters): a punished raise rolls the copy back exactly as the original."""
    ckpt = _raiser(tiny_checkpoint)
    every = ckpt.every

    def observed(t: int, loss: float) -> float:  # the raise at the first decision is punished
        return 1.0 if t < every + 5 else 10.0

    runs = []
    model = make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = ControllerScheduler(opt, ckpt, total_steps=200, model=model)
    train(model, opt, sched, 0, every + 5, observed=observed)
    assert sched.units[0].probation is not None
    c = copy.deepcopy((model, opt, sched))
    for m, o, s in ((model, opt, sched), c):
        train(m, o, s, every + 5, 2 * every, observed=observed)
        runs.append((s.events["guard_rollbacks"], [p.detach().clone() for p in m.parameters()]))
    assert runs[0][0] == runs[1][0] == 1
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


def test_what_cannot_be_copied_says_why(tiny_checkpoint: Path) -> None:
    scripted = with_policy(load_controller(tiny_checkpoint), _sensitive)
    _, _, sched = _fresh(scripted)
    with pytest.raises(TypeError, match="only a controller as load_controller loaded it"):
        pickle.dumps(sched)
    changed = dataclasses.replace(load_controller(tiny_checkpoint))
    with pytest.raises(TypeError, match="pickled as its checkpoint folder"):
        pickle.dumps(changed)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def train_step(batch: Any) -> torch.Tensor:
        raise AssertionError("not called")

    look = Lookahead(train_step, model)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=100, lookahead=look)
    with pytest.raises(TypeError, match="lookahead cannot be copied"):
        copy.deepcopy(sched)
