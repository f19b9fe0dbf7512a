"""Population based training (Jaderberg et al. 2017) through Ray Tune's ``PopulationBasedTraining``.

A real Ray Tune run on a local Ray cluster (``ray.init(num_cpus=2)`` unless one is running). Each
member is a *function trainable* that trains the task with a constant LR for one validation interval
(``task.val_every`` steps) per Tune iteration, reports the validation loss and a checkpoint, and
restores from ``tune.get_checkpoint()`` when PBT makes it exploit another member. Perturbations
happen every ``perturb_every`` validations (asynchronous PBT: Ray's ``synch=True`` mode hung with
fewer CPUs than members here): the bottom quantile copies the weights,
optimizer state and *record* (the lineage's losses and LRs) of the top quantile, then explores the LR
(x0.8 / x1.2, or resampled log-uniformly with probability 0.25). LRs are clipped to
``[lr_low, lr_high] x`` the default LR inside the trainable (Ray's perturbations can leave the
domain; users reported exactly that).

Checkpoints are ``torch.save`` dicts of tensors and plain values in a directory, read back with
``torch.load(weights_only=True)``; nothing is pickled into artifacts (Ray's own IPC aside).
The member with the lowest final validation loss is returned, scored on the test split, charged
``population`` runs. The initial population is a log-spaced LR grid (deterministic).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from trajlib.errors import ConfigError
from trajlib.evaluate._harness import Trace, TrainRun
from trajlib.evaluate._strategies import Strategy, lr_grid
from trajlib.tasks import Task

__all__ = ["RayPBT"]

_DIVERGED_LOSS = 1e30  # reported instead of NaN/inf so that PBT ranks a diverged member last
_STATE_FILE = "state.pt"


def _pbt_member(
    config: dict[str, Any],
    task: Task,
    seed: int,
    budget: int,
    lr_bounds: tuple[float, float],
    device: str,
) -> None:
    """Ray Tune function trainable: one PBT member (runs inside a Ray worker)."""
    from ray import tune

    torch.set_num_threads(1)
    lo, hi = lr_bounds
    lr = min(max(float(config["lr"]), lo), hi)
    run = TrainRun(task, seed, lr, budget=budget, device=device)
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / _STATE_FILE, weights_only=True)
        run.load_state_dict(state)  # keeps this member's (perturbed) LR
    skipped = 0
    while run.step < budget:
        end = min(budget, run.step + task.val_every)
        if run.diverged:  # a diverged member idles, ranked last, until PBT replaces it
            skipped += end - run.step
            run.step = end
            val = _DIVERGED_LOSS
        else:
            while run.step < end and not run.diverged:
                run.train_step()
            if run.diverged:
                val = _DIVERGED_LOSS
                run.step = end
            else:
                val, _ = run.validate()
                val = val if math.isfinite(val) else _DIVERGED_LOSS
        with tempfile.TemporaryDirectory() as d:
            torch.save(run.state_dict(), Path(d) / _STATE_FILE)
            tune.report(
                {"val_loss": val, "step": run.step, "lr": lr, "skipped_steps": skipped},
                checkpoint=tune.Checkpoint.from_directory(d),
            )


class RayPBT(Strategy):
    """PBT with Ray Tune: ``population`` members, perturbation every ``perturb_every`` validations."""

    def __init__(
        self,
        population: int = 8,
        *,
        perturb_every: int = 4,
        quantile_fraction: float = 0.25,
        resample_probability: float = 0.25,
        lr_low: float = 1 / 30,
        lr_high: float = 30.0,
        init_low: float = 1 / 10,
        init_high: float = 10.0,
        num_cpus: int = 2,
        name: str | None = None,
    ) -> None:
        if not isinstance(population, int) or population < 2:
            raise ConfigError("population", "an integer >= 2", population)
        if not isinstance(perturb_every, int) or perturb_every < 1:
            raise ConfigError("perturb_every", "a positive integer (validations)", perturb_every)
        if not 0 < quantile_fraction <= 0.5:
            raise ConfigError("quantile_fraction", "a fraction in (0, 0.5]", quantile_fraction)
        if not 0 < lr_low <= init_low <= init_high <= lr_high:
            raise ConfigError(
                "lr_low/init_low/init_high/lr_high",
                "0 < lr_low <= init_low <= init_high <= lr_high",
                (lr_low, init_low, init_high, lr_high),
            )
        self.population = population
        self.perturb_every = perturb_every
        self.quantile_fraction = quantile_fraction
        self.resample_probability = resample_probability
        self.lr_low, self.lr_high = lr_low, lr_high
        self.init_low, self.init_high = init_low, init_high
        self.num_cpus = num_cpus
        self.name = name or f"PBT (Ray Tune, {population} members)"
        self._started_ray = False
        self._ray_tmp: str | None = None

    def _ensure_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        # a short private temp dir: Ray's unix sockets need short paths, and other users share /tmp
        self._ray_tmp = tempfile.mkdtemp(prefix="tjray")
        ray.init(
            num_cpus=self.num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=self._ray_tmp,
            runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}},
        )
        self._started_ray = True

    def run(
        self, task: Task, seed: int, *, budget: int | None = None, device: str = "cpu"
    ) -> Trace:
        try:
            from ray import tune
            from ray.tune.schedulers import PopulationBasedTraining
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ConfigError(
                "ray", "ray[tune] installed", "not importable", "pip install 'trajlib[ray]'"
            ) from e
        T = int(budget or task.budget)
        lr0 = task.default_lr
        bounds = (lr0 * self.lr_low, lr0 * self.lr_high)
        self._ensure_ray()
        pbt = PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=self.perturb_every,
            hyperparam_mutations={"lr": tune.loguniform(*bounds)},
            quantile_fraction=self.quantile_fraction,
            resample_probability=self.resample_probability,
            perturbation_factors=(1.2, 0.8),
            synch=False,  # synch=True hung here with 4 members on 2 CPUs (ray#23424-like)
        )
        storage = tempfile.mkdtemp(prefix="trajlib-pbt-")
        init = [lr0 * m for m in lr_grid(self.population, self.init_low, self.init_high)]
        t0 = time.perf_counter()
        try:
            try:
                trainable = tune.with_parameters(
                    _pbt_member, task=task, seed=seed, budget=T, lr_bounds=bounds, device=device
                )
            except (
                AttributeError,
                TypeError,
                ValueError,
            ) as e:  # Ray's serializer cannot ship the task
                raise ConfigError(
                    "task",
                    "a task Ray can send to its workers (defined at module level)",
                    task.name,
                    f"serialising it failed: {e}",
                ) from e
            tuner = tune.Tuner(
                trainable,
                param_space={"lr": tune.grid_search(init)},
                tune_config=tune.TuneConfig(
                    scheduler=pbt, metric="val_loss", mode="min", num_samples=1, reuse_actors=True
                ),
                run_config=tune.RunConfig(
                    name=f"pbt-{task.name}-{seed}",
                    storage_path=storage,
                    verbose=0,
                    checkpoint_config=tune.CheckpointConfig(
                        num_to_keep=None
                    ),  # exploit may read any
                ),
            )
            results = tuner.fit()
            best = results.get_best_result(metric="val_loss", mode="min", scope="last")
            if best.checkpoint is None:
                raise RuntimeError(f"PBT on {task.name}: the best member left no checkpoint")
            with best.checkpoint.as_directory() as d:
                state = torch.load(Path(d) / _STATE_FILE, weights_only=True)
            errors = [results[i].error for i in range(len(results)) if results[i].error is not None]
        finally:
            shutil.rmtree(storage, ignore_errors=True)
        wall = time.perf_counter() - t0
        run = TrainRun(task, seed, float(state["lr"][-1]) or lr0, budget=T, device=device)
        run.load_state_dict(state)
        return run.to_trace(
            self.name,
            cost=float(self.population),
            wall_time_s=wall,
            info={
                "initial_lrs": init,
                "final_lr": float((best.metrics or {}).get("lr", math.nan)),
                "member_errors": [str(e)[:200] for e in errors],
            },
        )

    def close(self) -> None:
        """Shut down the Ray cluster if this strategy started it."""
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
        if self._ray_tmp:
            shutil.rmtree(self._ray_tmp, ignore_errors=True)
            self._ray_tmp = None
