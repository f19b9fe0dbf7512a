"""TrajlibTrainerCallback inside a real (tiny, CPU) Hugging Face Trainer; nothing is downloaded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from tests.deploy._helpers import with_policy  # noqa: E402
from trajlib.controllers import load_controller  # noqa: E402
from trajlib.deploy.hf import TrajlibTrainerCallback  # noqa: E402


class TinyModel(nn.Module):
    """A plain nn.Module the Trainer accepts: forward(x, labels) -> {"loss", "logits"}."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x, labels=None):
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class Data(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x[:, 0] + self.x[:, 1] > 0).long() + (self.x[:, 2] > 1).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def _lr_at_each_optimizer_step(opt: torch.optim.Optimizer) -> list[float]:
    lrs: list[float] = []
    opt.register_step_pre_hook(lambda o, a, k: lrs.append(o.param_groups[0]["lr"]))
    return lrs


class LrLog(transformers.TrainerCallback):
    """Records the LR in force at every optimizer step (hooked on the Trainer's optimizer)."""

    lrs: list[float] = []

    def on_train_begin(self, args, state, control, optimizer=None, **kw):
        from trajlib.deploy.hf import _torch_optimizer

        self.lrs = _lr_at_each_optimizer_step(_torch_optimizer(optimizer))


@pytest.mark.parametrize("accumulation", [1, 2])
def test_hf_trainer_callback_drives_the_lr(tiny_checkpoint, tmp_path, accumulation):
    loaded = with_policy(load_controller(tiny_checkpoint), lambda x: 4)  # always "lr x2"
    hi = loaded.hp_space["lr"].high
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=40,
        per_device_train_batch_size=16,
        learning_rate=0.05,
        lr_scheduler_type="constant",
        optim="sgd",
        eval_strategy="steps",
        eval_steps=10,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        warmup_steps=0,
        gradient_accumulation_steps=accumulation,
    )
    cb, log = TrajlibTrainerCallback(loaded, every=10), LrLog()
    trainer = transformers.Trainer(
        model=TinyModel(),
        args=args,
        train_dataset=Data(2000, 0),
        eval_dataset=Data(64, 1),
        callbacks=[log, cb],
    )
    trainer.train()
    sched = cb.scheduler
    assert sched is not None and sched.total_steps == 40 and sched.step_count == 40
    assert sched.events["decisions"] == 3 and sched.events["errors"] == 0
    assert sched.events["missing_loss"] == 0 and sched.events["late_validation"] == 0
    assert sched._probe.steps_seen == 40
    # the LR in force at optimizer step t is trajlib's: 0.05 x 2 per decision, within bounds,
    # although the Trainer's own (constant) scheduler rewrites it after every step
    expected = [0.05 * min(2.0 ** (t // 10), hi) for t in range(40)]
    assert log.lrs == pytest.approx(expected)
    feats = sched.units[0].features.values_dict()
    assert feats["val_age"] == 0.0  # the evaluation after step 30 reached the decision at 30
