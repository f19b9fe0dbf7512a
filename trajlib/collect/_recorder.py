"""The Recorder: the collector for somebody else's training loop.

It wraps a user's optimizer the way :class:`~trajlib.deploy.ControllerScheduler` does, applies a
behaviour schedule (any family of :mod:`trajlib.collect._behaviour`, with its propensities logged)
and writes the same per-step, per-layer, decision and run records as the built-in collector
(columns of :mod:`trajlib.schema`), through the :class:`~trajlib.collect.RunSink` protocol::

    rec = Recorder(store, optimizer, total_steps=1000, behaviour="cosine", every=50, model=model)
    for x, y in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        rec.observe(loss)          # each micro-batch's loss, with gradient accumulation
        rec.step()                 # once per optimizer step, after it (like a scheduler)
    rec.close()                    # commits the run (or use ``with Recorder(...) as rec``)

Measurement is the measurement contract's :class:`~trajlib.measure.StepProbe` (optimizer pre /
post step hooks: closures, gradient accumulation, GradScaler's skipped steps, parameters without a
gradient). Nothing is read on the host per step: losses and per-layer sums stay on the device and
are reduced in one batch at each decision point and at :meth:`Recorder.close`.

Hyperparameters: the LR of every param group is ``base_lr * base_factor(t / total_steps) * m``
(``base_lr``: the group's LR when the recorder was made; ``m``: the behaviour's multiplier, moved at
decision points and clamped to ``hp_space["lr"]``, whose bounds are multipliers of the start LR);
momentum (``momentum`` / ``betas[0]``) and weight decay move only where the optimizer has them and
they are switched on (> 0), in every such group (:mod:`trajlib.optim_hp`). The step table's
``momentum`` / ``weight_decay`` are the first param group's (0 where it has none).

Branches (``train_step`` given): iterate the batches through :meth:`Recorder.batches`; at each
decision point the recorder buffers the next ``horizon + cooldown`` batches once, snapshots the
model (parameters and buffers), the optimizer (state and hyperparameters), the GradScaler and the
RNGs (torch CPU and CUDA, NumPy's and Python's global ones), runs every action on the buffered
batches, records the outcomes (``trajlib.schema.BRANCH_SCHEMA``), restores the snapshot exactly and
continues with the behaviour's action on the same batches. The main trajectory is bit-identical to
the same run without branches as long as fetching a batch does not draw from the global RNGs
(a ``DataLoader`` draws its shuffling at the start of an epoch; give it its own ``generator`` if a
decision point's buffer may cross an epoch boundary, and draw random augmentations in workers).

The recorder never raises inside the user's training for a runtime condition: a failure inside
``observe`` / ``step`` / a branch is counted in :attr:`Recorder.events` and warned about once.
Bad arguments raise :class:`~trajlib.errors.ConfigError` when the recorder is made.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from trajlib import schema as S
from trajlib._snapshot import branch_loss, replay_batches, restore_snapshot, take_snapshot
from trajlib.collect._behaviour import (
    BEHAVIOURS,
    BehaviourPolicy,
    DecisionContext,
    DecisionPolicy,
    draw_params,
    make_behaviour,
)
from trajlib.collect._executor import RunSink
from trajlib.errors import ConfigError
from trajlib.measure import PROBE_COLUMNS, StepProbe, summarise
from trajlib.optim_hp import MOVABLE, hp_get, hp_movable, hp_set, lr_group
from trajlib.space import (
    BASE_SCHEDULES,
    ActionSpace,
    HyperparameterSpace,
    base_factor,
    lr_action_space,
)
from trajlib.spec import (
    DEFAULT_EVERY,
    BehaviourConfig,
    BranchConfig,
    DecisionSpec,
    RunConfig,
    SpaceConfig,
    StartValues,
)

__all__ = ["Recorder", "sanitise_run_id"]

_STATE_FORMAT = "trajlib-recorder/1"
_STAT_COLS = PROBE_COLUMNS[:-1]  # the probe's statistics without "finite"
_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_.=+-]+")
Validate = Callable[[], Any]


def sanitise_run_id(name: str) -> str:
    """``name`` as a run-id part a store accepts: characters outside ``[A-Za-z0-9_.=+-]`` become
    ``-`` (``my.module:task`` -> ``my.module-task``), a leading non-alphanumeric is dropped,
    at most 120 characters; ``"run"`` if nothing is left."""
    out = _BAD_ID_CHARS.sub("-", str(name)).lstrip("-_.=+")[:120]
    return out or "run"


@dataclass(slots=True)
class _Row:
    """One closed step, kept on the device until the next flush."""

    loss: torch.Tensor | float | None
    stats: Any  # (sums [5, L], present [L] | None) or None: no optimizer step ran
    lr: float
    lr_mult: float
    momentum: float
    weight_decay: float
    base_factor: float
    step_time_s: float


def _check_int(name: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(name, what, v)
    return v


def _val_pair(v: Any) -> tuple[float, float]:
    """A validation callable's value: a number (loss) or a pair (loss, accuracy)."""
    if isinstance(v, tuple | list):
        loss = float(v[0]) if len(v) > 0 else math.nan
        acc = float(v[1]) if len(v) > 1 and v[1] is not None else math.nan
        return loss, acc
    return float(v), math.nan


