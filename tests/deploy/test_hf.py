"""TrajlibTrainerCallback inside a real (tiny, CPU) Hugging Face Trainer; nothing is downloaded."""

from __future__ import annotations

import numpy as np
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


def _args(tmp_path, **overrides) -> transformers.TrainingArguments:
    """Tiny CPU Trainer arguments: 40 SGD steps, evaluation every 10, trajlib sets the LR."""
    base = dict(
        output_dir=str(tmp_path),
        max_steps=40,
        per_device_train_batch_size=16,
        learning_rate=0.05,
        lr_scheduler_type="constant",
        optim="sgd",
        eval_strategy="steps",
        eval_steps=10,
        logging_steps=5,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        warmup_steps=0,
    )
    return transformers.TrainingArguments(**{**base, **overrides})


@pytest.mark.parametrize("accumulation", [1, 2])
def test_hf_trainer_callback_drives_the_lr(tiny_checkpoint, tmp_path, accumulation):
    loaded = with_policy(load_controller(tiny_checkpoint), lambda x: 4)  # always "lr x2"
    hi = loaded.hp_space["lr"].high
    args = _args(tmp_path, save_strategy="no", gradient_accumulation_steps=accumulation)
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
    assert sched.events["extra_optimizer_steps"] == 0  # stepped after every optimizer step
    assert sched.events["missing_loss"] == 0 and sched.events["late_validation"] == 0
    assert sched._probe.steps_seen == 40
    # the LR in force at optimizer step t is trajlib's: 0.05 x 2 per decision, within bounds,
    # although the Trainer's own (constant) scheduler rewrites it after every step
    expected = [0.05 * min(2.0 ** (t // 10), hi) for t in range(40)]
    assert log.lrs == pytest.approx(expected)
    feats = sched.units[0].features.values_dict()
    assert feats["val_age"] == 0.0  # the evaluation after step 30 reached the decision at 30


def test_hf_resume_from_a_trainer_checkpoint_continues_the_controller_exactly(
    tiny_checkpoint, tmp_path
):
    from trajlib.deploy.hf import STATE_FILE

    loaded = load_controller(tiny_checkpoint)

    def run(out, resume=None):
        cb, log = TrajlibTrainerCallback(loaded, every=5), LrLog()
        trainer = transformers.Trainer(
            model=TinyModel(),
            args=_args(out, save_strategy="steps", save_steps=20),
            train_dataset=Data(2000, 0),
            eval_dataset=Data(64, 1),
            callbacks=[log, cb],
        )
        trainer.train(resume_from_checkpoint=resume)
        return cb.scheduler, log.lrs

    straight, lrs_straight = run(tmp_path / "a")
    assert (tmp_path / "a" / "checkpoint-20" / STATE_FILE).is_file()
    resumed, lrs_resumed = run(tmp_path / "a", resume=str(tmp_path / "a" / "checkpoint-20"))
    assert len(lrs_resumed) == 20
    assert lrs_resumed == pytest.approx(lrs_straight[20:], rel=1e-6)
    assert resumed.step_count == straight.step_count == 40
    assert resumed.actions_taken == straight.actions_taken  # the first 20 steps' ones included
    np.testing.assert_allclose(
        resumed.units[0].features.values(), straight.units[0].features.values(), rtol=1e-5
    )

    # without the state file the callback says so and starts the features afresh
    (tmp_path / "a" / "checkpoint-20" / STATE_FILE).unlink()
    with pytest.warns(UserWarning, match="start afresh"):
        fresh, _ = run(tmp_path / "a", resume=str(tmp_path / "a" / "checkpoint-20"))
    assert fresh.step_count == 20
