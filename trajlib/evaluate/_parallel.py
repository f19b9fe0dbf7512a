"""Evaluation over a process pool: one job per (task, seed), methods built inside each worker.

Methods hold closures (schedulers, loaded controllers), so workers receive a *description* of the
method list (baseline set name, checkpoint paths) and build it themselves; traces come back and are
summarised together exactly as :func:`run_evaluation` would.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trajlib.errors import ConfigError
from trajlib.evaluate._harness import Method, constant_method, controller_method, cosine_method
from trajlib.evaluate._methods import quick_methods, standard_methods
from trajlib.evaluate._protocol import STATIC_BASELINES, TARGET_METHOD
from trajlib.evaluate._report import EvalResult, run_evaluation, summarize
from trajlib.evaluate._strategies import Strategy
from trajlib.tasks import get_task

__all__ = ["BASELINE_SETS", "build_methods", "run_evaluation_parallel"]

BASELINE_SETS = ("none", "demo", "quick", "standard")


def build_methods(
    task_name: str,
    baselines: str,
    checkpoints: Sequence[str | Path] = (),
    *,
    robustness: bool = False,
    pbt: bool = True,
) -> list[Method | Strategy]:
    """The method list for one task.

    ``baselines``: ``none``; ``demo`` (constant, cosine); ``quick`` (static schedules,
    schedule-free, hypergradient, tuned cosine); ``standard`` (every baseline, PBT unless
    ``pbt=False``). Each checkpoint adds a controller started at the task's default LR and, with
    ``robustness``, at 10x below and 10x above the task's best LR (``Task.best_lr``).
    """
    if baselines not in BASELINE_SETS:
        raise ConfigError("baselines", f"one of {BASELINE_SETS}", baselines)
    methods: list[Method | Strategy] = []
    if baselines == "demo":
        methods += [constant_method(), cosine_method()]
    elif baselines == "quick":
        methods += quick_methods()
    elif baselines == "standard":
        methods += standard_methods(pbt=pbt)
    task = get_task(task_name)
    best = task.best_lr or task.default_lr
    for ckpt in checkpoints:
        label = f"trajlib:{Path(ckpt).parent.name if Path(ckpt).name == 'checkpoint' else Path(ckpt).name}"
        methods.append(controller_method(ckpt, name=label))
        if robustness:
            for f, tag in ((0.1, "best/10"), (10.0, "best*10")):
                methods.append(
                    controller_method(
                        ckpt, lr_scale=best * f / task.default_lr, name=f"{label} @{tag}"
                    )
                )
    return methods


def _job(args: tuple[str, int, str, list[str], bool, bool, int | None]) -> list[Any]:
    task_name, seed, baselines, checkpoints, robustness, pbt, budget = args
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread per job (restored: in-process jobs run in the caller)
    try:
        methods = build_methods(task_name, baselines, checkpoints, robustness=robustness, pbt=pbt)
        return run_evaluation(methods, [task_name], [seed], budget=budget, progress=False).traces
    finally:
        torch.set_num_threads(before)


def run_evaluation_parallel(
    tasks: Sequence[str],
    seeds: Sequence[int],
    *,
    baselines: str = "demo",
    checkpoints: Sequence[str | Path] = (),
    robustness: bool = False,
    pbt: bool = True,
    budget: int | None = None,
    workers: int = 1,
    progress: bool = True,
) -> EvalResult:
    """Like :func:`run_evaluation` over :func:`build_methods`, with ``workers`` processes."""
    from tqdm.auto import tqdm

    for t in tasks:
        get_task(t)
        build_methods(t, baselines, checkpoints, robustness=robustness, pbt=False)  # validate early
    jobs = [
        (t, int(s), baselines, [str(c) for c in checkpoints], robustness, pbt, budget)
        for t in tasks
        for s in seeds
    ]
    traces: list[Any] = []
    bar = tqdm(total=len(jobs), desc="evaluate", unit="task-seed", disable=not progress)
    if workers <= 1:
        for j in jobs:
            traces += _job(j)
            bar.update(1)
    else:
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            for res in pool.map(_job, jobs):
                traces += res
                bar.update(1)
    bar.close()
    # keep the (task, method, seed) order of run_evaluation
    order = {t: i for i, t in enumerate(tasks)}
    traces.sort(key=lambda tr: (order[tr.task], tr.seed))
    table = summarize(traces, STATIC_BASELINES, target_method=TARGET_METHOD)
    return EvalResult(traces, table, TARGET_METHOD)
