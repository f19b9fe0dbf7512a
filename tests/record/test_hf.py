"""The Hugging Face recording callback inside a real (tiny, CPU) Trainer; nothing is downloaded."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from trajlib import schema as S  # noqa: E402
from trajlib.store import create_store, open_store  # noqa: E402


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(8, 16), nn.LayerNorm(16), nn.Tanh(), nn.Dropout(0.1), nn.Linear(16, 3)
        )

    def forward(self, x, labels=None):
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x[:, 0] + self.x[:, 1] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


@pytest.mark.slow
@pytest.mark.parametrize("accumulation", [1, 2])
def test_the_hf_callback_records_a_run_with_the_behaviours_lr(tmp_path, accumulation):
    from trajlib.collect.hf import RecordTrainerCallback

    store = create_store(tmp_path / "s")
    cb = RecordTrainerCallback(store, every=5, behaviour="random-walk", seed=4)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=20, per_device_train_batch_size=16,
        learning_rate=0.05, lr_scheduler_type="constant", optim="sgd", eval_strategy="steps",
        eval_steps=5, logging_steps=5, report_to=[], use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, seed=0, warmup_steps=0, save_strategy="no",
        gradient_accumulation_steps=accumulation,
    )  # fmt: skip
    model = _Model()
    lrs: list[float] = []
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=_Data(1000, 0), eval_dataset=_Data(64, 1),
        callbacks=[cb],
    )  # fmt: skip
    trainer.create_optimizer()
    trainer.optimizer.register_step_pre_hook(lambda o, a, k: lrs.append(o.param_groups[0]["lr"]))
    trainer.train()
    assert cb.recorder is not None and cb.recorder.committed and cb.recorder.events["errors"] == 0
    st = open_store(tmp_path / "s")
    assert st.validate() == []
    steps = st.steps().collect().sort(S.STEP)
    assert steps.height == 20 and steps[S.LOSS].is_not_null().all()
    # the LR in force at each optimizer step is the behaviour's, and the store says so
    np.testing.assert_allclose(steps[S.LR].to_numpy(), lrs[-20:], rtol=1e-6)
    assert len(set(lrs)) > 1
    assert steps.filter(pl.col(S.VAL_LOSS).is_not_null())[S.STEP].to_list() == [4, 9, 14, 19]
    assert st.decisions().collect()[S.STEP].to_list() == [5, 10, 15]
