"""One run of a held-out family: the plain PyTorch loop a user writes, with a scheduler.

Methods: ``controller`` (``ControllerScheduler`` from a checkpoint, with or without
``observe_validation`` every ``val_every`` steps), ``cosine`` (``CosineAnnealingLR`` to 0 over the
budget) and ``schedule-free`` (``schedulefree.SGDScheduleFree`` for SGD families at
``lr / (1 - momentum)``, ``AdamWScheduleFree`` for the adaptive ones, 5 % warm-up, the family's
weight decay; its ``train()`` / ``eval()`` modes switched around every evaluation). The same seed
gives every method the same initial weights, batch order and dropout draws.

Scoring: the **test** loss at the end of the budget (model in ``eval()`` mode). Every run trains its
whole budget, as a user's loop does, through a non-finite loss too (a controller's raise guard may
roll its weights back); a run whose last training loss or test loss is not finite is ``diverged``;
an exception anywhere is recorded (``crashed``) with its message, never raised. Both get the penalty
score ``PENALTY x`` the test loss of the untrained model on that seed (a large finite number on the
family's own scale); a finite test loss above the penalty is capped at it.
"""

from __future__ import annotations

import math
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader

from trajlib.deploy import GUARD
from trajlib.deploy._lookahead import SEARCH_BUDGET, SEARCH_WITHIN, WHEN, check_search
from trajlib.errors import ConfigError
from trajlib.evaluate.suite._families import Family


class LookaheadSetting(NamedTuple):
    """How controller runs use deploy-time lookahead (:class:`trajlib.deploy.Lookahead`)."""

    top_k: int
    horizon: int
    cooldown: int = 0
    when: str = "always"  # the suite's runs before "auto" existed looked at every decision
    search: tuple[float, ...] = ()  # the scale search's LR factors (none: no search)
    search_horizon: int = 0  # 0: the horizon

    @classmethod
    def of(cls, value: LookaheadSetting | tuple[Any, ...] | None) -> LookaheadSetting | None:
        """``value`` as a setting: ``(top_k, horizon[, cooldown[, when]])`` or None."""
        if value is None:
            return None
        try:
            s = cls(*value)
            ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (*s[:3], s[5]))
            s = s._replace(search=check_search(s.search))
        except (TypeError, ConfigError):
            ok = False
        if not ok or s.top_k < 1 or s.horizon < 1 or s.cooldown < 0 or s.when not in WHEN:
            raise ConfigError(
                "lookahead",
                "(top_k >= 1, horizon >= 1[, cooldown >= 0[, when[, search factors[, "
                "search_horizon >= 0]]]])",
                value,
            )
        return s

    def tag(self) -> str:
        """The cache-key suffix: ``la<k>x<h>`` (the form before cool-down and ``when``), then
        ``c<cooldown>`` and ``-unsure`` where they are set, and
        ``-s<factors>h<horizon>w<n>b<share>`` for a scale search (``n``: the decision points it
        may wait for a whole horizon in the epoch; ``share``: its compute budget)."""
        c = f"c{self.cooldown}" if self.cooldown else ""
        w = "" if self.when == "always" else f"-{self.when}"
        f = "_".join(f"{v:g}" for v in self.search)
        h = self.search_horizon or self.horizon
        # w: how many decision points it may wait; b: its compute budget (share of the run)
        sr = f"-s{f}h{h}w{SEARCH_WITHIN}b{SEARCH_BUDGET:g}" if self.search else ""
        return f"la{self.top_k}x{self.horizon}{c}{w}{sr}"


__all__ = ["METHODS", "PENALTY", "run_one"]

METHODS = ("controller", "cosine", "schedule-free")
PENALTY = 10.0
_SF_WARMUP = 0.05


def _evaluate(family: Family, model: torch.nn.Module, loader: DataLoader[Any]) -> float:
    was = model.training
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for batch in loader:
            b = len(batch[-1])
            total += float(family.loss(model, batch)) * b
            n += b
    model.train(was)
    return total / max(n, 1)


