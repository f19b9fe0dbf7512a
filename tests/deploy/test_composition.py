"""ControllerScheduler is a torch ``LRScheduler``: it composes with ``SequentialLR`` and
``ChainedScheduler`` (a warm-up, then the controller; resume included) and sits in Lightning's
and Hugging Face's scheduler slots with nothing beyond a call to ``observe``."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, LRScheduler, SequentialLR

from tests.deploy._helpers import batch, make_model, with_policy
from trajlib.controllers import load_controller
from trajlib.deploy import ControllerScheduler

WARMUP, TOTAL, EVERY = 10, 60, 10


def _doubling(tiny_checkpoint):
    """The tiny checkpoint (free mode: constant base) scripted to pick "lr x2" every time (the
    schedulers below run without the raise guard: at 16x this loop's validation loss rises, and
    the overfit check would undo the raises these tests multiply out)."""
    return with_policy(load_controller(tiny_checkpoint), lambda x: 4)


def _loop(model, opt, outer, ctrl, start, stop):
    lrs = []
    for t in range(start, stop):
        x, y = batch(t)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        ctrl.observe(loss)
        if (t + 1) % 5 == 0:
            with torch.no_grad():
                xv, yv = batch(99_999, 128)
                ctrl.observe_validation(float(nn.functional.cross_entropy(model(xv), yv)))
        outer.step()
    return lrs


def _sequential(loaded):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    warm = LinearLR(opt, start_factor=0.1, total_iters=WARMUP)
    ctrl = ControllerScheduler(opt, loaded, total_steps=TOTAL - WARMUP, every=EVERY, guard=None)
    seq = SequentialLR(opt, [warm, ctrl], milestones=[WARMUP])
    return model, opt, ctrl, seq


def test_sequential_warmup_then_the_controller(tiny_checkpoint):
    loaded = _doubling(tiny_checkpoint)
    hi = loaded.hp_space["lr"].high
    model, opt, ctrl, seq = _sequential(loaded)
    assert isinstance(ctrl, LRScheduler)
    lrs = _loop(model, opt, seq, ctrl, 0, TOTAL)
    warm = [0.05 * (0.1 + 0.9 * t / WARMUP) for t in range(WARMUP)]
    # the controller's clock starts at the milestone: decisions after 10, 20, ... of its steps
    after = [0.05 * min(2.0 ** ((t - WARMUP) // EVERY), hi) for t in range(WARMUP, TOTAL)]
    assert lrs == pytest.approx(warm + after, rel=1e-12)
    assert ctrl.step_count == TOTAL - WARMUP  # its clock restarted at the milestone
    assert ctrl.events["errors"] == 0 and ctrl.events["missing_loss"] == 0
    assert ctrl.events["decisions"] == 4


def test_sequential_resume_is_exact(tiny_checkpoint):
    loaded = _doubling(tiny_checkpoint)
    model, opt, ctrl, seq = _sequential(loaded)
    straight = _loop(model, opt, seq, ctrl, 0, TOTAL)
    model, opt, ctrl, seq = _sequential(loaded)
    first = _loop(model, opt, seq, ctrl, 0, 35)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "seq": seq.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model, opt, ctrl, seq = _sequential(loaded)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    seq.load_state_dict(saved["seq"])
    second = _loop(model, opt, seq, ctrl, 35, TOTAL)
    assert first + second == straight
    assert ctrl.events["decisions"] == 4


def _chained(loaded):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    warm = LinearLR(opt, start_factor=0.1, total_iters=WARMUP)
    ctrl = ControllerScheduler(opt, loaded, total_steps=TOTAL, every=EVERY, guard=None)
    return model, opt, ctrl, ChainedScheduler([warm, ctrl])


def test_chained_warmup_multiplies_the_controller(tiny_checkpoint):
    loaded = _doubling(tiny_checkpoint)
    hi = loaded.hp_space["lr"].high
    model, opt, ctrl, chain = _chained(loaded)
    lrs = _loop(model, opt, chain, ctrl, 0, TOTAL)
    expected = [
        0.05 * (0.1 + 0.9 * min(t, WARMUP) / WARMUP) * min(2.0 ** (t // EVERY), hi)
        for t in range(TOTAL)
    ]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert ctrl.events["decisions"] == 5 and ctrl.events["errors"] == 0
    # resumed half-way: the same LRs
    model, opt, ctrl, chain = _chained(loaded)
    first = _loop(model, opt, chain, ctrl, 0, 25)
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "chain": chain.state_dict()}
    model, opt, ctrl, chain = _chained(loaded)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    chain.load_state_dict(state["chain"])
    second = _loop(model, opt, chain, ctrl, 25, TOTAL)
    assert first + second == pytest.approx(lrs, rel=1e-12)


def test_lightning_scheduler_slot(tiny_checkpoint):
    pl = pytest.importorskip("lightning.pytorch")
    from torch.utils.data import DataLoader, TensorDataset

    loaded = _doubling(tiny_checkpoint)
    hi = loaded.hp_space["lr"].high

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()
            self.lrs: list[float] = []

        def training_step(self, b, i):
            x, y = b
            self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
            loss = nn.functional.cross_entropy(self.net(x), y)
            sched = self.lr_schedulers()
            sched.observe(loss)  # the only addition to a plain LightningModule ...
            if (i + 1) % 5 == 0:  # ... and validation, which this checkpoint was trained with
                with torch.no_grad():
                    xv, yv = batch(99_999, 128)
                    sched.observe_validation(nn.functional.cross_entropy(self.net(xv), yv))
            return loss

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
            sched = ControllerScheduler(opt, loaded, total_steps=30, every=EVERY)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    g = torch.Generator().manual_seed(0)
    x = torch.randn(480, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    module = Module()
    trainer = pl.Trainer(
        max_steps=30,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16))
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(sched, ControllerScheduler) and sched.step_count == 30
    assert sched.events["missing_loss"] == 0 and sched.events["errors"] == 0
    assert module.lrs == pytest.approx([0.05 * min(2.0 ** (t // EVERY), hi) for t in range(30)])


def test_hugging_face_scheduler_slot(tiny_checkpoint, tmp_path):
    transformers = pytest.importorskip("transformers")
    from torch.utils.data import Dataset

    loaded = _doubling(tiny_checkpoint)
    hi = loaded.hp_space["lr"].high

    class Data(Dataset):
        def __init__(self, n: int) -> None:
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(n, 8, generator=g)
            self.y = (self.x[:, 0] + self.x[:, 1] > 0).long()

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"x": self.x[i], "labels": self.y[i]}

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()

        def forward(self, x, labels=None):
            logits = self.net(x)
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = ControllerScheduler(opt, loaded, total_steps=30, every=EVERY)
    lrs: list[float] = []

    class Observe(transformers.TrainerCallback):  # what HF needs for observe: the step's loss
        def on_step_begin(self, args, state, control, **kw):
            lrs.append(opt.param_groups[0]["lr"])

        def on_optimizer_step(self, args, state, control, **kw):  # before the scheduler's step
            if (state.global_step + 1) % 5 == 0:
                with torch.no_grad():
                    xv, yv = batch(99_999, 128)
                    sched.observe_validation(nn.functional.cross_entropy(model.net(xv), yv))

    # the loss of each step, from a forward hook (the Trainer gives callbacks no per-step loss)
    model.register_forward_hook(
        lambda m, i, out: sched.observe(out["loss"].detach()) if m.training else None
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=30,
        per_device_train_batch_size=16,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=Data(480),
        optimizers=(opt, sched),
        callbacks=[Observe()],
    )
    trainer.train()
    assert sched.step_count == 30 and sched.events["missing_loss"] == 0
    assert sched.events["errors"] == 0
    assert lrs == pytest.approx([0.05 * min(2.0 ** (t // EVERY), hi) for t in range(30)])
