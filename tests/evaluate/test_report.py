"""Metrics on hand-made traces, bootstrap CIs, run_evaluation with Methods and Strategies, report."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trajlib.errors import ConfigError
from trajlib.evaluate import Trace, constant_method, cosine_method, run_evaluation, write_report
from trajlib.evaluate._protocol import TARGET_METHOD
from trajlib.evaluate._report import bootstrap_ci, summarize
from trajlib.evaluate._strategies import GridSearch


def _trace(method: str, seed: int, val: list[float], *, steps: list[int] | None = None, budget: int = 100,
           wall: float = 1.0, cost: float = 1.0, diverged: bool = False, test: float = 0.5) -> Trace:  # fmt: skip
    steps = steps or [20 * (i + 1) for i in range(len(val))]
    return Trace(
        "hand",
        method,
        seed,
        np.ones(budget, dtype=np.float32),
        np.full(budget, 0.1, dtype=np.float32),
        np.asarray(steps),
        np.asarray(val, dtype=float),
        np.full(len(val), 0.5),
        test,
        0.8,
        diverged,
        wall,
        cost,
    )


def test_auc_on_hand_made_trace() -> None:
    tr = _trace("m", 0, [math.e, 1.0, math.exp(-1)], steps=[20, 40, 100])
    # step function: log 1 over steps 0-20, 0 over 20-40, -1 over 40-100, normalised by 100
    assert tr.val_auc() == pytest.approx((20 * 1 + 20 * 0 - 60) / 100)
    assert math.isnan(_trace("m", 0, [1.0, 0.5], diverged=True).val_auc())
    assert math.isnan(_trace("m", 0, [1.0, 0.5], steps=[20, 40]).val_auc())  # never reached budget


def test_steps_to_target_uses_tuned_cosine_per_seed() -> None:
    traces = [
        _trace(TARGET_METHOD, 0, [1.0, 0.6, 0.4, 0.3, 0.2], cost=8),
        _trace(TARGET_METHOD, 1, [1.0, 0.6, 0.4, 0.3, 0.25], cost=8),
        _trace("fast", 0, [0.5, 0.2, 0.1, 0.1, 0.1], wall=2.0),
        _trace("fast", 1, [0.5, 0.3, 0.25, 0.2, 0.2], wall=3.0),
        _trace("slow", 0, [1.0, 0.9, 0.8, 0.7, 0.6]),
        _trace("slow", 1, [1.0, 0.9, 0.8, 0.7, 0.6]),
        _trace("constant", 0, [1.0, 0.9, 0.8, 0.7, 0.6], wall=1.0),
        _trace("constant", 1, [1.0, 0.9, 0.8, 0.7, 0.6], wall=1.0),
    ]
    tab = summarize(traces)
    row = {r["method"]: r for r in tab.iter_rows(named=True)}
    # fast: seed 0 reaches 0.2 at step 40; seed 1 reaches 0.25 at step 60 -> median 50
    assert row["fast"]["steps_to_target"] == 50 and row["fast"]["reached_target"] == 1.0
    assert row[TARGET_METHOD]["steps_to_target"] == 100
    assert math.isnan(row["slow"]["steps_to_target"]) and row["slow"]["reached_target"] == 0
    assert row["fast"]["wall_overhead"] == pytest.approx(((2 - 1) + (3 - 1)) / 2)
    assert row[TARGET_METHOD]["compute_runs"] == 8 and row[TARGET_METHOD]["compute_steps"] == 800
    assert row["fast"]["target_source"] == TARGET_METHOD
    assert tab.height == 4


def test_steps_to_target_falls_back_to_best_static_baseline() -> None:
    traces = [
        _trace("constant", 0, [1.0, 0.8, 0.6]),
        _trace("cosine", 0, [1.0, 0.7, 0.5]),
        _trace("mine", 0, [0.9, 0.5, 0.4]),
    ]
    row = {r["method"]: r for r in summarize(traces).iter_rows(named=True)}
    assert row["mine"]["steps_to_target"] == 40  # reaches cosine's 0.5 at step 40
    assert row["mine"]["target_source"] == "cosine"


def test_divergence_rate_and_nan_losses() -> None:
    traces = [_trace("m", 0, [1.0, 0.5]), _trace("m", 1, [1.0, 0.7], diverged=True, test=math.nan)]
    row = summarize(traces).row(0, named=True)
    assert row["divergence_rate"] == 0.5
    assert row["final_val_loss"] == 0.5 and row["test_loss"] == 0.5


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=12))
def test_bootstrap_ci_covers_the_mean(xs: list[float]) -> None:
    mean, lo, hi = bootstrap_ci(xs)
    assert mean == pytest.approx(float(np.mean(xs)))
    assert lo <= mean + 1e-9 and mean - 1e-9 <= hi


def test_bootstrap_ci_has_its_nominal_coverage_and_width_on_a_known_distribution() -> None:
    """Samples of 40 from N(3, 2^2): the 95 % interval covers the true mean 3 in about 95 % of
    300 samples (binomial s.e. 1.3 points) and is as wide as the normal-theory interval
    2 * 1.96 * s / sqrt(n) (the percentile bootstrap of a mean is ~sqrt((n-1)/n) of it);
    at level 0.5 it is 0.674 / 1.96 as wide. (-inf, inf), or a collapsed interval, fails."""
    rng = np.random.default_rng(123)
    n, mu, sigma, reps = 40, 3.0, 2.0, 300
    covered, ratios = 0, []
    for _ in range(reps):
        x = rng.normal(mu, sigma, n)
        mean, lo, hi = bootstrap_ci(list(x))
        covered += lo <= mu <= hi
        ratios.append((hi - lo) / (2 * 1.96 * x.std(ddof=1) / math.sqrt(n)))
    assert 0.91 <= covered / reps <= 0.99, covered / reps
    assert 0.9 < float(np.min(ratios)) and float(np.max(ratios)) < 1.1, (min(ratios), max(ratios))
    assert float(np.mean(ratios)) == pytest.approx(math.sqrt((n - 1) / n), abs=0.03)
    _, lo50, hi50 = bootstrap_ci(list(x), level=0.5)
    assert (hi50 - lo50) / (hi - lo) == pytest.approx(0.674 / 1.96, rel=0.15)


def test_bootstrap_ci_ignores_nan_and_handles_small_samples() -> None:
    assert bootstrap_ci([math.nan, 2.0]) == (2.0, 2.0, 2.0)
    assert all(math.isnan(v) for v in bootstrap_ci([math.nan]))


def test_run_evaluation_mixes_methods_and_strategies_and_writes_report(tmp_path) -> None:  # noqa: ANN001
    methods = [constant_method(), cosine_method(), GridSearch([0.5, 2.0], name=TARGET_METHOD)]
    res = run_evaluation(methods, ["tiny-mlp"], [0, 1], budget=60, progress=False)
    assert len(res.traces) == 6
    tab = res.table
    assert tab.height == 3 and set(tab["method"]) == {m.name for m in methods}
    assert tab.filter(pl.col("method") == TARGET_METHOD)["compute_runs"][0] == 2
    assert (tab["reached_target"].filter(tab["method"] == TARGET_METHOD) == 1.0).all()
    path = write_report(res, tmp_path / "r", title="t")
    out = tmp_path / "r"
    for f in ("report.md", "summary.csv", "traces.json", "tiny-mlp.png", "steps_to_target.png"):
        assert (out / f).is_file(), f
    md = path.read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| tiny-mlp |")]
    assert len(rows) == 3 and all(any(f"| {m.name} |" in r for r in rows) for m in methods)
    assert "test loss" in md
    assert len(json.loads((out / "traces.json").read_text())) == 6
    assert pl.read_csv(out / "summary.csv").height == 3


def test_run_evaluation_rejects_bad_methods() -> None:
    with pytest.raises(ConfigError, match="distinct names"):
        run_evaluation([constant_method(), constant_method()], ["tiny-mlp"], [0], progress=False)
    with pytest.raises(ConfigError, match="Method or Strategy"):
        run_evaluation(["cosine"], ["tiny-mlp"], [0], progress=False)  # type: ignore[list-item]
