"""TrajlibLRCallback inside a real (tiny, CPU) Lightning Trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from trajlib.deploy.lightning import TrajlibLRCallback  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
        self.lrs: list[float] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def _data(n: int, seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)


def _trainer(cb, max_steps: int, **kw) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        callbacks=[cb],
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=10,
        num_sanity_val_steps=0,
        **kw,
    )


def test_lightning_callback_drives_the_lr(tiny_checkpoint):
    cb = TrajlibLRCallback(tiny_checkpoint, every=10)
    model = Tiny()
    _trainer(cb, 45).fit(model, _data(800, 0), _data(64, 1))
    sched = cb.scheduler
    assert sched is not None and sched.total_steps == 45
    assert sched.step_count == 45  # the last step is closed at the end of training
    assert sched.events["decisions"] == 4 and sched.events["errors"] == 0
    assert sched.events["extra_optimizer_steps"] == 0  # stepped after every optimizer step
    assert sched.events["missing_loss"] == 0 and sched.events["skipped_steps"] == 0
    assert sched.events["late_validation"] == 0
    # the last decision (step 40) saw the validation run after step 39, in row 39
    feats = sched.units[0].features.values_dict()
    assert feats["val_age"] == 0.0 and feats["val_gap"] == feats["val_gap"]
    # the LR in force at each step is what the scheduler set
    m = [model.lrs[t] / 0.05 for t in range(45)]
    changes = [t for t in range(1, 45) if m[t] != m[t - 1]]
    assert all(t % 10 == 0 for t in changes)


def test_lightning_gradient_accumulation_and_checkpoint_state(tiny_checkpoint, tmp_path):
    cb = TrajlibLRCallback(tiny_checkpoint, every=5)
    model = Tiny()
    trainer = _trainer(cb, 12, accumulate_grad_batches=2)
    trainer.fit(model, _data(800, 0), _data(64, 1))
    sched = cb.scheduler
    assert sched.step_count == 12 and sched.events["missing_loss"] == 0
    state = cb.state_dict()
    path = tmp_path / "cb.pt"
    torch.save(state, path)
    cb2 = TrajlibLRCallback(tiny_checkpoint, every=5)
    cb2.load_state_dict(torch.load(path, weights_only=True))
    assert cb2.state_dict()["scheduler"]["last_epoch"] == 12


def test_lightning_lr_in_force_is_trajlibs_golden(tiny_checkpoint):
    from tests.deploy._helpers import with_policy
    from trajlib.controllers import load_controller

    loaded = with_policy(load_controller(tiny_checkpoint), lambda x: 4)  # always "lr x2"
    hi = loaded.hp_space["lr"].high
    model = Tiny()
    _trainer(TrajlibLRCallback(loaded, every=10), 40).fit(model, _data(800, 0), _data(64, 1))
    assert model.lrs == pytest.approx([0.05 * min(2.0 ** (t // 10), hi) for t in range(40)])
