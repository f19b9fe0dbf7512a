"""``final`` labels: the LR-annealing law fitted per run, each branch extrapolated to the budget."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from trajlib import schema as S
from trajlib.errors import ConfigError
from trajlib.labels import (
    FinalLabels,
    annealing_areas,
    branch_areas,
    fit_annealing_law,
    get_label_strategy,
    label_strategies,
    make_labels,
    rank_agreement,
)
from trajlib.spec import RunConfig
from trajlib.store import open_store

ROOT = Path(__file__).resolve().parents[2]


def _law(eta: np.ndarray, lam: float, p: tuple[float, float, float, float]) -> np.ndarray:
    s1, s2 = annealing_areas(eta, lam)
    return p[0] + p[1] * np.maximum(s1, 1e-12) ** -p[2] - p[3] * s2


def _wsd(T: int, peak: float, decay: float = 0.2) -> np.ndarray:
    t = np.arange(T)
    start = int((1 - decay) * T)
    return peak * np.where(t < start, 1.0, (T - t) / (T - start))


# ------------------------------------------------------------------------------- the law itself
def test_areas_follow_the_double_sum_definition() -> None:
    rng = np.random.default_rng(1)
    eta = rng.uniform(0.1, 1.0, size=40)
    lam = 0.9
    s1, s2 = annealing_areas(eta, lam)
    for k in (0, 1, 7, 40):
        assert s1[k] == pytest.approx(eta[:k].sum())
        # S2 after k updates: sum_{i<k} sum_{1<=j<=i} (eta_{j-1} - eta_j) lam^(i-j)
        want = sum(
            (eta[j - 1] - eta[j]) * lam ** (i - j) for i in range(k) for j in range(1, i + 1)
        )
        assert s2[k] == pytest.approx(want, abs=1e-12)
    # batched rows equal single rows
    both = annealing_areas(np.stack([eta, eta[::-1]]), lam)
    assert np.allclose(both[1][1], annealing_areas(eta[::-1], lam)[1])


def test_branch_areas_equal_the_explicit_paths() -> None:
    rng = np.random.default_rng(0)
    T, c = 300, 30
    lam = math.exp(-1 / (0.05 * T))
    main = rng.uniform(0.2, 1.0, T)
    tail = np.concatenate([rng.uniform(0.2, 1.0, T), np.linspace(0.5, 0.0, c, endpoint=False)])
    start = rng.integers(1, T - 1, 50)
    mult = rng.uniform(0.5, 2.0, 50)
    at = np.minimum(start + rng.integers(1, 60, 50), T + c)
    at[:10] = T + c
    s1, s2 = branch_areas(main, tail, lam, start, mult, at)
    t = np.arange(T + c)
    paths = np.where(t[None, :] < start[:, None], np.pad(main, (0, c)), mult[:, None] * tail)
    e1, e2 = annealing_areas(paths, lam)
    rows = np.arange(50)
    assert np.allclose(s1, e1[rows, at], rtol=1e-12, atol=1e-9)
    assert np.allclose(s2, e2[rows, at], rtol=1e-12, atol=1e-9)


def test_fit_recovers_a_law_generated_curve_and_extrapolates_another_schedule() -> None:
    T = 1000
    lam = math.exp(-1 / (0.05 * T))
    truth = (0.3, 1.2, 0.45, 0.004)
    eta = _wsd(T, 0.5)
    eta[300:] *= 1.4  # a controller's move in the middle
    rng = np.random.default_rng(0)
    loss = _law(eta, lam, truth)[:T] * np.exp(0.02 * rng.standard_normal(T))
    fit = fit_annealing_law(eta, loss, lam=lam)
    assert fit is not None
    assert fit.r2 > 0.95
    assert fit.L0 == pytest.approx(truth[0], abs=0.03)
    assert fit.C == pytest.approx(truth[3], rel=0.25)
    assert fit.alpha == pytest.approx(truth[2], abs=0.15)
    # the point of the law: the final loss of a schedule it never saw (constant, then cooled)
    other = np.concatenate([np.full(T - 100, 0.9), np.linspace(0.9, 0.0, 100)])
    s1, s2 = annealing_areas(other, lam)
    want = _law(other, lam, truth)[-1]
    assert fit.predict(s1[-1:], s2[-1:])[0] == pytest.approx(want, rel=0.03)


def test_fit_fails_cleanly_and_says_so() -> None:
    lam = 0.99
    assert fit_annealing_law(np.ones(5), np.ones(5), lam=lam) is None  # too short
    # diverged from the start: no finite prefix to fit
    assert fit_annealing_law(np.ones(200), np.full(200, np.nan), lam=lam) is None
    # pure noise around a constant: nothing the law explains
    rng = np.random.default_rng(3)
    noise = np.exp(0.3 * rng.standard_normal(400))
    assert fit_annealing_law(np.ones(400), noise, lam=lam, min_r2=0.5) is None


def test_parameters_are_checked() -> None:
    for kw in ({"tau": 0}, {"cooldown": 2.0}, {"anchor": "mean"}, {"smooth": -1}):
        with pytest.raises(ConfigError):
            FinalLabels(**kw)  # type: ignore[arg-type]
    assert get_label_strategy("final", tau=0.1).params()["tau"] == 0.1


# ------------------------------------------------------------------------- on a real store
def _tables(store: Path) -> tuple[pl.DataFrame, pl.LazyFrame, pl.DataFrame, int, int]:
    st = open_store(store)
    runs = st.runs().collect()
    dec = RunConfig.from_dict(json.loads(runs[S.ENTRY][0])).decision
    return (
        st.branches().collect(),
        st.steps(),
        runs,
        dec.action_space.keep_index,
        len(dec.action_space),
    )


def test_registry_contract_on_a_real_store(tiny_store: Path) -> None:
    assert "final" in label_strategies()
    branches, steps, runs, keep, A = _tables(tiny_store)
    strat = get_label_strategy("final")
    assert strat.needs_branches and strat.needs_trajectory
    with pytest.raises(ConfigError):
        make_labels(branches, strat, keep, n_actions=A)  # no steps / runs
    with pytest.raises(ConfigError):
        strat.log_outcome()
    lab = make_labels(branches, strat, keep, n_actions=A, steps=steps, runs=runs)
    greedy = make_labels(branches, "greedy", keep, n_actions=A)
    assert lab.select(S.RUN_ID, S.STEP).equals(greedy.select(S.RUN_ID, S.STEP))
    adv = lab.select([f"adv_{i}" for i in range(A)]).to_numpy()
    assert np.all(adv[:, keep] == 0)
    assert np.isfinite(adv).all()  # every action branched; divergence penalised, finite
    best = lab["best_action"].to_numpy()
    assert ((best >= 0) & (best < A)).all()
    # ties prefer keep: wherever keep is within tie_tol of the best, best is keep
    near = adv.max(axis=1) - adv[:, keep] <= strat.tie_tol
    assert (best[near] == keep).all()
    assert isinstance(strat, FinalLabels)
    assert strat.stats["runs"] == runs.height
    assert strat.stats["runs_fitted"] >= 1
    fitted = [f for f in strat.fits.values() if f is not None]
    assert all(f.r2 >= strat.min_r2 and f.L0 >= 0 and f.C >= 0 for f in fitted)
    # it is not greedy in disguise: the end of the run reorders some actions
    g = greedy.select([f"adv_{i}" for i in range(A)]).to_numpy()
    assert not np.allclose(adv, g)
    assert set(lab.columns) == set(greedy.columns) | {S.TASK}  # runs given: task joined


def test_unfittable_runs_fall_back_to_greedy_and_are_counted(tiny_store: Path) -> None:
    branches, steps, runs, keep, A = _tables(tiny_store)
    first = runs[S.RUN_ID][0]
    broken = runs.with_columns(
        pl.when(pl.col(S.RUN_ID) == first).then(None).otherwise(pl.col(S.ENTRY)).alias(S.ENTRY)
    )
    strat = FinalLabels()
    lab = make_labels(branches, strat, keep, n_actions=A, steps=steps, runs=broken)
    greedy = make_labels(branches, "greedy", keep, n_actions=A)
    cols = [f"adv_{i}" for i in range(A)]
    mine = lab.filter(pl.col(S.RUN_ID) == first).select(cols).to_numpy()
    ref = greedy.filter(pl.col(S.RUN_ID) == first).select(cols).to_numpy()
    assert np.array_equal(mine, ref)
    n_rows = branches.filter(pl.col(S.RUN_ID) == first).height
    assert strat.stats["runs_fallback"] >= 1
    assert strat.stats["branches_fallback"] >= n_rows
    # a bar no noisy training curve clears (R^2 = 1): every run falls back, labels = greedy
    none = FinalLabels(min_r2=1.0)
    lab2 = make_labels(branches, none, keep, n_actions=A, steps=steps, runs=runs)
    assert none.stats["runs_fitted"] == 0
    assert np.array_equal(lab2.select(cols).to_numpy(), greedy.select(cols).to_numpy())


def test_fast_enough_for_the_big_store(tiny_store: Path) -> None:
    """~2,000 runs x ~15 decisions x 5 actions must label in well under a minute: time the
    per-run cost on the real tiny runs (budget 200) and extrapolate with a budget factor."""
    import time

    branches, steps, runs, keep, A = _tables(tiny_store)
    strat = FinalLabels()
    t0 = time.perf_counter()
    make_labels(branches, strat, keep, n_actions=A, steps=steps.collect(), runs=runs)
    per_run = (time.perf_counter() - t0) / runs.height
    # 2,000 runs; budgets up to ~10x longer cost at most ~10x in the path areas (the fit is
    # subsampled), so this bound keeps the big store well under a minute
    assert per_run * 2000 < 60, per_run


# ------------------------------------------------------- against branches run to the end
def _script():  # type: ignore[no-untyped-def]
    path = ROOT / "scripts" / "label_horizon_check.py"
    spec = importlib.util.spec_from_file_location("label_horizon_check", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["label_horizon_check"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_rankings_against_the_true_end_of_run(tmp_path: Path) -> None:
    """Collect the same runs with short branches and with branches run to the budget (cooled at
    the end); every strategy's per-decision ranking is compared with the true end-of-run one."""
    mod = _script()
    base = mod.recipe(["teacher-student"], 3, 200, 50, "free")
    short, long_, truth = mod.pair(base, tmp_path)
    res = mod.check(short, long_, truth)
    assert res["main_loss_max_abs_diff"] == 0.0  # same runs in both stores
    rows = res["rows"]
    assert set(rows) == {"greedy", "annealed", "long", "final"}
    for r in rows.values():
        assert r["n_points"] >= 5
        assert -1.0 <= r["spearman_mean"] <= 1.0
        assert r["regret"] >= 0.0
    assert rows["final"]["final_runs_fitted"] >= 1
    # weak but real: extrapolating to the end is not much worse than the 50-step outcome
    assert rows["final"]["spearman_mean"] >= rows["greedy"]["spearman_mean"] - 0.25


def test_rank_agreement_known_answers() -> None:
    def table(rows: list[list[float]]) -> pl.DataFrame:
        adv = np.array(rows)
        return pl.DataFrame(
            {
                S.RUN_ID: ["r"] * len(rows),
                S.STEP: list(range(len(rows))),
                "best_action": adv.argmax(axis=1),
                **{f"adv_{i}": adv[:, i] for i in range(adv.shape[1])},
            }
        )

    ref = table([[-0.2, 0.0, 0.1, 0.3], [0.5, 0.0, -0.1, -0.3]])
    same = rank_agreement(ref, ref)
    assert same["spearman_mean"] == pytest.approx(1.0) and same["top1"] == 1.0
    assert same["regret"] == 0.0
    flipped = table([[0.3, 0.0, -0.1, -0.2], [-0.3, 0.0, 0.1, 0.5]])
    res = rank_agreement(flipped, ref)
    assert res["spearman_mean"] == pytest.approx(-1.0)
    assert res["regret"] == pytest.approx(((0.3 - -0.2) + (0.5 - -0.3)) / 2)
