"""Fabricate realistic runs for store tests (numpy-generated, deterministic per run id).

Importable by test subprocesses too: ``sys.path.insert(0, "<repo>/tests/store")``.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import polars as pl

from trajlib import schema as S

ACTIONS = (0.5, 0.7, 1.0, 1.4, 2.0)


def make_run(
    run_id: str,
    *,
    n_steps: int = 200,
    n_layers: int = 3,
    task: str = "teacher",
    status: str = "complete",
    every: int = 50,
    val_every: int = 20,
    with_layers: bool = True,
    with_branches: bool = True,
) -> dict:
    """Keyword arguments for ``Store.write_run``: a trajectory with smooth curves plus noise.

    steps: every STEP_SCHEMA column, ``n_steps`` rows; decisions every ``every`` steps;
    branches: one row per decision x action; layers: [n_steps, n_layers, 3] float32.
    """
    seed = zlib.crc32(run_id.encode())
    rng = np.random.default_rng(seed)
    n = n_steps
    t = np.arange(n)
    f32 = np.float32
    dec_steps = np.arange(every, n, every, dtype=np.int32)
    actions = rng.integers(0, len(ACTIONS), size=dec_steps.size).astype(np.int16)
    mult = np.ones(n)
    for s, a in zip(dec_steps, actions):
        mult[s:] *= ACTIONS[a]
    base_lr = 10 ** rng.uniform(-3, -1)
    factor = 0.5 * (1 + np.cos(np.pi * t / max(n, 1)))
    lr = base_lr * factor * mult
    loss = 2.3 * np.exp(-t / 80.0) + 0.1 + 0.05 * rng.standard_normal(n)
    gn = 1.0 + 0.5 * np.exp(-t / 60.0) + 0.1 * rng.standard_normal(n)
    wn = 10 + np.cumsum(np.abs(rng.standard_normal(n))) * 1e-3
    un = lr * np.abs(gn)
    ratio = un / wn
    val_mask = (t + 1) % val_every == 0
    val = np.where(val_mask, loss + 0.02, np.nan)
    cos = np.r_[np.nan, 0.1 * rng.standard_normal(max(n - 1, 0))][:n]
    steps = pl.DataFrame(
        {
            S.RUN_ID: [run_id] * n,
            S.STEP: t.astype(np.int32),
            S.LOSS: loss.astype(f32),
            S.LR: lr.astype(f32),
            S.MOMENTUM: np.full(n, 0.9, f32),
            S.WEIGHT_DECAY: np.full(n, 1e-4, f32),
            S.L2: np.zeros(n, f32),
            S.INPUT_NOISE: np.zeros(n, f32),
            S.LR_MULT: mult.astype(f32),
            S.BASE_FACTOR: factor.astype(f32),
            S.GRAD_NORM: gn.astype(f32),
            S.WEIGHT_NORM: wn.astype(f32),
            S.UPDATE_NORM: un.astype(f32),
            S.GRAD_COS: cos.astype(f32),
            S.UPDATE_COS: (cos * 0.5 + 0.4).astype(f32),
            S.UPD_RATIO_MEAN: ratio.astype(f32),
            S.UPD_RATIO_MAX: (2 * ratio).astype(f32),
            S.UPD_RATIO_MIN: (ratio / 2).astype(f32),
            S.UPD_RATIO_MEDIAN: (0.9 * ratio).astype(f32),
            S.STEP_TIME_S: (0.002 + 1e-4 * rng.random(n)).astype(f32),
            S.FINITE: np.isfinite(loss),
            S.VAL_LOSS: val.astype(f32),
            S.VAL_ACC: np.where(val_mask, 1 - loss / 3, np.nan).astype(f32),
        },
        schema=S.STEP_SCHEMA,
    ).with_columns(pl.col(S.GRAD_COS, S.UPDATE_COS, S.VAL_LOSS, S.VAL_ACC).fill_nan(None))
    decisions = pl.DataFrame(
        {
            S.RUN_ID: [run_id] * dec_steps.size,
            S.STEP: dec_steps,
            S.ACTION: actions,
            S.PROPENSITY: np.full(dec_steps.size, 1 / len(ACTIONS), f32),
            S.N_ACTIONS: np.full(dec_steps.size, len(ACTIONS), np.int16),
            S.LR: lr[dec_steps - 1].astype(f32),
            S.LR_MULT: mult[dec_steps - 1].astype(f32),
            S.MOMENTUM: np.full(dec_steps.size, 0.9, f32),
            S.WEIGHT_DECAY: np.full(dec_steps.size, 1e-4, f32),
        },
        schema=S.DECISION_SCHEMA,
    )
    nb = dec_steps.size * len(ACTIONS)
    branch_loss = (
        np.repeat(loss[dec_steps], len(ACTIONS)) * (1 + 0.05 * rng.standard_normal(nb))
    ).astype(f32)
    branches = pl.DataFrame(
        {
            S.RUN_ID: [run_id] * nb,
            S.STEP: np.repeat(dec_steps, len(ACTIONS)),
            S.ACTION: np.tile(np.arange(len(ACTIONS), dtype=np.int16), dec_steps.size),
            S.HORIZON: np.full(nb, every, np.int32),
            S.COOLDOWN: np.zeros(nb, np.int32),
            S.BRANCH_TRAIN_LOSS: branch_loss,
            S.BRANCH_VAL_LOSS_HALF: branch_loss + 0.01,
            S.BRANCH_VAL_LOSS: branch_loss + 0.02,
            S.BRANCH_VAL_LOSS_COOLED: branch_loss,
            S.BRANCH_VAL_ACC: (1 - branch_loss / 3).astype(f32),
            S.BRANCH_DIVERGED: np.zeros(nb, bool),
        },
        schema=S.BRANCH_SCHEMA,
    )
    names = [f"layer{i}.weight" for i in range(n_layers)]
    layers = np.stack(
        [
            np.abs(gn)[:, None] * (1 + np.arange(n_layers))[None, :] / n_layers,
            wn[:, None] / (1 + np.arange(n_layers))[None, :],
            un[:, None] * np.ones(n_layers)[None, :],
        ],
        axis=2,
    ).astype(f32)
    run = {
        S.RUN_ID: run_id,
        S.TASK: task,
        S.SEED: seed % 1000,
        S.STATUS: status,
        S.STEPS_DONE: n,
        S.BUDGET: n,
        S.FINAL_VAL_LOSS: float(loss[-1]) if n else None,
        S.RECIPE: "test",
        S.ENTRY: json.dumps({"task": task, "seed": seed % 1000}),
        S.BEHAVIOUR: "random-walk",
        S.BASE_SCHEDULE: "cosine",
        S.OPTIMIZER: "sgd",
        S.EVERY: every,
        S.VAL_EVERY: val_every,
        S.WALL_TIME_S: 0.002 * n,
    }
    out = {"run": run, "steps": steps, "decisions": decisions}
    if with_branches:
        out["branches"] = branches
    if with_layers:
        out["layers"] = layers
        out["layer_names"] = names
    return out
