"""The feature library: one small class per feature (each a frozen dataclass of its parameters).

Units: ``s`` is the decision step (rows ``t < s`` visible), ``B`` the run's step budget. Half-lives
and windows are in steps (rows). Slopes are in log-loss per 100 steps. Ages are fractions of ``B``.
Every feature is scale-free: it reads only ratios, logs of ratios, cosines, fractions, or
dimensionless hyperparameters (momentum, base factor, LR multiplier).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trajlib.features._feature import Feature
from trajlib.features._prims import (
    Budget,
    ChangeStep,
    Ema,
    First,
    Last,
    LastStep,
    PrevLast,
    Prim,
    Steps,
    WinBad,
    WinLogDiff,
    WinLogLs,
    WinSpike,
)

V = Sequence[Any]  # primitive values, in the order of requires()


def _hl(h: float) -> str:
    return f"{h:g}"


# ----------------------------------------------------------------------------------- progress
@dataclass(frozen=True, repr=False)
class Progress(Feature):
    """progress: s / B, the fraction of the step budget used."""

    @property
    def name(self) -> str:
        return "progress"

    def requires(self) -> tuple[Prim, ...]:
        return (Steps(), Budget())

    def compute(self, v: V, ops: Any) -> Any:
        s, budget = v
        return ops.div(s, budget)


# ----------------------------------------------------------------------------------- loss level
@dataclass(frozen=True, repr=False)
class LossEmaRatio(Feature):
    """loss_ema_ratio_{short}_{long}: log(EMA_{short}(loss) / EMA_{long}(loss)); < 0 while improving."""

    short: float = 10
    long: float = 50

    @property
    def name(self) -> str:
        return f"loss_ema_ratio_{_hl(self.short)}_{_hl(self.long)}"

    def requires(self) -> tuple[Prim, ...]:
        return (Ema("loss", self.short), Ema("loss", self.long))

    def compute(self, v: V, ops: Any) -> Any:
        short, long = v
        return ops.log(short) - ops.log(long)


@dataclass(frozen=True, repr=False)
class LossSlope(Feature):
    """loss_slope_{window}: least-squares slope of log(loss) over the last {window} steps, per 100 steps."""

    window: int = 50

    @property
    def name(self) -> str:
        return f"loss_slope_{self.window}"

    def requires(self) -> tuple[Prim, ...]:
        return (WinLogLs("loss", self.window),)

    def compute(self, v: V, ops: Any) -> Any:
        ((n, st, stt, sy, sty),) = v
        den = n * stt - st * st
        num = n * sty - st * sy
        return ops.where(n >= 2, 100.0 * ops.div(num, den), ops.nan)


@dataclass(frozen=True, repr=False)
class LossVolatility(Feature):
    """loss_volatility_{window}: std (ddof=1) of consecutive log(loss) differences over the last {window} steps."""

    window: int = 50

    @property
    def name(self) -> str:
        return f"loss_volatility_{self.window}"

    def requires(self) -> tuple[Prim, ...]:
        return (WinLogDiff("loss", self.window),)

    def compute(self, v: V, ops: Any) -> Any:
        ((n, sd, sdd),) = v
        var = ops.div(sdd - ops.div(sd * sd, n), n - 1.0)
        return ops.where(n >= 2, ops.sqrt0(var), ops.nan)


@dataclass(frozen=True, repr=False)
class LossChange(Feature):
    """loss_change_{lag}: log(EMA_{half_life}(loss) now / EMA_{half_life}(loss) {lag} steps ago) (improvement since the last decision when lag = decision interval)."""

    lag: int = 50
    half_life: float = 10

    @property
    def name(self) -> str:
        return f"loss_change_{self.lag}"

    def requires(self) -> tuple[Prim, ...]:
        return (Ema("loss", self.half_life), Ema("loss", self.half_life, lag=self.lag))

    def compute(self, v: V, ops: Any) -> Any:
        now, then = v
        return ops.log(now) - ops.log(then)


@dataclass(frozen=True, repr=False)
class LossChangeStart(Feature):
    """loss_change_start: log(EMA_{half_life}(loss) now / first finite loss of the run)."""

    half_life: float = 10

    @property
    def name(self) -> str:
        return "loss_change_start"

    def requires(self) -> tuple[Prim, ...]:
        return (Ema("loss", self.half_life), First("loss"))

    def compute(self, v: V, ops: Any) -> Any:
        ema, first = v
        return ops.log(ema) - ops.log(first)


@dataclass(frozen=True, repr=False)
class LossSpikeFrac(Feature):
    """loss_spike_frac_{window}: fraction of the last {window} steps whose loss > {factor} x EMA_{half_life}(loss) of the steps before."""

    window: int = 50
    factor: float = 2.0
    half_life: float = 50

    @property
    def name(self) -> str:
        return f"loss_spike_frac_{self.window}"

    def requires(self) -> tuple[Prim, ...]:
        return (WinSpike("loss", self.half_life, self.factor, self.window),)

    def compute(self, v: V, ops: Any) -> Any:
        ((count, rows),) = v
        return ops.div(count, rows)


@dataclass(frozen=True, repr=False)
class NonfiniteFrac(Feature):
    """nonfinite_frac[_{window}]: fraction of steps (window 0 = all so far, else the last {window}) with finite=false or a non-finite loss."""

    window: int = 0

    @property
    def name(self) -> str:
        return "nonfinite_frac" if self.window == 0 else f"nonfinite_frac_{self.window}"

    def requires(self) -> tuple[Prim, ...]:
        return (WinBad(self.window),)

    def compute(self, v: V, ops: Any) -> Any:
        ((count, rows),) = v
        return ops.div(count, rows)


# ----------------------------------------------------------------------------------- hyperparameters
@dataclass(frozen=True, repr=False)
class LogLrRelInit(Feature):
    """log_lr_rel_init: log(lr in force at the last step / first lr of the run)."""

    @property
    def name(self) -> str:
        return "log_lr_rel_init"

    def requires(self) -> tuple[Prim, ...]:
        return (Last("lr"), First("lr"))

    def compute(self, v: V, ops: Any) -> Any:
        last, first = v
        return ops.log(last) - ops.log(first)


@dataclass(frozen=True, repr=False)
class LrMultAge(Feature):
    """lr_mult_age: steps since lr_mult last changed (since the start if never), / B."""

    @property
    def name(self) -> str:
        return "lr_mult_age"

    def requires(self) -> tuple[Prim, ...]:
        return (Steps(), Budget(), ChangeStep("lr_mult"))

    def compute(self, v: V, ops: Any) -> Any:
        s, budget, change = v
        return ops.div(s - ops.maximum(change, 0.0), budget)


@dataclass(frozen=True, repr=False)
class LogLrMult(Feature):
    """log_lr_mult: log of the controller/behaviour LR multiplier in force at the last step."""

    @property
    def name(self) -> str:
        return "log_lr_mult"

    def requires(self) -> tuple[Prim, ...]:
        return (Last("lr_mult"),)

    def compute(self, v: V, ops: Any) -> Any:
        (last,) = v
        return ops.log(last)


@dataclass(frozen=True, repr=False)
class LastValue(Feature):
    """{col}: last finite value of {col} (a dimensionless hyperparameter, e.g. base_factor, momentum)."""

    col: str = "base_factor"

    @property
    def name(self) -> str:
        return self.col

    def requires(self) -> tuple[Prim, ...]:
        return (Last(self.col),)

    def compute(self, v: V, ops: Any) -> Any:
        (last,) = v
        return last + 0.0


# ----------------------------------------------------------------------------------- gradients
@dataclass(frozen=True, repr=False)
class GradNormEmaRatio(Feature):
    """grad_norm_ema_ratio_{short}_{long}: log(EMA_{short}(grad_norm) / EMA_{long}(grad_norm))."""

    short: float = 10
    long: float = 100

    @property
    def name(self) -> str:
        return f"grad_norm_ema_ratio_{_hl(self.short)}_{_hl(self.long)}"

    def requires(self) -> tuple[Prim, ...]:
        return (Ema("grad_norm", self.short), Ema("grad_norm", self.long))

    def compute(self, v: V, ops: Any) -> Any:
        short, long = v
        return ops.log(short) - ops.log(long)


@dataclass(frozen=True, repr=False)
class GradNormChange(Feature):
    """grad_norm_change_{lag}: log(EMA_{half_life}(grad_norm) now / {lag} steps ago) (grad-norm trend)."""

    lag: int = 50
    half_life: float = 100

    @property
    def name(self) -> str:
        return f"grad_norm_change_{self.lag}"

    def requires(self) -> tuple[Prim, ...]:
        return (Ema("grad_norm", self.half_life), Ema("grad_norm", self.half_life, lag=self.lag))

    def compute(self, v: V, ops: Any) -> Any:
        now, then = v
        return ops.log(now) - ops.log(then)


@dataclass(frozen=True, repr=False)
class GradNormCv(Feature):
    """grad_norm_cv_{half_life}: coefficient of variation of grad_norm, sqrt(EMA_{half_life}(g^2) - EMA_{half_life}(g)^2) / EMA_{half_life}(g)."""

    half_life: float = 100

    @property
    def name(self) -> str:
        return f"grad_norm_cv_{_hl(self.half_life)}"

    def requires(self) -> tuple[Prim, ...]:
        return (Ema("grad_norm", self.half_life), Ema("grad_norm", self.half_life, "sq"))

    def compute(self, v: V, ops: Any) -> Any:
        m, m2 = v
        return ops.div(ops.sqrt0(m2 - m * m), m)


@dataclass(frozen=True, repr=False)
class CosEma(Feature):
    """{col}_ema_{half_life}: EMA_{half_life} of {col} (grad_cos: gradient noise; update_cos: oscillation)."""

    col: str = "grad_cos"
    half_life: float = 50

    @property
    def name(self) -> str:
        return f"{self.col}_ema_{_hl(self.half_life)}"

    def requires(self) -> tuple[Prim, ...]:
        return (Ema(self.col, self.half_life),)

    def compute(self, v: V, ops: Any) -> Any:
        (ema,) = v
        return ema + 0.0


# ----------------------------------------------------------------------------------- updates, weights
# Update-to-weight ratios are floored here before the log: a layer whose update is exactly 0 (a
# bias in front of BatchNorm under plain SGD, a frozen layer left in the optimizer) would otherwise
# make the minimum ratio 0, its log undefined, and every decision of the run held.
UPD_RATIO_FLOOR = 1e-8


@dataclass(frozen=True, repr=False)
class LogUpdRatio(Feature):
    """log_upd_ratio_{stat}: log EMA_{half_life} of the per-layer update-to-weight ratio aggregate upd_ratio_{stat}."""

    stat: str = "mean"
    half_life: float = 50

    @property
    def name(self) -> str:
        return f"log_upd_ratio_{self.stat}"

    def requires(self) -> tuple[Prim, ...]:
        return (Ema(f"upd_ratio_{self.stat}", self.half_life),)

    def compute(self, v: V, ops: Any) -> Any:
        (ema,) = v
        return ops.log(ops.maximum(ema, UPD_RATIO_FLOOR))


@dataclass(frozen=True, repr=False)
class UpdRatioSpread(Feature):
    """upd_ratio_spread: log(EMA_{half_life}(upd_ratio_max) / EMA_{half_life}(upd_ratio_min)), layer imbalance."""

    half_life: float = 50

    @property
    def name(self) -> str:
        return "upd_ratio_spread"

    def requires(self) -> tuple[Prim, ...]:
        return (Ema("upd_ratio_max", self.half_life), Ema("upd_ratio_min", self.half_life))

    def compute(self, v: V, ops: Any) -> Any:
        hi, lo = v
        return ops.log(ops.maximum(hi, UPD_RATIO_FLOOR)) - ops.log(ops.maximum(lo, UPD_RATIO_FLOOR))


@dataclass(frozen=True, repr=False)
class WeightNormGrowth(Feature):
    """weight_norm_growth_{{start|lag}}: log(weight_norm now / weight_norm at the start (lag 0) or {lag} steps ago)."""

    lag: int = 0  # 0 = since the start

    @property
    def name(self) -> str:
        return "weight_norm_growth_start" if self.lag == 0 else f"weight_norm_growth_{self.lag}"

    def requires(self) -> tuple[Prim, ...]:
        ref = First("weight_norm") if self.lag == 0 else Last("weight_norm", self.lag)
        return (Last("weight_norm"), ref)

    def compute(self, v: V, ops: Any) -> Any:
        now, ref = v
        return ops.log(now) - ops.log(ref)


# ----------------------------------------------------------------------------------- validation
@dataclass(frozen=True, repr=False)
class ValGap(Feature):
    """val_gap: log(last val_loss) - log(EMA_{half_life}(train loss)) (generalisation gap)."""

    half_life: float = 50

    @property
    def name(self) -> str:
        return "val_gap"

    def requires(self) -> tuple[Prim, ...]:
        return (Last("val_loss"), Ema("loss", self.half_life))

    def compute(self, v: V, ops: Any) -> Any:
        val, ema = v
        return ops.log(val) - ops.log(ema)


@dataclass(frozen=True, repr=False)
class ValTrend(Feature):
    """val_trend: log(last val_loss / the val_loss before it)."""

    @property
    def name(self) -> str:
        return "val_trend"

    def requires(self) -> tuple[Prim, ...]:
        return (Last("val_loss"), PrevLast("val_loss"))

    def compute(self, v: V, ops: Any) -> Any:
        last, prev = v
        return ops.log(last) - ops.log(prev)


@dataclass(frozen=True, repr=False)
class ValAge(Feature):
    """val_age: (s - steps done when the last validation was measured) / B."""

    @property
    def name(self) -> str:
        return "val_age"

    def requires(self) -> tuple[Prim, ...]:
        return (Steps(), Budget(), LastStep("val_loss"))

    def compute(self, v: V, ops: Any) -> Any:
        # val_loss in row t is measured on theta_{t+1}, i.e. after t + 1 updates
        s, budget, last_step = v
        return ops.div(s - (last_step + 1.0), budget)


def default_features() -> list[Feature]:
    """The 33 features of the ``default`` feature set, in column order."""
    return [
        Progress(),
        LossEmaRatio(10, 50),
        LossEmaRatio(50, 200),
        LossEmaRatio(10, 200),
        LossSlope(10),
        LossSlope(50),
        LossSlope(200),
        LossVolatility(50),
        LossChange(50, 10),
        LossChangeStart(10),
        LossSpikeFrac(50, 2.0, 50),
        NonfiniteFrac(0),
        NonfiniteFrac(50),
        LogLrRelInit(),
        LrMultAge(),
        LogLrMult(),
        LastValue("base_factor"),
        LastValue("momentum"),
        GradNormEmaRatio(10, 100),
        GradNormChange(50, 100),
        GradNormCv(100),
        CosEma("grad_cos", 50),
        CosEma("update_cos", 50),
        LogUpdRatio("mean", 50),
        LogUpdRatio("max", 50),
        LogUpdRatio("min", 50),
        LogUpdRatio("median", 50),
        UpdRatioSpread(50),
        WeightNormGrowth(0),
        WeightNormGrowth(50),
        ValGap(50),
        ValTrend(),
        ValAge(),
    ]
