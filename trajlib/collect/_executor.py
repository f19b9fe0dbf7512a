"""Executors: run a recipe's runs in a local process pool (default) or on Ray, committing each run
into a *sink* (a trajectory store) as soon as it is done.

The collect stage does not import the store (it sits to its right); it writes through the small
:class:`RunSink` protocol, which :class:`trajlib.store.Store` implements. Workers open their own sink
from a picklable zero-argument ``sink_factory`` (e.g. ``functools.partial(open_store, path)``), and
every worker writes its own fragments. Run ids are deterministic, so a collection that is stopped and
started again skips what is committed.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import polars as pl

from trajlib import schema as S
from trajlib.collect._behaviour import DecisionPolicy
from trajlib.collect._recipe import Recipe
from trajlib.collect._results import RunResult
from trajlib.errors import ConfigError, TrajlibError
from trajlib.spec import RunConfig

__all__ = ["RunSink", "CollectReport", "collect", "work_units"]


class RunSink(Protocol):
    """Where finished runs go (a store)."""

    def is_committed(self, run_id: str) -> bool: ...
    def claim(self, run_id: str) -> bool: ...
    def release(self, run_id: str) -> None: ...
    def write_run(
        self,
        run: dict[str, Any],
        steps: pl.DataFrame,
        decisions: pl.DataFrame | None = None,
        branches: pl.DataFrame | None = None,
        layers: np.ndarray | None = None,
        layer_names: list[str] | None = None,
    ) -> bool: ...


@dataclass
class CollectReport:
    """What a collection did."""

    total: int = 0
    committed: int = 0
    skipped: int = 0
    failed: int = 0
    diverged: int = 0
    steps: int = 0
    branch_steps: int = 0
    wall_time_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    retries: int = 0  # transient store errors retried (object storage), all workers together

    @property
    def steps_per_s(self) -> float:
        """Main-trajectory model-steps per second (branch steps not counted)."""
        return self.steps / self.wall_time_s if self.wall_time_s > 0 else 0.0

    @property
    def branch_steps_per_s(self) -> float:
        """Branch (and cool-down) model-steps per second."""
        return self.branch_steps / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def add(self, other: dict[str, Any]) -> None:
        for k in ("committed", "skipped", "failed", "diverged", "steps", "branch_steps", "retries"):
            setattr(self, k, getattr(self, k) + int(other.get(k, 0)))
        self.errors.extend(other.get("errors", []))


def work_units(recipe: Recipe) -> list[list[RunConfig]]:
    """Group the recipe's runs into populations (same task, up to ``collect.population`` each)."""
    by_task: dict[str, list[RunConfig]] = {}
    for config in recipe.run_configs():
        by_task.setdefault(config.task, []).append(config)
    k = recipe.collect.population
    return [configs[i : i + k] for configs in by_task.values() for i in range(0, len(configs), k)]


def run_unit(
    configs: Sequence[RunConfig],
    sink_factory: Callable[[], RunSink],
    device: str = "cpu",
    divergence_factor: float = 1e3,
    threads: int = 1,
    policy_factory: Callable[[], DecisionPolicy] | None = None,
) -> dict[str, Any]:
    """Run one work unit (a population) in this process and commit its runs. Safe to call in any
    worker. ``policy_factory`` (picklable, zero-argument) builds the injected controller policy
    of ``behaviour.kind = "controller"`` runs inside the worker."""
    import torch

    from trajlib.collect._runner import run_population

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    sink = sink_factory()
    out: dict[str, Any] = {
        "committed": 0,
        "skipped": 0,
        "failed": 0,
        "diverged": 0,
        "steps": 0,
        "branch_steps": 0,
        "errors": [],
        "runs": len(configs),
    }
    todo = []
    for config in configs:
        if sink.is_committed(config.run_id) or not sink.claim(config.run_id):
            out["skipped"] += 1
        else:
            todo.append(config)
    try:
        if todo:
            try:
                policy = policy_factory() if policy_factory is not None else None
            except Exception as exc:  # no policy, no runs: every run of the unit failed
                for config in todo:
                    _fail(sink, config, exc, out)
                return out
            try:
                results = run_population(
                    todo, device=device, divergence_factor=divergence_factor, policy=policy
                )
            except Exception as exc:  # a crash: find the runs that crash, record them as failed
                if len(todo) == 1:
                    _fail(sink, todo[0], exc, out)
                    return out
                why = f"its population of {len(todo)} raised {_one_line(exc)}; it ran alone"
                for config in todo:  # each alone: only the runs that crash alone fail
                    try:
                        (res,) = run_population(
                            [config],
                            device=device,
                            divergence_factor=divergence_factor,
                            policy=policy,
                        )
                    except Exception as exc1:
                        _fail(sink, config, exc1, out)
                    else:
                        entry = json.loads(res.run[S.ENTRY])
                        res.run[S.ENTRY] = json.dumps(
                            {**entry, "population_error": why}, sort_keys=True
                        )
                        _commit(sink, res, out)
            else:
                for res in results:
                    _commit(sink, res, out)
    finally:
        for config in todo:
            sink.release(config.run_id)
        torch.set_num_threads(old_threads)
        out["retries"] = int(getattr(sink, "retries", 0))  # transient store errors retried
    return out


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fail(sink: RunSink, config: RunConfig, exc: BaseException, out: dict[str, Any]) -> None:
    """Record ``config``'s run as failed with the error ``exc``, and count it in ``out``."""
    from trajlib.collect._runner import failed_result

    row = failed_result(config, exc)
    sink.write_run(row, S.empty_frame(S.STEP_SCHEMA))
    out["failed"] += 1
    out["errors"].append(f"{config.run_id}: {row['error']}")


