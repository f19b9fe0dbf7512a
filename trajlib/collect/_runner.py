"""Running a population of runs: recipe run configs in, one :class:`RunResult` per run out.

The work is split by responsibility: :mod:`trajlib.collect._engine` trains the population
(parameters, optimizer state, batches, forks, the per-step record); :mod:`trajlib.collect._rollout`
drives its main trajectories (decide, branch, advance, divergence); :mod:`trajlib.collect._results`
turns what was recorded into the frames and the runs-table row a store commits.
"""

from __future__ import annotations

from collections.abc import Sequence

from trajlib.collect._behaviour import DecisionPolicy
from trajlib.collect._results import RunResult, failed_result, results
from trajlib.collect._rollout import Rollout
from trajlib.spec import RunConfig

__all__ = ["RunResult", "failed_result", "run_population"]


def run_population(
    configs: Sequence[RunConfig],
    *,
    device: str = "cpu",
    divergence_factor: float = 1e3,
    policy: DecisionPolicy | None = None,
) -> list[RunResult]:
    """Train the runs in ``configs`` (same task, budget and settings) together; one result per
    run, in order.

    Each member has its own start hyperparameters (``lr0``, ``start``), its own behaviour and
    per-layer LR multipliers. ``policy`` is the injected :class:`DecisionPolicy` of
    ``behaviour.kind = "controller"`` runs.
    """
    rollout = Rollout(configs, device=device, divergence_factor=divergence_factor, policy=policy)
    rollout.run()
    return results(rollout)
