"""Controller benchmark: single-decision latency per kind, and GBT fit time at 1 M rows.

Prints human-readable lines, then one JSON object on the last line. One thread everywhere.

    python tests/benchmarks/bench_controllers.py [--fit-rows 1000000] [--max-fit-s 120]

Latency: median over 2,000 ``decide`` calls (features in -> action out) on rows drawn from the
training distribution (3 % NaN features), after 200 warm-up calls; targets 0.1 ms (gbt, mlp) and
0.2 ms (gru). Fit: GBT with default parameters (100 trees x 15 leaves per action) on synthetic
rows x 30 features x 5 actions. It first times 200 k rows; if 1 M rows would then take longer
than ``--max-fit-s`` it reports the linear extrapolation instead and says so.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from trajlib.controllers import get_controller_kind  # noqa: E402

N_FEATURES, N_ACTIONS, KEEP = 30, 5, 2
TARGET_MS = {"gbt": 0.1, "mlp": 0.1, "gru": 0.2}
FIT_PARAMS = {  # latency depends on model size, not on training length
    "gbt": {},
    "mlp": {"epochs": 3},
    "gru": {"epochs": 3},
}


def synth(n: int, seed: int = 0, n_runs: int | None = None):
    """Features with a learnable rule: the best log-multiplier is a mix of three features."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    X[rng.random(X.shape) < 0.03] = np.nan
    u = np.tanh(np.nan_to_num(X[:, 0]) - 0.5 * np.nan_to_num(X[:, 1]) + 0.3 * X[:, 2] ** 2)
    logm = np.log([0.5, 0.7, 1.0, 1.4, 2.0])
    T = 0.05 * (2 * u[:, None] * logm - logm**2) + rng.normal(0, 0.003, size=(n, N_ACTIONS))
    T[:, KEEP] = 0.0
    runs = n_runs or max(1, n // 40)
    groups = np.repeat(np.arange(runs), int(np.ceil(n / runs)))[:n]
    return X, T, groups


def latency_ms(kind: str, X: np.ndarray, T: np.ndarray, groups: np.ndarray) -> dict:
    ctl = get_controller_kind(kind)(**FIT_PARAMS[kind]).fit(X, T, groups)
    rows = X[:2200]
    state = ctl.initial_state()
    times = np.empty(len(rows))
    for i, x in enumerate(rows):
        t0 = time.perf_counter()
        _, state = ctl.decide(x, state)
        times[i] = time.perf_counter() - t0
    med = float(np.median(times[200:])) * 1e3
    out = {
        "median_ms": round(med, 4),
        "p90_ms": round(float(np.percentile(times[200:], 90)) * 1e3, 4),
        "target_ms": TARGET_MS[kind],
        "ratio_to_target": round(med / TARGET_MS[kind], 3),
        "calls": len(rows) - 200,
    }
    if kind == "gbt":
        out["n_trees"] = int(ctl.forests_.n_trees)
        b = next(b for b in ctl.boosters_ if b is not None)
        t = []
        for x in rows[200:700]:
            t0 = time.perf_counter()
            b.predict(x[None, :], num_threads=1)
            t.append(time.perf_counter() - t0)
        out["booster_predict_one_forest_median_ms"] = round(float(np.median(t)) * 1e3, 4)
    return out


def gbt_fit_s(n: int) -> float:
    X, T, groups = synth(n, seed=1)
    t0 = time.perf_counter()
    get_controller_kind("gbt")().fit(X, T, groups)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fit-rows", type=int, default=1_000_000)
    ap.add_argument("--probe-rows", type=int, default=200_000)
    ap.add_argument("--max-fit-s", type=float, default=120.0)
    args = ap.parse_args()

    X, T, groups = synth(20_000)
    result: dict = {"bench": "controllers", "machine": platform.machine(), "threads": 1}
    lat = {}
    for kind in ("gbt", "mlp", "gru"):
        lat[kind] = latency_ms(kind, X, T, groups)
        print(
            f"{kind}: decide median {lat[kind]['median_ms']:.4f} ms "
            f"({lat[kind]['ratio_to_target']:.2f}x of the {TARGET_MS[kind]} ms target)",
            flush=True,
        )
    result["decide_latency"] = lat

    probe = gbt_fit_s(args.probe_rows)
    est = probe * args.fit_rows / args.probe_rows
    print(
        f"gbt fit {args.probe_rows} rows: {probe:.1f} s ({args.fit_rows} rows estimate {est:.0f} s)",
        flush=True,
    )
    fit = {
        "rows": args.fit_rows,
        "features": N_FEATURES,
        "actions": N_ACTIONS,
        "models": N_ACTIONS - 1,
        "trees_per_model": get_controller_kind("gbt")().n_estimators,
        "probe_rows": args.probe_rows,
        "probe_fit_s": round(probe, 2),
    }
    if est <= args.max_fit_s:
        fit["fit_s"] = round(gbt_fit_s(args.fit_rows), 2)
        fit["measured"] = True
        print(f"gbt fit {args.fit_rows} rows: {fit['fit_s']:.1f} s", flush=True)
    else:
        fit["fit_s"] = round(est, 2)
        fit["measured"] = False
        fit["note"] = (
            f"extrapolated linearly from {args.probe_rows} rows; the full fit was skipped "
            f"because it would exceed {args.max_fit_s:.0f} s on this shared machine"
        )
    result["gbt_fit"] = fit
    print(json.dumps(result))


if __name__ == "__main__":
    main()
