"""A Hugging Face ``transformers`` ``TrainerCallback`` that records a run (no branches) with a
behaviour schedule.

>>> args = TrainingArguments(..., lr_scheduler_type="constant")
>>> Trainer(model, args, ..., callbacks=[RecordTrainerCallback(store, every=50)])

The Trainer keeps its own ``lr_scheduler``; with ``lr_scheduler_type="constant"`` it only writes
the initial LR back each step, and this callback sets the behaviour's LR again before every
optimizer step. Needs the ``hf`` extra: ``pip install 'trajlib[hf]'``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "trajlib.collect.hf needs Hugging Face transformers; install it with "
        "pip install 'trajlib[hf]'"
    ) from e

from trajlib.collect._executor import RunSink
from trajlib.collect._recorder import Recorder
from trajlib.errors import ConfigError

__all__ = ["RecordTrainerCallback"]


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


class RecordTrainerCallback(TrainerCallback):
    """Records ``transformers.Trainer.train`` into ``sink`` (a store) with a :class:`Recorder`.

    * ``on_train_begin``: makes the Recorder around the Trainer's optimizer with
      ``state.max_steps`` (or ``total_steps``) and registers a forward hook on the model that
      takes the training loss from its output (``output["loss"]`` / ``output.loss``; the step's
      loss is the mean over gradient-accumulation micro-batches).
    * Each optimizer step is closed at the start of the next one (``on_step_begin``), after
      which the behaviour's LR is set again over the Trainer's constant schedule; an evaluation
      right after a step goes into that step's row.
    * ``on_evaluate``: ``metrics[eval_key]`` (default ``"eval_loss"``).
    * ``on_train_end``: commits the run (:attr:`recorder` keeps what it wrote).

    ``recorder_kwargs`` go to :class:`Recorder` (``behaviour``, ``every``, ``seed``,
    ``task_meta``, ``chunk_every``...).
    """

    def __init__(
        self,
        sink: RunSink | None,
        total_steps: int | None = None,
        *,
        eval_key: str = "eval_loss",
        **recorder_kwargs: Any,
    ) -> None:
        self.sink = sink
        self.total_steps = total_steps
        self.eval_key = eval_key
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Recorder | None = None
        self._hook: Any = None
        self._step_pending = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        opt = kwargs.get("optimizer")
        if opt is None:
            raise ConfigError("optimizer", "the Trainer's optimizer in on_train_begin", None)
        kind = getattr(args, "lr_scheduler_type", "constant")
        kind = str(getattr(kind, "value", kind))
        if kind != "constant":
            warnings.warn(
                f"RecordTrainerCallback: lr_scheduler_type={kind!r}; the behaviour sets the LR "
                "every step, so pass lr_scheduler_type='constant'",
                UserWarning,
                stacklevel=2,
            )
        model = kwargs.get("model")
        rec_kwargs = dict(self.recorder_kwargs)
        if isinstance(model, torch.nn.Module):
            rec_kwargs.setdefault("model", model)
        self.recorder = Recorder(
            self.sink,
            _torch_optimizer(opt),
            total_steps=self.total_steps or int(state.max_steps),
            **rec_kwargs,
        )
        if isinstance(model, torch.nn.Module):
            self._hook = model.register_forward_hook(self._on_forward)

    def _on_forward(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if self.recorder is None or not module.training or not torch.is_grad_enabled():
            return
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self.recorder.observe(loss.detach())

    def _close_step(self) -> None:
        if self.recorder is not None and self._step_pending:
            self._step_pending = False
            self.recorder.step()
            self.recorder.restore_lr()  # over the Trainer's constant schedule

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._close_step()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step_pending = True

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **kw: Any
    ) -> None:
        if self.recorder is None or not metrics or self.eval_key not in metrics:
            return
        self._close_step()  # the evaluation is of the weights after the step just taken
        self.recorder.observe_validation(float(metrics[self.eval_key]))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._close_step()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.recorder is not None:
            self.recorder.close()