def _schedule_free(family: Family, params: Any, lr: float) -> torch.optim.Optimizer:
    import schedulefree

    warmup = max(1, round(_SF_WARMUP * family.budget))
    if family.kind == "sgd":
        mom = family.momentum or 0.9
        opt: torch.optim.Optimizer = schedulefree.SGDScheduleFree(
            params,
            lr=lr / (1.0 - family.momentum),
            momentum=mom,
            weight_decay=family.weight_decay,
            warmup_steps=warmup,
        )
        return opt
    return schedulefree.AdamWScheduleFree(
        params, lr=lr, weight_decay=family.weight_decay, warmup_steps=warmup
    )


def _loaders(family: Family, seed: int) -> tuple[DataLoader[Any], ...]:
    splits = family.data()
    g = torch.Generator().manual_seed(10_000 + seed)
    kw: dict[str, Any] = {"collate_fn": family.collate} if family.collate else {}
    train = DataLoader(
        splits.train, batch_size=family.batch_size, shuffle=True, drop_last=True, generator=g, **kw
    )
    val = DataLoader(splits.val, batch_size=512, **kw)
    test = DataLoader(splits.test, batch_size=512, **kw)
    return train, val, test


def run_one(
    family: Family,
    method: str,
    start: float,
    seed: int,
    *,
    with_val: bool = False,
    checkpoint: str | Path | None = None,
    budget: int | None = None,
    lookahead: LookaheadSetting | tuple[Any, ...] | None = None,
    guard: float | None = GUARD,
    rollback: bool = True,
) -> dict[str, Any]:
    """Train ``family`` once from ``start`` x its default LR; returns one result row (see
    ``RESULT_COLUMNS`` in the runner). Never raises for a failure of the run itself."""
    lookahead = LookaheadSetting.of(lookahead)
    if method not in METHODS:
        raise ConfigError("method", f"one of {METHODS}", method)
    if method == "controller" and checkpoint is None:
        raise ConfigError("checkpoint", "a checkpoint directory for method 'controller'", None)
    steps = int(budget or family.budget)
    val_every = max(1, round(family.val_every * steps / family.budget))  # same share of the run
    row = _empty_row()
    t0 = time.perf_counter()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.manual_seed(seed)
            model = family.model()
            train, val, test = _loaders(family, seed)
            row["init_test_loss"] = _evaluate(family, model, test)
            opt = _optimizer(family, method, model, family.default_lr * start)
            sf = method == "schedule-free"

            def train_step(batch: Any) -> torch.Tensor:  # one optimizer step (the lookahead's unit)
                loss = family.loss(model, batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
                return loss

            sched = _scheduler(
                method, opt, model, steps, checkpoint, lookahead, train_step, (guard, rollback)
            )
            model.train()
            step, loss_v = _train(
                family, model, train_step, sched, train, val if with_val else None, steps,
                val_every, row,
            )  # fmt: skip
            row["steps_done"] = step
            row["final_train_loss"] = float(loss_v)
            row["final_lr"] = float(opt.param_groups[0]["lr"])
            if sf:
                opt.eval()  # type: ignore[attr-defined]
            if row["status"] == "ok":
                row["final_val_loss"] = _evaluate(family, model, val)
                row["test_loss"] = _evaluate(family, model, test)
                if not math.isfinite(row["test_loss"]):
                    row["status"] = "diverged"
            if method == "controller":
                row.update(_controller_events(sched))
            msgs = [str(w.message) for w in caught if "ControllerScheduler" in str(w.message)]
            row["warning"] = msgs[0][:300] if msgs else ""
    except Exception as e:  # recorded, never raised: a crash is a result
        row["status"] = "crashed"
        row["error"] = f"{type(e).__name__}: {e}"[:500]
        row["traceback"] = traceback.format_exc()[-2000:]
    finally:
        torch.set_num_threads(before)
    row.pop("traceback", None)
    row["wall_s"] = time.perf_counter() - t0
    row["score"] = _score(row)
    return row


def _empty_row() -> dict[str, Any]:
    """A result row before the run: what a run that fails at once reports."""
    return {
        "status": "ok",
        "error": "",
        "warning": "",
        "init_test_loss": math.nan,
        "final_train_loss": math.nan,
        "final_val_loss": math.nan,
        "test_loss": math.nan,
        "steps_done": 0,
        "final_lr": math.nan,
        "decisions": 0,
        "held": 0,
        "controller_errors": 0,
        "compute_ratio": 1.0,
        "guard_reverts": 0,
        "guard_rescues": 0,
        "guard_relapses": 0,
        "wall_s": 0.0,
    }


def _score(row: dict[str, Any]) -> float:
    """The test loss, capped at the penalty; the penalty for a run that diverged or crashed."""
    penalty = PENALTY * row["init_test_loss"]
    if row["status"] != "ok":
        return float(penalty)
    return float(min(row["test_loss"], penalty) if math.isfinite(penalty) else row["test_loss"])


def _train(
    family: Family,
    model: torch.nn.Module,
    train_step: Any,
    sched: Any,
    train: Any,
    val: Any,
    steps: int,
    val_every: int,
    row: dict[str, Any],
) -> tuple[int, float]:
    """Train ``steps`` steps over epochs of ``train`` (``sched`` None: schedule-free; a
    controller scheduler gets the losses, and with ``val`` the validation loss every
    ``val_every`` steps). Like a user's loop it goes on through a non-finite loss (a controller's
    guard may roll the weights back); ``row["status"]`` becomes ``"diverged"`` when the last
    step's loss is not finite. Returns the steps done and that loss."""
    controller = hasattr(sched, "observe")
    step, loss_v = 0, math.nan
    while step < steps:
        for batch in sched.batches(train) if controller else train:
            loss = train_step(batch)
            if controller:
                sched.observe(loss)
                if val is not None and (step + 1) % val_every == 0:
                    sched.observe_validation(_evaluate(family, model, val))
            if sched is not None:
                sched.step()
            step += 1
            if step >= steps:
                break
    loss_v = float(loss.detach())
    if not math.isfinite(loss_v):
        row["status"] = "diverged"
    return step, loss_v


def _optimizer(
    family: Family, method: str, model: torch.nn.Module, lr: float
) -> torch.optim.Optimizer:
    """The family's optimizer at ``lr`` (schedule-free: its schedule-free counterpart, in
    ``train()`` mode)."""
    if method != "schedule-free":
        return family.make_optimizer(model.parameters(), lr)
    opt = _schedule_free(family, model.parameters(), lr)
    opt.train()  # type: ignore[attr-defined]
    return opt


def _scheduler(
    method: str,
    opt: torch.optim.Optimizer,
    model: torch.nn.Module,
    steps: int,
    checkpoint: str | Path | None,
    lookahead: LookaheadSetting | None,
    train_step: Any,
    guard: tuple[float | None, bool],
) -> Any:
    """None (schedule-free), cosine to 0 over ``steps``, or the controller (with lookahead)."""
    if method == "schedule-free":
        return None
    if method == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    from trajlib.deploy import ControllerScheduler, Lookahead

    la = None
    if lookahead is not None:
        la = Lookahead(
            train_step,
            model,
            top_k=lookahead.top_k,
            horizon=lookahead.horizon,
            cooldown=lookahead.cooldown,
            when=lookahead.when,
            search=lookahead.search,
            search_horizon=lookahead.search_horizon or None,
        )
    return ControllerScheduler(
        opt,
        checkpoint,  # type: ignore[arg-type]
        total_steps=steps,
        lookahead=la,
        guard=guard[0],
        rollback=guard[1],
        model=model,
    )


def _controller_events(sched: Any) -> dict[str, Any]:
    """The result columns a controller run adds from its scheduler's events."""
    ev = sched.events
    return {
        "decisions": int(ev["decisions"]),
        "held": int(ev["held_nonfinite"]),
        "controller_errors": int(ev["errors"]),
        "compute_ratio": float(sched.compute_ratio),
        "guard_reverts": int(ev["guard_reverts"]),
        "guard_rescues": int(ev["guard_rescues"]),
        "guard_relapses": int(ev["guard_relapses"]),
    }
