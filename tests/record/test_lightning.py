"""The Lightning recording callback against the real library: a LightningModule with BatchNorm and
dropout, Adam, a DataLoader, validation every 5 steps, recorded into a store that validates."""

from __future__ import annotations

import pytest

L = pytest.importorskip("lightning.pytorch")

import polars as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from trajlib import schema as S  # noqa: E402
from trajlib.store import create_store, open_store  # noqa: E402


class _Module(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


@pytest.mark.slow
def test_the_lightning_callback_records_a_run(tmp_path):
    from trajlib.collect.lightning import RecordCallback

    torch.manual_seed(0)
    x, y = torch.randn(160, 6), torch.randint(0, 2, (160,))
    train = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    val = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=16)
    store = create_store(tmp_path / "s")
    cb = RecordCallback(store, every=5, behaviour="cosine", task_meta={"task": "lightning-mlp"})
    trainer = L.Trainer(
        max_steps=20, val_check_interval=5, callbacks=[cb], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(_Module(), train, val)
    assert cb.recorder is not None and cb.recorder.committed and cb.recorder.events["errors"] == 0
    st = open_store(tmp_path / "s")
    assert st.validate() == []
    run = st.runs().collect().row(0, named=True)
    assert run[S.STEPS_DONE] == 20 and run[S.TASK] == "lightning-mlp"
    steps = st.steps().collect().sort(S.STEP)
    assert steps[S.LOSS].is_not_null().all() and steps[S.GRAD_NORM].is_not_null().all()
    assert steps.filter(pl.col(S.VAL_LOSS).is_not_null())[S.STEP].to_list() == [4, 9, 14, 19]
    assert st.decisions().collect()[S.STEP].to_list() == [5, 10, 15]
    names = st.layers(run[S.RUN_ID])[1]
    assert names[0] == "net.0.weight"
