"""Known answers: every feature kind (and through them every primitive) on tiny fixed trajectories
whose value is worked out by hand in the comment next to it, for both engines.

The parity tests compare the offline and the online engine, which share each feature's ``compute``
formula, and the slow reference is run on random data only; these fast tests pin the formulas
themselves: a wrong formula (``compute``, an offline primitive or an online updater) fails here.
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl
import pytest

from trajlib.features import (
    CosEma,
    Feature,
    FeatureSet,
    GradNormChange,
    GradNormCv,
    GradNormEmaRatio,
    LastValue,
    LogLrMult,
    LogLrRelInit,
    LogUpdRatio,
    LossChange,
    LossChangeStart,
    LossEmaRatio,
    LossSlope,
    LossSpikeFrac,
    LossVolatility,
    LrMultAge,
    NonfiniteFrac,
    OnlineFeatures,
    Progress,
    UpdRatioSpread,
    ValAge,
    ValGap,
    ValTrend,
    WeightNormGrowth,
    derive,
    get_feature_set,
)
from trajlib.features._prims import (
    Budget,
    ChangeStep,
    Ema,
    First,
    Last,
    LastStep,
    PrevLast,
    Steps,
    WinBad,
    WinLogDiff,
    WinLogLs,
    WinSpike,
)

nan = math.nan
log = math.log

# EMA with half-life 1: beta = 1/2, m = x at the first finite value, then m = (x + m) / 2.
# EMA with half-life 2: beta = 2 ** -0.5.
# loss 1, 2, 2 -> EMA_1 = 1, 1.5, 1.75 and EMA_2 = 1, 2 - b, 2 - b^2 = 1.5 (b = 2 ** -0.5).
LIN = [math.exp(0.5 - 0.01 * t) for t in range(40)]  # log-loss linear in t: slope -0.01 per step
FLAT_THEN_LIN = [1.0] * 30 + [math.exp(-0.01 * (t - 30)) for t in range(30, 40)]
D = 0.1  # log-loss 0, D, 0, D, ...: differences +D, -D, ... (mean 0 over an even count)
ZIGZAG = [math.exp(D * (t % 2)) for t in range(20)]


def _run(cols: dict[str, list[Any]]) -> list[dict[str, Any]]:
    n = len(next(iter(cols.values())))
    return [{"step": i, **{c: v[i] for c, v in cols.items()}} for i in range(n)]


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    cols = [c for c in rows[0] if c != "step"]
    data: dict[str, Any] = {"run_id": ["r"] * len(rows), "step": [r["step"] for r in rows]}
    over: dict[str, Any] = {"step": pl.Int32}
    for c in cols:
        data[c] = [r[c] for r in rows]
        over[c] = pl.Boolean if c == "finite" else pl.Float64
    return pl.DataFrame(data, schema_overrides=over, strict=False)


def _both(feature: Feature, rows: list[dict[str, Any]], s: int, budget: int) -> tuple[float, float]:
    """(offline, online) value of ``feature`` at a decision at step ``s``."""
    fs = FeatureSet(f"known-{feature.name}", 1, [feature])
    off = derive(_frame(rows), pl.DataFrame({"run_id": ["r"], "step": [s]}), {"r": budget}, fs)
    on = OnlineFeatures(fs, budget=budget)
    for r in rows[:s]:
        on.update(r)
    return float(off[feature.name][0]), float(on.values()[0])


# (id, feature, step-table columns, decision step s, budget, hand-computed value)
CASES: list[tuple[str, Feature, dict[str, list[Any]], int, int, float]] = [
    # s / B
    ("progress", Progress(), {"loss": [1.0] * 30}, 30, 120, 0.25),
    # log(EMA_1 / EMA_2) of 1, 2, 2 = log(1.75 / 1.5); the NaN row is skipped by both EMAs
    ("loss_ema_ratio", LossEmaRatio(1, 2), {"loss": [1.0, nan, 2.0, 2.0]}, 4, 10, log(7 / 6)),
    # log-loss falls 0.01 per step: slope -1 per 100 steps (window 10 of 40 rows, and all rows)
    ("loss_slope_10", LossSlope(10), {"loss": LIN}, 40, 40, -1.0),
    ("loss_slope_all", LossSlope(200), {"loss": LIN}, 40, 40, -1.0),
    # flat for 30 rows, then falling: only the last 10 rows are in the window
    ("loss_slope_window", LossSlope(10), {"loss": FLAT_THEN_LIN}, 40, 40, -1.0),
    # window 10 at s = 20: differences at t = 10..19, five +D and five -D, mean 0:
    # sample std = sqrt(10 D^2 / 9)
    ("loss_volatility", LossVolatility(10), {"loss": ZIGZAG}, 20, 20, D * math.sqrt(10 / 9)),
    # EMA_1 of 1, 2, 2, 2 = 1, 1.5, 1.75, 1.875: now (after row 3) / 2 rows ago (after row 1)
    ("loss_change", LossChange(2, 1), {"loss": [1.0, 2.0, 2.0, 2.0]}, 4, 10, log(1.875 / 1.5)),
    # EMA_1 now / first finite loss (the leading None is not the first value)
    (
        "loss_change_start",
        LossChangeStart(1),
        {"loss": [None, 1.0, 2.0, 2.0, 2.0]},
        5,
        10,
        log(1.875),
    ),
    # EMA_1 before each row: -, 1, 1, 2, 1.5, 1.25; a spike is > 2x: row 2 (3 > 2) is one, row 5
    # is exactly 2x (2.5 = 2 * 1.25) and is not. A window of 4 (rows 2..5) holds the spike, a
    # window of 3 (rows 3..5) does not.
    (
        "loss_spike_frac",
        LossSpikeFrac(4, 2.0, 1),
        {"loss": [1.0, 1.0, 3.0, 1.0, 1.0, 2.5]},
        6,
        10,
        1 / 4,
    ),
    (
        "loss_spike_frac_window",
        LossSpikeFrac(3, 2.0, 1),
        {"loss": [1.0, 1.0, 3.0, 1.0, 1.0, 2.5]},
        6,
        10,
        0.0,
    ),
    # bad rows: 1 (NaN loss) and 2 (finite = False); finite = None is unknown, not bad
    (
        "nonfinite_frac",
        NonfiniteFrac(0),
        {"loss": [1.0, nan, 1.0, 1.0, 1.0, 1.0], "finite": [True, True, False, True, True, None]},
        6,
        10,
        2 / 6,
    ),
    (
        "nonfinite_frac_window",
        NonfiniteFrac(4),
        {"loss": [1.0, nan, 1.0, 1.0, 1.0, 1.0], "finite": [True, True, False, True, True, None]},
        6,
        10,
        1 / 4,
    ),
    # last finite lr / first lr
    ("log_lr_rel_init", LogLrRelInit(), {"lr": [0.1, 0.2, 0.4, nan]}, 4, 10, log(4.0)),
    # lr_mult changed at row 2: (s - 2) / B
    ("lr_mult_age", LrMultAge(), {"lr_mult": [1.0, 1.0, 2.0, 2.0, 2.0]}, 5, 10, 0.3),
    # never changed: s / B
    ("lr_mult_age_never", LrMultAge(), {"lr_mult": [1.0, 1.0, 1.0]}, 3, 10, 0.3),
    ("log_lr_mult", LogLrMult(), {"lr_mult": [1.0, 2.0, nan]}, 3, 10, log(2.0)),
    ("last_value", LastValue("momentum"), {"momentum": [0.9, 0.8, None]}, 3, 10, 0.8),
    # as loss_ema_ratio, on grad_norm
    (
        "grad_norm_ema_ratio",
        GradNormEmaRatio(1, 2),
        {"grad_norm": [1.0, 2.0, 2.0]},
        3,
        10,
        log(7 / 6),
    ),
    # as loss_change, on grad_norm
    (
        "grad_norm_change",
        GradNormChange(2, 1),
        {"grad_norm": [1.0, 2.0, 2.0, 2.0]},
        4,
        10,
        log(1.875 / 1.5),
    ),
    # grad_norm 1, 3 with half-life 1: EMA(g) = 2, EMA(g^2) = 5: sqrt(5 - 4) / 2
    ("grad_norm_cv", GradNormCv(1), {"grad_norm": [1.0, 3.0]}, 2, 10, 0.5),
    ("cos_ema", CosEma("grad_cos", 1), {"grad_cos": [0.2, 0.6]}, 2, 10, 0.4),
    ("log_upd_ratio", LogUpdRatio("mean", 1), {"upd_ratio_mean": [1e-3, 3e-3]}, 2, 10, log(2e-3)),
    (
        "upd_ratio_spread",
        UpdRatioSpread(1),
        {"upd_ratio_max": [4e-3, 4e-3], "upd_ratio_min": [1e-3, 1e-3]},
        2,
        10,
        log(4.0),
    ),
    # weight norm now (8) / at the start (2)
    (
        "weight_norm_growth_start",
        WeightNormGrowth(0),
        {"weight_norm": [2.0, 3.0, 4.0, 8.0]},
        4,
        10,
        log(4.0),
    ),
    # now (8) / last value among rows t < s - 2 (row 1: 3)
    (
        "weight_norm_growth_lag",
        WeightNormGrowth(2),
        {"weight_norm": [2.0, 3.0, 4.0, 8.0]},
        4,
        10,
        log(8 / 3),
    ),
    # last val_loss (3) / EMA_1 of the train loss 1, 2, 2 (1.75)
    (
        "val_gap",
        ValGap(1),
        {"loss": [1.0, 2.0, 2.0], "val_loss": [None, 3.0, None]},
        3,
        10,
        log(3 / 1.75),
    ),
    ("val_trend", ValTrend(), {"val_loss": [2.0, None, 3.0, None]}, 4, 10, log(1.5)),
    # last val_loss in row 2, measured after 3 updates: (s - 3) / B
    ("val_age", ValAge(), {"val_loss": [None, 1.0, 2.0, None, None]}, 5, 10, 0.2),
]


@pytest.mark.parametrize(
    ("feature", "cols", "s", "budget", "want"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_known_value(
    feature: Feature, cols: dict[str, list[Any]], s: int, budget: int, want: float
) -> None:
    off, on = _both(feature, _run(cols), s, budget)
    assert math.isclose(off, want, rel_tol=1e-9, abs_tol=1e-12), ("offline", off, want)
    assert math.isclose(on, want, rel_tol=1e-9, abs_tol=1e-12), ("online", on, want)


def test_every_feature_kind_and_primitive_has_a_known_value() -> None:
    """Adding a feature class or a primitive kind needs a known-answer case here."""
    kinds = {type(c[1]) for c in CASES}
    default_kinds = {type(f) for f in get_feature_set("default")}
    assert default_kinds <= kinds, sorted(k.__name__ for k in default_kinds - kinds)
    prims = {type(p) for c in CASES for p in c[1].requires()}
    every = {
        Steps,
        Budget,
        Ema,
        Last,
        LastStep,
        PrevLast,
        First,
        ChangeStep,
        WinLogLs,
        WinLogDiff,
        WinSpike,
        WinBad,
    }
    assert every <= prims, sorted(p.__name__ for p in every - prims)
    lagged = {type(p) for c in CASES for p in c[1].requires() if getattr(p, "lag", 0)}
    assert {Ema, Last} <= lagged
    transforms = {p.transform for c in CASES for p in c[1].requires() if isinstance(p, Ema)}
    assert transforms == {"id", "sq"}  # "log" is exercised by the window primitives
