"""Populations beyond plain MLPs: each optimizer's population step against ``torch.optim`` on one
member; BatchNorm (per-member buffers) and dropout (per-member seeded randomness) collected as a
population equal to the same runs trained alone."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from tests import _user_tasks as U
from trajlib import schema as S
from trajlib.collect._engine import FlatSpec, Population
from trajlib.collect._recipe import parse_recipe
from trajlib.collect._runner import run_population
from trajlib.tasks._base import OPTIMIZERS, batch_slot, epoch_order

# (momentum, weight_decay) per member: no momentum, momentum, momentum + weight decay
MEMBER_HPS = [(0.0, 0.0), (0.9, 0.0), (0.8, 0.01)]
LRS = [0.05, 0.02, 0.03]
STEPS = 8


def _reference(task, seed: int, lr: float, momentum: float, wd: float, steps: int):
    """Member ``seed`` trained with plain PyTorch: the task's torch.optim optimizer on the batches
    the collector gives that seed."""
    torch.manual_seed(seed)
    model = task.make_model()
    data = task.make_data()
    opt = task.make_optimizer(model.parameters(), lr, momentum=momentum, weight_decay=wd)
    n, B = data.x_train.shape[0], task.batch_size
    model.train()
    for t in range(steps):
        epoch, start = batch_slot(t, n, B)
        idx = epoch_order(seed, epoch, n)[start : start + B]
        opt.zero_grad()
        task.loss_value(model(data.x_train[idx]), data.y_train[idx]).backward()
        opt.step()
    return model


def _nesterov_ok(opt: str, momentum: float) -> bool:
    return not (opt == "nesterov" and momentum == 0.0)  # torch refuses Nesterov without momentum


# the hand-written MLP backward ("mlp" engine), vmap on the same MLP, vmap with BatchNorm
@pytest.mark.parametrize(("model", "fast"), [("mlp", True), ("mlp", False), ("bn", False)])
@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_population_step_equals_torch_optim(opt, fast, model):
    task = U.task(model, opt)
    hps = [(m, w) for m, w in MEMBER_HPS if _nesterov_ok(opt, m)]
    seeds = [11 + i for i in range(len(hps))]
    lrs = LRS[: len(hps)]
    pop = Population(
        task,
        task.make_data(),
        seeds,
        {"lr": lrs, "momentum": [m for m, _ in hps], "weight_decay": [w for _, w in hps]},
        fast=fast,
        capacity=STEPS,
    )
    assert pop.engine == ("mlp" if fast else "vmap"), pop.engine_reason
    # Adaptive optimizers normalise by sqrt(v): a near-zero gradient's rounding moves a weight by
    # up to ~lr; 2e-5 is still far below one step's size (~lr = 0.02-0.05)
    atol = 2e-5 if opt in ("adam", "adamw", "rmsprop", "nadam", "adagrad") else 1e-6
    lr = torch.tensor(lrs, dtype=torch.float32)
    for _ in range(STEPS):
        pop.step(lr)
    for k, (seed, lr_k, (m, w)) in enumerate(zip(seeds, lrs, hps)):
        ref = _reference(task, seed, lr_k, m, w, STEPS)
        want = FlatSpec.from_module(ref).flatten(ref)
        torch.testing.assert_close(pop.theta[k], want, rtol=1e-4, atol=atol)
        for name, buf in ref.named_buffers():  # BatchNorm running statistics, per member
            torch.testing.assert_close(pop.buffers[name][k], buf, rtol=1e-5, atol=1e-6)
    # evaluation uses the running statistics (eval mode), like the reference in eval mode
    ref.eval()
    data = task.make_data()
    with torch.no_grad():
        want_loss = task.loss_value(ref(data.x_val), data.y_val)
    torch.testing.assert_close(pop.evaluate("val")[0][-1], want_loss, rtol=1e-5, atol=1e-6)


def _recipe(task: str, population: int):
    return parse_recipe(
        {
            "collect": {
                "tasks": [task],
                "runs_per_task": 4,
                "population": population,
                "budget": 30,
                "every": 10,
                "val_every": 10,
            },
            "space": {"momentum_range": 3.0},
            "branch": {"enabled": True, "horizon": 5, "cooldown": 2},
        },
        name="generality",
    )


def _frames_close(a: pl.DataFrame, b: pl.DataFrame) -> None:
    assert a.columns == b.columns and a.height == b.height
    for name in a.columns:
        if "time" in name:
            continue
        x, y = a[name], b[name]
        if x.dtype.is_float():
            np.testing.assert_allclose(
                x.to_numpy().astype(np.float64),
                y.to_numpy().astype(np.float64),
                rtol=1e-4,
                atol=1e-6,
                equal_nan=True,
                err_msg=name,
            )
        else:
            assert x.equals(y, null_equal=True), name


@pytest.mark.parametrize(
    ("task", "engine"),
    [("tests._user_tasks:bn_dropout_task", "loop"), ("tests._user_tasks:bn_task", "vmap")],
)
def test_population_of_4_equals_members_alone(task, engine):
    configs = _recipe(task, 4).run_configs()
    together = run_population(configs)
    alone = [run_population([c])[0] for c in configs]
    for a, b in zip(together, alone):
        assert a.run[S.RUN_ID] == b.run[S.RUN_ID]
        assert a.run[S.STATUS] == b.run[S.STATUS] == S.STATUS_COMPLETE
        _frames_close(a.steps, b.steps)
        _frames_close(a.decisions, b.decisions)
        _frames_close(a.branches, b.branches)
        np.testing.assert_allclose(a.layers, b.layers, rtol=1e-4, atol=1e-6)
        entry = __import__("json").loads(a.run[S.ENTRY])
        if engine == "loop":
            assert entry["engine"] == "loop" and "random" in entry["engine_reason"]
        else:
            assert "engine" not in entry
    # members differ from each other (their own seeds and dropout masks), and a rerun is exact
    losses = [r.steps[S.LOSS].to_numpy() for r in together]
    assert not np.allclose(losses[0], losses[1])
    again = run_population(configs)
    for a, b in zip(together, again):
        assert a.steps.drop(S.STEP_TIME_S).equals(b.steps.drop(S.STEP_TIME_S), null_equal=True)


def test_dropout_masks_differ_between_steps_and_members():
    """The loop engine really draws dropout: member losses differ from the same model without
    dropout."""
    t_drop = U.task("bn_dropout", "sgd")
    t_plain = U.task("bn", "sgd")
    pops = [Population(t, t.make_data(), [3, 4], capacity=4, fast=False) for t in (t_drop, t_plain)]
    assert [p.engine for p in pops] == ["loop", "vmap"]
    lr = torch.tensor([0.05, 0.05])
    for p in pops:
        p.step(lr)
    assert not torch.allclose(pops[0].last_losses(), pops[1].last_losses())
    for p in pops:  # both engines update each member's BatchNorm statistics in place
        assert p.buffers["1.num_batches_tracked"].tolist() == [1, 1]
        assert (p.buffers["1.running_mean"] != 0).all()
        assert not torch.equal(p.buffers["1.running_mean"][0], p.buffers["1.running_mean"][1])


class _ItemModel(nn.Module):
    """A model vmap cannot run (a data-dependent Python branch on a tensor value)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)
        return out if float(out.detach().sum()) < 1e9 else out * 0


def test_model_vmap_cannot_run_falls_back_to_the_loop_with_its_reason():
    task = U.task("mlp", "adamw", make_model=_ItemModel)
    pop = Population(task, task.make_data(), [1, 2], capacity=5)
    assert pop.engine == "loop" and "vmap cannot run this model" in pop.engine_reason
    alone = Population(task, task.make_data(), [2], capacity=5)
    lr = torch.tensor([0.01, 0.01])
    for _ in range(5):
        pop.step(lr)
        alone.step(lr[:1])
    torch.testing.assert_close(pop.theta[1], alone.theta[0], rtol=1e-5, atol=1e-7)
