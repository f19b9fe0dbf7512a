"""The stages chained: collect -> fit -> evaluate, from Python or from ``trajlib demo / iterate``.

- :func:`collect_into` runs a recipe into a store (creating it), wiring the controller policy
  when the recipe's behaviour is ``controller``;
- :func:`record` opens (or creates) a store and returns a :class:`~trajlib.collect.Recorder`
  for the user's own training loop;
- :func:`demo` collects ``collectors/quickstart.toml``, fits a GBT controller and evaluates it
  against the demo baselines on held-out tasks;
- :func:`iterate` collects, fits, and collects again around the fitted controller, ``rounds``
  times, scoring each round's controller on held-out tasks.

Progress lines go to ``log`` (the command line passes ``print``); results come back as objects.
Importing this module does no work: every stage is imported when called.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trajlib.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from trajlib.collect import CollectReport, DecisionPolicy, Recipe, Recorder
    from trajlib.evaluate import EvalResult

__all__ = [
    "DEMO_HELD_OUT",
    "QUICKSTART_RECIPE",
    "DemoResult",
    "RoundResult",
    "check_held_out",
    "collect_into",
    "controller_policy",
    "demo",
    "record",
    "iterate",
    "iterate_markdown",
]

PathLike = str | os.PathLike[str]
Log = Callable[[str], None]

QUICKSTART_RECIPE = Path(__file__).resolve().parents[1] / "collectors" / "quickstart.toml"
DEMO_HELD_OUT: tuple[str, ...] = ("synth-classification", "char-lm")


def _quiet(_line: str) -> None:
    pass


def _recipe(recipe: Recipe | PathLike) -> Recipe:
    from trajlib.collect import load_recipe

    if isinstance(recipe, str | os.PathLike):
        return load_recipe(os.fspath(recipe))
    return recipe


def check_held_out(recipe: Recipe, tasks: Sequence[str]) -> None:
    """Raise :class:`ConfigError` (field ``tasks``) unless every task in ``tasks`` is registered
    and none is collected by ``recipe`` (held-out evaluation tasks must be unseen)."""
    from trajlib.tasks import get_task

    for t in tasks:
        get_task(t)
    held = set(tasks) & set(recipe.collect.tasks)
    if held:
        raise ConfigError(
            "tasks", "tasks the recipe does not collect from (held out)", sorted(held)
        )


def controller_policy(recipe: Recipe) -> Callable[[], DecisionPolicy] | None:
    """The policy factory for a recipe whose behaviour includes ``controller``, else ``None``.

    The factory builds a :class:`~trajlib.controllers._policy.ControllerPolicy` on the checkpoint named
    by ``behaviour.checkpoint`` in each worker; the checkpoint is verified here first (ConfigError
    naming ``behaviour.checkpoint`` when it is missing or fails verification).
    """
    if "controller" not in recipe.behaviour.kinds:
        return None
    from trajlib.controllers import verify_checkpoint
    from trajlib.controllers._policy import ControllerPolicy

    ckpt = recipe.behaviour.checkpoint
    if not ckpt or not Path(ckpt).is_dir():
        raise ConfigError("behaviour.checkpoint", "a controller checkpoint directory", ckpt)
    problems = verify_checkpoint(ckpt)
    if problems:
        raise ConfigError("behaviour.checkpoint", "a valid checkpoint", ckpt, problems[0])
    return functools.partial(ControllerPolicy, ckpt)


def record(store: PathLike, optimizer: torch.optim.Optimizer, **kwargs: Any) -> Recorder:
    """A :class:`~trajlib.collect.Recorder` of ``optimizer``'s training into the store at
    ``store`` (created if missing); ``kwargs`` are the Recorder's (``total_steps`` required)."""
    from trajlib.collect import Recorder
    from trajlib.store import create_store

    return Recorder(create_store(store, exist_ok=True), optimizer, **kwargs)


