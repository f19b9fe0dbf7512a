"""Strategies: baselines that need several training runs to produce one final run per seed.

A :class:`Strategy` has one method, ``run(task, seed, budget=, device=) -> Trace``, returning the
run it would deploy, scored on the **test** split, with every choice made on the **validation**
split, and its whole compute charged in ``Trace.cost`` (runs of the full budget; ``cost_steps`` =
runs x steps) and ``Trace.wall_time_s`` (wall time of all its runs).

- :class:`GridSearch`: the tuned cosine — cosine from each of 8 log-spaced LRs, keep the best final
  validation loss; charged 8 runs.
- :class:`OptunaSearch`: Optuna's TPE sampler with a Hyperband pruner over the cosine's LR; every
  validation is reported for pruning; charged the steps actually trained.
- :class:`SuccessiveHalving`: the fastest-learner selection — train all LRs one round, keep the
  half with the lowest validation loss and continue *their* runs (warm start) the next round, until
  one is left to finish the budget; charged the total steps.
- :class:`~trajlib.evaluate._pbt.RayPBT` and :class:`~trajlib.evaluate._t1t2.T1T2` live in their
  own modules.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from trajlib.errors import ConfigError
from trajlib.evaluate._harness import Method, Trace, TrainRun, cosine_method, train_task
from trajlib.tasks import Task

__all__ = [
    "Strategy",
    "GridSearch",
    "OptunaSearch",
    "SuccessiveHalving",
    "lr_grid",
]


class Strategy(ABC):
    """A baseline that may train several runs and returns one final :class:`Trace` per seed."""

    name: str = "strategy"

    @abstractmethod
    def run(
        self, task: Task, seed: int, *, budget: int | None = None, device: str = "cpu"
    ) -> Trace:
        """Train, choose on validation, return the chosen run scored on test with its cost."""

    def close(self) -> None:
        """Release resources held across runs (e.g. a Ray cluster). Default: nothing."""
        return None


def lr_grid(n: int = 8, low: float = 1 / 30, high: float = 30.0) -> list[float]:
    """``n`` log-spaced LR multipliers from ``low`` to ``high`` (of the task's default LR)."""
    if n < 1:
        raise ConfigError("n", "a positive integer number of grid points", n)
    if not 0 < low <= high:
        raise ConfigError("low/high", "0 < low <= high", (low, high))
    return [float(v) for v in np.geomspace(low, high, n)]


def _score(tr: Trace) -> float:
    """Validation score to minimise: final validation loss, +inf when diverged or missing."""
    v = tr.final_val_loss
    return v if math.isfinite(v) else math.inf


class GridSearch(Strategy):
    """Tuned cosine: cosine annealing from each LR of a log-spaced grid, best on validation.

    Every grid run trains the full budget on the seed's initialisation and batches; the one with the
    lowest final validation loss is returned (its test loss is the score); charged ``len(grid)``
    runs whether or not some diverged early.
    """

    def __init__(
        self,
        multipliers: Sequence[float] | None = None,
        *,
        make_method: Callable[[float], Method] | None = None,
        name: str | None = None,
    ) -> None:
        self.multipliers = list(multipliers) if multipliers is not None else lr_grid(8)
        if not self.multipliers or any(not (m > 0) for m in self.multipliers):
            raise ConfigError(
                "multipliers", "a non-empty list of positive LR multipliers", multipliers
            )
        self.make_method = make_method or (lambda s: cosine_method(s))
        self.name = name or f"tuned cosine (grid {len(self.multipliers)})"

    def run(
        self, task: Task, seed: int, *, budget: int | None = None, device: str = "cpu"
    ) -> Trace:
        data = task.make_data().to(device)
        t0 = time.perf_counter()
        trials = [
            train_task(task, self.make_method(m), seed, budget=budget, device=device, data=data)
            for m in self.multipliers
        ]
        wall = time.perf_counter() - t0
        scores = [_score(t) for t in trials]
        best = int(np.argmin(scores))
        tr = trials[best]
        tr.method = self.name
        tr.cost = float(len(self.multipliers))
        tr.wall_time_s = wall
        tr.info = {
            "chosen_lr_scale": self.multipliers[best],
            "chosen_lr": task.default_lr * self.multipliers[best],
            "grid_val_loss": [None if not math.isfinite(s) else s for s in scores],
            "grid_lr_scale": self.multipliers,
            # the best LR on the grid's edge: the grid may not bracket the optimum (widen it)
            "at_grid_edge": len(self.multipliers) > 1
            and best in (int(np.argmin(self.multipliers)), int(np.argmax(self.multipliers))),
        }
        return tr


class OptunaSearch(Strategy):
    """Optuna (TPE sampler + Hyperband pruner) over the cosine's start LR, ``n_trials`` trials.

    LR is searched log-uniformly in ``[low, high] x`` the default LR; each trial reports its
    validation loss at every validation point and is pruned when Hyperband says so. The best
    *completed* trial by final validation loss is returned; charged the steps all trials ran.
    """

    def __init__(
        self,
        n_trials: int = 16,
        *,
        low: float = 1 / 30,
        high: float = 30.0,
        name: str | None = None,
    ) -> None:
        if not isinstance(n_trials, int) or n_trials < 1:
            raise ConfigError("n_trials", "a positive integer", n_trials)
        if not 0 < low < high:
            raise ConfigError("low/high", "0 < low < high", (low, high))
        self.n_trials, self.low, self.high = n_trials, low, high
        self.name = name or f"optuna cosine ({n_trials} trials)"

    def run(
        self, task: Task, seed: int, *, budget: int | None = None, device: str = "cpu"
    ) -> Trace:
        try:
            import optuna
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ConfigError(
                "optuna", "the `optuna` package", "not installed", "pip install trajlib[baselines]"
            ) from e
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        T = int(budget or task.budget)
        n_val = math.ceil(T / task.val_every)
        study = optuna.create_study(
            direction="minimize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=n_val),
        )
        data = task.make_data().to(device)
        traces: dict[int, Trace] = {}
        t0 = time.perf_counter()

        def objective(trial: Any) -> float:
            scale = trial.suggest_float("lr_scale", self.low, self.high, log=True)

            def report(step: int, val_loss: float) -> bool:
                k = math.ceil(step / task.val_every)
                trial.report(val_loss if math.isfinite(val_loss) else 1e30, k)
                return trial.should_prune()

            tr = train_task(
                task,
                cosine_method(scale),
                seed,
                budget=T,
                device=device,
                data=data,
                callback=report,
            )
            traces[trial.number] = tr
            if "stopped_at" in tr.info:
                raise optuna.TrialPruned()
            return _score(tr) if math.isfinite(_score(tr)) else 1e30

        study.optimize(objective, n_trials=self.n_trials)
        wall = time.perf_counter() - t0
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:  # Hyperband has nothing to compare the first trial with: not expected
            raise RuntimeError(f"Optuna on {task.name} seed {seed}: every trial was pruned")
        best = min(complete, key=lambda t: float(t.value if t.value is not None else math.inf))
        tr = traces[best.number]
        steps = sum(float(t.cost) * T for t in traces.values())
        tr.method = self.name
        tr.cost = steps / T
        tr.wall_time_s = wall
        tr.info = {
            "chosen_lr_scale": best.params["lr_scale"],
            "chosen_lr": task.default_lr * best.params["lr_scale"],
            "trials": len(study.trials),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        }
        return tr


class SuccessiveHalving(Strategy):
    """Fastest-learner successive selection: successive halving over LRs with warm starts.

    All ``multipliers`` start (cosine over the full budget from ``lr0 x m``); rounds end at budget
    fractions ``1/2^k`` (``..., 1/8, 1/4, 1/2``); after each round the ``1/eta`` fastest learners
    (lowest validation loss) go on *from their own weights and optimizer state*; the last one left
    finishes the budget. With 8 LRs and ``eta = 2`` the charge is 2.5 runs.
    """

    def __init__(
        self, multipliers: Sequence[float] | None = None, *, eta: int = 2, name: str | None = None
    ) -> None:
        self.multipliers = list(multipliers) if multipliers is not None else lr_grid(8)
        if len(self.multipliers) < 2 or any(not (m > 0) for m in self.multipliers):
            raise ConfigError("multipliers", "at least two positive LR multipliers", multipliers)
        if not isinstance(eta, int) or eta < 2:
            raise ConfigError("eta", "an integer >= 2 (the keep-1/eta factor)", eta)
        self.eta = eta
        self.name = name or f"successive halving ({len(self.multipliers)} LRs)"

    def rounds(self, budget: int) -> list[int]:
        """Step at which each selection happens, then the budget (e.g. [250, 500, 1000, 2000])."""
        n, k = len(self.multipliers), 0
        while n > 1:
            n = math.ceil(n / self.eta)
            k += 1
        return [max(1, round(budget / self.eta ** (k - i))) for i in range(k)] + [budget]

    def run(
        self, task: Task, seed: int, *, budget: int | None = None, device: str = "cpu"
    ) -> Trace:
        T = int(budget or task.budget)
        data = task.make_data().to(device)
        t0 = time.perf_counter()
        runs: list[tuple[float, TrainRun, Any]] = []
        for m in self.multipliers:
            r = TrainRun(task, seed, task.default_lr * m, budget=T, device=device, data=data)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(r.optimizer, T_max=T)
            runs.append((m, r, sched))
        steps = 0
        history = []
        for end in self.rounds(T):
            for _, r, sched in runs:
                while not r.done and r.step < end:
                    r.train_step()
                    steps += 1
                    if r.diverged:
                        break
                    if r.due_validation:
                        r.validate()
                    sched.step()
            if end >= T:
                break
            score: dict[int, float] = {}
            for i, (_, r, _) in enumerate(runs):
                if r.diverged:
                    score[i] = math.inf
                    continue
                # rank on validation; recorded only if it is a regular validation point, so the
                # survivor's trace keeps the same validation grid as every other method
                v = r.val_loss[-1] if r.val_steps and r.val_steps[-1] == r.step else r.evaluate()[0]
                score[i] = v if math.isfinite(v) else math.inf
            order = sorted(range(len(runs)), key=lambda i: score[i])
            ranked = [runs[i] for i in order]
            keep = max(1, math.ceil(len(runs) / self.eta))
            history.append({"step": end, "kept_lr_scale": [m for m, _, _ in ranked[:keep]]})
            runs = ranked[:keep]
        wall = time.perf_counter() - t0
        finals = sorted(runs, key=lambda x: _score_run(x[1]))
        m, best, _ = finals[0]
        return best.to_trace(
            self.name,
            cost=steps / T,
            wall_time_s=wall,
            info={"chosen_lr_scale": m, "chosen_lr": task.default_lr * m, "rounds": history},
        )


def _score_run(r: TrainRun) -> float:
    if r.diverged or not r.val_loss or not math.isfinite(r.val_loss[-1]):
        return math.inf
    return r.val_loss[-1]
