"""ControllerScheduler: a learned controller as a drop-in ``torch.optim.lr_scheduler`` scheduler."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trajlib.controllers import LoadedController, load_controller
from trajlib.deploy._probe import PROBE_COLUMNS, StepProbe
from trajlib.errors import ConfigError, FeatureSetMismatchError
from trajlib.features import OnlineFeatures, get_feature_set
from trajlib.space import base_factor

__all__ = ["ControllerScheduler"]

STATE_VERSION = 1


def _hp_get(group: dict[str, Any], name: str) -> float | None:
    if name == "momentum":
        if "betas" in group:
            return float(group["betas"][0])
        return float(group["momentum"]) if "momentum" in group else None
    if name == "weight_decay":
        return float(group.get("weight_decay", 0.0))
    return None


def _hp_set(group: dict[str, Any], name: str, value: float) -> None:
    if name == "momentum":
        if "betas" in group:
            group["betas"] = (value, group["betas"][1])
        elif "momentum" in group:
            group["momentum"] = value
    elif name == "weight_decay":
        group["weight_decay"] = value


class ControllerScheduler:
    """Sets the learning rate (and momentum / weight decay when the controller controls them) of
    ``optimizer`` from a learned controller, every ``every`` steps.

    Use it like any torch scheduler: call ``step()`` once after each ``optimizer.step()``. Give it
    the training loss of the step with ``observe(loss)`` and, when you validate, the validation loss
    with ``observe_validation(val_loss)`` — both *before* ``step()``. Gradient, weight and update
    statistics come from optimizer hooks, with no host synchronisation per step.

    LR of every param group: ``initial_lr * base(t / total_steps) * m``, where ``m`` is the
    controller's multiplier (clamped to the checkpoint's bounds) and ``base`` the checkpoint's base
    schedule (constant in free mode, cosine / WSD in residual mode).

    Safety: a non-finite feature the controller never saw non-finite in training, a non-finite
    output, or any exception in the decision path keeps the current values and is counted in
    ``events``; the scheduler never raises inside training for a runtime condition.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        controller: str | Path | LoadedController,
        total_steps: int,
        *,
        every: int | None = None,
        last_epoch: int = -1,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError("optimizer", "a torch.optim.Optimizer", type(optimizer).__name__)
        if not isinstance(total_steps, int) or total_steps <= 0:
            raise ConfigError(
                "total_steps", "a positive integer (the training budget in steps)", total_steps
            )
        self.optimizer = optimizer
        self.loaded = (
            controller if isinstance(controller, LoadedController) else load_controller(controller)
        )
        fs = get_feature_set(self.loaded.manifest["feature_set"]["name"])
        if fs.hash != self.loaded.feature_set_hash:
            raise FeatureSetMismatchError(
                f"checkpoint was trained on feature set {fs.name!r} hash {self.loaded.feature_set_hash}, "
                f"this trajlib computes hash {fs.hash}; refit the controller or install the matching trajlib"
            )
        self.total_steps = total_steps
        self.every = int(every or self.loaded.every)
        if self.every <= 0:
            raise ConfigError("every", "a positive integer", self.every)
        self.base_schedule = (
            self.loaded.base_schedule if self.loaded.mode == "residual" else "constant"
        )
        self.actions = self.loaded.action_space
        self.space = self.loaded.hp_space
        for name in self.actions.hyperparameters:
            if name != "lr" and _hp_get(optimizer.param_groups[0], name) is None:
                raise ConfigError(
                    "optimizer",
                    f"an optimizer with a {name!r} hyperparameter (the checkpoint controls it)",
                    type(optimizer).__name__,
                )
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.features = OnlineFeatures(fs.name, budget=total_steps)
        nan_frac = self.loaded.manifest.get("training_data", {}).get("feature_nan_fraction", {})
        names = list(self.loaded.feature_names)
        self._nan_ok = np.array([nan_frac.get(n, 1.0) > 0 for n in names], dtype=bool)
        self.mult = 1.0
        self.hp = {
            n: _hp_get(optimizer.param_groups[0], n)
            for n in self.actions.hyperparameters
            if n != "lr"
        }
        self.step_count = 0  # optimizer steps completed (rows closed)
        self.last_epoch = last_epoch
        self.events = {"decisions": 0, "held_nonfinite": 0, "errors": 0, "skipped_steps": 0}
        self.actions_taken: list[tuple[int, int]] = []  # (step, action index)
        self._ctrl_state = self.loaded.controller.initial_state()
        self._loss: torch.Tensor | float | None = None
        self._val: tuple[float | None, float | None] | None = None
        self._rows: list[
            tuple[torch.Tensor | float | None, torch.Tensor | None, dict[str, float]]
        ] = []
        self._probe = StepProbe(optimizer)
        self._warned = False
        self._apply_lr()
        self._last_lr = [float(g["lr"]) for g in optimizer.param_groups]

    # ----------------------------------------------------------------- torch scheduler protocol
    def get_last_lr(self) -> list[float]:
        """LR of each param group as set by the last ``step()`` (what the next step will use)."""
        return list(self._last_lr)

    def observe(self, loss: torch.Tensor | float) -> None:
        """The training loss of the current step (a tensor is fine: it is not synchronised)."""
        self._loss = loss.detach() if isinstance(loss, torch.Tensor) else float(loss)

    def observe_validation(self, val_loss: float, val_acc: float | None = None) -> None:
        """Validation measured after the current step's update (call before ``step()``)."""
        vl = float(val_loss)
        va = None if val_acc is None else float(val_acc)
        if self._val is None and not self._rows_open():
            # reported after step(): attach to the last closed row
            try:
                if self._rows:
                    self._rows[-1][2]["val_loss"], self._rows[-1][2]["val_acc"] = vl, va  # type: ignore[assignment]
                else:
                    self.features.amend("val_loss", vl)
                    self.features.amend("val_acc", va)
            except Exception:  # noqa: BLE001 - never crash training
                self._count_error()
            return
        self._val = (vl, va)

    def _rows_open(self) -> bool:
        return self._loss is not None or self._probe._pending is not None

    def step(self, epoch: None = None) -> None:
        """Close the current step's record; every ``every`` steps, ask the controller."""
        try:
            stats = self._probe.take()
            if stats is None:
                self.events["skipped_steps"] += 1
            g0 = self.optimizer.param_groups[0]
            extra = {
                "lr": float(self._last_lr[0]),
                "lr_mult": self.mult,
                "base_factor": base_factor(self.base_schedule, self.step_count / self.total_steps),
                "momentum": _hp_get(g0, "momentum"),
                "weight_decay": _hp_get(g0, "weight_decay"),
                "val_loss": self._val[0] if self._val else None,
                "val_acc": self._val[1] if self._val else None,
            }
            self._rows.append((self._loss, stats, extra))  # type: ignore[arg-type]
            self._loss, self._val = None, None
            self.step_count += 1
            self.last_epoch = self.step_count - 1
            if self.step_count % self.every == 0 and self.step_count < self.total_steps:
                self._decide()
            self._apply_lr()
        except Exception:  # noqa: BLE001 - a deployed controller never crashes the training it serves
            self._count_error()
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    def _count_error(self) -> None:
        self.events["errors"] += 1
        if not self._warned:
            self._warned = True
            warnings.warn(
                "ControllerScheduler: an error in the decision path; holding the current values "
                "(see scheduler.events)",
                RuntimeWarning,
                stacklevel=3,
            )

    def _flush(self) -> None:
        """Feed buffered rows to the online features (one host transfer for all of them)."""
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        losses = [r[0] for r in rows]
        tensors = [x for x in losses if isinstance(x, torch.Tensor)]
        host_losses = (
            iter(torch.stack([t.float().reshape(()) for t in tensors]).tolist())
            if tensors
            else iter(())
        )
        stats = [r[1] for r in rows]
        present = [s for s in stats if s is not None]
        host_stats = iter(torch.stack(present).cpu().tolist()) if present else iter(())
        for loss, st, extra in zip(losses, stats, (r[2] for r in rows)):
            row: dict[str, float | None] = dict(extra)
            row["loss"] = next(host_losses) if isinstance(loss, torch.Tensor) else loss
            if st is not None:
                row.update(zip(PROBE_COLUMNS, next(host_stats)))
                row["finite"] = (
                    bool(row["finite"]) and row["loss"] is not None and math.isfinite(row["loss"])
                )
            else:
                row.update(dict.fromkeys(PROBE_COLUMNS))
                row["finite"] = False
            self.features.update(row)

    def _decide(self) -> None:
        self._flush()
        x = self.features.values()
        bad = ~np.isfinite(x) & ~(np.isnan(x) & self._nan_ok)
        if bad.any():
            self.events["held_nonfinite"] += 1
            return
        action, self._ctrl_state = self.loaded.controller.decide(x, self._ctrl_state)
        a = int(action)
        if not 0 <= a < len(self.actions):
            self.events["held_nonfinite"] += 1
            return
        self.events["decisions"] += 1
        self.actions_taken.append((self.step_count, a))
        for name, delta in self.actions[a].moves.items():
            if name == "lr":
                self.mult = (
                    self.space["lr"].move(self.mult, delta)
                    if "lr" in self.space
                    else self.mult * math.exp(delta)
                )
            elif name in self.hp and self.hp[name] is not None:
                hp = self.space[name] if name in self.space else None
                new = hp.move(float(self.hp[name]), delta) if hp else float(self.hp[name])  # type: ignore[arg-type]
                self.hp[name] = new
                for g in self.optimizer.param_groups:
                    _hp_set(g, name, new)

    def _apply_lr(self) -> None:
        f = base_factor(self.base_schedule, min(self.step_count / self.total_steps, 1.0))
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f * self.mult

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Explicit, versioned state (plain Python types and numpy-free lists)."""
        self._flush()
        cs = self._ctrl_state
        return {
            "version": STATE_VERSION,
            "step_count": self.step_count,
            "last_epoch": self.last_epoch,
            "total_steps": self.total_steps,
            "every": self.every,
            "mult": self.mult,
            "hp": dict(self.hp),
            "base_lrs": list(self.base_lrs),
            "events": dict(self.events),
            "features": self.features.state_dict(),
            "controller_state": None if cs is None else np.asarray(cs, dtype=np.float64).tolist(),
            "feature_set_hash": self.loaded.feature_set_hash,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ConfigError("state_dict.version", f"{STATE_VERSION}", state.get("version"))
        if state.get("feature_set_hash") != self.loaded.feature_set_hash:
            raise FeatureSetMismatchError(
                f"scheduler state was saved with feature set hash {state.get('feature_set_hash')}, "
                f"this controller uses {self.loaded.feature_set_hash}"
            )
        self.step_count = int(state["step_count"])
        self.last_epoch = int(state["last_epoch"])
        self.total_steps = int(state["total_steps"])
        self.every = int(state["every"])
        self.mult = float(state["mult"])
        self.hp = dict(state["hp"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self.events = dict(state["events"])
        self.features.load_state_dict(state["features"])
        cs = state["controller_state"]
        self._ctrl_state = None if cs is None else np.asarray(cs, dtype=np.float64)
        self._rows = []
        self._probe.reset()
        for name, v in self.hp.items():
            if v is not None:
                for g in self.optimizer.param_groups:
                    _hp_set(g, name, float(v))
        self._apply_lr()
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    def close(self) -> None:
        """Remove the optimizer hooks."""
        self._probe.remove()
