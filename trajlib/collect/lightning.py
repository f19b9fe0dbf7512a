"""A PyTorch Lightning callback that records a run (no branches) with a behaviour schedule.

>>> store = trajlib.store.create_store("data/mine")
>>> trainer = L.Trainer(max_steps=2000, callbacks=[RecordCallback(store, every=50)])

The callback wraps ``trainer.optimizers[optimizer_index]`` in a :class:`~trajlib.collect.Recorder`
when training starts and commits the run when it ends. Needs the ``lightning`` extra:
``pip install 'trajlib[lightning]'``. Do not configure a Lightning LR scheduler as well: the
behaviour sets the learning rate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "trajlib.collect.lightning needs PyTorch Lightning; install it with "
        "pip install 'trajlib[lightning]'"
    ) from e

from trajlib.collect._executor import RunSink
from trajlib.collect._recorder import Recorder
from trajlib.errors import ConfigError

__all__ = ["RecordCallback"]


class RecordCallback(pl.Callback):
    """Records ``Trainer.fit`` into ``sink`` (a store) with a :class:`Recorder`.

    * ``on_train_start``: makes the Recorder around ``trainer.optimizers[optimizer_index]``,
      ``total_steps`` defaulting to ``trainer.estimated_stepping_batches``, the module as the
      model (layer names).
    * ``on_train_batch_end``: the training loss (``outputs["loss"]``, un-normalised for gradient
      accumulation); each optimizer step is closed at the start of the next batch, before a
      validation run, and at the end of training.
    * ``on_validation_end``: ``trainer.callback_metrics[val_key]`` (and ``val_acc_key``) into the
      row of the step just taken.
    * ``on_train_end``: commits the run (:attr:`recorder` keeps what it wrote).

    ``recorder_kwargs`` go to :class:`Recorder` (``behaviour``, ``every``, ``seed``,
    ``task_meta``, ``chunk_every``...). Under DDP give the store on rank 0 and ``None`` elsewhere.
    """

    def __init__(
        self,
        sink: RunSink | None,
        total_steps: int | None = None,
        *,
        val_key: str = "val_loss",
        val_acc_key: str | None = None,
        optimizer_index: int = 0,
        **recorder_kwargs: Any,
    ) -> None:
        super().__init__()
        self.sink = sink
        self.total_steps = total_steps
        self.val_key = val_key
        self.val_acc_key = val_acc_key
        self.optimizer_index = optimizer_index
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Recorder | None = None
        self._stepped_at = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.optimizers:
            raise ConfigError("trainer.optimizers", "at least one optimizer", [])
        total = self.total_steps
        if total is None:
            est = trainer.estimated_stepping_batches
            if not math.isfinite(est):
                raise ConfigError(
                    "total_steps",
                    "a positive integer (Lightning cannot estimate the number of steps)",
                    est,
                    "pass RecordCallback(..., total_steps=N) or set Trainer(max_steps=N)",
                )
            total = int(est)
        if trainer.lr_scheduler_configs:
            warnings.warn(
                "RecordCallback: a Lightning LR scheduler is configured too; both set the "
                "learning rate. Remove it from configure_optimizers.",
                UserWarning,
                stacklevel=2,
            )
        kwargs = {"model": pl_module, **self.recorder_kwargs}
        self.recorder = Recorder(
            self.sink, trainer.optimizers[self.optimizer_index], total_steps=total, **kwargs
        )
        self._stepped_at = trainer.global_step

    def _close_steps(self, trainer: pl.Trainer) -> None:
        if self.recorder is not None and trainer.global_step > self._stepped_at:
            for _ in range(trainer.global_step - self._stepped_at):
                self.recorder.step()
            self._stepped_at = trainer.global_step

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._close_steps(trainer)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.recorder is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        if pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
            loss = loss * trainer.accumulate_grad_batches  # Lightning divided it for backward
        self.recorder.observe(loss.detach())

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.recorder is None or trainer.sanity_checking:
            return
        self._close_steps(trainer)  # validation is of the weights after the step just taken
        metrics = trainer.callback_metrics
        vl = metrics.get(self.val_key)
        va = metrics.get(self.val_acc_key) if self.val_acc_key else None
        if vl is not None:
            self.recorder.observe_validation(float(vl), None if va is None else float(va))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.recorder is None:
            return
        self._close_steps(trainer)
        self.recorder.close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.recorder is not None:
            self._close_steps(trainer)
            self.recorder.close(exception)
