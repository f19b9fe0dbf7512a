"""The Recorder around the loops people write: gradient accumulation, GradScaler with autocast
(CPU bf16), an LSTM and LayerNorm, every common optimizer, a closure (LBFGS), parameters without a
gradient, and a torch.compile'd model. Each run is recorded into a real store that validates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from trajlib import schema as S
from trajlib.collect import Recorder
from trajlib.store import create_store, open_store


def _check_store(path, steps: int) -> None:
    st = open_store(path)
    assert st.validate() == []
    run = st.runs().collect().row(0, named=True)
    assert run[S.STEPS_DONE] == steps


def test_gradient_accumulation_records_one_row_per_optimizer_step(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rec = Recorder(create_store(tmp_path / "s"), opt, total_steps=6, every=3, model=model)
    x, y = torch.randn(48, 6), torch.randn(48, 1)
    micro_losses, grad_norms = [], []
    with rec:
        for step in range(6):
            opt.zero_grad()
            losses = []
            for k in range(4):  # four micro-batches per optimizer step
                i = (step * 4 + k) * 2
                loss = nn.functional.mse_loss(model(x[i : i + 2]), y[i : i + 2])
                (loss / 4).backward()
                rec.observe(loss)
                losses.append(float(loss.detach()))
            grad_norms.append(
                float(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm())
            )
            opt.step()
            rec.step()
            micro_losses.append(np.mean(losses))
    _check_store(tmp_path / "s", 6)
    steps = open_store(tmp_path / "s").steps().collect().sort(S.STEP)
    np.testing.assert_allclose(steps[S.LOSS].to_numpy(), micro_losses, rtol=1e-6)
    np.testing.assert_allclose(steps[S.GRAD_NORM].to_numpy(), grad_norms, rtol=1e-5)
    assert steps[S.MOMENTUM].to_list() == pytest.approx([0.9] * 6)


def test_gradscaler_with_bf16_autocast_and_a_skipped_step(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.LayerNorm(12), nn.GELU(), nn.Linear(12, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    rec = Recorder(create_store(tmp_path / "s"), opt, total_steps=8, every=4, model=model)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    with rec:
        for step in range(8):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            if step == 5:  # an overflow: GradScaler skips this optimizer step
                model[0].weight.grad[0, 0] = math.inf
            scaler.step(opt)
            scaler.update()
            rec.observe(loss)
            rec.step()
    assert rec.events["skipped_steps"] == 1 and rec.events["errors"] == 0
    _check_store(tmp_path / "s", 8)
    steps = open_store(tmp_path / "s").steps().collect().sort(S.STEP)
    assert steps[S.FINITE].to_list() == [True] * 5 + [False] + [True] * 2
    assert steps[S.GRAD_NORM][5] is None and steps[S.GRAD_NORM][6] is not None
    layers, _, _ = open_store(tmp_path / "s").layers(rec.run_id)
    assert np.isnan(layers[5]).all() and np.isfinite(layers[6]).all()


class _Seq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.rnn = nn.LSTM(8, 16, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 10)
        self.unused = nn.Linear(3, 3)  # never gets a gradient

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.emb(tokens))
        return self.out(self.norm(h[:, -1]))


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
        lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
        lambda p: torch.optim.Adam(p, lr=1e-3),
        lambda p: torch.optim.AdamW(p, lr=1e-3),
        lambda p: torch.optim.Adagrad(p, lr=1e-2),
        lambda p: torch.optim.NAdam(p, lr=1e-3),
    ],
    ids=["sgd-nesterov", "rmsprop", "adam", "adamw", "adagrad", "nadam"],
)
def test_any_optimizer_on_an_lstm_with_a_parameter_that_gets_no_gradient(tmp_path, make):
    torch.manual_seed(0)
    model = _Seq()
    opt = make(model.parameters())
    rec = Recorder(create_store(tmp_path / "s"), opt, total_steps=8, every=2, model=model)
    tokens, y = torch.randint(0, 10, (8, 5)), torch.randint(0, 10, (8,))
    with rec:
        for _ in range(8):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(tokens), y)
            loss.backward()
            opt.step()
            rec.observe(loss)
            rec.step()
    assert rec.events["errors"] == 0
    _check_store(tmp_path / "s", 8)
    steps = open_store(tmp_path / "s").steps().collect()
    assert (
        steps[S.FINITE].all() and steps[S.UPD_RATIO_MIN].min() > 0
    )  # the unused layer is left out
    assert steps[S.LR].n_unique() > 1  # the behaviour moved the LR


def test_a_closure_optimizer(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=2)
    rec = Recorder(create_store(tmp_path / "s"), opt, total_steps=4, every=2, model=model)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    with rec:
        for _ in range(4):

            def closure():
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                return loss

            loss = opt.step(closure)
            rec.observe(loss)
            rec.step()
    _check_store(tmp_path / "s", 4)
    steps = open_store(tmp_path / "s").steps().collect()
    assert steps[S.GRAD_NORM].is_not_null().all() and steps[S.FINITE].all()


@pytest.mark.slow
def test_a_compiled_model(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2)
    )
    compiled = torch.compile(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rec = Recorder(create_store(tmp_path / "s"), opt, total_steps=6, every=3, model=model)
    x, y = torch.randn(16, 8), torch.randn(16, 2)
    with rec:
        for _ in range(6):
            opt.zero_grad()
            loss = nn.functional.mse_loss(compiled(x), y)
            loss.backward()
            opt.step()
            rec.observe(loss)
            rec.step()
    assert rec.events["errors"] == 0
    _check_store(tmp_path / "s", 6)
    names = open_store(tmp_path / "s").layers(rec.run_id)[1]
    assert names[0] == "0.weight"
