"""Branches from a user's loop: every action from a snapshot on the same (buffered) batches. With
branching on, the main trajectory is bit-identical to the same run with branching off, and the
branch of the action the behaviour took equals the main trajectory's next H steps."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from tests.record._loops import SmallCNN, loader, stepper, validator
from trajlib import schema as S
from trajlib.collect import Recorder
from trajlib.spec import BranchConfig
from trajlib.store import create_store, open_store

EVERY, H, COOL, STEPS = 5, 4, 2, 30


def _run(path, *, branching: bool):
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    validate = validator(model)

    train_step = stepper(model, opt)

    store = create_store(path)
    rec = Recorder(
        store, opt, total_steps=STEPS, every=EVERY, model=model, seed=1,
        behaviour="random-walk", branch=BranchConfig(horizon=H, cooldown=COOL),
        train_step=train_step if branching else None, validate=validate if branching else None,
    )  # fmt: skip
    t = 0
    data = loader(seed=0, batch_size=8)  # 12 batches per epoch: buffers cross epoch ends
    with rec:
        while t < STEPS:
            for batch in rec.batches(data):
                loss = train_step(batch)
                rec.observe(loss)
                rec.step()
                rec.observe_validation(*validate())
                t += 1
                if t == STEPS:
                    break
    return rec, model, open_store(path)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = tmp_path_factory.mktemp("branches")
    return _run(root / "off", branching=False), _run(root / "on", branching=True)


def test_the_main_trajectory_is_bit_identical_with_branching_on(both):
    (rec_off, model_off, st_off), (rec_on, model_on, st_on) = both
    assert rec_on.events["branch_steps"] > 0 and rec_off.events["branch_steps"] == 0
    assert rec_on.events["errors"] == 0 and rec_off.events["errors"] == 0
    for (name, a), b in zip(model_off.state_dict().items(), model_on.state_dict().values()):
        assert torch.equal(a, b), name  # parameters and BatchNorm buffers
    cols = [c for c in S.STEP_SCHEMA if c not in (S.RUN_ID, S.STEP_TIME_S)]
    off = st_off.steps().collect().sort(S.STEP).select(cols)
    on = st_on.steps().collect().sort(S.STEP).select(cols)
    assert off.equals(on)
    dec_cols = [c for c in S.DECISION_SCHEMA if c != S.RUN_ID]
    assert (
        st_off.decisions()
        .collect()
        .select(dec_cols)
        .equals(st_on.decisions().collect().select(dec_cols))
    )


def test_the_branch_of_the_action_taken_equals_the_main_trajectory(both):
    _, (rec, _, st) = both
    assert st.validate() == []
    steps = st.steps().collect().sort(S.STEP)
    loss = steps[S.LOSS].to_numpy()
    val = steps[S.VAL_LOSS].to_numpy()
    dec = st.decisions().collect().sort(S.STEP)
    br = st.branches().collect()
    assert br.columns == list(S.BRANCH_SCHEMA)
    assert br.height == dec.height * 5  # every action at every decision point
    checked = 0
    for s, a in zip(dec[S.STEP].to_list(), dec[S.ACTION].to_list()):
        row = br.filter((pl.col(S.STEP) == s) & (pl.col(S.ACTION) == a)).row(0, named=True)
        h = row[S.HORIZON]
        assert 1 <= h <= H
        tail = loss[s + h - max(h // 4, 1) : s + h]
        assert row[S.BRANCH_TRAIN_LOSS] == np.mean(tail.astype(np.float32))
        assert row[S.BRANCH_VAL_LOSS] == val[s + h - 1]  # validation after the same steps
        assert row[S.BRANCH_DIVERGED] is False
        checked += h == H
    assert checked >= 3
    # the actions differ: a branch that moved the LR ends elsewhere
    at = br.filter(pl.col(S.STEP) == dec[S.STEP][0])
    assert at[S.BRANCH_VAL_LOSS].n_unique() > 1
    assert (at[S.COOLDOWN] <= COOL).all() and at[S.BRANCH_VAL_LOSS_COOLED].is_not_null().all()


def _epoch_end_run(path, branching: bool):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ds = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    data = torch.utils.data.DataLoader(
        ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0)
    )  # 8 batches per epoch: every other decision point falls on an epoch's last batch

    train_step = stepper(model, opt, nn.functional.mse_loss)

    rec = Recorder(
        create_store(path), opt, total_steps=24, every=4, model=model, seed=5,
        branch=BranchConfig(horizon=3, cooldown=0),
        train_step=train_step if branching else None,
    )  # fmt: skip
    with rec:
        for _ in range(3):
            for batch in rec.batches(data):
                rec.observe(train_step(batch))
                rec.step()
    return rec, model


def test_a_decision_on_an_epochs_last_batch_branches_on_the_next_epoch(tmp_path):
    rec_off, model_off = _epoch_end_run(tmp_path / "off", branching=False)
    rec_on, model_on = _epoch_end_run(tmp_path / "on", branching=True)
    for a, b in zip(model_off.state_dict().values(), model_on.state_dict().values()):
        assert torch.equal(a, b)
    _, steps_off, dec_off, _ = rec_off.frames()
    _, steps_on, dec_on, br = rec_on.frames()
    assert steps_off.drop(S.RUN_ID, S.STEP_TIME_S).equals(steps_on.drop(S.RUN_ID, S.STEP_TIME_S))
    assert dec_on[S.STEP].to_list() == [4, 8, 12, 16, 20]
    assert dec_off.drop(S.RUN_ID).equals(dec_on.drop(S.RUN_ID))
    assert br.height == 5 * 5 and (br[S.HORIZON] == 3).all()  # 8 and 16 included


def test_a_branch_stride_branches_every_kth_decision(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    train_step = stepper(model, opt)

    rec = Recorder(
        create_store(tmp_path / "s"), opt, total_steps=30, every=5, model=model, seed=2,
        branch=BranchConfig(horizon=3, cooldown=0, stride=2), train_step=train_step,
    )  # fmt: skip
    t = 0
    with rec:
        while t < 30:
            for batch in rec.batches(loader(seed=0, batch_size=8)):
                rec.observe(train_step(batch))
                rec.step()
                t += 1
                if t == 30:
                    break
    _, _, dec, br = rec.frames()
    assert dec[S.STEP].to_list() == [5, 10, 15, 20, 25]
    assert sorted(set(br[S.STEP].to_list())) == [5, 15, 25]  # the 1st, 3rd and 5th decisions
