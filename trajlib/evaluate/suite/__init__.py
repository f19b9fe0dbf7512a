"""A broad held-out suite of user-style training loops (issue 16).

Eleven families never collected from (:data:`FAMILIES`, the set ``"suite"``: LSTM, residual CNN
with BatchNorm + dropout, dilated TCN, MLP-Mixer, EmbeddingBag text classifier, VAE, torch's
TransformerEncoder, gated MLP with plain SGD, BiLSTM tagger, Deep Sets, conv denoising
autoencoder; NAdam, RAdam, Adamax, Adagrad, SGD, Adam, AdamW), each a plain loop (own ``nn.Module``, ``DataLoader``,
``model.train()`` / ``eval()``, a ``torch.optim`` optimizer) driven through the public API only:
``ControllerScheduler(opt, checkpoint, total_steps=N)``, ``observe(loss)``, optionally
``observe_validation(val_loss)``, ``step()``. The controller runs from the default LR, ×10 and ÷10,
with and without validation reports, against cosine from the same start, tuned cosine (8-LR grid,
chosen on validation, scored on test) and schedule-free, over seeds. A second set, ``"fresh"``
(eight more families: GRU with RMSprop, GroupNorm CNN, LeNet with BatchNorm under AdamW with two
param groups, a causal transformer LM, logistic regression with ASGD, Adadelta, a LayerNorm
residual MLP, a triplet-loss embedding), was written after the shipped controllers were chosen and
is never used to choose anything: ``run_suite(..., family_set="fresh")``. A third set,
``"outside"`` (eight more, :data:`OUTSIDE_FAMILIES`), was written from the README alone after
``trajlib-lr-v8`` was shipped, by a session that never saw the controllers, and is never used to
choose anything either: ``run_suite(..., family_set="outside")``.

Example::

    from trajlib.evaluate import run_suite

    res = run_suite("models/trajlib-lr-v1/checkpoint", seeds=5, workers=2, out="runs/suite")
    print(res.summary)            # per family and ALL, with and without validation
    print(res.targets)            # each target's value and whether it is met

Results are cached (parquet, keyed by family, method, start, seed, validation mode, budget and the
checkpoint's content hash), so evaluating several checkpoints against one cache computes the
baselines once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from trajlib.deploy import GUARD
from trajlib.errors import ConfigError
from trajlib.evaluate.suite._families import (
    FAMILIES,
    FAMILY_SETS,
    Family,
    families_markdown,
    get_family,
    select_families,
)
from trajlib.evaluate.suite._fresh import FRESH_FAMILIES
from trajlib.evaluate.suite._loop import METHODS, PENALTY, LookaheadSetting, run_one
from trajlib.evaluate.suite._outside import OUTSIDE_FAMILIES
from trajlib.evaluate.suite._report import (
    START_BANDS,
    TARGETS,
    bootstrap_median,
    by_tuned_start,
    pairs,
    rerender_suite_report,
    summary,
    targets,
    write_suite_report,
)
from trajlib.evaluate.suite._runner import (
    GRID,
    STARTS,
    Job,
    ResultCache,
    checkpoint_hash,
    controller_code_hash,
    plan_jobs,
    run_jobs,
)

__all__ = [
    "FAMILIES",
    "FAMILY_SETS",
    "FRESH_FAMILIES",
    "GRID",
    "METHODS",
    "OUTSIDE_FAMILIES",
    "PENALTY",
    "STARTS",
    "START_BANDS",
    "TARGETS",
    "Family",
    "Job",
    "LookaheadSetting",
    "ResultCache",
    "SuiteResult",
    "bootstrap_median",
    "by_tuned_start",
    "checkpoint_hash",
    "controller_code_hash",
    "families_markdown",
    "get_family",
    "pairs",
    "plan_jobs",
    "rerender_suite_report",
    "run_jobs",
    "run_one",
    "run_suite",
    "select_families",
    "summary",
    "targets",
    "write_suite_report",
]

QUICK_SEEDS = 2


@dataclass
class SuiteResult:
    """Every run's row (``results``), the paired comparisons (``pairs``), the per-family summary
    (``summary``), the targets (``targets``), the report path and how many runs were computed now
    (the rest came from the cache)."""

    results: pl.DataFrame
    pairs: pl.DataFrame
    summary: pl.DataFrame
    targets: list[dict[str, Any]]
    report: Path | None
    computed: int
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def run_suite(
    checkpoint: str | Path,
    *,
    seeds: int | Sequence[int] = 5,
    families: Sequence[str] | None = None,
    family_set: str = "suite",
    workers: int = 1,
    out: str | Path | None = "runs/suite",
    cache: str | Path | None = None,
    with_val: bool = True,
    without_val: bool = True,
    quick: bool = False,
    budget: int | None = None,
    progress: bool = True,
    lookahead: LookaheadSetting | tuple[Any, ...] | None = None,
    guard: float | None = GUARD,
    rollback: bool = True,
) -> SuiteResult:
    """Run the held-out suite for ``checkpoint``; write the report into ``out`` (None: no report).

    ``seeds``: a count (0..N-1) or the seeds. ``families``: names of any set; without them, every
    family of ``family_set`` (:data:`FAMILY_SETS`: ``"suite"``, the eleven of the headline,
    ``"fresh"``, eight defined after the shipped controllers were chosen, or ``"outside"``, eight
    written from the README alone after ``trajlib-lr-v8`` was shipped). ``quick`` keeps at most
    2 of the seeds. ``cache``: the result cache directory (default ``<out>/cache``; required when
    ``out`` is None).
    ``with_val`` / ``without_val``: which controller modes to run. ``budget`` overrides every
    family's step budget (tests). ``lookahead`` = ``(top_k, horizon[, cooldown[, when]])``
    (:class:`LookaheadSetting`): the controller runs with deploy-time lookahead (its compute ratio
    is recorded per run). ``guard`` / ``rollback``: the controller's raise guard, as in
    :class:`~trajlib.deploy.ControllerScheduler` (default: its default; ``guard=None`` turns it off).
    """
    t0 = time.perf_counter()
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list:
        raise ConfigError("seeds", "at least one seed", seeds)
    if quick:
        seed_list = seed_list[:QUICK_SEEDS]
    if workers < 1:
        raise ConfigError("workers", "a positive integer", workers)
    if budget is not None and budget < 1:
        raise ConfigError("budget", "a positive number of steps", budget)
    modes = [m for m, on in ((True, with_val), (False, without_val)) if on]
    if not modes:
        raise ConfigError("with_val", "at least one of with_val / without_val", "neither")
    if cache is None:
        if out is None:
            raise ConfigError("cache", "a cache directory when out is None", None)
        cache = Path(out) / "cache"
    names = [f.name for f in select_families(families, family_set)]
    jobs = plan_jobs(
        names,
        seed_list,
        checkpoint=checkpoint,
        modes=modes,
        budget=budget,
        lookahead=lookahead,
        guard=guard,
        rollback=rollback,
    )
    rc = ResultCache(cache)
    results, computed = run_jobs(jobs, rc, workers=workers, progress=progress)
    pr = pairs(results)
    summ = summary(pr)
    tg = targets(summ) if summ.height else []
    wall = time.perf_counter() - t0
    report = None
    if out is not None:
        report = write_suite_report(
            results,
            out,
            checkpoint=str(checkpoint),
            ckpt_hash=checkpoint_hash(checkpoint),
            code_hash=controller_code_hash(),
            seeds=seed_list,
            families_md=families_markdown(names),
            wall_s=wall,
        )
    return SuiteResult(results, pr, summ, tg, report, computed, wall)
