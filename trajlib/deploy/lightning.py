"""A PyTorch Lightning callback that lets a trajlib controller drive the learning rate.

>>> trainer = L.Trainer(max_steps=2000, callbacks=[TrajlibLRCallback("models/my-controller")])

Needs the ``lightning`` extra: ``pip install 'trajlib[lightning]'``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "trajlib.deploy.lightning needs PyTorch Lightning; install it with "
        "pip install 'trajlib[lightning]'"
    ) from e

from trajlib.controllers import LoadedController
from trajlib.deploy._scheduler import ControllerScheduler
from trajlib.errors import ConfigError

__all__ = ["TrajlibLRCallback"]

_STATE_FORMAT = "trajlib-lightning-callback/1"


class TrajlibLRCallback(pl.Callback):
    """Runs a :class:`~trajlib.deploy.ControllerScheduler` inside ``Trainer.fit``.

    * ``on_train_start``: builds the scheduler around ``trainer.optimizers[optimizer_index]``
      with ``total_steps`` (default: ``trainer.estimated_stepping_batches``).
    * ``on_train_batch_end``: feeds the training loss (``outputs["loss"]``, un-normalised for
      gradient accumulation; not synchronised).
    * ``on_validation_end``: feeds ``trainer.callback_metrics[val_key]`` (and ``val_acc_key``).
    * After each optimizer step the scheduler steps — at the start of the next batch (or at the
      end of training), so that a validation run right after the step belongs to that step, as in
      the collected data.
    * ``state_dict`` / ``load_state_dict``: the scheduler's state goes into Lightning checkpoints
      and is restored on ``fit(ckpt_path=...)``.

    Do not configure a Lightning LR scheduler as well: both would set ``param_groups[i]["lr"]``.

    Args:
        checkpoint: controller checkpoint folder (or a loaded controller).
        total_steps: training budget in optimizer steps (default: Lightning's estimate).
        val_key: metric name of the validation loss in ``trainer.callback_metrics``.
        val_acc_key: metric name of the validation accuracy, or ``None``.
        every: decision interval (default: the checkpoint's).
        layerwise: one decision per param group (see :class:`ControllerScheduler`).
        optimizer_index: which of ``trainer.optimizers`` to drive.
    """

    def __init__(
        self,
        checkpoint: str | Path | LoadedController,
        total_steps: int | None = None,
        *,
        val_key: str = "val_loss",
        val_acc_key: str | None = None,
        every: int | None = None,
        layerwise: bool = False,
        optimizer_index: int = 0,
    ) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.total_steps = total_steps
        self.val_key = val_key
        self.val_acc_key = val_acc_key
        self.every = every
        self.layerwise = layerwise
        self.optimizer_index = optimizer_index
        self.scheduler: ControllerScheduler | None = None
        self._restore: dict[str, Any] | None = None
        self._stepped_at = 0  # trainer.global_step when the scheduler last stepped
        self._global_step = 0  # trainer.global_step at the last batch end

    # ------------------------------------------------------------------ lifecycle
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.optimizers:
            raise ConfigError("trainer.optimizers", "at least one optimizer", [])
        opt = trainer.optimizers[self.optimizer_index]
        total = self.total_steps
        if total is None:
            est = trainer.estimated_stepping_batches
            if not math.isfinite(est):
                raise ConfigError(
                    "total_steps",
                    "a positive integer (Lightning cannot estimate the number of steps)",
                    est,
                    "pass TrajlibLRCallback(..., total_steps=N) or set Trainer(max_steps=N)",
                )
            total = int(est)
        if trainer.lr_scheduler_configs:
            warnings.warn(
                "TrajlibLRCallback: a Lightning LR scheduler is configured too; both set the "
                "learning rate. Remove it from configure_optimizers.",
                UserWarning,
                stacklevel=2,
            )
        self.scheduler = ControllerScheduler(
            opt,
            self.checkpoint,
            total_steps=total,
            every=self.every,
            layerwise=self.layerwise,
            model=pl_module,  # the guard's rollback restores its buffers too
        )
        self._stepped_at = self._global_step = trainer.global_step
        if self._restore is not None:
            self.scheduler.load_state_dict(self._restore["scheduler"])
            self._stepped_at = trainer.global_step - int(self._restore.get("steps_pending", 0))
            self._restore = None

    def _maybe_step(self, trainer: pl.Trainer) -> None:
        if self.scheduler is not None and trainer.global_step > self._stepped_at:
            for _ in range(trainer.global_step - self._stepped_at):
                self.scheduler.step()
            self._stepped_at = trainer.global_step

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._maybe_step(trainer)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._global_step = trainer.global_step
        if self.scheduler is None:
            return
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        if pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
            loss = loss * trainer.accumulate_grad_batches  # Lightning divided it for backward
        self.scheduler.observe(loss.detach())

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.scheduler is None or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        vl = metrics.get(self.val_key)
        va = metrics.get(self.val_acc_key) if self.val_acc_key else None
        if vl is not None or va is not None:
            self.scheduler.observe_validation(vl, va)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._maybe_step(trainer)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.scheduler is None:
            return dict(self._restore) if self._restore else {}
        return {
            "format": _STATE_FORMAT,
            "scheduler": self.scheduler.state_dict(),
            "steps_pending": self._global_step - self._stepped_at,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if state_dict.get("format") != _STATE_FORMAT:
            raise ConfigError(
                "callback state format", repr(_STATE_FORMAT), state_dict.get("format")
            )
        self._restore = dict(state_dict)
