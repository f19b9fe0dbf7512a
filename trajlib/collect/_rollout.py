"""The rollout of a population: the main trajectories of K runs of one task, with their decisions.

For every member the rollout keeps the LR multiplier ``m``, the momentum and the weight decay (what
the actions move); the LR in force at step t is ``lr0 * base_factor(t / budget) * m * layer_lr[l]``
for layer l. At every decision step ``s = every, 2 * every, ...`` it

1. moves the per-layer LR multipliers (``space.layer_lr_walk`` > 0): a log-space random step per
   layer, clamped to the bounds, before branching, so all branches and the kept trajectory
   continue with the same values;
2. branches (``branch.enabled``): every action is tried, for all live members at once, from a copy
   of each member's state for ``horizon`` steps on the same batches, then (optionally) cooled down
   linearly to LR 0 over ``cooldown`` steps, and the validation losses are recorded;
3. decides: the behaviour policy picks an action per member, which moves its hyperparameters.

Between decision points it advances every member on the device (:meth:`Rollout.advance`) and then
stops the members whose loss diverged (:meth:`Rollout.check_divergence`). Host reads happen only
at decision points and chunk ends (losses for divergence, features for behaviours that need them);
per step, only device work is queued.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trajlib import schema as S
from trajlib.collect._behaviour import (
    BehaviourPolicy,
    DecisionContext,
    DecisionPolicy,
    make_behaviour,
)
from trajlib.collect._engine import Population
from trajlib.errors import ConfigError
from trajlib.space import Action, ActionSpace, HyperparameterSpace, base_factor
from trajlib.spec import RunConfig
from trajlib.tasks import Task, get_task

__all__ = ["Rollout"]


def _lr_at(lr0: np.ndarray, mult: np.ndarray, schedule: str, t: int, budget: int) -> np.ndarray:
    return lr0 * mult * base_factor(schedule, t / budget)


def _lr_table(
    lr0: np.ndarray, mult: np.ndarray, schedule: str, start: int, stop: int, budget: int
) -> np.ndarray:
    """LRs [stop - start, K] of steps start .. stop - 1 (multipliers constant in between)."""
    base = np.array([base_factor(schedule, t / budget) for t in range(start, stop)])
    return base[:, None] * (lr0 * mult)[None, :]


@dataclass
class Hyper:
    """Host-side hyperparameters of K members (what the device holds, known without a sync)."""

    mult: np.ndarray  # LR multiplier m [K]
    momentum: np.ndarray
    weight_decay: np.ndarray

    def after(self, i: int, action: Action, space: HyperparameterSpace) -> tuple[float, ...]:
        """Member i's (mult, momentum, weight_decay) after ``action``: LR moves multiply m
        (clamped to the lr bounds), momentum moves in logit space, weight decay in log space (a
        weight decay of 0 stays 0)."""
        m, mom, wd = float(self.mult[i]), float(self.momentum[i]), float(self.weight_decay[i])
        for name, delta in action.moves.items():
            if name == "lr":
                m = space["lr"].clamp(m * math.exp(delta))
            elif name == "momentum":
                mom = space["momentum"].move(mom, delta)
            elif name == "weight_decay" and wd > 0:
                wd = space["weight_decay"].move(wd, delta)
        return m, mom, wd


# ---------------------------------------------------------------------------- layer multipliers
def _layer_lr(config: RunConfig, n_layers: int, space: HyperparameterSpace) -> np.ndarray:
    """Per-layer LR multipliers of a run: log-uniform in [1/r, r] (r = start.layer_lr_range),
    clamped to the layer_lr bounds; all ones when r = 1."""
    r = config.start.layer_lr_range
    if r <= 1:
        return np.ones(n_layers)
    rng = np.random.default_rng(config.start.layer_lr_seed)
    vals = np.exp(rng.uniform(-math.log(r), math.log(r), size=n_layers))
    if "layer_lr" in space:
        vals = np.array([space["layer_lr"].clamp(float(v)) for v in vals])
    return vals


def _walk_layer_lr(
    config: RunConfig, mult: np.ndarray, step: int, space: HyperparameterSpace
) -> np.ndarray:
    """The per-layer LR multipliers after the decision at ``step``: each takes a log-space step of
    std ``start.layer_lr_walk``, clamped to the layer_lr bounds. A pure function of the run's
    ``layer_lr_seed`` and ``step`` (so a member moves the same in any population)."""
    sigma = config.start.layer_lr_walk
    if sigma <= 0:
        return mult
    rng = np.random.default_rng([config.start.layer_lr_seed, int(step)])
    vals = mult * np.exp(sigma * rng.standard_normal(mult.shape[0]))
    if "layer_lr" in space:
        vals = np.array([space["layer_lr"].clamp(float(v)) for v in vals])
    return vals


# ------------------------------------------------------------------------------------ branches
def _branch_outcomes(
    child: Population, table: np.ndarray, cooldown: int
) -> dict[str, torch.Tensor | np.ndarray]:
    """Run ``child`` (one member per (live member, action)) over the LRs ``table`` [H, kA], then
    cool down linearly to 0 over ``cooldown`` steps; the outcomes, each [kA]."""
    H, n = table.shape
    lrs = torch.as_tensor(table, dtype=torch.float32).to(child.device)
    losses = []
    val_half = torch.full((n,), float("nan"), device=child.device)
    for j in range(H):
        child.step(lrs[j])
        losses.append(child.last_losses())
        if j + 1 == max(H // 2, 1):
            val_half = child.evaluate("val")[0]
    val, acc = child.evaluate("val")
    tail = torch.stack(losses[-max(H // 4, 1) :])  # [q, kA]
    diverged = ~torch.isfinite(torch.stack(losses)).all(0)
    cooled = torch.full((n,), float("nan"), device=child.device)
    if cooldown > 0:
        ramp = np.array([1 - j / cooldown for j in range(cooldown)])
        cool = torch.as_tensor(ramp[:, None] * table[-1][None, :], dtype=torch.float32)
        cool = cool.to(child.device)
        for j in range(cooldown):
            child.step(cool[j])
        cooled = child.evaluate("val")[0]
        diverged |= ~torch.isfinite(cooled)
    diverged |= ~torch.isfinite(val)
    return {
        S.HORIZON: np.full(n, H),
        S.COOLDOWN: np.full(n, cooldown),
        S.BRANCH_TRAIN_LOSS: tail.mean(0),
        S.BRANCH_VAL_LOSS_HALF: val_half,
        S.BRANCH_VAL_LOSS: val,
        S.BRANCH_VAL_LOSS_COOLED: cooled,
        S.BRANCH_VAL_ACC: acc,
        S.BRANCH_DIVERGED: diverged,
    }


# ------------------------------------------------------------------------------------- rollout
_SHARED = ("task", "budget", "val_every", "decision", "branch")


def _check_one_unit(configs: Sequence[RunConfig]) -> None:
    """The configs of one rollout share the task, budget and decision settings."""
    if not configs:
        raise ConfigError("configs", "at least one run config", [])
    for name in _SHARED:
        values = [getattr(c, name) for c in configs]
        if any(v != values[0] for v in values[1:]):
            raise ConfigError(
                f"configs.{name}",
                "the same value in every run of a population",
                sorted({str(v) for v in values})[:2],
            )


def _behaviours(
    configs: Sequence[RunConfig], policy: DecisionPolicy | None
) -> list[BehaviourPolicy]:
    return [
        make_behaviour(
            c.behaviour.kind,
            c.behaviour.p_move,
            params=c.behaviour.params,
            epsilon=c.behaviour.epsilon,
            policy=policy,
        )
        for c in configs
    ]


class Rollout:
    """The main trajectories of ``configs`` (same task, budget and settings) trained together.

    :meth:`run` trains them to the end; what it recorded is then read from the attributes (the
    population's record, ``hist``, ``decisions``, ``branches``, ``diverged_at``...), see
    :mod:`trajlib.collect._results`.
    """

    def __init__(
        self,
        configs: Sequence[RunConfig],
        *,
        device: str = "cpu",
        divergence_factor: float = 1e3,
        policy: DecisionPolicy | None = None,
    ) -> None:
        _check_one_unit(configs)
        c0 = configs[0]
        self.configs = list(configs)
        self.task: Task = get_task(c0.task)
        self.budget, self.every, self.val_every = c0.budget, c0.every, c0.val_every
        self.schedule = c0.decision.base_schedule
        self.actions: ActionSpace = c0.decision.action_space
        self.space: HyperparameterSpace = c0.decision.hp_space
        self.branching = c0.branch
        self.divergence_factor = divergence_factor
        self.device = device
        K = self.K = len(configs)
        self.behaviours = _behaviours(configs, policy)
        self.lr0 = np.array([c.lr0 for c in configs])
        self.hyper = Hyper(
            mult=np.array([self.space["lr"].clamp(b.initial_mult()) for b in self.behaviours]),
            momentum=self._start("momentum", self.task.momentum),
            weight_decay=self._start("weight_decay", self.task.weight_decay),
        )
        self.l2, self.noise = self._start("l2", 0.0), self._start("input_noise", 0.0)
        self.rngs = [np.random.default_rng([c.seed, 7]) for c in configs]
        data = self.task.make_data().to(device)
        self.t_start = time.perf_counter()
        self.pop = self._population(data)
        self.layer_lr = np.stack(
            [_layer_lr(c, self.pop.spec.n_layers, self.space) for c in configs]
        )
        self.layer_lr0 = self.layer_lr.copy()
        self.pop.set_hparams(layer_lr=self.layer_lr)
        self.walks = [c.start.layer_lr_walk > 0 for c in configs]
        self.layer_path: list[list[list[Any]]] = [[] for _ in range(K)]  # [step, multipliers]
        self.alive = np.ones(K, dtype=bool)
        self.diverged_at = np.full(K, -1)
        self.first_loss: np.ndarray | None = None
        self.hist = {
            name: np.full((self.budget, K), 1.0 if name == S.LR_MULT else 0.0, dtype=np.float32)
            for name in (S.LR, S.LR_MULT, S.MOMENTUM, S.WEIGHT_DECAY)
        }
        self.base_hist = np.array(
            [base_factor(self.schedule, t / self.budget) for t in range(self.budget)],
            dtype=np.float32,
        )
        self.val_rows: list[int] = []  # steps after which validation was recorded
        self.decisions: list[list[dict[str, Any]]] = [[] for _ in range(K)]
        self.branches: list[list[dict[str, Any]]] = [[] for _ in range(K)]

    def _start(self, name: str, default: float) -> np.ndarray:
        """Start values [K] of hyperparameter ``name`` (``default`` where a run leaves it)."""
        values = [getattr(c.start, name) for c in self.configs]
        return np.array([default if v is None else float(v) for v in values])

    def _population(self, data: Any) -> Population:
        return Population(
            self.task,
            data,
            [c.seed for c in self.configs],
            {
                "lr": self.lr0,
                "momentum": self.hyper.momentum,
                "weight_decay": self.hyper.weight_decay,
                "l2": self.l2,
                "input_noise": self.noise,
            },
            device=self.device,
            capacity=self.budget,
        )

    # -------------------------------------------------------------------------------- the loop
    def run(self) -> None:
        """Train every member to the end of its budget (or until it diverges)."""
        for step in range(0, self.budget, self.every):
            if step > 0 and self.alive.any():
                self.decision_point(step)
            end = min(step + self.every, self.budget)
            self.advance(step, end)
            self.check_divergence(step, end)
            if not self.alive.any():
                break

    def decision_point(self, step: int) -> None:
        """Walk the layer multipliers, branch, then decide, for every live member."""
        live = np.flatnonzero(self.alive)
        self.walk_layers(step, live)
        if self.branching.branches_at(step // self.every - 1):
            self.branch(step, live)
        self.decide(step, live)

    def walk_layers(self, step: int, live: np.ndarray) -> None:
        """Move the per-layer LR multipliers of the live members that walk."""
        if not any(self.walks[i] for i in live):
            return
        for i in live:
            if self.walks[i]:
                self.layer_lr[i] = _walk_layer_lr(
                    self.configs[i], self.layer_lr[i], step, self.space
                )
                self.layer_path[i].append([step, [float(v) for v in self.layer_lr[i]]])
        self.pop.set_hparams(layer_lr=self.layer_lr)

    def branch(self, step: int, live: np.ndarray) -> None:
        """Try every action for every live member at once (one population of len(live) * A
        members) and record the outcome rows."""
        A, budget = len(self.actions), self.budget
        H = min(self.branching.horizon, budget - step)
        child = self.pop.take(np.repeat(live, A))
        vals = np.array(
            [self.hyper.after(i, self.actions[a], self.space) for i in live for a in range(A)]
        )
        child.set_hparams(momentum=vals[:, 1], weight_decay=vals[:, 2])
        lr0 = np.repeat(self.lr0[live], A)
        table = _lr_table(lr0, vals[:, 0], self.schedule, step, step + H, budget)
        out = _branch_outcomes(child, table, self.branching.cooldown)
        host = {
            key: (v.cpu().numpy() if torch.is_tensor(v) else v).reshape(len(live), A)
            for key, v in out.items()
        }
        for row, i in enumerate(live):
            for a in range(A):
                self.branches[i].append(
                    {
                        S.RUN_ID: self.configs[i].run_id,
                        S.STEP: step,
                        S.ACTION: a,
                        **{key: v[row, a].item() for key, v in host.items()},
                    }
                )

    def _history(self, step: int) -> Callable[[int], dict[str, np.ndarray]]:
        """Member i's step columns before ``step`` (read from the device once, when asked)."""
        cache: dict[str, np.ndarray] = {}

        def history(i: int) -> dict[str, np.ndarray]:
            if not cache:
                cols = self.pop.columns(0, step)
                cols.pop("layers")
                cache.update(cols)
            out = {k: v[:, i] for k, v in cache.items()}
            for name, h in self.hist.items():
                out[name] = h[:step, i]
            out[S.BASE_FACTOR] = self.base_hist[:step]
            return out

        return history

    def decide(self, step: int, live: np.ndarray) -> None:
        """Each live member's behaviour picks an action; record it and apply it."""
        hyper, actions = self.hyper, self.actions
        history = self._history(step)
        lr_now = _lr_at(self.lr0, hyper.mult, self.schedule, step - 1, self.budget)
        lr_factors = np.array([a.lr_factor() for a in actions.actions])
        bounds = (self.space["lr"].low, self.space["lr"].high)
        for i in live:
            ctx = DecisionContext(
                step=step,
                budget=self.budget,
                every=self.every,
                lr_mult=float(hyper.mult[i]),
                lr_factors=lr_factors,
                keep=actions.keep_index,
                mult_bounds=bounds,
                history=functools.partial(history, i),
            )
            a, p = self.behaviours[i].choose(self.rngs[i], ctx)
            self.decisions[i].append(
                {
                    S.RUN_ID: self.configs[i].run_id,
                    S.STEP: step,
                    S.ACTION: a,
                    S.PROPENSITY: p,
                    S.N_ACTIONS: len(actions),
                    S.LR: float(lr_now[i]),
                    S.LR_MULT: float(hyper.mult[i]),
                    S.MOMENTUM: float(hyper.momentum[i]),
                    S.WEIGHT_DECAY: float(hyper.weight_decay[i]),
                }
            )
            hyper.mult[i], hyper.momentum[i], hyper.weight_decay[i] = hyper.after(
                i, actions[a], self.space
            )
        if actions.hyperparameters != ["lr"] and actions.hyperparameters:
            self.pop.set_hparams(momentum=hyper.momentum, weight_decay=hyper.weight_decay)

    def advance(self, start: int, stop: int) -> None:
        """Steps ``start .. stop - 1`` of every member (diverged members at LR 0), validating
        every ``val_every`` steps and at the end of the budget."""
        hyper, pop = self.hyper, self.pop
        table = _lr_table(self.lr0, hyper.mult, self.schedule, start, stop, self.budget)
        table = table * self.alive[None, :]
        self.hist[S.LR][start:stop] = table
        self.hist[S.LR_MULT][start:stop] = hyper.mult
        self.hist[S.MOMENTUM][start:stop] = hyper.momentum
        self.hist[S.WEIGHT_DECAY][start:stop] = hyper.weight_decay
        lrs = torch.as_tensor(table, dtype=torch.float32).to(self.device)  # one copy per chunk
        for t in range(start, stop):
            pop.step(lrs[t - start])
            if (t + 1) % self.val_every == 0 or t + 1 == self.budget:
                pop.record_validation()
                self.val_rows.append(t)

    def check_divergence(self, start: int, stop: int) -> None:
        """Stop the members whose loss in steps ``start .. stop - 1`` is not finite or above
        ``divergence_factor`` x the first loss."""
        if self.pop.rec_loss is None:
            raise RuntimeError("population has no loss record")
        losses = self.pop.rec_loss[start:stop].cpu().numpy()
        if self.first_loss is None:
            self.first_loss = np.abs(losses[0]) + 1e-12
        bad = ~np.isfinite(losses) | (losses > self.divergence_factor * self.first_loss)
        for i in np.flatnonzero(self.alive & bad.any(0)):
            self.alive[i] = False
            self.diverged_at[i] = start + int(np.argmax(bad[:, i]))
