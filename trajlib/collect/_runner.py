"""Running the runs of a recipe: a population of members with decisions and branches.

For every member the runner keeps the LR multiplier ``m`` (the hyperparameter the actions move);
the LR in force at step t is ``lr0 * base_factor(t / budget) * m``. At every decision step
``s = every, 2 * every, ...`` the behaviour policy picks an action per member, and — when branching
is on — every action is first tried from a copy of the member's state for ``horizon`` steps on the
same batches, then (optionally) cooled down linearly to LR 0 over ``cooldown`` steps, and the
validation losses are recorded.
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
from trajlib.collect._behaviour import make_behaviour
from trajlib.collect._engine import REC_COLUMNS, Population
from trajlib.collect._recipe import RunSpec
from trajlib.space import HyperParam, base_factor, lr_action_space
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


def _branch(
    pop: Population,
    members: np.ndarray,
    lr0: np.ndarray,
    mult: np.ndarray,
    space_lr: HyperParam,
    actions,
    schedule: str,
    budget: int,
    horizon: int,
    cooldown: int,
) -> dict[str, np.ndarray]:
    """Try every action for every member in ``members``; returns arrays [len(members), A]."""
    A = len(actions)
    s = pop.t
    H = min(horizon, budget - s)
    sub = pop if len(members) == pop.K else _select(pop, members)
    child = sub.fork(A)
    k = len(members)
    factors = np.array([a.lr_factor() for a in actions])
    m_child = np.array([[space_lr.clamp(mult[i] * f) for f in factors] for i in members]).reshape(
        -1
    )
    lr0_child = np.repeat(lr0[members], A)
    losses = []
    val_half = torch.full((k * A,), float("nan"))
    for j in range(H):
        lr = torch.as_tensor(
            _lr_at(lr0_child, m_child, schedule, s + j, budget), dtype=torch.float32
        )
        child.step(lr.to(pop.device))
        losses.append(child.last_losses())
        if j + 1 == max(H // 2, 1):
            val_half = child.evaluate("val")[0]
    val, acc = child.evaluate("val")
    tail = torch.stack(losses[-max(H // 4, 1) :])  # [q, kA]
    train_loss = tail.mean(0)
    diverged = ~torch.isfinite(torch.stack(losses)).all(0)
    cooled = torch.full((k * A,), float("nan"))
    if cooldown > 0:
        lr_end = _lr_at(lr0_child, m_child, schedule, s + H - 1, budget)
        for j in range(cooldown):
            child.step(
                torch.as_tensor(lr_end * (1 - j / cooldown), dtype=torch.float32).to(pop.device)
            )
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


def _select(pop: Population, members: np.ndarray) -> Population:
    """A view-population of some members (for branching only the live ones)."""
    child = pop.fork(1)
    idx = torch.as_tensor(members, device=pop.device)
    child.seeds = [pop.seeds[i] for i in members]
    child.K = len(members)
    child.theta = child.theta[idx]
    child.hp = {k: v[idx] for k, v in child.hp.items()}
    child.adam_steps = child.adam_steps[idx]
    child.m1 = child.m1[idx]
    child.m2 = child.m2[idx] if child.m2 is not None else None
    child.g_prev = child.g_prev[idx] if child.g_prev is not None else None
    child.u_prev = child.u_prev[idx] if child.u_prev is not None else None
    child._nan = torch.full((child.K,), float("nan"), device=pop.device)
    return child


def run_population(
    specs: Sequence[RunSpec], *, device: str = "cpu", divergence_factor: float = 1e3
) -> list[RunResult]:
    """Train the runs in ``specs`` (same task, budget and settings) together; one result per run."""
    e0 = specs[0].entry
    task = get_task(e0["task"])
    budget, every, val_every = int(e0["budget"]), int(e0["every"]), int(e0["val_every"])
    space, branch = e0["space"], e0["branch"]
    schedule = space["base_schedule"]
    actions = lr_action_space(e0["actions"])
    keep = actions.keep_index
    space_lr = HyperParam("lr", space["lr_min"], space["lr_max"], "log")
    behaviour = make_behaviour(e0["behaviour"]["kind"], e0["behaviour"]["p_move"])
    K = len(specs)
    seeds = [int(s.entry["seed"]) for s in specs]
    lr0 = np.array([float(s.entry["lr0"]) for s in specs])
    mult = np.ones(K)
    rngs = [np.random.default_rng([int(s.entry["seed"]), 7]) for s in specs]
    hps = {
        "lr": torch.as_tensor(lr0, dtype=torch.float32),
        "momentum": torch.full((K,), task.momentum),
        "weight_decay": torch.full((K,), task.weight_decay),
    }
    data = task.make_data().to(device)
    t_start = time.perf_counter()
    pop = Population(task, data, seeds, hps, device=device, capacity=budget, noise_seed=seeds[0])
    alive = np.ones(K, dtype=bool)
    diverged_at = np.full(K, -1)
    lr_mult_hist = np.ones((budget, K), dtype=np.float32)
    base_hist = np.array(
        [base_factor(schedule, t / budget) for t in range(budget)], dtype=np.float32
    )
    val_rows: list[int] = []
    decisions: list[list[dict[str, Any]]] = [[] for _ in range(K)]
    branches: list[list[dict[str, Any]]] = [[] for _ in range(K)]
    first_loss: np.ndarray | None = None

    for s in range(0, budget, every):
        if s > 0 and alive.any():
            live = np.flatnonzero(alive)
            if branch["enabled"]:
                out = _branch(
                    pop,
                    live,
                    lr0,
                    mult,
                    space_lr,
                    actions.actions,
                    schedule,
                    budget,
                    int(branch["horizon"]),
                    int(branch["cooldown"]),
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
            lr_now = _lr_at(lr0, mult, schedule, s - 1, budget)
            for i in live:
                a_arr, p_arr = behaviour.choose(rngs[i], 1, len(actions), keep)
                a, p = int(a_arr[0]), float(p_arr[0])
                decisions[i].append(
                    {
                        S.RUN_ID: specs[i].run_id,
                        S.STEP: s,
                        S.ACTION: a,
                        S.PROPENSITY: p,
                        S.N_ACTIONS: len(actions),
                        S.LR: float(lr_now[i]),
                        S.LR_MULT: float(mult[i]),
                        S.MOMENTUM: task.momentum,
                        S.WEIGHT_DECAY: task.weight_decay,
                    }
                )
                mult[i] = space_lr.clamp(mult[i] * actions[a].lr_factor())
        end = min(s + every, budget)
        for t in range(s, end):
            lr_mult_hist[t] = mult
            lr = torch.as_tensor(
                np.where(alive, _lr_at(lr0, mult, schedule, t, budget), 0.0), dtype=torch.float32
            )
            pop.step(lr.to(device))
            if (t + 1) % val_every == 0 or t + 1 == budget:
                pop.record_validation()
                val_rows.append(t)
        # divergence: non-finite loss, or loss above divergence_factor x the first loss
        assert pop.rec is not None
        losses = pop.rec[s:end, :, 0].cpu().numpy()
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
    rec = pop.rec.cpu().numpy()
    layers = pop.layer_rec.cpu().numpy() if pop.layer_rec is not None else None
    step_times = np.asarray(pop.step_times, dtype=np.float32)
    val_mask = np.zeros(budget, dtype=bool)
    val_mask[val_rows] = True
    results = []
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    for i, spec in enumerate(specs):
        n = budget if diverged_at[i] < 0 else int(diverged_at[i]) + 1
        n = min(n, pop.t)
        cols: dict[str, Any] = {S.RUN_ID: [spec.run_id] * n, S.STEP: np.arange(n, dtype=np.int32)}
        for c, name in enumerate(REC_COLUMNS):
            v = rec[:n, i, c]
            if name == S.FINITE:
                cols[name] = v > 0.5
            elif name in (S.VAL_LOSS, S.VAL_ACC):
                cols[name] = pl.Series(name, v, dtype=pl.Float32).scatter(
                    np.flatnonzero(~val_mask[:n]), None
                )
            elif name == S.STEP_TIME_S:
                cols[name] = step_times[:n] / K
            else:
                cols[name] = v
        cols[S.LR_MULT] = lr_mult_hist[:n, i]
        cols[S.BASE_FACTOR] = base_hist[:n]
        steps = (
            pl.DataFrame(cols)
            .cast({k: v for k, v in S.STEP_SCHEMA.items()})
            .select(list(S.STEP_SCHEMA))
        )
        ok = diverged_at[i] < 0
        last_val = steps.filter(pl.col(S.VAL_LOSS).is_not_null()).tail(1)
        run = {
            S.RUN_ID: spec.run_id,
            S.TASK: task.name,
            S.SEED: int(spec.entry["seed"]),
            S.STATUS: S.STATUS_COMPLETE if ok else S.STATUS_DIVERGED,
            S.STEPS_DONE: n,
            S.BUDGET: budget,
            S.DIVERGED_AT: None if ok else int(diverged_at[i]),
            S.FINAL_VAL_LOSS: float(last_val[S.VAL_LOSS][0]) if ok and len(last_val) else None,
            S.FINAL_VAL_ACC: _opt(last_val[S.VAL_ACC][0]) if ok and len(last_val) else None,
            S.FINAL_TEST_LOSS: float(test_loss[i]) if ok else None,
            S.FINAL_TEST_ACC: _opt(test_acc[i]) if ok else None,
            S.RECIPE: spec.entry.get("recipe", ""),
            S.ENTRY: json.dumps(spec.entry, sort_keys=True),
            S.BEHAVIOUR: spec.entry["behaviour"]["kind"],
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
                .cast(S.BRANCH_SCHEMA)
                .select(list(S.BRANCH_SCHEMA))
                if branches[i]
                else S.empty_frame(S.BRANCH_SCHEMA),
                layers=layers[:n, i] if layers is not None else None,
                layer_names=list(pop.spec.names),
            )
        )
    return results


def _opt(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def failed_result(spec: RunSpec, exc: BaseException) -> dict[str, Any]:
    """The runs-table row of a run whose training raised."""
    return {
        S.RUN_ID: spec.run_id,
        S.TASK: spec.entry.get("task"),
        S.SEED: int(spec.entry.get("seed", -1)),
        S.STATUS: S.STATUS_FAILED,
        S.STEPS_DONE: 0,
        S.BUDGET: int(spec.entry.get("budget", 0)),
        S.RECIPE: spec.entry.get("recipe", ""),
        S.ENTRY: json.dumps(spec.entry, sort_keys=True),
        S.ERROR: "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000],
        S.CREATED: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
