"""The Recorder on a user's own loop: a CNN with BatchNorm and dropout, Adam, a DataLoader, recorded
into a real store on disk; the store validates, `trajlib features` reads the run, and the recorded
statistics equal a direct computation."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from tests.record._loops import SmallCNN, loader, validator
from trajlib import schema as S
from trajlib.collect import Recorder
from trajlib.errors import ConfigError
from trajlib.spec import BehaviourConfig
from trajlib.store import create_store, open_store


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _record_plain(store, *, steps: int = 24, every: int = 6, behaviour="random-walk"):
    """Record a plain loop, keeping a direct computation of every step's statistics."""
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    validate = validator(model)
    direct = []
    rec = Recorder(
        store, opt, total_steps=steps, every=every, behaviour=behaviour, model=model,
        task_meta={"task": "my.module:cnn", "dataset": "synthetic"}, seed=3,
    )  # fmt: skip
    with rec:
        t = 0
        while t < steps:
            for x, y in loader():
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                params = [p for g in opt.param_groups for p in g["params"]]
                before = [p.detach().clone() for p in params]
                grads = [p.grad.detach().clone() for p in params]
                lr = opt.param_groups[0]["lr"]
                opt.step()
                rec.observe(loss)
                rec.step()
                upd = [p.detach() - b for p, b in zip(params, before)]
                direct.append((float(loss.detach()), lr, before, grads, upd))
                if (t + 1) % every == 0:
                    rec.observe_validation(*validate())
                t += 1
                if t == steps:
                    break
    return rec, direct


