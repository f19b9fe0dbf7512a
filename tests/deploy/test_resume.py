"""Resume equivalence: 2N steps straight == N steps, save everything, load fresh objects, N more."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from tests.deploy._helpers import make_model, train, two_groups, with_policy
from trajlib.controllers import load_controller
from trajlib.deploy import ControllerScheduler

N = 70  # not a multiple of the decision interval: buffered rows are part of the saved state
TOTAL = 2 * N


def _fresh(loaded, layerwise: bool):
    model = make_model()
    opt = two_groups(model)
    sched = ControllerScheduler(opt, loaded, total_steps=TOTAL, every=20, layerwise=layerwise)
    return model, opt, sched


def _sensitive(x: np.ndarray) -> int:
    """A scripted policy whose action changes with any feature's last digits."""
    return int(abs(np.nansum(x)) * 1e6) % 5


@pytest.mark.parametrize("kind", ["gbt", "mlp", "gru", "scripted"])
@pytest.mark.parametrize("layerwise", [False, True], ids=["global", "layerwise"])
def test_resume_gives_identical_lrs_losses_and_features(checkpoints, kind, layerwise):
    if kind == "scripted":
        loaded = with_policy(load_controller(checkpoints("gbt")), _sensitive)
    else:
        loaded = load_controller(checkpoints(kind))
    model, opt, sched = _fresh(loaded, layerwise)
    lrs_straight, losses_straight = train(model, opt, sched, 0, TOTAL)
    end_straight = sched.state_dict()

    model, opt, sched = _fresh(loaded, layerwise)
    lrs_a, losses_a = train(model, opt, sched, 0, N)
    buf = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf
    )
    sched.close()
    del model, opt, sched
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model, opt, sched = _fresh(loaded, layerwise)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    sched.load_state_dict(saved["sched"])
    lrs_b, losses_b = train(model, opt, sched, N, TOTAL)

    assert lrs_a + lrs_b == lrs_straight
    assert losses_a + losses_b == losses_straight
    end_resumed = sched.state_dict()
    for u_s, u_r in zip(
        end_straight["trajlib"]["units"], end_resumed["trajlib"]["units"], strict=True
    ):
        assert u_r["features"] == u_s["features"]  # the cosines after the resume are not NaN
        assert u_r["mult"] == u_s["mult"]
        cs_s, cs_r = u_s["controller_state"], u_r["controller_state"]
        if kind == "gru":  # hidden state carried across the resume
            assert torch.equal(cs_s["ndarray"], cs_r["ndarray"])
            assert cs_s["ndarray"].abs().sum() > 0
    assert end_resumed["trajlib"]["events"] == end_straight["trajlib"]["events"]
    assert sched.events["decisions"] > 0 and sched.events["errors"] == 0
    assert end_resumed["trajlib"]["actions_taken"] == end_straight["trajlib"]["actions_taken"]
    if kind == "scripted":  # the LR really moved, before and after the resume point
        changes = [t for t in range(1, TOTAL) if lrs_straight[t] != lrs_straight[t - 1]]
        assert any(t < N for t in changes) and any(t > N for t in changes)


def test_state_dict_is_plain_python_plus_tensors(tiny_checkpoint):
    model = make_model()
    opt = two_groups(model)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=100, every=20)
    train(model, opt, sched, 0, 30)
    state = sched.state_dict()

    def walk(o, path="state"):
        if isinstance(o, dict):
            for k, v in o.items():
                assert isinstance(k, str), path
                walk(v, f"{path}.{k}")
        elif isinstance(o, list | tuple):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")
        else:
            assert o is None or isinstance(o, bool | int | float | str | torch.Tensor), (path, o)

    walk(state)
    assert state["trajlib"]["version"] == 3
    assert state["last_epoch"] == 30 and state["_step_count"] == 31  # torch's own bookkeeping
    # taking the state twice changes nothing
    assert str(sched.state_dict()) == str(state)


def test_load_state_dict_rejects_other_versions_and_settings(tiny_checkpoint):
    model = make_model()
    opt = two_groups(model)
    sched = ControllerScheduler(opt, tiny_checkpoint, total_steps=100)
    state = sched.state_dict()
    with pytest.raises(ValueError, match="version"):
        sched.load_state_dict({**state, "trajlib": {**state["trajlib"], "version": 2}})
    lw = ControllerScheduler(
        two_groups(make_model()), tiny_checkpoint, total_steps=100, layerwise=True
    )
    with pytest.raises(ValueError, match="layerwise"):
        lw.load_state_dict(state)
    one_group = torch.optim.SGD(make_model().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="param groups"):
        ControllerScheduler(one_group, tiny_checkpoint, total_steps=100).load_state_dict(state)
