"""Evaluate: controllers against baselines on held-out tasks, over seeds, with confidence intervals.

Every method runs through the same plain PyTorch loop (:func:`train_task`) on the same
initialisation and batches per seed; :func:`run_evaluation` aggregates, :func:`write_report` writes
``report.md`` and PNG plots.
"""

from trajlib.evaluate._harness import (
    Method,
    Trace,
    constant_method,
    controller_method,
    cosine_method,
    make_optimizer,
    train_task,
)
from trajlib.evaluate._report import EvalResult, bootstrap_ci, run_evaluation, write_report

__all__ = [
    "EvalResult",
    "Method",
    "Trace",
    "bootstrap_ci",
    "constant_method",
    "controller_method",
    "cosine_method",
    "make_optimizer",
    "run_evaluation",
    "train_task",
    "write_report",
]
