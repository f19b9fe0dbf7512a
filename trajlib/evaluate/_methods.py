"""The baseline lists: everything issue 8 asks for, and a lighter list for quick runs."""

from __future__ import annotations

from typing import Any

from trajlib.evaluate._harness import Method, controller_method
from trajlib.evaluate._pbt import RayPBT
from trajlib.evaluate._schedules import hypergradient_method, schedule_free_method, static_methods
from trajlib.evaluate._strategies import (
    GridSearch,
    OptunaSearch,
    Strategy,
    SuccessiveHalving,
    lr_grid,
)
from trajlib.evaluate._t1t2 import T1T2

__all__ = ["standard_methods", "standard_strategies", "quick_methods", "controller_methods"]


def standard_strategies(budget_runs: int = 8, *, pbt: bool = True) -> list[Strategy]:
    """The multi-run baselines, each charged about ``budget_runs`` runs or less.

    Tuned cosine over ``budget_runs`` log-spaced LRs in [1/30, 30] x default (charged
    ``budget_runs`` runs; named ``tuned cosine (grid 8)`` at the default, the steps-to-target
    reference); Optuna TPE + Hyperband with ``budget_runs`` trials (charged the steps it trained);
    successive halving over the same LRs (warm starts; 2.5 runs for 8 LRs); T1–T2 (one run plus
    validation-batch passes); PBT with ``budget_runs`` members through Ray Tune (``pbt=False``
    leaves it out, e.g. where Ray is not installed).
    """
    grid = lr_grid(budget_runs)
    out: list[Strategy] = [
        GridSearch(grid),
        OptunaSearch(budget_runs),
        SuccessiveHalving(grid),
        T1T2(),
    ]
    if pbt:
        out.append(RayPBT(population=budget_runs))
    return out


def standard_methods(budget_runs: int = 8, *, pbt: bool = True) -> list[Method | Strategy]:
    """Every baseline: six static schedules, schedule-free, hypergradient descent, then
    :func:`standard_strategies` — all from the task's default LR."""
    single: list[Method | Strategy] = [
        *static_methods(),
        schedule_free_method(),
        hypergradient_method(),
    ]
    return single + list(standard_strategies(budget_runs, pbt=pbt))


def quick_methods(*, tuned: bool = True) -> list[Method | Strategy]:
    """A light list for quick runs: the single-run baselines and (``tuned``) the 8-LR tuned cosine,
    which sets the steps-to-target reference."""
    out: list[Method | Strategy] = [
        *static_methods(),
        schedule_free_method(),
        hypergradient_method(),
    ]
    if tuned:
        out.append(GridSearch(lr_grid(8)))
    return out


def controller_methods(checkpoint: Any, lr_scales: tuple[float, ...] = (1.0, 10.0)) -> list[Method]:
    """A learned controller started at the default LR and at each other ``lr_scales`` (10x off by
    default: the protocol's robustness check)."""
    return [controller_method(checkpoint, lr_scale=s) for s in lr_scales]