def _check_arguments(
    *,
    sink: Any,
    optimizer: Any,
    total_steps: Any,
    every: Any,
    seed: Any,
    val_every: Any,
    base_schedule: Any,
    train_step: Any,
    validate: Any,
    model: Any,
    chunk_every: Any,
    src_rank: Any,
    divergence_factor: Any,
) -> None:
    """The Recorder's arguments, checked up front: one line naming the argument."""
    for name in ("write_run", "is_committed"):
        if sink is not None and not callable(getattr(sink, name, None)):
            raise ConfigError(
                "sink",
                "a RunSink (a trajlib.store.Store)",
                type(sink).__name__,
                "trajlib.record(path, optimizer, ...) opens a store path for you",
            )
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError("optimizer", "a torch.optim.Optimizer", type(optimizer).__name__)
    _check_int("total_steps", total_steps)
    _check_int("every", every)
    _check_int("seed", seed, minimum=0)
    if val_every is not None:
        _check_int("val_every", val_every)
    if base_schedule not in BASE_SCHEDULES:
        raise ConfigError("base_schedule", f"one of {BASE_SCHEDULES}", base_schedule)
    if train_step is not None and not callable(train_step):
        raise ConfigError("train_step", "a callable train_step(batch) -> loss", train_step)
    if validate is not None and not callable(validate):
        raise ConfigError("validate", "a callable validate() -> loss", validate)
    if model is not None and not isinstance(model, torch.nn.Module):
        raise ConfigError("model", "a torch.nn.Module", type(model).__name__)
    if train_step is not None and model is None:
        raise ConfigError(
            "model", "the model train_step trains", None, "branches snapshot and restore it"
        )
    if chunk_every is not None:
        _check_int("chunk_every", chunk_every)
        if sink is not None and not callable(getattr(sink, "write_chunk", None)):
            raise ConfigError(
                "chunk_every",
                "None for a sink without write_chunk",
                chunk_every,
                "trajlib.store.Store commits chunks",
            )
    _check_int("src_rank", src_rank, minimum=0)
    if train_step is not None and _world_size() > 1:
        raise ConfigError(
            "train_step",
            "None under torch.distributed (no branches across ranks)",
            "a callable",
            "record branches in a single-process run",
        )
    if not (isinstance(divergence_factor, int | float) and divergence_factor > 1):
        raise ConfigError("divergence_factor", "a number > 1", divergence_factor)