def collect_into(
    recipe: Recipe | PathLike,
    store: PathLike,
    *,
    executor: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> CollectReport:
    """Run ``recipe`` (a :class:`~trajlib.collect.Recipe` or a TOML path) into the store at
    ``store``, creating it if needed; runs already committed are skipped.

    The recipe (and a controller behaviour's checkpoint) is validated before anything is written.
    ``executor``, ``workers``, ``address`` and ``device`` override the recipe's when given.
    """
    from trajlib.collect import collect
    from trajlib.store import create_store, open_store

    rec = _recipe(recipe)
    policy_factory = controller_policy(rec)
    create_store(store, exist_ok=True)
    return collect(
        rec,
        functools.partial(open_store, store),
        executor=executor,
        workers=workers,
        address=address,
        device=device,
        progress=progress,
        policy_factory=policy_factory,
    )


@dataclass(frozen=True)
class DemoResult:
    """What :func:`demo` made: ``store``, ``checkpoint`` and ``report`` (the ``report.md`` path)
    under its ``out`` folder, the collection and evaluation results, the controller's offline
    metrics and the wall time."""

    store: Path
    checkpoint: Path
    report: Path
    collected: CollectReport
    offline_metrics: dict[str, Any]
    evaluation: EvalResult
    wall_time_s: float


def demo(
    out: PathLike = "runs/demo",
    *,
    recipe: Recipe | PathLike = QUICKSTART_RECIPE,
    tasks: Sequence[str] = DEMO_HELD_OUT,
    seeds: int = 3,
    workers: int = 2,
    budget: int | None = None,
    progress: bool = True,
    log: Log | None = None,
) -> DemoResult:
    """The whole pipeline: collect ``recipe`` into ``out/store``, fit a GBT controller on greedy
    labels into ``out/model``, evaluate it against constant and cosine LR on the held-out
    ``tasks`` over ``seeds`` seeds into ``out/report`` (``report.md``, ``summary.csv``, plots).
    ``budget`` overrides the held-out tasks' step budgets (a quicker, rougher evaluation).

    Raises :class:`ConfigError` (field ``tasks``) before any work if the recipe collects one of
    ``tasks``. A second call reuses the runs already in the store.
    """
    from trajlib.controllers import fit_store
    from trajlib.evaluate import run_evaluation_parallel, write_report

    say = log or _quiet
    t0 = time.perf_counter()
    rec = _recipe(recipe)
    check_held_out(rec, tasks)
    out = Path(out)
    store_dir, model_dir, report_dir = out / "store", out / "model", out / "report"
    say(f"[1/3] collect {recipe} -> {store_dir}")
    rep = collect_into(rec, store_dir, workers=workers, progress=progress)
    say(
        f"      {rep.committed} new runs, {rep.skipped} already there, {rep.steps:,} steps + "
        f"{rep.branch_steps:,} branch steps, {rep.wall_time_s:.0f} s"
    )
    say(f"[2/3] fit gbt controller -> {model_dir}")
    ckpt, metrics = fit_store(store_dir, kind="gbt", labels="greedy", out=model_dir, overwrite=True)
    say(
        "      offline: "
        + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float))
    )
    say(f"[3/3] evaluate on held-out tasks {', '.join(tasks)} x {seeds} seeds -> {report_dir}")
    res = run_evaluation_parallel(
        list(tasks),
        list(range(seeds)),
        baselines="demo",
        checkpoints=[ckpt],
        budget=budget,
        workers=workers,
        progress=progress,
    )
    path = write_report(
        res,
        report_dir,
        title="trajlib demo: held-out evaluation",
        preamble=f"Recipe `{recipe}`; controller `{ckpt}` (gbt, greedy labels); "
        f"held-out tasks never collected from.\n",
    )
    return DemoResult(
        store=store_dir,
        checkpoint=Path(ckpt),
        report=Path(path),
        collected=rep,
        offline_metrics=dict(metrics),
        evaluation=res,
        wall_time_s=time.perf_counter() - t0,
    )


@dataclass(frozen=True)
class RoundResult:
    """One round of :func:`iterate`: the round's runs committed in the store (``runs``: new or
    already there from an interrupted earlier call) and collected by it (``new_runs``), the fitted controller's offline ``regret``, ``regret_keep`` and ``agreement``,
    and the mean final validation loss of that controller on the held-out tasks (NaN if none
    finished)."""

    round: int
    checkpoint: Path
    runs: int
    new_runs: int
    regret: float
    regret_keep: float
    agreement: float
    held_out_final_val_loss: float


