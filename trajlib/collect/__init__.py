"""Collect: instrumented training runs under randomized hyperparameter schedules, with branches.

``load_recipe`` validates a ``collectors/*.toml`` recipe into a :class:`Recipe`, whose
``run_configs()`` are the runs it asks for (:class:`trajlib.spec.RunConfig`); ``collect`` runs
them into a store (any :class:`RunSink`) with the local process pool (default) or Ray;
``run_population`` trains one population of runs in this process and returns their frames;
:class:`Recorder` records a user's own training loop (behaviour schedule, branches) into a sink.
Behaviours of kind ``controller`` take a :class:`DecisionPolicy` injected by the caller (collect
imports nothing to its right).

Inside, by responsibility: ``_recipe`` (recipe -> run configs), ``_engine`` (the population:
parameters, optimizer state, batches, forks, the per-step record), ``_rollout`` (decide, branch,
advance, divergence), ``_results`` (frames and the run row), ``_executor`` (work units, pools).
"""

from trajlib.collect._behaviour import BEHAVIOURS, DecisionContext, DecisionPolicy
from trajlib.collect._best_lr import best_lr_table, read_best_lr_table
from trajlib.collect._executor import CollectReport, RunSink, collect
from trajlib.collect._recipe import Recipe, load_recipe, parse_recipe
from trajlib.collect._recorder import Recorder
from trajlib.collect._runner import RunResult, run_population

__all__ = [
    "BEHAVIOURS",
    "CollectReport",
    "DecisionContext",
    "DecisionPolicy",
    "Recipe",
    "Recorder",
    "RunResult",
    "RunSink",
    "best_lr_table",
    "collect",
    "load_recipe",
    "parse_recipe",
    "read_best_lr_table",
    "run_population",
]
