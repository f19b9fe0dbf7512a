"""Deploy-time lookahead: try the controller's best candidates for a few steps, keep the best.

At a decision point of a :class:`~trajlib.deploy.ControllerScheduler` built with
``lookahead=Lookahead(train_step, model, ...)``, and with the loop iterating
``scheduler.batches(loader)``, the lookahead

1. ranks the actions with the controller (its predicted advantage over "keep") and takes the
   ``top_k`` best, plus "keep" always (actions with the same effect on this optimizer, e.g. a
   momentum move on an optimizer without momentum, are tried once);
2. snapshots the run (model parameters and buffers, optimizer state and hyperparameters,
   GradScaler, global RNGs: :mod:`trajlib._snapshot`, the Recorder's machinery) and runs each
   candidate for ``horizon`` steps (then ``cooldown`` steps with the LR annealed linearly to 0) on
   the *same* next batches, restoring the snapshot exactly after each;
3. scores each branch by its measured loss — ``validate()`` at the end of the branch when given,
   else the mean training loss over the last quarter of the horizon (the last half of the
   cool-down when there is one) — and applies the lowest; a candidate replaces the controller's
   own first choice only when its score is lower by more than ``margin`` (relative), so a tie
   keeps the controller's decision;
4. yields the buffered batches to the loop, which trains on them under the chosen action: the
   run is bitwise the run in which the controller had chosen that action (on the CPU).

Scale search (``search=(4, 16, 64)``, off by default): at the run's first decision point (the first
of the first ``SEARCH_WITHIN`` whose next ``search_horizon + cooldown`` batches are all in the
current pass over the loader; not after the guard sent the start back) the lookahead does not ask
the controller which move to try but how far off the start LR is: it runs the current LR and each
factor of it (clamped to the checkpoint's LR range, raises to the guard's ceiling) for
``search_horizon`` steps (+ ``cooldown``) on the same batches and applies the best (a raise goes on
the guard's trial like any other). "Best" is measured on the second half of each branch's losses,
paired with the current LR's on the same batches: a factor moves the LR only when its losses there
are lower with a paired t statistic above ``SEARCH_T`` (and by more than ``margin``), so a loss that
sits on a plateau (both at chance level, say) does not move it on one lucky batch
(:func:`search_choice`; the training losses, not ``validate``). A controller moves the LR by its
action sizes (x4 at most) one decision at a time; a start that is 10x or 50x too low costs many
decisions, and when the loop's LR sits far outside what the controller saw in training its features
may not show it (on the held-out suite, loops whose tuned LR is 10x their default where the
controller kept every decision). One search answers the coarse question by measurement; the
controller then steers from there. Its branch steps count in ``compute_ratio`` like the others.

Why the measured loss and not the controller's prediction at the end of each branch: the
controller predicts each action's advantage *over keep from one state*; its values from two
different states (the ends of two branches) are not on a common scale, while the branches' losses
are (same batches, same dropout draws: common random numbers). The controller's knowledge enters
through the candidates it ranks first and the tie rule. The known limit is the short-horizon bias
of a greedy look: over a few steps a lower LR usually lowers the loss first; ``cooldown`` (scoring
each branch after annealing its LR) counters it at a cost.

Where to look: ``when="always"`` looks at every decision point. ``when="unsure"`` (a checkpoint
with a do-no-harm rule) looks only where the rule is unsure: the ensemble's best move has a
positive mean advantage over keep but its lower bound is not above the rule's margin, so the rule
would keep. There the candidates are the ``top_k`` best moves (never one the rule never takes)
and keep, and keep (the rule's choice) stays unless a move measures better by more than
``margin``. Where the rule acts, or where even the mean prefers keep, the plain decision is taken
at no cost (``events["lookahead_sure"]``). The measurement thus decides exactly the cases the
learned model cannot, and the compute goes only there. ``when="auto"`` (the default) is
``"unsure"`` for a checkpoint with a rule and ``"always"`` for one without.

Cost: every branch step is a training step; ``scheduler.events["lookahead_steps"]`` counts them
and ``scheduler.compute_ratio`` is ``1 + lookahead steps / main steps``. Any exception inside the
lookahead restores the snapshot, falls back to the plain decision, is counted in
``events["lookahead_errors"]`` and warned about once: it never raises into the training loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trajlib._snapshot import branch_loss, replay_batches, restore_snapshot, take_snapshot
from trajlib.errors import ConfigError
from trajlib.optim_hp import MOVABLE, hp_get

__all__ = ["Lookahead", "LookaheadDecision"]

#: ``scheduler.events`` keys the lookahead adds.
EVENTS = (
    "lookahead_decisions",
    "lookahead_steps",
    "lookahead_errors",
    "lookahead_skipped",
    "lookahead_sure",
    "lookahead_searches",
)
#: Where the lookahead looks (module docstring).
WHEN = ("auto", "always", "unsure")
#: the scale search runs at the first decision point with its whole horizon of batches ahead (a
#: loader's epoch may end sooner), at the latest at this decision point
SEARCH_WITHIN = 4
#: the most the scale search may cost by default, as a share of the run's ``total_steps``
SEARCH_BUDGET = 0.3
#: the scale search moves the LR only when the paired differences of its tail losses against the
#: current LR's (same batches) have a t statistic above this (about a one-sided 97.5 % level)
SEARCH_T = 2.0


@dataclass(frozen=True)
class LookaheadDecision:
    """One decision the lookahead took: the candidates tried and their scores (lower is better;
    ``inf`` for a branch whose loss was not finite), the controller's choice and the applied one."""

    step: int
    candidates: tuple[int, ...]
    scores: tuple[float, ...]
    controller_choice: int
    chosen: int
    horizon: int
    #: a scale search (``Lookahead(search=...)``): the LR factors tried (``scores`` are theirs,
    #: ``candidates`` is empty, ``chosen`` is keep) and the one applied (after clamping)
    lr_factors: tuple[float, ...] = ()
    factor: float = 1.0


