"""Evaluate: controllers against baselines on held-out tasks, over seeds, with confidence intervals.

Every method runs through the same plain PyTorch loop (:func:`train_task`) on the same
initialisation and batches per seed. A :class:`Method` is one run with a scheduler; a
:class:`Strategy` (grid search, Optuna, successive halving, PBT, T1–T2) may train several runs and
returns the one it would deploy, chosen on validation, scored on test, with its compute charged.
:func:`run_evaluation` takes both and aggregates (:func:`run_evaluation_parallel` builds the
methods from names and spreads task x seed over processes); :func:`write_report` writes
``report.md``, ``summary.csv``, ``traces.json`` and PNG plots; :func:`plot_store` draws a trajectory
store (``trajlib plot``: overview, loss and hyperparameter curves, per-layer heat map, branch fans);
:func:`run_suite` runs the held-out suite of user-style loops (``trajlib.evaluate.suite``).
:func:`standard_methods`,
:func:`quick_methods` and :func:`standard_strategies` list the baselines; each baseline's
constructor, the protocol's constants and the statistics live in the private modules
(``_schedules``, ``_strategies``, ``_protocol``, ``_report``...).

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
    constant_method,
    controller_method,
    cosine_method,
    train_task,
)
from trajlib.evaluate._methods import (
    controller_methods,
    quick_methods,
    standard_methods,
    standard_strategies,
)
from trajlib.evaluate._parallel import run_evaluation_parallel
from trajlib.evaluate._plots import plot_store, run_figure_names
from trajlib.evaluate._protocol import HELD_OUT_TASKS
from trajlib.evaluate._report import EvalResult, run_evaluation, write_report
from trajlib.evaluate._strategies import Strategy
from trajlib.evaluate.suite import SuiteResult, run_suite

__all__ = [
    "HELD_OUT_TASKS",
    "EvalResult",
    "Method",
    "Strategy",
    "SuiteResult",
    "Trace",
    "constant_method",
    "controller_method",
    "controller_methods",
    "cosine_method",
    "plot_store",
    "quick_methods",
    "run_evaluation",
    "run_evaluation_parallel",
    "run_figure_names",
    "run_suite",
    "standard_methods",
    "standard_strategies",
    "train_task",
    "write_report",
]
