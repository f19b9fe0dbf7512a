"""Collect: instrumented training runs under randomized hyperparameter schedules, with branches.

``load_recipe`` validates a ``collectors/*.toml`` recipe; ``collect`` runs it into a store with the
local process pool (default) or Ray; ``Population`` is the torch.func engine underneath (K runs of
one task trained together; a single run is a population of one). Behaviours of kind
``controller`` take a :class:`DecisionPolicy` injected by the caller (collect imports nothing to
its right).
"""

from trajlib.collect._behaviour import (
    BEHAVIOURS,
    BehaviourPolicy,
    DecisionContext,
    DecisionPolicy,
    Keep,
    RandomWalk,
    draw_params,
    make_behaviour,
    target_multiplier,
)
from trajlib.collect._engine import REC_COLUMNS, FlatSpec, Population
from trajlib.collect._executor import CollectReport, RunSink, collect, run_unit, work_units
from trajlib.collect._recipe import Recipe, build_action_space, load_recipe, parse_recipe
from trajlib.collect._runner import RunResult, run_population

__all__ = [
    "BEHAVIOURS",
    "BehaviourPolicy",
    "CollectReport",
    "DecisionContext",
    "DecisionPolicy",
    "FlatSpec",
    "Keep",
    "Population",
    "REC_COLUMNS",
    "RandomWalk",
    "Recipe",
    "RunResult",
    "RunSink",
    "build_action_space",
    "collect",
    "draw_params",
    "load_recipe",
    "make_behaviour",
    "parse_recipe",
    "run_population",
    "run_unit",
    "target_multiplier",
    "work_units",
]