def _commit(sink: RunSink, res: RunResult, out: dict[str, Any]) -> None:
    """Write one finished run into the sink and count it in ``out``."""
    if not sink.write_run(
        res.run, res.steps, res.decisions, res.branches, res.layers, res.layer_names
    ):
        out["skipped"] += 1
        return
    out["committed"] += 1
    out["steps"] += res.run["steps_done"]
    if len(res.branches):
        lengths = res.branches.select(pl.col("horizon").sum() + pl.col("cooldown").sum())
        out["branch_steps"] += int(lengths.item())
    out["diverged"] += res.run["status"] == "diverged"


def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        unit="run",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        desc="collect",
    )


def _iter_local(
    units: list[list[RunConfig]],
    sink_factory: Callable[[], RunSink],
    workers: int,
    device: str,
    divergence_factor: float,
    policy_factory: Callable[[], DecisionPolicy] | None = None,
) -> Iterator[dict[str, Any]]:
    if workers == 1 or len(units) == 1:
        for u in units:
            yield run_unit(u, sink_factory, device, divergence_factor, 1, policy_factory)
        return
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_worker_init
    ) as pool:
        futs = [
            pool.submit(run_unit, u, sink_factory, device, divergence_factor, 1, policy_factory)
            for u in units
        ]
        try:
            for f in cf.as_completed(futs):
                # a worker's TrajlibError arrives as itself (trajlib errors survive pickling)
                yield f.result()
        finally:  # an error (or the caller stopping): do not start the units still queued
            for f in futs:
                f.cancel()


def _iter_ray(
    units: list[list[RunConfig]],
    sink_factory: Callable[[], RunSink],
    workers: int,
    device: str,
    divergence_factor: float,
    address: str | None,
    policy_factory: Callable[[], DecisionPolicy] | None = None,
) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise TrajlibError("the Ray executor needs Ray: pip install 'trajlib[ray]'") from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = workers
            kwargs["_temp_dir"] = tempfile.mkdtemp(prefix="trajlib-ray-")
        ray.init(**kwargs)
        started = True
    try:
        gpus = 1 if device.startswith("cuda") else 0
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=2)(run_unit)
        pending = [
            remote.remote(u, sink_factory, device, divergence_factor, 1, policy_factory)
            for u in units
        ]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:  # a store error in a worker: its own line
                if isinstance(exc.cause, TrajlibError):
                    raise exc.cause from None
                raise
            yield result
    finally:
        if started:
            ray.shutdown()


def _check_options(kind: str, workers: int, device: str) -> None:
    if kind not in ("local", "ray"):
        raise ConfigError("executor", "'local' or 'ray'", kind)
    if workers < 1:
        raise ConfigError("workers", "a positive integer", workers)
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "device", "a device this machine has", device, "torch.cuda.is_available() is False"
            )


def collect(
    recipe: Recipe,
    sink_factory: Callable[[], RunSink],
    *,
    executor: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    device: str | None = None,
    progress: bool = True,
    policy_factory: Callable[[], DecisionPolicy] | None = None,
) -> CollectReport:
    """Run every run of ``recipe`` not yet committed in the sink; returns a :class:`CollectReport`.

    Command-line options (``executor``, ``workers``, ``address``, ``device``) override the recipe.
    ``policy_factory``: a picklable zero-argument callable returning the :class:`DecisionPolicy`
    of ``behaviour.kind = "controller"`` (the caller, e.g. ``trajlib iterate``, loads the
    checkpoint; collect never imports controllers). Progress shows runs done / total, ETA, and
    main-trajectory and branch steps per second separately.
    """
    if "controller" in recipe.behaviour.kinds and policy_factory is None:
        raise ConfigError(
            "behaviour.kind",
            "'controller' only with a policy_factory from the caller",
            recipe.behaviour.kind,
            "run it through `trajlib iterate`, which loads behaviour.checkpoint",
        )
    kind = executor or recipe.executor.kind
    n_workers = workers or recipe.executor.workers
    dev = device or recipe.collect.device
    _check_options(kind, n_workers, dev)
    units = work_units(recipe)
    report = CollectReport(total=sum(len(u) for u in units))
    t0 = time.perf_counter()
    bar = _progress(report.total, progress)
    it = (
        _iter_ray(
            units,
            sink_factory,
            n_workers,
            dev,
            recipe.collect.divergence_factor,
            address or recipe.executor.address,
            policy_factory,
        )
        if kind == "ray"
        else _iter_local(
            units, sink_factory, n_workers, dev, recipe.collect.divergence_factor, policy_factory
        )
    )
    try:
        for res in it:
            report.add(res)
            report.wall_time_s = time.perf_counter() - t0
            bar.update(res["runs"])
            bar.set_postfix(
                steps_per_s=f"{report.steps_per_s:,.0f}",
                branch_steps_per_s=f"{report.branch_steps_per_s:,.0f}",
                failed=report.failed,
                refresh=False,
            )
    finally:
        bar.close()
    report.wall_time_s = time.perf_counter() - t0
    return report