class Recorder:
    """Records a user's training loop into a trajectory store, under a behaviour schedule.

    Args:
        sink: where the run goes: a :class:`~trajlib.collect.RunSink`, e.g. a
            :class:`trajlib.store.Store` (``trajlib.record(path, ...)`` opens one for you);
            None: apply the schedule, record nothing (the other ranks of a distributed run).
        optimizer: any ``torch.optim`` optimizer; its hyperparameters are what the behaviour sets.
        total_steps: optimizer steps the run is planned for (the budget; progress = t / it).
        behaviour: a family of ``trajlib.collect.BEHAVIOURS`` or a
            :class:`~trajlib.spec.BehaviourConfig` (its ``params`` drawn from ``seed`` if empty).
        every: steps between decision points.
        task_meta: what the user's task is; ``task_meta["task"]`` (or ``"name"``) names it in the
            runs table (default ``"user"``); everything else is stored in the run's entry.
        model: names the layers (``named_parameters``) and is what branches snapshot.
        actions: the action space (default: LR x {0.5, 0.7, 1, 1.4, 2}).
        hp_space: bounds (default :class:`~trajlib.spec.SpaceConfig`'s; ``lr`` bounds are
            multipliers of the start LR).
        seed: seeds the behaviour's draws and choices (``numpy.random.default_rng([seed, 7])``).
        val_every: how often the loop reports validation (stored in the runs table).
        base_schedule: a base LR schedule the multiplier rides on (``trajlib.space``).
        branch: horizon / cooldown of branches; branching is on when ``train_step`` is given
            and ``branch.enabled``.
        train_step: ``train_step(batch) -> loss``, one whole optimizer step of the user's loop
            (zero_grad, forward, backward, ``optimizer.step()``), for branches.
        validate: ``validate() -> loss`` or ``(loss, accuracy)``, called at the end of a branch.
        scaler: the loop's ``torch.amp.GradScaler``, snapshotted with the model in branches.
        policy: the :class:`~trajlib.collect.DecisionPolicy` of ``behaviour="controller"``.
        run_id: the run's id (default: ``<task>-0000-<hash of the run's config>``).
        recipe: the runs table's ``recipe`` (default ``"recorder"``).
        backend: the measuring backend (:func:`trajlib.measure.layer_sums`).
        divergence_factor: a loss above this times the first loss (or not finite) marks the run
            ``diverged`` at that step (the recorder does not stop the user's training).
        chunk_every: commit the rows every C steps as a chunk (the sink's ``write_chunk``), so a
            killed recording keeps them; the run stays *incomplete* (never read as a run) until
            :meth:`close` commits it. :meth:`state_dict` commits a chunk too.
        src_rank: under ``torch.distributed`` (world size > 1), the rank whose behaviour decides:
            at each decision point its action is broadcast, so every rank applies the same
            schedule (make a Recorder on every rank, ``sink=None`` on all but one, and call
            ``step()`` on every rank at every optimizer step: the broadcast is a collective).
    """

    def __init__(
        self,
        sink: RunSink | None,
        optimizer: torch.optim.Optimizer,
        *,
        total_steps: int,
        behaviour: str | BehaviourConfig = "random-walk",
        every: int = DEFAULT_EVERY,
        task_meta: Mapping[str, Any] | None = None,
        model: torch.nn.Module | None = None,
        actions: ActionSpace | None = None,
        hp_space: HyperparameterSpace | None = None,
        seed: int = 0,
        val_every: int | None = None,
        base_schedule: str = "constant",
        branch: BranchConfig | None = None,
        train_step: Callable[[Any], Any] | None = None,
        validate: Validate | None = None,
        scaler: Any | None = None,
        policy: DecisionPolicy | None = None,
        run_id: str | None = None,
        recipe: str = "recorder",
        backend: str = "auto",
        divergence_factor: float = 1e3,
        chunk_every: int | None = None,
        src_rank: int = 0,
    ) -> None:
        _check_arguments(
            sink=sink,
            optimizer=optimizer,
            total_steps=total_steps,
            every=every,
            seed=seed,
            val_every=val_every,
            base_schedule=base_schedule,
            train_step=train_step,
            validate=validate,
            model=model,
            chunk_every=chunk_every,
            src_rank=src_rank,
            divergence_factor=divergence_factor,
        )
        meta = dict(task_meta or {})
        self.config = self._run_config(
            optimizer,
            behaviour=behaviour,
            seed=seed,
            meta=meta,
            base_schedule=base_schedule,
            actions=actions,
            hp_space=hp_space,
            every=every,
            total_steps=total_steps,
            val_every=val_every,
            branch=branch,
            train_step=train_step,
            recipe=recipe,
            policy=policy,
        )
        decision, cfg = self.config.decision, self.config.behaviour
        self.run_id = self.config.run_id if run_id is None else str(run_id)
        self.task_meta = meta
        self.sink, self.optimizer, self.model = sink, optimizer, model
        self.train_step, self.validate, self.scaler = train_step, validate, scaler
        self.total_steps, self.every = total_steps, every
        self.divergence_factor = float(divergence_factor)
        self.actions: ActionSpace = decision.action_space
        self.space: HyperparameterSpace = decision.hp_space
        self.behaviour: BehaviourPolicy = make_behaviour(
            cfg.kind, cfg.p_move, params=cfg.params, epsilon=cfg.epsilon, policy=policy
        )
        self.rng = np.random.default_rng([seed, 7])
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.mult = self.space["lr"].clamp(self.behaviour.initial_mult())
        self.chunk_every = chunk_every if sink is not None else None
        self.src_rank = src_rank
        self._scheduled = base_schedule != "constant"
        self._init_run_state()
        self._attach(backend)

    def _attach(self, backend: str) -> None:
        """Hook into the optimizer (the measurement probe, the LR in force at each step) and set
        the first step's hyperparameters."""
        self._layer_names = self._names(self.optimizer, self.model)
        self._probe = StepProbe(self.optimizer, dots=True, backend=backend)
        self._lr_in_force: Any = None  # the run group's LR at the last optimizer step (_start_lr)
        self._lr_hook = self.optimizer.register_step_pre_hook(self._on_step)
        self._apply_lr(0)

    def _init_run_state(self) -> None:
        """The run's counters and the buffers its records collect in until they are committed."""
        self.t = 0  # steps closed
        self.events: dict[str, int] = {
            "steps": 0,
            "skipped_steps": 0,
            "decisions": 0,
            "branch_steps": 0,
            "errors": 0,
        }
        self.committed: bool | None = None  # set by close()
        self._closed = False
        self._warned = False
        self._rows: list[_Row] = []
        self._cols: dict[str, list[Any]] = {name: [] for name in S.STEP_SCHEMA}
        self._layers: list[np.ndarray] = []
        self._n_layers: int | None = None
        self._prev_norms: np.ndarray | None = None
        self._val: dict[int, tuple[float, float]] = {}
        self._decisions: list[dict[str, Any]] = []
        self._branches: list[dict[str, Any]] = []
        self._loss_sum: torch.Tensor | float | None = None
        self._loss_n = 0
        self._first_loss: float | None = None
        self.diverged_at: int | None = None
        self._chunk_stop = 0  # rows committed as chunks
        self._feeding = False  # batches() is driving the loop (it runs the decision points)
        self._decision_due = False
        self._t_start = time.perf_counter()
        self._t_last = self._t_start
        self._created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")

    def _on_step(self, opt: Any, args: Any, kwargs: Any) -> None:
        self._lr_in_force = opt.param_groups[self._g]["lr"]  # a reference: no host read per step

    def _run_config(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        behaviour: str | BehaviourConfig,
        seed: int,
        meta: dict[str, Any],
        base_schedule: str,
        actions: ActionSpace | None,
        hp_space: HyperparameterSpace | None,
        every: int,
        total_steps: int,
        val_every: int | None,
        branch: BranchConfig | None,
        train_step: Callable[[Any], Any] | None,
        recipe: str,
        policy: DecisionPolicy | None,
    ) -> RunConfig:
        """The run's typed config: its id, start values, decision spec, behaviour, branching."""
        self._g, lr0 = self._start_lr(optimizer)
        cfg = self._behaviour_config(behaviour, seed)
        if cfg.kind == "controller" and policy is None:
            raise ConfigError(
                "behaviour", "'controller' only with a policy=", cfg.kind, "pass policy=..."
            )
        task = sanitise_run_id(str(meta.get("task", meta.get("name", "user"))))
        space = SpaceConfig(
            mode="free" if base_schedule == "constant" else "residual",
            base_schedule=base_schedule,
        )
        decision = DecisionSpec(
            action_space=actions if actions is not None else lr_action_space(),
            hp_space=hp_space if hp_space is not None else space.hp_space,
            every=every,
            mode=space.mode,
            base_schedule=base_schedule,
        )
        g0 = optimizer.param_groups[self._g]
        branch_cfg = branch if branch is not None else BranchConfig()
        if not isinstance(branch_cfg, BranchConfig):
            raise ConfigError("branch", "a trajlib.spec.BranchConfig", type(branch).__name__)
        _check_int("branch.horizon", branch_cfg.horizon)
        _check_int("branch.cooldown", branch_cfg.cooldown, minimum=0)
        return RunConfig(
            recipe=recipe,
            task=task,
            index=0,
            seed=seed,
            lr0=lr0,
            start=StartValues(
                momentum=hp_get(g0, "momentum"), weight_decay=hp_get(g0, "weight_decay")
            ),
            budget=total_steps,
            val_every=val_every or every,
            decision=decision,
            space=space,
            behaviour=cfg,
            branch=BranchConfig(
                enabled=train_step is not None and branch_cfg.enabled,
                horizon=branch_cfg.horizon,
                cooldown=branch_cfg.cooldown,
                stride=branch_cfg.stride,
            ),
        )

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _start_lr(optimizer: torch.optim.Optimizer) -> tuple[int, float]:
        """The param group that stands for the run in its records (LR, momentum, weight decay)
        and its LR: the first group with a positive finite LR (a group at LR 0 is frozen)."""
        if not optimizer.param_groups:
            raise ConfigError("optimizer", "an optimizer with at least one param group", 0)
        lrs = [g.get("lr") for g in optimizer.param_groups]
        i = lr_group(lrs)
        if i is not None:
            return i, float(lrs[i])  # type: ignore[arg-type]
        raise ConfigError(
            "optimizer.param_groups[*]['lr']",
            "a positive finite learning rate in at least one param group",
            lrs[0] if len(lrs) == 1 else lrs,
        )

    @staticmethod
    def _behaviour_config(behaviour: str | BehaviourConfig, seed: int) -> BehaviourConfig:
        if isinstance(behaviour, str):
            behaviour = BehaviourConfig(kind=behaviour, seed=seed)
        if not isinstance(behaviour, BehaviourConfig):
            raise ConfigError(
                "behaviour",
                f"one of {list(BEHAVIOURS)} or a BehaviourConfig",
                type(behaviour).__name__,
            )
        if behaviour.kind not in BEHAVIOURS:
            raise ConfigError("behaviour", f"one of {list(BEHAVIOURS)}", behaviour.kind)
        if not behaviour.params:
            params = draw_params(behaviour.kind, np.random.default_rng([seed, 11]))
            behaviour = BehaviourConfig(
                kind=behaviour.kind,
                p_move=behaviour.p_move,
                epsilon=behaviour.epsilon,
                checkpoint=behaviour.checkpoint,
                params=params,
                seed=seed,
            )
        return behaviour

    @staticmethod
    def _names(optimizer: torch.optim.Optimizer, model: torch.nn.Module | None) -> list[str]:
        """One name per layer (parameter tensor of the param groups, in order)."""
        by_id = {}
        if model is not None:
            by_id = {id(p): n for n, p in model.named_parameters()}
        return [
            by_id.get(id(p), f"group{gi}.param{pi}")
            for gi, g in enumerate(optimizer.param_groups)
            for pi, p in enumerate(g["params"])
        ]

    # ------------------------------------------------------------------ the loop
    def observe(self, loss: torch.Tensor | float) -> None:
        """The training loss of the step in flight (call it once per micro-batch with gradient
        accumulation: the step's loss is the mean of what was observed since the last step)."""
        try:
            v = loss.detach() if isinstance(loss, torch.Tensor) else float(loss)
            if isinstance(v, torch.Tensor) and v.numel() != 1:
                v = v.float().mean()
            self._loss_sum = v if self._loss_sum is None else self._loss_sum + v
            self._loss_n += 1
        except Exception as exc:  # noqa: BLE001 - the recorder never breaks the training
            self._error(exc)

    def observe_validation(self, loss: float | torch.Tensor, acc: float | None = None) -> None:
        """A validation loss (and accuracy) measured after the last :meth:`step`; stored in the
        last closed step's row (``trajlib.schema``: validation on theta_{t+1} is in row t)."""
        try:
            if self.t == 0:
                return
            self._val[self.t - 1] = (float(loss), math.nan if acc is None else float(acc))
        except Exception as exc:  # noqa: BLE001
            self._error(exc)

    def step(self) -> None:
        """Close the step in flight (after ``optimizer.step()``, once per optimizer step, also
        when GradScaler skipped it); at a decision point, let the behaviour move the
        hyperparameters of the next steps."""
        if self._closed:
            return
        try:
            self._close_row()
            if self.chunk_every and self.t % self.chunk_every == 0:
                self._commit_chunk()
            if self.t % self.every == 0 and self.t < self.total_steps:
                branch = self.config.branch.branches_at(self.t // self.every - 1)
                if self._feeding and branch:
                    self._decision_due = True  # batches() branches, then decides
                else:
                    self._decision_point(None)
            if self._scheduled:  # a constant base moves the LR only at decisions
                self._apply_lr(self.t)
        except Exception as exc:  # noqa: BLE001
            self._error(exc)

    def batches(self, source: Iterable[Any]) -> Iterator[Any]:
        """Yield the batches of ``source`` (one pass), running the branches of each decision
        point on the batches that follow it (buffered once, then yielded to the main loop).

        A decision point that falls on the last batch of ``source`` (the end of an epoch) is
        taken when the next ``batches(...)`` call starts, on that call's first batches."""
        self._feeding = True
        try:
            yield from replay_batches(source, self._wanted, self._run_due)
        finally:
            self._feeding = False

    def _wanted(self) -> int:
        if not self._decision_due:
            return 0
        return self.config.branch.horizon + self.config.branch.cooldown

    def _run_due(self, buffer: list[Any]) -> None:
        self._decision_due = False
        try:
            self._decision_point(buffer)
        except Exception as exc:  # noqa: BLE001
            self._error(exc)

    # ------------------------------------------------------------------ rows
    def _close_row(self) -> None:
        t = self.t
        now = time.perf_counter()
        taken = self._probe.take()
        if taken is None:
            self.events["skipped_steps"] += 1
        loss: torch.Tensor | float | None = None
        if self._loss_n:
            loss = self._loss_sum / self._loss_n if self._loss_n > 1 else self._loss_sum  # type: ignore[operator]
        self._loss_sum, self._loss_n = None, 0
        g0 = self.optimizer.param_groups[self._g]
        lr = g0["lr"] if self._lr_in_force is None else self._lr_in_force
        self._lr_in_force = None
        self._rows.append(
            _Row(
                loss=loss,
                stats=taken if isinstance(taken, tuple) else None,
                lr=float(lr),
                lr_mult=self.mult,
                momentum=hp_get(g0, "momentum") or 0.0,
                weight_decay=hp_get(g0, "weight_decay") or 0.0,
                base_factor=self._base_factor(t),
                step_time_s=now - self._t_last,
            )
        )
        self._t_last = now
        self.t += 1
        self.events["steps"] += 1

    def _base_factor(self, t: int) -> float:
        if not self._scheduled:
            return 1.0
        return base_factor(self.config.decision.base_schedule, t / self.total_steps)

    def _apply_lr(self, t: int) -> None:
        """Set every group's LR for step ``t``."""
        f = self._base_factor(t) * self.mult
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            lr = base * f
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr

    def _flush(self) -> None:
        """Move the buffered rows to the host columns (one transfer for the losses, one for the
        per-layer sums)."""
        rows, self._rows = self._rows, []
        if not rows:
            return
        start = len(self._cols[S.STEP])
        tensors = [r.loss for r in rows if isinstance(r.loss, torch.Tensor)]
        host = iter(torch.stack([x.float() for x in tensors]).cpu().tolist()) if tensors else None
        losses = [
            next(host) if isinstance(r.loss, torch.Tensor) and host is not None else r.loss
            for r in rows
        ]
        n = len(rows)
        stats_cols: dict[str, list[Any]] = {name: [None] * n for name in _STAT_COLS}
        finite = [False] * n
        layers = [None] * n
        measured = [i for i, r in enumerate(rows) if r.stats is not None]
        if measured:
            shapes = {rows[i].stats[0].shape[-1] for i in measured}
            if len(shapes) == 1:
                sums = torch.stack([rows[i].stats[0] for i in measured])  # [m, 5, L]
                present = None
                if any(rows[i].stats[1] is not None for i in measured):
                    ones = torch.ones(sums.shape[-1], dtype=torch.bool, device=sums.device)
                    present = torch.stack(
                        [ones if rows[i].stats[1] is None else rows[i].stats[1] for i in measured]
                    )
                out, self._prev_norms = summarise(sums, present, self._prev_norms)
                lay = np.sqrt(sums[:, :3].detach().to("cpu", torch.float64).numpy())
                lay = lay.transpose(0, 2, 1).astype(np.float32)  # [m, L, 3]
                for j, i in enumerate(measured):
                    for c, name in enumerate(_STAT_COLS):
                        stats_cols[name][i] = float(out[j, c])
                    finite[i] = bool(out[j, -1])
                    layers[i] = lay[j]
            else:  # the parameter layout changed inside this chunk: no statistics for it
                self._warn("the optimizer's parameters changed; per-layer statistics stop")
                self._n_layers = -1
        lfs = [None if v is None else float(v) for v in losses]
        dst = self._cols
        dst[S.RUN_ID].extend([self.run_id] * n)
        dst[S.STEP].extend(range(start, start + n))
        dst[S.LOSS].extend(lfs)
        dst[S.LR].extend([r.lr for r in rows])
        dst[S.MOMENTUM].extend([r.momentum for r in rows])
        dst[S.WEIGHT_DECAY].extend([r.weight_decay for r in rows])
        dst[S.L2].extend([0.0] * n)
        dst[S.INPUT_NOISE].extend([0.0] * n)
        dst[S.LR_MULT].extend([r.lr_mult for r in rows])
        dst[S.BASE_FACTOR].extend([r.base_factor for r in rows])
        for name in _STAT_COLS:
            dst[name].extend(stats_cols[name])
        dst[S.STEP_TIME_S].extend([r.step_time_s for r in rows])
        dst[S.FINITE].extend([f and (v is None or math.isfinite(v)) for f, v in zip(finite, lfs)])
        dst[S.VAL_LOSS].extend([None] * n)
        dst[S.VAL_ACC].extend([None] * n)
        for i, v in enumerate(lfs):
            self._check_divergence(start + i, v)
        for lay in layers:
            self._add_layers(lay)

    def _add_layers(self, lay: np.ndarray | None) -> None:
        if self._n_layers == -1:
            return
        if lay is None:
            n = self._n_layers if self._n_layers is not None else len(self._layer_names)
            lay = np.full((n, 3), np.nan, dtype=np.float32)
        if self._n_layers is None:
            self._n_layers = lay.shape[0]
        if lay.shape[0] != self._n_layers:
            self._warn("the optimizer's parameters changed; per-layer statistics stop")
            self._n_layers = -1
            return
        self._layers.append(lay)

    def _check_divergence(self, t: int, loss: float | None) -> None:
        """Mark the run diverged at the first loss that is not finite or above
        ``divergence_factor`` x the first loss (steps without an observed loss are left out)."""
        if self.diverged_at is not None or loss is None:
            return
        if not math.isfinite(loss):
            self.diverged_at = t
        elif self._first_loss is None:
            self._first_loss = abs(loss) + 1e-12
        elif loss > self.divergence_factor * self._first_loss:
            self.diverged_at = t

    def _history(self) -> dict[str, np.ndarray]:
        """The step table so far (name -> [t] array; NaN where not measured)."""
        self._flush()
        out: dict[str, np.ndarray] = {}
        for name, col in self._cols.items():
            if name == S.RUN_ID:
                continue
            out[name] = np.array([math.nan if v is None else v for v in col], dtype=np.float64)
        for t, (v, a) in self._val.items():
            if t < len(out[S.VAL_LOSS]):
                out[S.VAL_LOSS][t], out[S.VAL_ACC][t] = v, a
        return out

    # ------------------------------------------------------------------ decisions
    def _context(self, step: int) -> DecisionContext:
        return DecisionContext(
            step=step,
            budget=self.total_steps,
            every=self.every,
            lr_mult=self.mult,
            lr_factors=np.array([a.lr_factor() for a in self.actions.actions]),
            keep=self.actions.keep_index,
            mult_bounds=(self.space["lr"].low, self.space["lr"].high),
            history=self._history,
        )

    def _after(self, action_index: int) -> tuple[float, list[dict[str, float]]]:
        """The multiplier and each group's (momentum, weight decay) after an action."""
        action = self.actions[action_index]
        m = self.mult
        groups = [
            {n: v for n in MOVABLE if (v := hp_get(g, n)) is not None}
            for g in self.optimizer.param_groups
        ]
        for name, delta in action.moves.items():
            if name == "lr":
                m = self.space["lr"].clamp(m * math.exp(delta))
            elif name in MOVABLE and name in self.space:
                for g, vals in zip(self.optimizer.param_groups, groups):
                    if hp_movable(g, name):
                        vals[name] = self.space[name].move(vals[name], delta)
        return m, groups

    def _set_hps(self, m: float, groups: list[dict[str, float]], t: int) -> None:
        self.mult = m
        for g, vals in zip(self.optimizer.param_groups, groups):
            for name, v in vals.items():
                if hp_movable(g, name) and v != hp_get(g, name):
                    hp_set(g, name, v)
        self._apply_lr(t)

    def _decision_point(self, buffer: list[Any] | None) -> None:
        step = self.t
        if buffer is not None and buffer:
            self._branch(step, buffer)
        ctx = self._context(step)
        a, p = self._agree(*self.behaviour.choose(self.rng, ctx))
        g0 = self.optimizer.param_groups[self._g]
        lr_before = self._rows[-1].lr if self._rows else float(self._cols[S.LR][-1])
        self._decisions.append(
            {
                S.RUN_ID: self.run_id,
                S.STEP: step,
                S.ACTION: a,
                S.PROPENSITY: p,
                S.N_ACTIONS: len(self.actions),
                S.LR: lr_before,
                S.LR_MULT: self.mult,
                S.MOMENTUM: hp_get(g0, "momentum") or 0.0,
                S.WEIGHT_DECAY: hp_get(g0, "weight_decay") or 0.0,
            }
        )
        self.events["decisions"] += 1
        m, groups = self._after(a)
        self._set_hps(m, groups, step)
        self._flush()  # one host transfer per decision interval keeps device memory bounded

    def _agree(self, a: int, p: float) -> tuple[int, float]:
        """Under torch.distributed, every rank takes the recording rank's action (and logs its
        propensity), so all ranks train with the same schedule."""
        if _world_size() <= 1:
            return a, p
        dist = torch.distributed
        nccl = dist.get_backend() == "nccl"
        dev = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        buf = torch.tensor([float(a), p], dtype=torch.float64, device=dev)
        dist.broadcast(buf, src=self.src_rank)
        return int(buf[0].item()), float(buf[1].item())

    # ------------------------------------------------------------------ branches
    def _snapshot(self) -> dict[str, Any]:
        if self.model is None:  # __init__ refuses branches without the model
            raise ConfigError("model", "the model train_step trains", None)
        snap = take_snapshot(self.model, self.optimizer, self.scaler)
        snap["probe"] = self._probe.state_dict()
        snap["mult"] = self.mult
        return snap

    def _restore(self, snap: dict[str, Any]) -> None:
        if self.model is None:  # __init__ refuses branches without the model
            raise ConfigError("model", "the model train_step trains", None)
        restore_snapshot(snap, self.model, self.optimizer, self.scaler)
        self.mult = snap["mult"]
        self._probe.load_state_dict(snap["probe"])

    def _validate(self) -> tuple[float, float]:
        if self.validate is None:
            return math.nan, math.nan
        try:
            return _val_pair(self.validate())
        except Exception as exc:  # noqa: BLE001
            self._error(exc)
            return math.nan, math.nan

    def _branch(self, step: int, buffer: list[Any]) -> None:
        """Every action from a snapshot for ``horizon`` steps (then a cool-down) on ``buffer``;
        the outcome rows (``trajlib.schema.BRANCH_SCHEMA``)."""
        if self.train_step is None:  # branches run only when train_step was given
            raise ConfigError("train_step", "a callable train_step(batch) -> loss", None)
        cfg = self.config.branch
        H = min(cfg.horizon, len(buffer), self.total_steps - step)
        if H < 1:
            return
        cooldown = min(cfg.cooldown, len(buffer) - H)
        snap = self._snapshot()
        rows = []
        for a in range(len(self.actions)):
            try:
                m, groups = self._after(a)
                self._set_hps(m, groups, step)
                rows.append(self._run_branch(step, a, buffer, H, cooldown))
            finally:
                self._restore(snap)  # after every branch, also one that raised
        self._branches.extend(rows)

    def _run_branch(
        self, step: int, a: int, buffer: list[Any], H: int, cooldown: int
    ) -> dict[str, Any]:
        if self.train_step is None:  # branches run only when train_step was given
            raise ConfigError("train_step", "a callable train_step(batch) -> loss", None)
        losses: list[float] = []
        val_half = math.nan
        for j in range(H):
            self._apply_lr(step + j)
            losses.append(self._branch_step(buffer[j]))
            if j + 1 == max(H // 2, 1):
                val_half = self._validate()[0]
        val, acc = self._validate()
        cooled = math.nan
        if cooldown > 0:
            last = [float(g["lr"]) for g in self.optimizer.param_groups]
            for j in range(cooldown):
                for g, lr in zip(self.optimizer.param_groups, last):
                    g["lr"] = lr * (1 - j / cooldown)
                self._branch_step(buffer[H + j])
            cooled = self._validate()[0]
        tail = losses[-max(H // 4, 1) :]
        diverged = not all(math.isfinite(v) for v in losses) or not math.isfinite(val)
        if cooldown > 0:
            diverged = diverged or not math.isfinite(cooled)
        return {
            S.RUN_ID: self.run_id,
            S.STEP: step,
            S.ACTION: a,
            S.HORIZON: H,
            S.COOLDOWN: cooldown,
            S.BRANCH_TRAIN_LOSS: float(np.mean(np.asarray(tail, dtype=np.float32))),
            S.BRANCH_VAL_LOSS_HALF: val_half,
            S.BRANCH_VAL_LOSS: val if self.validate is not None else math.nan,
            S.BRANCH_VAL_LOSS_COOLED: cooled,
            S.BRANCH_VAL_ACC: acc,
            S.BRANCH_DIVERGED: diverged,
        }

    def _branch_step(self, batch: Any) -> float:
        if self.train_step is None:  # branches run only when train_step was given
            raise ConfigError("train_step", "a callable train_step(batch) -> loss", None)
        loss = self.train_step(batch)
        self._probe.take()  # the main trajectory's probe state is restored afterwards
        self.events["branch_steps"] += 1
        return branch_loss(loss)

    # ------------------------------------------------------------------ results
    def _step_frame(self, start: int = 0, stop: int | None = None) -> pl.DataFrame:
        """Rows ``start .. stop - 1`` of the step table (``trajlib.schema.STEP_SCHEMA``)."""
        cols = {k: v[start:stop] for k, v in self._cols.items()}
        vl, va = list(cols[S.VAL_LOSS]), list(cols[S.VAL_ACC])
        for t, (v, a) in self._val.items():
            if start <= t < start + len(vl):
                vl[t - start] = v if math.isfinite(v) else None
                va[t - start] = a if math.isfinite(a) else None
        cols[S.VAL_LOSS], cols[S.VAL_ACC] = vl, va
        return (
            pl.DataFrame(cols, schema=S.STEP_SCHEMA, strict=False)
            .with_columns(pl.col(S.GRAD_COS, S.UPDATE_COS).fill_nan(None))
            .select(list(S.STEP_SCHEMA))
        )

    def _decision_frame(self, start: int = 0, stop: int | None = None) -> pl.DataFrame:
        rows = [
            r for r in self._decisions if start <= r[S.STEP] and (stop is None or r[S.STEP] < stop)
        ]
        if not rows:
            return S.empty_frame(S.DECISION_SCHEMA)
        return pl.DataFrame(rows, schema=S.DECISION_SCHEMA, orient="row")

    def _branch_frame(self, start: int = 0, stop: int | None = None) -> pl.DataFrame:
        rows = [
            r for r in self._branches if start <= r[S.STEP] and (stop is None or r[S.STEP] < stop)
        ]
        if not rows:
            return S.empty_frame(S.BRANCH_SCHEMA)
        return (
            pl.DataFrame(rows)
            .cast(dict(S.BRANCH_SCHEMA))  # type: ignore[arg-type]
            .select(list(S.BRANCH_SCHEMA))
            .with_columns(
                pl.col(
                    S.BRANCH_TRAIN_LOSS,
                    S.BRANCH_VAL_LOSS_HALF,
                    S.BRANCH_VAL_LOSS,
                    S.BRANCH_VAL_LOSS_COOLED,
                    S.BRANCH_VAL_ACC,
                ).fill_nan(None)
            )
        )

    def frames(self) -> tuple[dict[str, Any], pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        """The run row and the step, decision and branch frames recorded so far (the columns of
        ``trajlib.schema``: RUN_SCHEMA, STEP_SCHEMA, DECISION_SCHEMA, BRANCH_SCHEMA)."""
        self._flush()
        steps = self._step_frame()
        return self._run_row(steps), steps, self._decision_frame(), self._branch_frame()

    def _commit_chunk(self) -> None:
        """Commit the rows since the last chunk (steps, decisions and branches in that range,
        the per-layer rows) through the sink's ``write_chunk``."""
        self._flush()
        start, stop = self._chunk_stop, self.t
        if stop <= start:
            return
        steps = self._step_frame(start, stop)
        run = self._run_row(self._step_frame())
        run[S.STATUS] = "incomplete"
        layers = None
        if self._n_layers not in (None, -1) and len(self._layers) >= stop:
            layers = np.stack(self._layers[start:stop])
        self._chunks.write_chunk(
            self.run_id,
            start,
            stop,
            run=run,
            steps=steps,
            decisions=self._decision_frame(start, stop),
            branches=self._branch_frame(start, stop),
            layers=layers,
            layer_names=self._layer_names,
        )
        self._chunk_stop = stop

    def _run_row(self, steps: pl.DataFrame, error: str | None = None) -> dict[str, Any]:
        n = steps.height
        last_val = steps.filter(pl.col(S.VAL_LOSS).is_not_null()).tail(1)
        status = S.STATUS_COMPLETE if self.diverged_at is None else S.STATUS_DIVERGED
        if error is not None:
            status = S.STATUS_FAILED
        entry = {
            **self.config.to_dict(),
            "task_meta": self.task_meta,
            "recorder": {
                "optimizer": type(self.optimizer).__name__,
                "base_lrs": self.base_lrs,
                "events": dict(self.events),
            },
        }
        return {
            S.RUN_ID: self.run_id,
            S.TASK: self.config.task,
            S.SEED: self.config.seed,
            S.STATUS: status,
            S.STEPS_DONE: n,
            S.BUDGET: max(self.total_steps, n),
            S.DIVERGED_AT: self.diverged_at,
            S.FINAL_VAL_LOSS: _opt(last_val[S.VAL_LOSS][0]) if len(last_val) else None,
            S.FINAL_VAL_ACC: _opt(last_val[S.VAL_ACC][0]) if len(last_val) else None,
            S.FINAL_TEST_LOSS: None,
            S.FINAL_TEST_ACC: None,
            S.RECIPE: self.config.recipe,
            S.ENTRY: json.dumps(entry, sort_keys=True, default=str),
            S.BEHAVIOUR: self.config.behaviour.kind,
            S.BASE_SCHEDULE: self.config.decision.base_schedule,
            S.OPTIMIZER: type(self.optimizer).__name__.lower(),
            S.EVERY: self.every,
            S.VAL_EVERY: self.config.val_every,
            S.WALL_TIME_S: time.perf_counter() - self._t_start,
            S.ERROR: error,
            S.CREATED: self._created,
            S.LAYER_NAMES: json.dumps(self._layer_names),
        }

    def layers(self) -> np.ndarray | None:
        """Per-layer statistics ``[step, layer, stat]`` (``trajlib.schema.LAYER_STATS``), or
        None when the parameter layout changed during the run."""
        self._flush()
        if self._n_layers == -1 or not self._layers:
            return None
        return np.ascontiguousarray(np.stack(self._layers), dtype=np.float32)

    def close(self, error: BaseException | None = None) -> bool:
        """Commit the run into the sink (once; later calls return the first result) and remove
        the optimizer hooks. Returns whether this call committed it (False when the sink already
        held a run with this id). ``error``: the run ended with this exception (status
        ``failed``, the steps recorded so far kept)."""
        if self._closed:
            return bool(self.committed)
        self._closed = True
        self._probe.remove()
        self._lr_hook.remove()
        if self.sink is None:  # a rank that applies the schedule and does not record
            self.committed = False
            return False
        run, steps, decisions, branches = self.frames()
        if error is not None:
            msg = f"{type(error).__name__}: {error}"[:2000]
            run = self._run_row(steps, error=msg)
        layers = self.layers()
        names = self._layer_names if layers is not None else None
        if layers is not None and layers.shape[1] != len(self._layer_names):
            layers, names = None, None
        self.committed = bool(self.sink.write_run(run, steps, decisions, branches, layers, names))
        if self.committed and self.chunk_every:
            try:
                self._chunks.drop_chunks(self.run_id)
            except Exception as exc:  # noqa: BLE001 - the run is committed; chunks are garbage
                self._error(exc)
        if not self.committed:
            warnings.warn(
                f"trajlib Recorder: the sink already holds run {self.run_id!r}; nothing written "
                "(pass run_id=... or another seed to record a new run)",
                RuntimeWarning,
                stacklevel=2,
            )
        return self.committed

    # ------------------------------------------------------------------ resume
    @property
    def _chunks(self) -> Any:
        """The sink, as a store that commits chunks (``write_chunk`` / ``drop_chunks``; checked
        in ``__init__`` when ``chunk_every`` is set)."""
        return self.sink

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume this recording from the user's own checkpoint: counters,
        the behaviour's and the probe's state, the RNG, and the rows so far (plain Python,
        NumPy-free: ``torch.save`` / ``torch.load(weights_only=True)`` read it). With
        ``chunk_every`` the rows so far are committed as a chunk first, so the store and the
        checkpoint agree."""
        if self.chunk_every:
            try:
                self._commit_chunk()
            except Exception as exc:  # noqa: BLE001
                self._error(exc)
        self._flush()
        behaviour = {
            k: v
            for k, v in vars(self.behaviour).items()
            if isinstance(v, int | float | str | bool) and not isinstance(v, np.generic)
        }
        layers = None
        if self._n_layers not in (None, -1) and self._layers:
            layers = torch.from_numpy(np.stack(self._layers))
        return {
            "format": _STATE_FORMAT,
            "run_id": self.run_id,
            "config": self.config.to_dict(),
            "base_lrs": list(self.base_lrs),
            "t": self.t,
            "mult": self.mult,
            "rng": self.rng.bit_generator.state,
            "behaviour": behaviour,
            "probe": self._probe.state_dict(),
            "events": dict(self.events),
            "first_loss": self._first_loss,
            "diverged_at": self.diverged_at,
            "prev_norms": None if self._prev_norms is None else self._prev_norms.tolist(),
            "val": {t: list(v) for t, v in self._val.items()},
            "cols": {k: list(v) for k, v in self._cols.items() if k != S.RUN_ID},
            "layers": layers,
            "n_layers": self._n_layers,
            "decisions": [dict(r) for r in self._decisions],
            "branches": [dict(r) for r in self._branches],
            "wall_time_s": time.perf_counter() - self._t_start,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` (call it after restoring the model and optimizer from
        the same checkpoint). Chunks the sink holds beyond the checkpoint's step (committed by
        the run that was killed after it) are dropped."""
        fmt = state.get("format") if isinstance(state, Mapping) else None
        if fmt != _STATE_FORMAT:
            raise ConfigError("state_dict.format", repr(_STATE_FORMAT), fmt)
        saved = RunConfig.from_dict(state["config"])
        if _identity(saved) != _identity(self.config):
            raise ConfigError(
                "state_dict.config",
                "the configuration of this recorder (start LR and momentum aside)",
                state["run_id"],
                "make the Recorder with the same arguments as the checkpointed one",
            )
        # the checkpoint is the truth: the optimizer may have been restored (moved LRs) before
        # this recorder was made
        self.config, self.run_id = saved, str(state["run_id"])
        self.base_lrs = [float(v) for v in state["base_lrs"]]
        self._rows = []
        self.t = int(state["t"])
        self.mult = float(state["mult"])
        self.rng.bit_generator.state = state["rng"]
        for k, v in state["behaviour"].items():
            setattr(self.behaviour, k, v)
        self._probe.load_state_dict(state["probe"])
        self._probe.next_step = self.t
        self.events = {k: int(v) for k, v in state["events"].items()}
        self._first_loss = state["first_loss"]
        self.diverged_at = state["diverged_at"]
        pn = state["prev_norms"]
        self._prev_norms = None if pn is None else np.asarray(pn, dtype=np.float64)
        self._val = {int(t): (float(v[0]), float(v[1])) for t, v in state["val"].items()}
        self._cols = {k: list(state["cols"][k]) for k in S.STEP_SCHEMA if k != S.RUN_ID}
        self._cols[S.RUN_ID] = [self.run_id] * len(self._cols[S.STEP])
        layers = state["layers"]
        self._layers = [] if layers is None else list(layers.numpy())
        self._n_layers = state["n_layers"]
        self._decisions = [dict(r) for r in state["decisions"]]
        self._branches = [dict(r) for r in state["branches"]]
        self._t_start = time.perf_counter() - float(state["wall_time_s"])
        self._t_last = time.perf_counter()
        self._loss_sum, self._loss_n = None, 0
        if self.chunk_every:
            self._chunk_stop = self.t
            self._chunks.drop_chunks(self.run_id, from_step=self.t)
        self._apply_lr(self.t)

    def remove(self) -> None:
        """Stop recording without committing: remove the optimizer hooks (a run with committed
        chunks stays incomplete, as if the process had died)."""
        self._closed = True
        self._probe.remove()
        self._lr_hook.remove()

    def restore_lr(self) -> None:
        """Set the learning rates the behaviour wants for the next step again (after a
        framework's own LR scheduler wrote its values over them, e.g. the Hugging Face
        Trainer's constant schedule)."""
        try:
            self._apply_lr(self.t)
        except Exception as exc:  # noqa: BLE001
            self._error(exc)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.close(exc)

    # ------------------------------------------------------------------ errors
    def _error(self, exc: BaseException) -> None:
        self.events["errors"] += 1
        self._warn(f"{type(exc).__name__}: {exc} (counted in Recorder.events['errors'])")

    def _warn(self, msg: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"trajlib Recorder: {msg}", RuntimeWarning, stacklevel=3)


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _identity(config: RunConfig) -> dict[str, Any]:
    """What must agree between a checkpointed recorder and the one resuming it: the run's
    configuration without its start values (read from an optimizer that may have moved)."""
    d = config.to_dict()
    d.pop("lr0", None)
    d.pop("hp0", None)
    return d


def _opt(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)