def _round_recipe(base: Recipe, r: int, ckpt: Path, epsilon: float) -> Recipe:
    """Round ``r`` >= 1: new seeds, distinct run ids, the last controller with exploration."""
    return dataclasses.replace(
        base,
        name=f"{base.name}-round{r}",
        collect=dataclasses.replace(base.collect, seed=base.collect.seed + 1000 * r),
        behaviour=dataclasses.replace(
            base.behaviour, kind="controller", epsilon=epsilon, checkpoint=str(ckpt)
        ),
    )


def iterate(
    recipe: Recipe | PathLike,
    *,
    store: PathLike,
    out: PathLike,
    rounds: int = 2,
    kind: str = "gbt",
    labels: str = "greedy",
    epsilon: float = 0.2,
    tasks: Sequence[str] = DEMO_HELD_OUT,
    seeds: int = 3,
    budget: int | None = None,
    workers: int | None = None,
    progress: bool = True,
    log: Log | None = None,
) -> list[RoundResult]:
    """Collect -> fit -> collect again around the controller, ``rounds`` times.

    Round 0 collects ``recipe`` with its own behaviour; round r >= 1 collects it again (new seeds,
    distinct run ids) with the controller fitted in round r-1 as the behaviour, ``epsilon``
    exploration around it. Every round fits a ``kind`` controller on ``labels`` over the whole
    store into ``out/round-<r>/`` and scores it on the held-out ``tasks`` (``seeds`` seeds,
    ``budget`` steps if given). Writes ``out/iterate.md`` (:func:`iterate_markdown`) and returns
    one :class:`RoundResult` per round. Arguments are checked before anything is written.
    """
    from trajlib.controllers import fit_store
    from trajlib.evaluate import controller_method, run_evaluation
    from trajlib.store import create_store

    if not 0 <= epsilon <= 1:
        raise ConfigError("epsilon", "a probability in [0, 1]", epsilon)
    if rounds < 1:
        raise ConfigError("rounds", "a positive integer", rounds)
    say = log or _quiet
    base = _recipe(recipe)
    check_held_out(base, tasks)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    create_store(store, exist_ok=True)
    results: list[RoundResult] = []
    ckpt: Path | None = None
    for r in range(rounds):
        rec = base if ckpt is None else _round_recipe(base, r, ckpt, epsilon)
        say(
            f"[round {r}] collect ({rec.behaviour.kinds[0]}{'' if r == 0 else f', epsilon {epsilon}'})"
        )
        rep = collect_into(rec, store, workers=workers, progress=progress)
        ckpt, metrics = fit_store(
            os.fspath(store), kind=kind, labels=labels, out=out / f"round-{r}", overwrite=True
        )
        res = run_evaluation(
            [controller_method(ckpt)],
            list(tasks),
            list(range(seeds)),
            budget=budget,
            progress=False,
        )
        finite = [t.final_val_loss for t in res.traces if math.isfinite(t.final_val_loss)]
        row = RoundResult(
            round=r,
            checkpoint=Path(ckpt),
            runs=rep.committed + rep.skipped,
            new_runs=rep.committed,
            regret=metrics.get("regret", math.nan),
            regret_keep=metrics.get("regret_keep", math.nan),
            agreement=metrics.get("agreement", math.nan),
            held_out_final_val_loss=sum(finite) / len(finite) if finite else math.nan,
        )
        results.append(row)
        say(
            f"[round {r}] regret {row.regret:.4f} (keep {row.regret_keep:.4f}), held-out final "
            f"val loss {row.held_out_final_val_loss:.4f}"
        )
    (out / "iterate.md").write_text(iterate_markdown(results))
    return results


def iterate_markdown(rounds: Sequence[RoundResult]) -> str:
    """A markdown table of :func:`iterate`'s rounds: header, rule, one row per round."""
    md = [
        "| round | new runs | offline regret | regret of keep | agreement | held-out final val loss |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {x.round} | {x.new_runs} | {x.regret:.4f} | {x.regret_keep:.4f} | {x.agreement:.3f} "
        f"| {x.held_out_final_val_loss:.4f} |"
        for x in rounds
    ]
    return "\n".join(md) + "\n"
