"""Running the runs of a recipe: a population of members with decisions and branches.

For every member the runner keeps the LR multiplier ``m``, the momentum and the weight decay (what
the actions move); the LR in force at step t is ``lr0 * base_factor(t / budget) * m * layer_lr[l]``
for layer l. At every decision step ``s = every,
2 * every, ...`` the behaviour policy picks an action per member, and — when branching is on —
every action is first tried, for all live members at once, from a copy of each member's state for
``horizon`` steps on the same batches, then (optionally) cooled down linearly to LR 0 over
``cooldown`` steps, and the validation losses are recorded.

Per-layer LR multipliers are drawn per run (``space.layer_lr_range``) and stored in the run's
``entry`` JSON under ``layer_lr`` (in the order of ``layer_names``). With ``space.layer_lr_walk``
> 0 they also move at every decision point, before branching (so all branches and the kept
trajectory continue with the same values): a log-space random step per layer, clamped to the
bounds; the values set at each decision are stored under ``layer_lr_path`` as ``[step,
[multipliers]]`` pairs (the multipliers of a step are those of the last decision at or before it).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from trajlib import schema as S
from trajlib.collect._behaviour import DecisionContext, DecisionPolicy, make_behaviour
from trajlib.collect._engine import Population
from trajlib.space import (
    Action,
    ActionSpace,
    HyperparameterSpace,
    base_factor,
)
from trajlib.spec import RunConfig
from trajlib.tasks import get_task

__all__ = ["RunResult", "run_population"]


@dataclass
class RunResult:
    """Everything a store needs to commit one run."""

    run: dict[str, Any]
    steps: pl.DataFrame
    decisions: pl.DataFrame
    branches: pl.DataFrame
    layers: np.ndarray | None
    layer_names: list[str]


def _lr_at(lr0: np.ndarray, mult: np.ndarray, schedule: str, t: int, budget: int) -> np.ndarray:
    return lr0 * mult * base_factor(schedule, t / budget)


def _lr_table(
    lr0: np.ndarray, mult: np.ndarray, schedule: str, start: int, stop: int, budget: int
) -> np.ndarray:
    """LRs [stop - start, K] of steps start .. stop - 1 (multipliers constant in between)."""
    base = np.array([base_factor(schedule, t / budget) for t in range(start, stop)])
    return base[:, None] * (lr0 * mult)[None, :]


@dataclass
class _Hyper:
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


def _branch(
    pop: Population,
    live: np.ndarray,
    lr0: np.ndarray,
    hyper: _Hyper,
    actions: ActionSpace,
    space: HyperparameterSpace,
    schedule: str,
    budget: int,
    horizon: int,
    cooldown: int,
) -> dict[str, np.ndarray]:
    """Try every action for every live member at once (one population of len(live) * A
    members); returns arrays [len(live), A]."""
    A = len(actions)
    s = pop.t
    H = min(horizon, budget - s)
    k = len(live)
    child = pop.take(np.repeat(live, A))
    vals = np.array([hyper.after(i, actions[a], space) for i in live for a in range(A)])
    m_child, mom_child, wd_child = vals[:, 0], vals[:, 1], vals[:, 2]
    child.set_hparams(momentum=mom_child, weight_decay=wd_child)
    lr0_child = np.repeat(lr0[live], A)
    table = _lr_table(lr0_child, m_child, schedule, s, s + H, budget)
    lrs = torch.as_tensor(table, dtype=torch.float32).to(pop.device)
    losses = []
    val_half = torch.full((k * A,), float("nan"), device=pop.device)
    for j in range(H):
        child.step(lrs[j])
        losses.append(child.last_losses())
        if j + 1 == max(H // 2, 1):
            val_half = child.evaluate("val")[0]
    val, acc = child.evaluate("val")
    tail = torch.stack(losses[-max(H // 4, 1) :])  # [q, kA]
    train_loss = tail.mean(0)
    diverged = ~torch.isfinite(torch.stack(losses)).all(0)
    cooled = torch.full((k * A,), float("nan"), device=pop.device)
    if cooldown > 0:
        ramp = np.array([1 - j / cooldown for j in range(cooldown)])
        cool = torch.as_tensor(ramp[:, None] * table[-1][None, :], dtype=torch.float32)
        cool = cool.to(pop.device)
        for j in range(cooldown):
            child.step(cool[j])
        cooled = child.evaluate("val")[0]
        diverged |= ~torch.isfinite(cooled)
    diverged |= ~torch.isfinite(val)
    out = {
        S.HORIZON: np.full(k * A, H),
        S.COOLDOWN: np.full(k * A, cooldown),
        S.BRANCH_TRAIN_LOSS: train_loss,
        S.BRANCH_VAL_LOSS_HALF: val_half,
        S.BRANCH_VAL_LOSS: val,
        S.BRANCH_VAL_LOSS_COOLED: cooled,
        S.BRANCH_VAL_ACC: acc,
        S.BRANCH_DIVERGED: diverged,
    }
    return {
        key: (v.cpu().numpy() if torch.is_tensor(v) else v).reshape(k, A) for key, v in out.items()
    }


def _walk_layer_lr(
    config: RunConfig, mult: np.ndarray, step: int, space: HyperparameterSpace
) -> np.ndarray:
    """The per-layer LR multipliers after the decision at ``step``: each takes a log-space step of
    std ``hp0.layer_lr_walk``, clamped to the layer_lr bounds. A pure function of the run's
    ``layer_lr_seed`` and ``step`` (so a member moves the same in any population)."""
    sigma = config.start.layer_lr_walk
    if sigma <= 0:
        return mult
    rng = np.random.default_rng([config.start.layer_lr_seed, int(step)])
    vals = mult * np.exp(sigma * rng.standard_normal(mult.shape[0]))
    if "layer_lr" in space:
        vals = np.array([space["layer_lr"].clamp(float(v)) for v in vals])
    return vals


def _layer_lr(config: RunConfig, n_layers: int, space: HyperparameterSpace) -> np.ndarray:
    """Per-layer LR multipliers of a run: log-uniform in [1/r, r] (r = hp0.layer_lr_range),
    clamped to the layer_lr bounds; all ones when r = 1."""
    r = config.start.layer_lr_range
    if r <= 1:
        return np.ones(n_layers)
    rng = np.random.default_rng(config.start.layer_lr_seed)
    vals = np.exp(rng.uniform(-math.log(r), math.log(r), size=n_layers))
    if "layer_lr" in space:
        vals = np.array([space["layer_lr"].clamp(float(v)) for v in vals])
    return vals


def run_population(
    specs: Sequence[RunConfig],
    *,
    device: str = "cpu",
    divergence_factor: float = 1e3,
    policy: DecisionPolicy | None = None,
) -> list[RunResult]:
    """Train the runs in ``specs`` (same task, budget and settings) together; one result per run.

    Each member has its own start hyperparameters (``lr0``, ``start``), its own behaviour
    (``behaviour``) and per-layer LR multipliers. ``policy`` is the injected
    :class:`DecisionPolicy` of ``behaviour.kind = "controller"`` runs.

    Host reads happen only at decision points and chunk ends (losses for divergence, features for
    behaviours that need them); per step, only device work is queued.
    """
    c0 = specs[0]
    task = get_task(c0.task)
    budget, every, val_every = c0.budget, c0.every, c0.val_every
    branch = c0.branch
    schedule = c0.decision.base_schedule
    actions, space = c0.decision.action_space, c0.decision.hp_space
    keep = actions.keep_index
    lr_factors = np.array([a.lr_factor() for a in actions])
    K = len(specs)
    seeds = [s.seed for s in specs]
    lr0 = np.array([s.lr0 for s in specs])

    def start(name: str, default: float) -> np.ndarray:
        vals = [getattr(s.start, name) for s in specs]
        return np.array([default if v is None else float(v) for v in vals])

    behaviours = []
    for s in specs:
        b = s.behaviour
        behaviours.append(
            make_behaviour(b.kind, b.p_move, params=b.params, epsilon=b.epsilon, policy=policy)
        )
    hyper = _Hyper(
        mult=np.array([space["lr"].clamp(b.initial_mult()) for b in behaviours]),
        momentum=start("momentum", task.momentum),
        weight_decay=start("weight_decay", task.weight_decay),
    )
    l2, noise = start("l2", 0.0), start("input_noise", 0.0)
    rngs = [np.random.default_rng([s.seed, 7]) for s in specs]
    data = task.make_data().to(device)
    t_start = time.perf_counter()
    pop = Population(
        task,
        data,
        seeds,
        {
            "lr": lr0,
            "momentum": hyper.momentum,
            "weight_decay": hyper.weight_decay,
            "l2": l2,
            "input_noise": noise,
        },
        device=device,
        capacity=budget,
    )
    n_layers = pop.spec.n_layers
    layer_lr = np.stack([_layer_lr(s, n_layers, space) for s in specs])
    layer_lr0 = layer_lr.copy()
    pop.set_hparams(layer_lr=layer_lr)
    walks = [s.start.layer_lr_walk > 0 for s in specs]
    layer_path: list[list[list[Any]]] = [[] for _ in range(K)]  # [step, multipliers] per move
    alive = np.ones(K, dtype=bool)
    diverged_at = np.full(K, -1)
    hist = {
        S.LR: np.zeros((budget, K), dtype=np.float32),
        S.LR_MULT: np.ones((budget, K), dtype=np.float32),
        S.MOMENTUM: np.zeros((budget, K), dtype=np.float32),
        S.WEIGHT_DECAY: np.zeros((budget, K), dtype=np.float32),
    }
    base_hist = np.array(
        [base_factor(schedule, t / budget) for t in range(budget)], dtype=np.float32
    )
    val_rows: list[int] = []
    decisions: list[list[dict[str, Any]]] = [[] for _ in range(K)]
    branches: list[list[dict[str, Any]]] = [[] for _ in range(K)]
    first_loss: np.ndarray | None = None
    bounds = (space["lr"].low, space["lr"].high)

    for s in range(0, budget, every):
        if s > 0 and alive.any():
            live = np.flatnonzero(alive)
            if any(walks[i] for i in live):
                # per-layer multipliers move first, so every branch (and the kept trajectory)
                # continues with the same new values
                for i in live:
                    if walks[i]:
                        layer_lr[i] = _walk_layer_lr(specs[i], layer_lr[i], s, space)
                        layer_path[i].append([s, [float(v) for v in layer_lr[i]]])
                pop.set_hparams(layer_lr=layer_lr)
            if branch.enabled:
                out = _branch(
                    pop,
                    live,
                    lr0,
                    hyper,
                    actions,
                    space,
                    schedule,
                    budget,
                    branch.horizon,
                    branch.cooldown,
                )
                for row, i in enumerate(live):
                    for a in range(len(actions)):
                        branches[i].append(
                            {
                                S.RUN_ID: specs[i].run_id,
                                S.STEP: s,
                                S.ACTION: a,
                                **{key: v[row, a].item() for key, v in out.items()},
                            }
                        )
            cache: dict[str, np.ndarray] = {}

            def history(i: int, s: int = s, cache: dict[str, np.ndarray] = cache) -> dict:
                if not cache:
                    cols = pop.columns(0, s)
                    cols.pop("layers")
                    cache.update(cols)
                out = {k: v[:, i] for k, v in cache.items()}
                for name, h in hist.items():
                    out[name] = h[:s, i]
                out[S.BASE_FACTOR] = base_hist[:s]
                return out

            lr_now = _lr_at(lr0, hyper.mult, schedule, s - 1, budget)
            for i in live:
                ctx = DecisionContext(
                    step=s,
                    budget=budget,
                    every=every,
                    lr_mult=float(hyper.mult[i]),
                    lr_factors=lr_factors,
                    keep=keep,
                    mult_bounds=bounds,
                    history=lambda i=i: history(i),
                )
                a, p = behaviours[i].choose(rngs[i], ctx)
                decisions[i].append(
                    {
                        S.RUN_ID: specs[i].run_id,
                        S.STEP: s,
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
                    i, actions[a], space
                )
            if actions.hyperparameters != ["lr"] and actions.hyperparameters:
                pop.set_hparams(momentum=hyper.momentum, weight_decay=hyper.weight_decay)
        end = min(s + every, budget)
        table = _lr_table(lr0, hyper.mult, schedule, s, end, budget) * alive[None, :]
        hist[S.LR][s:end] = table
        hist[S.LR_MULT][s:end] = hyper.mult
        hist[S.MOMENTUM][s:end] = hyper.momentum
        hist[S.WEIGHT_DECAY][s:end] = hyper.weight_decay
        lrs = torch.as_tensor(table, dtype=torch.float32).to(device)  # one copy per chunk
        for t in range(s, end):
            pop.step(lrs[t - s])
            if (t + 1) % val_every == 0 or t + 1 == budget:
                pop.record_validation()
                val_rows.append(t)
        # divergence: non-finite loss, or loss above divergence_factor x the first loss
        if pop.rec_loss is None:
            raise RuntimeError("population has no loss record")
        losses = pop.rec_loss[s:end].cpu().numpy()
        if first_loss is None:
            first_loss = np.abs(losses[0]) + 1e-12
        bad = ~np.isfinite(losses) | (losses > divergence_factor * first_loss)
        for i in np.flatnonzero(alive & bad.any(0)):
            alive[i] = False
            diverged_at[i] = s + int(np.argmax(bad[:, i]))
        if not alive.any():
            break

    test_loss, test_acc = (z.cpu().numpy() for z in pop.evaluate("test"))
    wall = time.perf_counter() - t_start
    n_done = min(pop.t, budget)
    cols = pop.columns(0, n_done)
    layers = cols.pop("layers")
    step_times = np.asarray(pop.step_times, dtype=np.float32)
    val_mask = np.zeros(budget, dtype=bool)
    val_mask[val_rows] = True
    results = []
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    for i, spec in enumerate(specs):
        n = budget if diverged_at[i] < 0 else int(diverged_at[i]) + 1
        n = min(n, n_done)
        frame: dict[str, Any] = {
            S.RUN_ID: [spec.run_id] * n,
            S.STEP: np.arange(n, dtype=np.int32),
        }
        for name, v in cols.items():
            v = v[:n, i]
            if name in (S.VAL_LOSS, S.VAL_ACC):
                v = pl.Series(name, v, dtype=pl.Float32).scatter(
                    np.flatnonzero(~val_mask[:n]), None
                )
            frame[name] = v
        for name, h in hist.items():
            frame[name] = h[:n, i]
        frame[S.L2] = np.full(n, l2[i], dtype=np.float32)
        frame[S.INPUT_NOISE] = np.full(n, noise[i], dtype=np.float32)
        frame[S.BASE_FACTOR] = base_hist[:n]
        frame[S.STEP_TIME_S] = step_times[:n] / K
        steps = (
            pl.DataFrame(frame)
            .with_columns(pl.col(S.GRAD_COS, S.UPDATE_COS).fill_nan(None))
            .cast(dict(S.STEP_SCHEMA))
            .select(list(S.STEP_SCHEMA))
        )
        ok = diverged_at[i] < 0
        last_val = steps.filter(pl.col(S.VAL_LOSS).is_not_null()).tail(1)
        entry = {**spec.to_dict(), "layer_lr": [float(v) for v in layer_lr0[i]]}
        if walks[i]:
            entry["layer_lr_path"] = layer_path[i]
        run = {
            S.RUN_ID: spec.run_id,
            S.TASK: task.name,
            S.SEED: spec.seed,
            S.STATUS: S.STATUS_COMPLETE if ok else S.STATUS_DIVERGED,
            S.STEPS_DONE: n,
            S.BUDGET: budget,
            S.DIVERGED_AT: None if ok else int(diverged_at[i]),
            S.FINAL_VAL_LOSS: _opt(last_val[S.VAL_LOSS][0]) if ok and len(last_val) else None,
            S.FINAL_VAL_ACC: _opt(last_val[S.VAL_ACC][0]) if ok and len(last_val) else None,
            S.FINAL_TEST_LOSS: _opt(test_loss[i]) if ok else None,
            S.FINAL_TEST_ACC: _opt(test_acc[i]) if ok else None,
            S.RECIPE: spec.recipe,
            S.ENTRY: json.dumps(entry, sort_keys=True),
            S.BEHAVIOUR: spec.behaviour.kind,
            S.BASE_SCHEDULE: schedule,
            S.OPTIMIZER: task.optimizer,
            S.EVERY: every,
            S.VAL_EVERY: val_every,
            S.WALL_TIME_S: wall / K,
            S.ERROR: None,
            S.CREATED: now,
            S.LAYER_NAMES: json.dumps(list(pop.spec.names)),
        }
        results.append(
            RunResult(
                run=run,
                steps=steps,
                decisions=pl.DataFrame(decisions[i], schema=S.DECISION_SCHEMA, orient="row")
                if decisions[i]
                else S.empty_frame(S.DECISION_SCHEMA),
                branches=pl.DataFrame(branches[i])
                .cast(dict(S.BRANCH_SCHEMA))
                .select(list(S.BRANCH_SCHEMA))
                if branches[i]
                else S.empty_frame(S.BRANCH_SCHEMA),
                layers=np.ascontiguousarray(layers[:n, i], dtype=np.float32),
                layer_names=list(pop.spec.names),
            )
        )
    return results


def _opt(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def failed_result(spec: RunConfig, exc: BaseException) -> dict[str, Any]:
    """The runs-table row of a run whose training raised."""
    return {
        S.RUN_ID: spec.run_id,
        S.TASK: spec.task,
        S.SEED: spec.seed,
        S.STATUS: S.STATUS_FAILED,
        S.STEPS_DONE: 0,
        S.BUDGET: spec.budget,
        S.RECIPE: spec.recipe,
        S.ENTRY: json.dumps(spec.to_dict(), sort_keys=True),
        S.ERROR: "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000],
        S.CREATED: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
