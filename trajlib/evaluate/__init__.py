"""Evaluate: controllers against baselines on held-out tasks, over seeds, with confidence intervals.

Every method runs through the same plain PyTorch loop (:func:`train_task` / :class:`TrainRun`) on
the same initialisation and batches per seed. A :class:`Method` is one run with a scheduler; a
:class:`Strategy` (grid search, Optuna, successive halving, PBT, T1–T2) may train several runs and
returns the one it would deploy, chosen on validation, scored on test, with its compute charged.
:func:`run_evaluation` takes both and aggregates; :func:`write_report` writes ``report.md``,
``summary.csv``, ``traces.json`` and PNG plots. The protocol (splits, target, task families held
out) is data in :mod:`trajlib.evaluate._protocol`; :func:`standard_methods` lists every baseline.

Example (the full protocol on the held-out tasks, 5 seeds)::

    from trajlib.evaluate import (
        HELD_OUT_TASKS, controller_methods, run_evaluation, standard_methods, write_report,
    )

    methods = standard_methods() + controller_methods("models/gbt")  # default LR and 10x off
    result = run_evaluation(methods, HELD_OUT_TASKS, seeds=range(5))
    write_report(result, "reports/held-out")  # report.md, summary.csv, traces.json, *.png
"""

from trajlib.evaluate._harness import (
    Method,
    Trace,
    TrainRun,
    constant_method,
    controller_method,
    cosine_method,
    make_optimizer,
    train_task,
)
from trajlib.evaluate._hypergradient import HypergradientLR
from trajlib.evaluate._methods import (
    controller_methods,
    quick_methods,
    standard_methods,
    standard_strategies,
)
from trajlib.evaluate._parallel import BASELINE_SETS, build_methods, run_evaluation_parallel
from trajlib.evaluate._pbt import RayPBT
from trajlib.evaluate._protocol import (
    HELD_OUT_FAMILIES,
    HELD_OUT_TASKS,
    STATIC_BASELINES,
    TARGET_METHOD,
    TRAINING_FAMILIES,
    TRAINING_TASKS,
    check_held_out,
    split_of,
)
from trajlib.evaluate._report import (
    EvalResult,
    bootstrap_ci,
    run_evaluation,
    summarize,
    to_markdown,
    write_report,
)
from trajlib.evaluate._schedules import (
    hypergradient_method,
    one_cycle_method,
    plateau_method,
    schedule_free_method,
    static_methods,
    step_decay_method,
    warmup_cosine_method,
)
from trajlib.evaluate._strategies import (
    GridSearch,
    OptunaSearch,
    Strategy,
    SuccessiveHalving,
    lr_grid,
)
from trajlib.evaluate._t1t2 import T1T2

__all__ = [
    "BASELINE_SETS",
    "build_methods",
    "run_evaluation_parallel",
    "EvalResult",
    "GridSearch",
    "HELD_OUT_FAMILIES",
    "HELD_OUT_TASKS",
    "HypergradientLR",
    "Method",
    "OptunaSearch",
    "RayPBT",
    "STATIC_BASELINES",
    "Strategy",
    "SuccessiveHalving",
    "T1T2",
    "TARGET_METHOD",
    "TRAINING_FAMILIES",
    "TRAINING_TASKS",
    "Trace",
    "TrainRun",
    "bootstrap_ci",
    "check_held_out",
    "constant_method",
    "controller_method",
    "controller_methods",
    "cosine_method",
    "hypergradient_method",
    "lr_grid",
    "make_optimizer",
    "one_cycle_method",
    "plateau_method",
    "quick_methods",
    "run_evaluation",
    "schedule_free_method",
    "split_of",
    "standard_methods",
    "standard_strategies",
    "static_methods",
    "step_decay_method",
    "summarize",
    "to_markdown",
    "train_task",
    "warmup_cosine_method",
    "write_report",
]
