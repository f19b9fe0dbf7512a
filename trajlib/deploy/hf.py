"""A Hugging Face ``transformers`` ``TrainerCallback`` that lets a trajlib controller drive the LR.

>>> args = TrainingArguments(..., lr_scheduler_type="constant")
>>> Trainer(model, args, ..., callbacks=[TrajlibTrainerCallback("models/my-controller")])

The Trainer keeps its own ``lr_scheduler``; with ``lr_scheduler_type="constant"`` it only rewrites
the initial LR each step, and this callback sets trajlib's LR before every optimizer step after it.
(The "learning_rate" the Trainer logs is then its own constant, not trajlib's: read
``callback.scheduler.get_last_lr()``.) Needs the ``hf`` extra: ``pip install 'trajlib[hf]'``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

try:
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "trajlib.deploy.hf needs Hugging Face transformers; install it with "
        "pip install 'trajlib[hf]'"
    ) from e

from trajlib.controllers import LoadedController
from trajlib.deploy._scheduler import ControllerScheduler
from trajlib.errors import ConfigError

__all__ = ["STATE_FILE", "TrajlibTrainerCallback"]

#: File the callback writes into each Trainer checkpoint folder (``checkpoint-<step>/``).
STATE_FILE = "trajlib_scheduler.pt"


def _torch_optimizer(opt: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's / the Trainer's wrappers."""
    seen = 0
    while hasattr(opt, "optimizer") and seen < 5:
        inner = opt.optimizer
        if not isinstance(inner, torch.optim.Optimizer):
            break
        opt, seen = inner, seen + 1
    if not isinstance(opt, torch.optim.Optimizer):
        raise ConfigError("optimizer", "a torch.optim.Optimizer (or a wrapper of one)", type(opt))
    return opt


