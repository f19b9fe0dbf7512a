"""Random step tables for the feature tests (numpy RNG driven by hypothesis-drawn parameters)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from trajlib import schema

FLOAT_COLS = [c for c, t in schema.STEP_SCHEMA.items() if t == pl.Float32()]


@dataclass
class TrajSpec:
    n: int
    seed: int
    bad_rate: float = 0.0  # probability of NaN / inf / -inf / None in any float cell
    const_loss: bool = False
    val_every: int = 0  # 0: never validated
    lr_changes: int = 2
    loss_scale: float = 1.0


def make_rows(spec: TrajSpec) -> list[dict[str, Any]]:
    """One run's rows as dicts (floats or None), float32-representable like a stored table."""
    rng = np.random.default_rng(spec.seed)
    n = spec.n
    t = np.arange(n, dtype=np.float64)
    cols: dict[str, np.ndarray] = {}
    if spec.const_loss:
        cols["loss"] = np.full(n, 1.5)
    else:
        cols["loss"] = (0.3 + np.exp(-t / 60)) * rng.lognormal(0, 0.3, n)
    cols["loss"] = cols["loss"] * spec.loss_scale
    lr0 = rng.choice([1e-3, 0.1, 1.0])
    cuts = np.sort(rng.integers(0, max(n, 1), spec.lr_changes))
    mult = np.ones(n)
    for c in cuts:
        mult[c:] *= rng.choice([0.5, 2.0, 1.4])
    cols["lr_mult"] = mult
    cols["base_factor"] = np.clip(1 - t / max(n, 1), 0, 1)
    cols["lr"] = lr0 * mult * np.where(cols["base_factor"] > 0, cols["base_factor"], 1.0)
    cols["momentum"] = np.full(n, 0.9)
    cols["weight_decay"] = np.zeros(n)
    cols["l2"] = np.zeros(n)
    cols["input_noise"] = np.zeros(n)
    cols["grad_norm"] = rng.lognormal(0, 0.5, n)
    cols["weight_norm"] = 5 + np.cumsum(rng.random(n)) * 0.01
    cols["update_norm"] = rng.lognormal(-3, 0.3, n)
    cols["grad_cos"] = rng.uniform(-1, 1, n)
    cols["update_cos"] = rng.uniform(-1, 1, n)
    for k, mu in (("mean", -7), ("max", -6), ("min", -8), ("median", -7)):
        cols[f"upd_ratio_{k}"] = rng.lognormal(mu, 0.3, n)
    cols["step_time_s"] = np.full(n, 1e-3)
    val = np.full(n, np.nan)
    if spec.val_every > 0:
        m = (t + 1) % spec.val_every == 0
        val[m] = cols["loss"][m] * rng.uniform(0.9, 1.3, m.sum())
    cols["val_loss"] = val
    cols["val_acc"] = np.where(np.isnan(val), np.nan, 0.5)
    rows: list[dict[str, Any]] = []
    specials = [math.nan, math.inf, -math.inf, None, 0.0, -1.0]
    for i in range(n):
        row: dict[str, Any] = {"step": i}
        for c in FLOAT_COLS:
            x = float(np.float32(cols[c][i]))
            if c in ("val_loss", "val_acc") and math.isnan(x):
                x = None  # type: ignore[assignment]
            elif spec.bad_rate and rng.random() < spec.bad_rate:
                x = specials[int(rng.integers(len(specials)))]  # type: ignore[assignment]
            row[c] = x
        fin = row["loss"] is not None and math.isfinite(row["loss"])
        row["finite"] = None if (spec.bad_rate and rng.random() < spec.bad_rate) else fin
        rows.append(row)
    return rows


def to_frame(runs: dict[str, list[dict[str, Any]]], dtype: Any = pl.Float32) -> pl.DataFrame:
    """Step table of several runs (float columns as ``dtype``; None -> null, NaN stays NaN)."""
    parts = []
    for rid, rows in runs.items():
        data: dict[str, Any] = {"run_id": [rid] * len(rows), "step": [r["step"] for r in rows]}
        for c in FLOAT_COLS:
            data[c] = [r.get(c) for r in rows]
        data["finite"] = [r.get("finite") for r in rows]
        parts.append(
            pl.DataFrame(
                data,
                schema={
                    "run_id": pl.String,
                    "step": pl.Int32,
                    **{c: dtype for c in FLOAT_COLS},
                    "finite": pl.Boolean,
                },
                strict=False,
            )
        )
    if not parts:
        return pl.DataFrame(schema=schema.STEP_SCHEMA)
    return pl.concat(parts).select(list(schema.STEP_SCHEMA))


def close(a: float, b: float, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= atol + rtol * abs(b)