def check_search(search: Any) -> tuple[float, ...]:
    """``search`` as a tuple of LR factors (finite, > 0, not 1); ConfigError otherwise."""
    try:
        out = tuple(search)
        ok = (
            all(
                isinstance(f, int | float)
                and not isinstance(f, bool)
                and math.isfinite(f)
                and f > 0
                for f in out
            )
            and 1 not in out
        )
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError("search", "a sequence of LR factors > 0 other than 1", search)
    return tuple(float(f) for f in out)


def _positive_int(field: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < minimum:
        raise ConfigError(field, f"an integer >= {minimum}", v)
    return int(v)


class Lookahead:
    """Opt-in lookahead for :class:`~trajlib.deploy.ControllerScheduler` (module docstring).

    Args:
        train_step: ``train_step(batch) -> loss``: one whole optimizer step of your loop
            (``zero_grad``, forward, backward, ``optimizer.step()``, and the GradScaler's
            ``update()`` if any) — without ``scheduler.observe`` / ``scheduler.step()``.
        model: the model ``train_step`` trains (what the snapshot copies).
        top_k: how many of the controller's best-ranked actions to try ("keep" is added).
        horizon: steps each candidate runs.
        cooldown: steps after the horizon with the LR annealed linearly to 0 (0: none).
        validate: ``validate() -> loss`` (or ``(loss, accuracy)``) scored at each branch's end
            instead of the training loss.
        scaler: the loop's ``torch.amp.GradScaler`` (snapshotted with the model).
        margin: relative loss gain a candidate needs over the controller's first choice to
            replace it.
        when: ``"always"`` (every decision point), ``"unsure"`` (only where the checkpoint's
            do-no-harm rule would keep although the best move's mean advantage is positive) or
            ``"auto"``: ``"unsure"`` for a checkpoint with a rule, else ``"always"``.
        search: LR factors tried against the current LR at the run's first decision point (the
            scale search, module docstring); empty: none.
        search_horizon: steps each factor of the search runs (default: ``horizon``).
        search_budget: the most the search may cost, as a share of ``total_steps`` (all its
            branches together): a short run gets shorter branches (none under 2 steps: then no
            search).
    """

    def __init__(
        self,
        train_step: Callable[[Any], Any],
        model: torch.nn.Module,
        *,
        top_k: int = 2,
        horizon: int = 20,
        cooldown: int = 0,
        validate: Callable[[], Any] | None = None,
        scaler: Any | None = None,
        margin: float = 0.0,
        when: str = "auto",
        search: Sequence[float] = (),
        search_horizon: int | None = None,
        search_budget: float = SEARCH_BUDGET,
    ) -> None:
        if not callable(train_step):
            raise ConfigError("train_step", "a callable train_step(batch) -> loss", train_step)
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(
                "model", "the torch.nn.Module train_step trains", type(model).__name__
            )
        if validate is not None and not callable(validate):
            raise ConfigError("validate", "a callable validate() -> loss, or None", validate)
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin < 1:
            raise ConfigError("margin", "a number in [0, 1)", margin)
        if when not in WHEN:
            raise ConfigError("when", f"one of {WHEN}", when)
        self.when = when
        self.train_step, self.model, self.validate, self.scaler = (
            train_step,
            model,
            validate,
            scaler,
        )
        self.top_k = _positive_int("top_k", top_k)
        self.horizon = _positive_int("horizon", horizon)
        self.cooldown = _positive_int("cooldown", cooldown, minimum=0)
        self.margin = float(margin)
        self.search = check_search(search)
        if (
            isinstance(search_budget, bool)
            or not isinstance(search_budget, int | float)
            or not 0 < search_budget <= 1
        ):
            raise ConfigError("search_budget", "a share of the run in (0, 1]", search_budget)
        self.search_budget = float(search_budget)
        self.search_horizon = (
            self.horizon
            if search_horizon is None
            else _positive_int("search_horizon", search_horizon)
        )
        #: every decision the lookahead took (:class:`LookaheadDecision`)
        self.decisions: list[LookaheadDecision] = []
        self._sched: Any = None
        self._due: int | None = None
        self._feeding = False
        self._bypass = False

    # ----------------------------------------------------------------- the scheduler's side
    def attach(self, scheduler: Any) -> None:
        """Called by the scheduler it is given to (one scheduler per lookahead)."""
        if self._sched is not None and self._sched is not scheduler:
            raise ConfigError("lookahead", "a Lookahead not given to another scheduler", self)
        if scheduler.layerwise:
            raise ConfigError(
                "lookahead",
                "None with layerwise=True (lookahead decides for the whole model)",
                self,
            )
        if self.when == "auto":
            self.when = "always" if scheduler.loaded.decision_rule is None else "unsure"
        if self.when == "unsure" and scheduler.loaded.decision_rule is None:
            raise ConfigError(
                "lookahead",
                'when="always" for a checkpoint without a do-no-harm rule (when="unsure" '
                "looks where the rule is unsure)",
                self.when,
            )
        self._sched = scheduler
        for k in EVENTS:
            scheduler.events.setdefault(k, 0)

    def defer(self, step: int) -> bool:
        """At a decision point: True when the lookahead will take it (the loop iterates
        ``scheduler.batches``), False for the plain decision now."""
        if self._bypass:
            return False
        if not self._feeding:
            self._sched.events["lookahead_skipped"] += 1
            self._sched._warn_once(
                "lookahead_feed",
                "ControllerScheduler: lookahead is on but the loop does not iterate "
                "scheduler.batches(loader); deciding without it (events['lookahead_skipped'])",
            )
            return False
        self._due = step
        return True

    def batches(self, source: Iterable[Any]) -> Iterator[Any]:
        """``scheduler.batches(source)``: the batches, with each decision's lookahead run on the
        ones that follow it. A decision due when ``source`` ends is taken without lookahead."""
        self._feeding = True
        try:
            yield from replay_batches(source, self._wanted, self._run)
        finally:
            self._feeding = False
            if self._due is not None:
                self._run([])

    # ----------------------------------------------------------------- a decision
    def _wanted(self) -> int:
        if self._due is None:
            return 0
        return self._search_len() if self._search_due(self._due) else self.horizon + self.cooldown

    def _search_len(self) -> int:
        """Steps each branch of the search runs (horizon + cool-down), within ``search_budget``."""
        per = int(self.search_budget * self._sched.total_steps) // (len(self.search) + 1)
        return min(self.search_horizon + self.cooldown, per)

    def _search_due(self, step: int) -> bool:
        """The scale search is pending at decision ``step``: asked for, not done, within the
        first ``SEARCH_WITHIN`` decision points, and the start was not rescued by the guard."""
        s = self._sched
        return (
            bool(self.search)
            and not s.events["lookahead_searches"]  # in state_dict(): not again on resume
            and s.events["guard_rescues"] == 0
            and step <= SEARCH_WITHIN * s.every
        )

    def _run(self, buffer: list[Any]) -> None:
        """Take the due decision: with the lookahead on ``buffer``, else (nothing to look at, or
        an error inside it) the plain decision. Never raises."""
        step, self._due = self._due, None
        if step is None:
            return
        s = self._sched
        done = False
        try:
            done = self._decide(step, buffer)
        except Exception as exc:  # noqa: BLE001 - never into the user's loop
            s.events["lookahead_errors"] += 1
            s._warn_once(
                "lookahead_error",
                f"ControllerScheduler: lookahead failed ({type(exc).__name__}: {exc}); the run "
                "was restored and the plain decision taken (events['lookahead_errors'])",
            )
        try:
            if not done:
                self._bypass = True
                try:
                    s._decide(step)
                finally:
                    self._bypass = False
            self._refresh_lr()
        except Exception:  # noqa: BLE001
            s._count_error()

    def _decide(self, step: int, buffer: list[Any]) -> bool:
        s = self._sched
        s._flush()
        if len(s.units) != 1:
            return False
        u = s.units[0]
        if s._guard(u, step):
            s._arm(u)  # the stall check's raise keeps its copy
            return True  # the raise guard undid the last raise: that is this decision
        x = u.features.values()
        if s._neg_loss is not None or s._bad_features(x).any():
            return False  # the plain path holds and says why
        if self._search_due(step):
            # the whole search horizon ahead, or the last chance (a loader's epoch that ends
            # sooner would cut the branches short: the search waits for the next decision point)
            full = len(buffer) >= min(self._search_len(), s.total_steps - step)
            if full or step + s.every > SEARCH_WITHIN * s.every:
                s.events["lookahead_searches"] = 1
                return self._search(step, x, buffer)
        keep = s.actions.keep_index
        unsure = self.when == "unsure"
        if unsure:
            values, spread, state = s.loaded.controller.decide_spread(x, u.ctrl_state)
        else:
            values, state = s.loaded.controller.decide_values(x, u.ctrl_state)
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.shape[0] != len(s.actions) or not np.isfinite(v).all():
            return False
        if isinstance(state, np.ndarray) and not np.isfinite(state).all():
            return False
        order = [int(a) for a in np.argsort(-v, kind="stable")]
        first, moves = order[0], order
        if unsure:
            sd = np.asarray(spread, dtype=np.float64).reshape(-1)
            if sd.shape != v.shape or not np.isfinite(sd).all():
                return False
            ruled, _ = s._rule.choose(v, sd, keep)
            zv = np.broadcast_to(np.asarray(s._rule.z_vector, dtype=np.float64), v.shape)
            moves = [a for a in order if a != keep and np.isfinite(zv[a])]  # never: not tried
            if ruled != keep or not moves or v[moves[0]] <= v[keep]:
                s.events["lookahead_sure"] += 1
                return False  # the rule is sure (it acts, or even the mean keeps): plain path
            first = keep  # the rule's choice: a move must measure better to replace it
        H = min(self.horizon, len(buffer), s.total_steps - step)
        if H < 1:
            return False
        cooldown = min(self.cooldown, len(buffer) - H)
        candidates = moves[: self.top_k]
        if keep not in candidates:
            candidates.append(keep)
        scores, _ = self._branches(
            step, candidates, lambda a: s._apply_action(0, u, a, step), buffer, H, cooldown
        )
        best = min(candidates, key=lambda a: (scores[a], candidates.index(a)))
        bar = scores[first] - self.margin * abs(scores[first])
        chosen = best if scores[first] == math.inf or scores[best] < bar else first
        if scores[chosen] == math.inf:
            return False  # every branch diverged: nothing learned, the plain decision
        u.ctrl_state = state
        s._apply_action(0, u, chosen, step)
        s._arm(u)
        s.events["lookahead_decisions"] += 1
        self.decisions.append(
            LookaheadDecision(
                step, tuple(candidates), tuple(scores[a] for a in candidates), first, chosen, H
            )
        )
        return True

    def _search(self, step: int, x: np.ndarray, buffer: list[Any]) -> bool:
        """The scale search at the first decision point (module docstring)."""
        s = self._sched
        u = s.units[0]
        n = min(self._search_len(), len(buffer), s.total_steps - step)  # horizon + cool-down
        H = min(self.search_horizon, n)  # the horizon first, the cool-down from what is left
        cooldown = min(self.cooldown, n - H)
        if H < 2:
            return False  # too short to compare anything: the plain decision
        _, state = s.loaded.controller.decide_values(x, u.ctrl_state)
        hp = s._bounds.get("lr")
        m0 = u.mult
        targets: dict[float, float] = {}  # factor -> multiplier (clamped; the first of equals)
        for f in (1.0, *self.search):
            m = s._cap(u, hp.clamp(m0 * f) if hp is not None else m0 * f)
            if m not in targets.values():
                targets[f] = m
        factors = list(targets)
        _, traces = self._branches(
            step, factors, lambda f: s._set_mult(u, targets[f], step), buffer, H, cooldown
        )
        scores, chosen = search_choice(traces, H, self.margin)
        if chosen is None:
            return False  # every branch diverged: the plain decision
        u.ctrl_state = state
        s.events["decisions"] += 1
        s._set_mult(u, targets[chosen], step)
        s._arm(u)
        s.events["lookahead_decisions"] += 1
        keep = s.actions.keep_index
        self.decisions.append(
            LookaheadDecision(
                step,
                (),
                tuple(scores[f] for f in factors),
                keep,
                keep,
                H,
                lr_factors=tuple(factors),
                factor=targets[chosen] / m0 if m0 > 0 else 1.0,
            )
        )
        return True

    def _branches(
        self,
        step: int,
        candidates: list[Any],
        apply: Callable[[Any], None],
        buffer: list[Any],
        H: int,
        cooldown: int,
    ) -> tuple[dict[Any, float], dict[Any, list[float] | None]]:
        """Each candidate's score and its branch's losses (None where one was not finite)."""
        s = self._sched
        u = s.units[0]
        opt = s.optimizer
        # a factor another scheduler applied to a group's LR is kept, as in the main run
        ratios = [
            float(g["lr"]) / t if t > 0 else 1.0 for g, t in zip(opt.param_groups, s._targets)
        ]
        snap = take_snapshot(self.model, opt, self.scaler)
        mine = {
            "probe": s._probe.state_dict(),
            "mult": u.mult,
            "guard": s._guard_snapshot(u),
            "decisions": s.events["decisions"],
            "n_actions": len(s.actions_taken),
            "targets": list(s._targets),
            "open": (s._loss, s._loss_n, s._val),
        }
        scores: dict[Any, float] = {}
        traces: dict[Any, list[float] | None] = {}
        seen: dict[Any, tuple[float, list[float] | None]] = {}
        try:
            for a in candidates:
                try:
                    apply(a)
                    effect = (u.mult, *(self._hps(g) for g in opt.param_groups))
                    if effect not in seen:  # else the same move on this optimizer: tried already
                        seen[effect] = self._branch(step, buffer, H, cooldown, ratios)
                    scores[a], traces[a] = seen[effect]
                finally:
                    restore_snapshot(snap, self.model, opt, self.scaler)
                    s._probe.load_state_dict(mine["probe"])
                    u.mult = mine["mult"]
                    s._guard_restore(u, mine["guard"])
                    s.events["decisions"] = mine["decisions"]
                    del s.actions_taken[mine["n_actions"] :]
                    s._targets = list(mine["targets"])
                    s._loss, s._loss_n, s._val = mine["open"]
        finally:
            s._bf_memo = (-1, 0, 1.0)
        return scores, traces

    @staticmethod
    def _hps(g: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(hp_get(g, n) for n in MOVABLE)

    def _branch(
        self, step: int, buffer: list[Any], H: int, cooldown: int, ratios: list[float]
    ) -> tuple[float, list[float] | None]:
        s = self._sched
        groups = s.optimizer.param_groups
        units = [s.units[i] for i in s._unit_of_group]
        losses: list[float] = []
        for j in range(H):
            f = s._base_factor(step + j)
            for g, r, base, u in zip(groups, ratios, s.base_lrs, units):
                _set_lr(g, r * base * f * u.mult)
            losses.append(self._step(buffer[j]))
        tail = losses[-max(H // 4, 1) :]
        cooled: list[float] = []
        if cooldown > 0:
            last = [float(g["lr"]) for g in groups]
            for j in range(cooldown):
                for g, lr in zip(groups, last):
                    _set_lr(g, lr * (1 - j / cooldown))
                cooled.append(self._step(buffer[H + j]))
            tail = cooled[-max(cooldown // 2, 1) :]
        if self.validate is not None:
            v = self.validate()
            tail = [float(v[0] if isinstance(v, tuple | list) else v)]
        score = float(np.mean(tail))
        trace = losses + cooled
        if all(math.isfinite(x) for x in trace) and math.isfinite(score):
            return score, trace
        return math.inf, None

    def _step(self, batch: Any) -> float:
        s = self._sched
        loss = self.train_step(batch)
        s._probe.take()  # the main run's probe state is restored afterwards
        s.events["lookahead_steps"] += 1
        return branch_loss(loss)

    def _refresh_lr(self) -> None:
        """The next step's LRs after the decision (the scheduler set them before it)."""
        s = self._sched
        values = s.get_lr()
        for g, lr in zip(s.optimizer.param_groups, values, strict=True):
            _set_lr(g, lr)
        s._last_lr = [float(v) for v in values]


def search_choice(
    traces: dict[float, list[float] | None], horizon: int, margin: float = 0.0
) -> tuple[dict[float, float], float | None]:
    """The scale search's scores and choice from each factor's branch losses (``1.0`` is the
    current LR; None: the branch was not finite).

    A factor's score is its mean loss over the second half of its branch (the last
    ``horizon // 2`` steps of the horizon, then the cool-down). A factor other than 1 is eligible
    when its losses there are lower than the current LR's on the same batches with a paired t
    statistic above :data:`SEARCH_T` and by more than ``margin`` (relative) on average — one lucky
    batch does not move the LR — or when the current LR's branch was not finite. The eligible
    factor with the lowest score is chosen, else 1.0; None when every branch was non-finite."""
    start = horizon - max(horizon // 2, 1)
    tails = {
        f: None if t is None else np.asarray(t[start:], dtype=np.float64) for f, t in traces.items()
    }
    scores = {f: math.inf if t is None else float(t.mean()) for f, t in tails.items()}
    keep = tails.get(1.0)
    eligible = []
    for f, t in tails.items():
        if f == 1.0 or t is None:
            continue
        if keep is None:
            eligible.append(f)
            continue
        d = keep - t  # > 0 where the factor's loss is lower
        se = float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else math.inf
        gain = float(d.mean())
        if gain > margin * abs(scores[1.0]) and (gain > SEARCH_T * se if se > 0 else gain > 0):
            eligible.append(f)
    if eligible:
        return scores, min(eligible, key=lambda f: scores[f])
    return scores, (1.0 if keep is not None else None)


def _set_lr(g: dict[str, Any], lr: float) -> None:
    if isinstance(g["lr"], torch.Tensor):
        g["lr"].fill_(lr)
    else:
        g["lr"] = lr