def test_a_plain_loop_is_recorded_into_a_store_that_validates(tmp_path):
    store = create_store(tmp_path / "store")
    rec, direct = _record_plain(store)
    assert rec.committed and rec.events["errors"] == 0
    assert open_store(tmp_path / "store").validate() == []
    st = open_store(tmp_path / "store")
    runs = st.runs().collect()
    assert runs.height == 1
    run = runs.row(0, named=True)
    assert run[S.STATUS] == S.STATUS_COMPLETE and run[S.STEPS_DONE] == 24
    assert run[S.TASK] == "my.module-cnn" and run[S.RUN_ID].startswith("my.module-cnn-0000-")
    assert run[S.OPTIMIZER] == "adam" and run[S.BEHAVIOUR] == "random-walk"
    entry = json.loads(run[S.ENTRY])
    assert entry["task_meta"] == {"task": "my.module:cnn", "dataset": "synthetic"}
    steps = st.steps().collect().sort(S.STEP)
    assert steps.columns == list(S.STEP_SCHEMA)
    assert steps[S.STEP].to_list() == list(range(24))
    # the step table's statistics against a direct computation
    prev_g = prev_u = None
    for t, (loss, lr, before, grads, upd) in enumerate(direct):
        row = steps.row(t, named=True)
        assert row[S.LOSS] == pytest.approx(loss, rel=1e-6)
        assert row[S.LR] == pytest.approx(lr, rel=1e-6)
        g, w, u = _flat(grads), _flat(before), _flat(upd)
        assert row[S.GRAD_NORM] == pytest.approx(float(g.norm()), rel=1e-5)
        assert row[S.WEIGHT_NORM] == pytest.approx(float(w.norm()), rel=1e-5)
        assert row[S.UPDATE_NORM] == pytest.approx(float(u.norm()), rel=1e-5)
        ratios = np.array(
            [float(a.norm()) / max(float(b.norm()), 1e-30) for a, b in zip(upd, before)]
        )
        assert row[S.UPD_RATIO_MAX] == pytest.approx(ratios.max(), rel=1e-5)
        assert row[S.UPD_RATIO_MIN] == pytest.approx(ratios.min(), rel=1e-5)
        assert row[S.UPD_RATIO_MEAN] == pytest.approx(ratios.mean(), rel=1e-5)
        assert row[S.UPD_RATIO_MEDIAN] == pytest.approx(
            np.sort(ratios)[(len(ratios) - 1) // 2], rel=1e-5
        )
        if prev_g is None:
            assert row[S.GRAD_COS] is None and row[S.UPDATE_COS] is None
        else:
            gcos = float(g @ prev_g / (g.norm() * prev_g.norm()))
            ucos = float(u @ prev_u / (u.norm() * prev_u.norm()))
            assert row[S.GRAD_COS] == pytest.approx(gcos, rel=1e-4, abs=1e-6)
            assert row[S.UPDATE_COS] == pytest.approx(ucos, rel=1e-4, abs=1e-6)
        assert row[S.FINITE] is True
        prev_g, prev_u = g, u
    # validation after every decision interval, in the row of the step before it
    val_rows = steps.filter(pl.col(S.VAL_LOSS).is_not_null())[S.STEP].to_list()
    assert val_rows == [5, 11, 17, 23]
    # per-layer statistics: [step, layer, stat] with the model's parameter names
    layers, names, stats = st.layers(run[S.RUN_ID])
    assert layers.shape == (24, len(names), 3) and tuple(stats) == S.LAYER_STATS
    assert names[0] == "features.0.weight" and "features.1.weight" in names
    _, _, before, grads, upd = direct[7]
    np.testing.assert_allclose(layers[7, :, 0], [float(x.norm()) for x in grads], rtol=1e-5)
    np.testing.assert_allclose(layers[7, :, 1], [float(x.norm()) for x in before], rtol=1e-5)
    np.testing.assert_allclose(layers[7, :, 2], [float(x.norm()) for x in upd], rtol=1e-5)
    # one decision every 6 steps, with its propensity; the LR follows the decided multiplier
    dec = st.decisions().collect().sort(S.STEP)
    assert dec[S.STEP].to_list() == [6, 12, 18]
    assert ((dec[S.PROPENSITY] > 0) & (dec[S.PROPENSITY] <= 1)).all()
    mult = steps[S.LR_MULT].to_numpy()
    np.testing.assert_allclose(steps[S.LR].to_numpy(), 3e-3 * mult, rtol=1e-6)
    factors = [0.5, 0.7, 1.0, 1.4, 2.0]
    for s, a in zip(dec[S.STEP].to_list(), dec[S.ACTION].to_list()):
        assert mult[s] == pytest.approx(mult[s - 1] * factors[a], rel=1e-6)


def test_trajlib_features_reads_the_recorded_run(tmp_path, capsys):
    from trajlib.cli import main

    store = create_store(tmp_path / "store")
    rec, _ = _record_plain(store, steps=36, every=6)
    out = tmp_path / "features.parquet"
    assert main(["features", str(tmp_path / "store"), "--out", str(out)]) == 0
    table = pl.read_parquet(out)
    assert table.height == 5 and set(table[S.RUN_ID].to_list()) == {rec.run_id}
    assert table[S.STEP].to_list() == [6, 12, 18, 24, 30]


@pytest.mark.parametrize(
    "kind", ["keep", "cosine", "step", "warmup-cosine", "one-cycle", "piecewise-constant",
             "reduce-on-plateau"],
)  # fmt: skip
def test_every_behaviour_family_moves_the_lr_with_logged_propensities(tmp_path, kind):
    store = create_store(tmp_path / "store")
    rec, _ = _record_plain(store, steps=24, every=4, behaviour=kind)
    dec = open_store(tmp_path / "store").decisions().collect()
    assert dec.height == 5 and rec.events["errors"] == 0
    assert ((dec[S.PROPENSITY] > 0) & (dec[S.PROPENSITY] <= 1)).all()
    if kind == "keep":
        assert dec[S.ACTION].to_list() == [2] * 5 and dec[S.PROPENSITY].to_list() == [1.0] * 5


def _mse_steps(model: nn.Module, opt: torch.optim.Optimizer, rec: Recorder, n: int) -> None:
    """``n`` full-batch MSE steps of a 4-in, 2-out model on one fixed batch, then close."""
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(n):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        rec.observe(loss)
        rec.step()
    rec.close()


def test_only_hyperparameters_the_optimizer_has_and_that_are_on_move(tmp_path):
    from trajlib.space import Action, ActionSpace

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    decay, no_decay = list(model[0].parameters()), [*model[1].parameters(), *model[2].parameters()]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 1e-3}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.05,
    )  # momentum 0: off
    up = ActionSpace((Action({}, "keep"), Action({"weight_decay": 1.0, "momentum": 1.0}, "up")))
    rec = Recorder(
        create_store(tmp_path / "s"), opt, total_steps=8, every=2, actions=up,
        behaviour="random-walk", model=model,
    )  # fmt: skip
    _mse_steps(model, opt, rec, 8)
    dec = rec.frames()[2]
    moved = int((dec[S.ACTION] == 1).sum())
    assert moved > 0
    assert opt.param_groups[0]["weight_decay"] > 1e-3  # on: moved up
    assert opt.param_groups[1]["weight_decay"] == 0.0  # off: stays off
    assert opt.param_groups[0]["momentum"] == 0.0 and opt.param_groups[1]["momentum"] == 0.0


def test_bad_arguments_raise_one_line_config_errors(tmp_path):
    store = create_store(tmp_path / "s")
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="`total_steps` must be a positive integer; got 0"):
        Recorder(store, opt, total_steps=0)
    with pytest.raises(ConfigError, match="`every`"):
        Recorder(store, opt, total_steps=10, every=-1)
    with pytest.raises(ConfigError, match="`behaviour`"):
        Recorder(store, opt, total_steps=10, behaviour="sometimes")
    with pytest.raises(ConfigError, match="`sink`"):
        Recorder(str(tmp_path), opt, total_steps=10)
    with pytest.raises(ConfigError, match="`optimizer`"):
        Recorder(store, "adam", total_steps=10)
    with pytest.raises(ConfigError, match="`model`"):
        Recorder(store, opt, total_steps=10, train_step=lambda b: 0.0)


