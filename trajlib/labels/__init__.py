"""Labels: turn counterfactual branches into per-action targets for controllers.

``make_labels(branches, "annealed", keep_index)`` gives one row per decision point with
``best_action`` and ``adv_<a>`` = log(loss_keep) - log(loss_a) for every action ``a``. A strategy
decides what "loss" means (end of horizon, after a cool-down, or a combination); add your own by
subclassing :class:`LabelStrategy` and decorating it with :func:`register_label_strategy`.
``final`` (:class:`FinalLabels`) extrapolates each branch to the end of the budget with the
LR-annealing law fitted on its run's main trajectory; it also needs ``steps`` and ``runs``.
``end`` (:class:`EndLabels`) measures it instead: the loss of branches that run to the budget
(a recipe whose ``branch.horizon`` covers the run), from the ``runs`` table's budgets.
Runs recorded without branches are labelled from their trajectory and logged propensities by
``outcome`` (:class:`OutcomeLabels`, :func:`trajectory_labels`): only the taken action's advantage
is known, the others are NaN (masked by every controller kind).
Column-name helpers (``adv_column``, ``BEST_ACTION``...) live in ``trajlib.labels._make``.
"""

from trajlib.labels._annealed import AnnealedLabels
from trajlib.labels._base import LabelStrategy
from trajlib.labels._compare import compare_labels, rank_agreement
from trajlib.labels._end import EndLabels
from trajlib.labels._final import (
    FinalLabels,
    LawFit,
    annealing_areas,
    branch_areas,
    fit_annealing_law,
)
from trajlib.labels._greedy import GreedyLabels
from trajlib.labels._long import LongHorizonLabels
from trajlib.labels._make import make_labels
from trajlib.labels._outcome import OutcomeLabels, trajectory_labels
from trajlib.labels._registry import get_label_strategy, label_strategies, register_label_strategy

__all__ = [
    "AnnealedLabels",
    "EndLabels",
    "FinalLabels",
    "LawFit",
    "annealing_areas",
    "branch_areas",
    "fit_annealing_law",
    "GreedyLabels",
    "LabelStrategy",
    "compare_labels",
    "LongHorizonLabels",
    "OutcomeLabels",
    "get_label_strategy",
    "label_strategies",
    "make_labels",
    "rank_agreement",
    "register_label_strategy",
    "trajectory_labels",
]
