"""Collect: instrumented training runs under randomized hyperparameter schedules, with branches.

``load_recipe`` validates a ``collectors/*.toml`` recipe; ``collect`` runs it into a store with the
local process pool (default) or Ray; ``Population`` is the torch.func engine underneath (K runs of
one task trained together; a single run is a population of one).
"""

from trajlib.collect._behaviour import BehaviourPolicy, Keep, RandomWalk, make_behaviour
from trajlib.collect._engine import REC_COLUMNS, FlatSpec, Population
from trajlib.collect._executor import CollectReport, RunSink, collect, work_units
from trajlib.collect._recipe import Recipe, RunSpec, load_recipe, parse_recipe
from trajlib.collect._runner import RunResult, run_population

__all__ = [
    "BehaviourPolicy",
    "CollectReport",
    "RunSink",
    "collect",
    "work_units",
    "FlatSpec",
    "Keep",
    "Population",
    "REC_COLUMNS",
    "RandomWalk",
    "Recipe",
    "RunResult",
    "RunSpec",
    "load_recipe",
    "make_behaviour",
    "parse_recipe",
    "run_population",
]