def test_a_group_frozen_at_lr_0_is_recorded_from_the_trainable_group(tmp_path):
    """The records' LR, momentum and weight decay are the first group's with an LR > 0: a frozen
    first group (LR 0) would give LR-0 rows, whose log-LR features are undefined."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters()}],
        lr=0.05,
        momentum=0.9,
    )
    rec = Recorder(create_store(tmp_path / "s"), opt, total_steps=8, every=2, model=model)
    _mse_steps(model, opt, rec, 8)
    steps = rec.frames()[1]
    assert rec.config.lr0 == 0.05 and (steps[S.LR] > 0).all() and (steps[S.MOMENTUM] == 0.9).all()
    assert opt.param_groups[0]["lr"] == 0.0  # the frozen group stays frozen
    with pytest.raises(ConfigError, match=r"positive finite learning rate in at least one param"):
        Recorder(
            create_store(tmp_path / "z"), torch.optim.SGD(model.parameters(), lr=0.0), total_steps=8
        )


def test_runtime_trouble_never_raises_inside_the_training(tmp_path):
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(create_store(tmp_path / "s"), opt, total_steps=6, every=2)
    with pytest.warns(RuntimeWarning, match="Recorder"):
        rec.observe("not a loss")  # type: ignore[arg-type]
        rec.observe_validation("nan?")  # type: ignore[arg-type]
    for _ in range(6):
        opt.zero_grad()
        loss = model(torch.randn(4, 3)).pow(2).mean()
        loss.backward()
        opt.step()
        rec.observe(loss)
        rec.step()
    assert rec.events["errors"] == 1 and rec.close()
    run = rec.frames()[0]
    assert run[S.STATUS] == S.STATUS_COMPLETE and run[S.STEPS_DONE] == 6


def test_a_second_recording_with_the_same_id_is_not_written_twice(tmp_path):
    store = create_store(tmp_path / "s")
    _record_plain(store, steps=6, every=3)
    with pytest.warns(RuntimeWarning, match="already holds run"):
        rec, _ = _record_plain(store, steps=6, every=3)
    assert rec.committed is False
    assert open_store(tmp_path / "s").runs().collect().height == 1


def test_trajlib_record_opens_a_store_path(tmp_path):
    import trajlib

    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with trajlib.record(tmp_path / "new", opt, total_steps=4, every=2) as rec:
        for _ in range(4):
            opt.zero_grad()
            loss = model(torch.randn(4, 3)).pow(2).mean()
            loss.backward()
            opt.step()
            rec.observe(loss)
            rec.step()
    runs = open_store(tmp_path / "new").runs().collect()
    assert runs[S.RUN_ID].to_list() == [rec.run_id]
    assert math.isclose(open_store(tmp_path / "new").steps().collect()[S.MOMENTUM][0], 0.9,
                        rel_tol=1e-6)  # fmt: skip


def test_load_state_dict_refuses_another_recordings_state(tmp_path):
    store = create_store(tmp_path / "s")
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = Recorder(store, opt, total_steps=10, every=2).state_dict()
    other = Recorder(store, opt, total_steps=10, every=5)
    with pytest.raises(ConfigError, match="`state_dict.config`"):
        other.load_state_dict(state)
    with pytest.raises(ConfigError, match="`state_dict.format`"):
        other.load_state_dict({"format": "something else"})
    with pytest.raises(ConfigError, match="`chunk_every`"):
        Recorder(object.__new__(type("Sink", (), {"write_run": lambda *a: True,
                                                  "is_committed": lambda *a: False})),
                 opt, total_steps=10, chunk_every=5)  # fmt: skip


def test_a_controller_behaviour_sees_the_history_and_logs_its_propensities(tmp_path):
    seen = []

    def policy(ctx):
        hist = ctx.history()
        seen.append((ctx.step, len(hist[S.LOSS]), bool(np.isfinite(hist[S.GRAD_NORM]).all())))
        p = np.zeros(5)
        p[4] = 1.0  # always "lr x2"
        return p

    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    rec = Recorder(create_store(tmp_path / "s"), opt, total_steps=12, every=4,
                   behaviour=BehaviourConfig(kind="controller", epsilon=0.0),
                   policy=policy)  # fmt: skip
    with rec:
        for _ in range(12):
            opt.zero_grad()
            loss = model(torch.randn(4, 3)).pow(2).mean()
            loss.backward()
            opt.step()
            rec.observe(loss)
            rec.step()
    assert seen == [(4, 4, True), (8, 8, True)]
    dec = rec.frames()[2]
    assert dec[S.ACTION].to_list() == [4, 4] and dec[S.PROPENSITY].to_list() == [1.0, 1.0]
    assert opt.param_groups[0]["lr"] == pytest.approx(4e-3)