class TrajlibTrainerCallback(TrainerCallback):
    """Runs a :class:`~trajlib.deploy.ControllerScheduler` inside ``transformers.Trainer``.

    * ``on_train_begin``: builds the scheduler around the Trainer's optimizer with
      ``state.max_steps`` (or ``total_steps``), and registers a forward hook on the model that
      takes the training loss from its output (``output["loss"]`` / ``output.loss``; averaged over
      gradient-accumulation micro-batches, not synchronised). When the model's output carries no
      loss, the loss the Trainer logs (``on_log``) is used for the steps it is logged at.
    * ``on_evaluate``: feeds ``metrics[eval_key]`` (default ``"eval_loss"``).
    * After each optimizer step (``on_step_end``) the scheduler steps at the start of the next
      step (or at the end of training), so an evaluation right after the step belongs to it.
    * ``on_save``: writes the scheduler's state (features, controller state, multipliers, the
      open step) as :data:`STATE_FILE` into the Trainer's ``checkpoint-<step>`` folder;
      ``trainer.train(resume_from_checkpoint=...)`` reads it back in ``on_train_begin``
      (``torch.load(weights_only=True)``), so a resumed run makes the decisions the uninterrupted
      run would have made. A resume without that file warns and starts the features afresh.

    Pass ``lr_scheduler_type="constant"`` in ``TrainingArguments``: trajlib then sets the LR.

    Args:
        checkpoint: controller checkpoint folder (or a loaded controller).
        total_steps: training budget in optimizer steps (default: ``state.max_steps``).
        eval_key: metric name of the validation loss in ``on_evaluate``'s ``metrics``.
        every: decision interval (default: the checkpoint's).
        layerwise: one decision per param group (see :class:`ControllerScheduler`).
        resume_from: checkpoint folder to read the scheduler state from when the Trainer resumes
            (default: ``<output_dir>/checkpoint-<global_step>``, where the Trainer saved it).
    """

    def __init__(
        self,
        checkpoint: str | Path | LoadedController,
        total_steps: int | None = None,
        *,
        eval_key: str = "eval_loss",
        every: int | None = None,
        layerwise: bool = False,
        resume_from: str | Path | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.resume_from = resume_from
        self.total_steps = total_steps
        self.eval_key = eval_key
        self.every = every
        self.layerwise = layerwise
        self.scheduler: ControllerScheduler | None = None
        self._hook: Any = None
        self._step_pending = False
        self._loss_seen = False

    # ------------------------------------------------------------------ lifecycle
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        opt = kwargs.get("optimizer")
        if opt is None:
            raise ConfigError("optimizer", "the Trainer's optimizer in on_train_begin", None)
        total = self.total_steps or int(state.max_steps)
        kind = getattr(args, "lr_scheduler_type", "constant")
        kind = str(getattr(kind, "value", kind))
        if kind != "constant":
            warnings.warn(
                f"TrajlibTrainerCallback: lr_scheduler_type={kind!r}; trajlib sets the LR every "
                "step, so pass lr_scheduler_type='constant' (the Trainer's schedule is ignored)",
                UserWarning,
                stacklevel=2,
            )
        self.scheduler = ControllerScheduler(
            _torch_optimizer(opt),
            self.checkpoint,
            total_steps=total,
            every=self.every,
            layerwise=self.layerwise,
            model=kwargs.get("model"),  # the guard's rollback restores its buffers too
        )
        if int(state.global_step) > 0:
            self._resume(args, state)
        model = kwargs.get("model")
        if isinstance(model, torch.nn.Module):
            self._hook = model.register_forward_hook(self._on_forward)

    def _folder(self, args: Any, state: Any) -> Path:
        return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{int(state.global_step)}"

    def _resume(self, args: Any, state: Any) -> None:
        folder = Path(self.resume_from) if self.resume_from else self._folder(args, state)
        path = folder / STATE_FILE
        if self.scheduler is None or not path.is_file():
            warnings.warn(
                f"TrajlibTrainerCallback: resuming at step {state.global_step} without {path}; "
                "the controller's features start afresh (pass resume_from= the checkpoint folder)",
                UserWarning,
                stacklevel=3,
            )
            return
        saved = torch.load(path, weights_only=True)
        self.scheduler.load_state_dict(saved["scheduler"])
        self._step_pending = bool(saved["step_pending"])

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.scheduler is None or not getattr(state, "is_world_process_zero", True):
            return
        folder = self._folder(args, state)
        if folder.is_dir():
            state_dict = {
                "scheduler": self.scheduler.state_dict(),
                "step_pending": self._step_pending,
            }
            torch.save(state_dict, folder / STATE_FILE)

    def _on_forward(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if self.scheduler is None or not module.training or not torch.is_grad_enabled():
            return
        loss = None
        if isinstance(output, Mapping):
            loss = output.get("loss")
        elif hasattr(output, "loss"):
            loss = output.loss
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self.scheduler.observe(loss.detach())
            self._loss_seen = True

    def _maybe_step(self) -> None:
        if self.scheduler is not None and self._step_pending:
            self._step_pending = False
            self._loss_seen = False
            # the Trainer's own (constant) scheduler wrote its LR after the step: "constant"
            # means "keep what trajlib set", so put trajlib's back before it steps (a factor found
            # on a group at step() would otherwise be kept, as in a torch ChainedScheduler)
            groups = self.scheduler.optimizer.param_groups
            for g, lr in zip(groups, self.scheduler.get_last_lr()):
                g["lr"] = lr
            self.scheduler.step()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._maybe_step()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step_pending = True

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if self.scheduler is None or not logs or self._loss_seen or not self._step_pending:
            return
        loss = logs.get("loss")
        if isinstance(loss, int | float):
            self.scheduler.observe(float(loss))
            self._loss_seen = True

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if self.scheduler is None or not metrics or self.eval_key not in metrics:
            return
        self.scheduler.observe_validation(metrics[self.eval_key])

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._maybe_step()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
