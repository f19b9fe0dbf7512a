"""The evaluation protocol (issue 8), written down as data.

- **Splits of data.** Every method is *scored* on the task's **test** split at the end of the fixed
  step budget. Anything that chooses (a grid, Optuna, PBT, successive halving, T1–T2's
  hyperparameter updates, plateau detection) chooses on the **validation** split only.
- **Splits of tasks.** Controllers are trained on runs of the :data:`TRAINING_FAMILIES` tasks only;
  the headline comparison is on the :data:`HELD_OUT_FAMILIES` tasks, never collected from
  (``collectors/quickstart.toml`` collects from ``mnist1d-mlp``, ``digits-mlp``, ``teacher-student``;
  the CLI demo evaluates on ``synth-classification`` and ``char-lm``). Whole *families* are held
  out, so a CNN on mnist1d does not leak into a held-out "mnist1d" evaluation.
- **Budgets and starts.** Each task's own step budget (or one ``--budget`` for all methods); every
  method starts from the task's default LR unless its name says otherwise (``x10``); seeds 0..N-1,
  N >= 5 for reported results (3 are enough for a smoke check).
- **Target.** Steps-to-target uses, per task and seed, the final validation loss of the tuned cosine
  (:data:`TARGET_METHOD`); when that method is not in the run, the best final validation loss among
  the static baselines present (:data:`STATIC_BASELINES`) on that seed.
- **Compute.** Every method is charged all the training it did, in runs of the full budget
  (``Trace.cost``) and steps (``Trace.cost_steps``); wall time covers all of a strategy's runs.
"""

from __future__ import annotations

from trajlib.errors import ConfigError

__all__ = [
    "TRAINING_FAMILIES",
    "HELD_OUT_FAMILIES",
    "TRAINING_TASKS",
    "HELD_OUT_TASKS",
    "TARGET_METHOD",
    "STATIC_BASELINES",
    "MIN_REPORTED_SEEDS",
    "split_of",
    "check_held_out",
]

#: family -> built-in tasks whose runs may be collected to train controllers
TRAINING_FAMILIES: dict[str, tuple[str, ...]] = {
    "mnist1d": ("mnist1d-mlp", "mnist1d-cnn"),
    "digits": ("digits-mlp", "digits-cnn"),
    "teacher-student": ("teacher-student",),
}
#: family -> built-in tasks that controllers never see before evaluation
HELD_OUT_FAMILIES: dict[str, tuple[str, ...]] = {
    "synthetic": ("synth-classification",),
    "language": ("char-lm",),
}
TRAINING_TASKS: tuple[str, ...] = tuple(t for ts in TRAINING_FAMILIES.values() for t in ts)
HELD_OUT_TASKS: tuple[str, ...] = tuple(t for ts in HELD_OUT_FAMILIES.values() for t in ts)

#: the well-tuned baseline whose final validation loss is the steps-to-target target
TARGET_METHOD = "tuned cosine (grid 8)"
#: fallback target: the best of these (those present) when the tuned cosine was not run
STATIC_BASELINES: tuple[str, ...] = (
    "constant",
    "step decay",
    "cosine",
    "warmup+cosine",
    "one-cycle",
    "plateau",
)
MIN_REPORTED_SEEDS = 5


def split_of(task: str) -> str:
    """``'training'``, ``'held-out'`` or ``'unassigned'`` (user tasks) for a task name."""
    if task in TRAINING_TASKS:
        return "training"
    if task in HELD_OUT_TASKS:
        return "held-out"
    return "unassigned"


def check_held_out(eval_tasks: list[str] | tuple[str, ...], collected_tasks: list[str]) -> None:
    """Raise when an evaluation task shares a *family* with a task controllers were trained on."""
    fam = {t: f for f, ts in {**TRAINING_FAMILIES, **HELD_OUT_FAMILIES}.items() for t in ts}
    seen = {fam.get(t, t) for t in collected_tasks}
    leaked = sorted(t for t in eval_tasks if fam.get(t, t) in seen)
    if leaked:
        raise ConfigError(
            "tasks",
            "tasks from families the controller was not trained on",
            leaked,
            f"families collected: {sorted(seen)}; held-out tasks: {list(HELD_OUT_TASKS)}",
        )
