"""Benchmark of the feature library; the last line of output is one JSON object.

* ``offline_rows_per_s``: step rows per second through :func:`trajlib.features.derive` with the
  default set (``N_RUNS`` x ``N_STEPS`` synthetic trajectories, a decision every ``EVERY`` steps);
  target >= 10 M rows/s.
* ``online_overhead``: mean cost per step of ``OnlineFeatures.update`` plus ``values()`` every
  ``EVERY`` steps, divided by the cost of one mnist1d-like training step measured in the same run
  (MLP 40-100-100-10, ReLU, batch 128, SGD, forward+backward+step, torch on 1 thread); target <= 0.01.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import polars as pl

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from trajlib import schema  # noqa: E402
from trajlib.features import OnlineFeatures, derive, get_feature_set  # noqa: E402

N_RUNS = int(os.environ.get("BENCH_RUNS", 1000))
N_STEPS = int(os.environ.get("BENCH_STEPS", 2000))
EVERY = 50
TARGET_ROWS_PER_S = 10e6
TARGET_OVERHEAD = 0.01


def synthetic_steps(n_runs: int, n_steps: int, seed: int = 0) -> pl.DataFrame:
    """Plausible trajectories: decaying noisy loss, log-normal grad norms, val every 50 steps."""
    rng = np.random.default_rng(seed)
    n = n_runs * n_steps
    t = np.tile(np.arange(n_steps, dtype=np.float64), n_runs)
    scale = np.repeat(rng.lognormal(0, 1, n_runs), n_steps)
    loss = scale * (0.2 + np.exp(-t / 500)) * rng.lognormal(0, 0.1, n)
    f32 = np.float32
    val = np.where((t + 1) % 50 == 0, loss * 1.1, np.nan)
    cols = {
        "run_id": np.repeat(np.array([f"run{i:05d}" for i in range(n_runs)]), n_steps),
        "step": t.astype(np.int32),
        "loss": loss.astype(f32),
        "lr": np.full(n, 0.1, f32),
        "momentum": np.full(n, 0.9, f32),
        "weight_decay": np.zeros(n, f32),
        "l2": np.zeros(n, f32),
        "input_noise": np.zeros(n, f32),
        "lr_mult": np.repeat(
            rng.choice([0.5, 1.0, 2.0], (n_runs, n_steps // EVERY + 1)), EVERY, axis=1
        )[:, :n_steps]
        .ravel()
        .astype(f32),
        "base_factor": np.ones(n, f32),
        "grad_norm": rng.lognormal(0, 0.3, n).astype(f32),
        "weight_norm": (10 + t / 1000).astype(f32),
        "update_norm": rng.lognormal(-3, 0.3, n).astype(f32),
        "grad_cos": rng.uniform(-0.2, 0.6, n).astype(f32),
        "update_cos": rng.uniform(0.0, 0.9, n).astype(f32),
        "upd_ratio_mean": rng.lognormal(-7, 0.2, n).astype(f32),
        "upd_ratio_max": rng.lognormal(-6, 0.2, n).astype(f32),
        "upd_ratio_min": rng.lognormal(-8, 0.2, n).astype(f32),
        "upd_ratio_median": rng.lognormal(-7, 0.2, n).astype(f32),
        "step_time_s": np.full(n, 1e-3, f32),
        "finite": np.ones(n, bool),
        "val_loss": val.astype(f32),
        "val_acc": np.where(np.isnan(val), np.nan, 0.5).astype(f32),
    }
    return pl.DataFrame(cols).cast(schema.STEP_SCHEMA)  # type: ignore[arg-type]


def bench_offline() -> dict[str, float]:
    steps = synthetic_steps(N_RUNS, N_STEPS)
    ids = [f"run{i:05d}" for i in range(N_RUNS)]
    dec = np.arange(EVERY, N_STEPS + 1, EVERY)
    points = pl.DataFrame({"run_id": np.repeat(ids, len(dec)), "step": np.tile(dec, N_RUNS)})
    budgets = pl.DataFrame({"run_id": ids, "budget": [N_STEPS] * N_RUNS})
    derive(steps.head(10 * N_STEPS), points.head(10), budgets)  # warm-up (imports, caches)
    best = float("inf")
    for _ in range(5):  # best of 5: the 2 cores are shared, the minimum is the least disturbed
        t0 = time.perf_counter()
        out = derive(steps, points, budgets)
        best = min(best, time.perf_counter() - t0)
    assert out.height == points.height
    rows = steps.height
    return {
        "offline_rows": rows,
        "offline_points": points.height,
        "offline_s": best,
        "offline_rows_per_s": rows / best,
        "offline_vs_target": rows / best / TARGET_ROWS_PER_S,
    }


def bench_train_step(n: int = 1500) -> float:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(40, 100),
        torch.nn.ReLU(),
        torch.nn.Linear(100, 100),
        torch.nn.ReLU(),
        torch.nn.Linear(100, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(128, 40), torch.randint(0, 10, (128,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(100):
        step()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n // 3):
            step()
        best = min(best, (time.perf_counter() - t0) / (n // 3))
    return best


def bench_online(n_steps: int = 20000) -> float:
    steps = synthetic_steps(1, n_steps, seed=1).drop("run_id").to_dicts()
    best = float("inf")
    for _ in range(3):
        on = OnlineFeatures("default", budget=n_steps)
        t0 = time.perf_counter()
        for i, row in enumerate(steps):
            on.update(row)
            if (i + 1) % EVERY == 0:
                on.values()
        best = min(best, (time.perf_counter() - t0) / n_steps)
    return best


def main() -> None:
    res = bench_offline()
    fs = get_feature_set("default")
    online_s = bench_online()
    train_s = bench_train_step()
    res.update(
        {
            "feature_set": fs.name,
            "n_features": len(fs),
            "online_per_step_us": online_s * 1e6,
            "train_step_us": train_s * 1e6,
            "online_overhead": online_s / train_s,
            "online_overhead_target": TARGET_OVERHEAD,
            "target_offline_rows_per_s": TARGET_ROWS_PER_S,
            "load_avg_1m": os.getloadavg()[0],
            "cpu_count": os.cpu_count(),
        }
    )
    print(
        f"offline: {res['offline_rows_per_s'] / 1e6:.2f} M rows/s "
        f"({res['offline_vs_target']:.2f}x target); online: {online_s * 1e6:.2f} us/step = "
        f"{res['online_overhead']:.4f} of a {train_s * 1e6:.0f} us training step"
    )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
