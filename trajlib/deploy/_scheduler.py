"""ControllerScheduler: a learned controller as a ``torch.optim.lr_scheduler.LRScheduler``."""

from __future__ import annotations

import math
import os
import sys
import types
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler

from trajlib._snapshot import restore_weights, take_weights
from trajlib.controllers import LoadedController, load_controller
from trajlib.errors import ConfigError, FeatureSetMismatchError
from trajlib.features import OnlineFeatures, get_feature_set
from trajlib.measure import PROBE_COLUMNS, STRIDED, StepProbe, summarise
from trajlib.optim_hp import hp_get, hp_movable, hp_set, lr_group
from trajlib.space import HyperParam, base_factor

if TYPE_CHECKING:
    from trajlib.deploy._lookahead import Lookahead

__all__ = [
    "DEAD_TOL",
    "DEAD_WINDOWS",
    "GUARD",
    "GUARD_WINDOWS",
    "OVERFIT_REPORTS",
    "OVERFIT_TOL",
    "RELAPSE_START_Z",
    "RELAPSE_TOL",
    "RELAPSE_WINDOWS",
    "STALL_BACKOFF",
    "STALL_FACTOR",
    "STALL_WINDOWS",
    "ControllerScheduler",
    "STATE_VERSION",
    "guard_tag",
]

#: Version of the trajlib part of :meth:`ControllerScheduler.state_dict` (``state["trajlib"]``);
#: :meth:`~ControllerScheduler.load_state_dict` accepts this one only.
STATE_VERSION = 3
#: The raise guard's default tolerance: a raise is undone when the median training loss of the
#: decision window after it exceeds the window before it by more than this share of its magnitude.
GUARD = 0.5
#: How many decision windows after a raise the guard judges it in (then the relapse watch below
#: takes over; the copy of the weights at the raise is held until the next raise).
GUARD_WINDOWS = 2
#: After a raise passes its trial, the guard keeps watching it until the next raise: when the
#: median training loss of ``RELAPSE_WINDOWS`` decision windows in a row exceeds the best window
#: since the raise by more than ``RELAPSE_TOL`` of the larger of that best's magnitude and what
#: the run gained since the raise (a loss near its floor is not judged on noise), the run has
#: relapsed at the raised LR (a network drifting back to chance, a loss that doubles after
#: improving for a while): the raise is undone and, with rollback, the weights and optimizer state
#: go back to the raise's copy, which is kept until the next raise for that. A run whose training
#: loss is non-finite at a decision (it diverged late at the raised LR) has it undone at once.
RELAPSE_TOL = 0.25
RELAPSE_WINDOWS = 2
#: A watched raise has also relapsed when the last ``RELAPSE_WINDOWS`` windows of its watch sit
#: above the run's *first* window (its median training loss before the controller's first
#: decision), or above the window *before the raise*: each of their medians is above that
#: window's, and their mean by more than ``RELAPSE_START_Z`` standard errors of the difference.
#: After its trial the run is then worse than where it started, or than where the raise found
#: it. The tolerance above, a share of the best window's magnitude, cannot see it when the run
#: gained little before the raise and its loss floor is far from 0 (a classifier collapsed to
#: chance after an early raise: ``tcn-mnist1d`` from x10 sat at its first window's loss + 10-25
#: %, under best + 25 %; after a second raise, at its first window's loss, 0.1 above the window
#: before that raise).
RELAPSE_START_Z = 3.0
#: A cut that stalls the run is undone step by step (``events["guard_stalls"]``): while the
#: multiplier is below 1 and no decision window has set a new best (lowest) median training loss
#: for ``STALL_WINDOWS`` windows, with at least that many windows of the run left, the multiplier
#: goes back up ``STALL_FACTOR``x (at most to 1, the base schedule), on trial like any raise, and
#: later cuts stop there (the unit's floor; a failed trial lowers it again). A controller that
#: cuts a long run's LR to its floor early leaves it there, on a plateau the base schedule would
#: have trained through (2,000-step loops: `encoder-max` at 0.01x from step 525 ended 17x cosine).
#: A lift is judged against the plateau it lifted the run off (the mean of the last
#: ``STALL_WINDOWS`` windows' medians, with its standard error), and after its trial only by the
#: pooled test of ``RELAPSE_START_Z``: on a plateau near the loss floor windows differ by a
#: quarter of the loss from noise alone, which ``RELAPSE_TOL`` read as a relapse. A lift that is
#: undone anyway does not end the check: the next one waits twice as many windows (at most
#: ``2 ** STALL_BACKOFF`` times) and is not held at the ceiling the failed one set.
STALL_WINDOWS = 4
STALL_FACTOR = 4.0
STALL_BACKOFF = 3
#: A raise that leaves the run where it started is undone (``events["guard_stalls"]``): when the
#: multiplier has been above 1 for ``DEAD_WINDOWS`` decision windows, counted from the raise that
#: took it there, and the mean of the last ``STALL_WINDOWS`` windows' median training losses is
#: within ``DEAD_TOL`` (relative) of the run's first window's, the multiplier goes back to 1 (the
#: base schedule), later raises stop there, and (with rollback, one controller unit) the weights
#: and optimizer state go back to that raise's copy, kept while the multiplier stays above 1. A
#: loss at its first window's level that long after a raise is a network the raise broke or never
#: got going: `clsformer-negation` (Adam, from x10) raised to x16 by step 50 and on to x100 sat
#: at chance for 2,000 steps (1.43x cosine; with the check 0.88x). Its training loss cannot tell
#: that from an early plateau a raise is about to break (`lstm-adding` from x10, raised x8 at step
#: 25, left its plateau between steps 250 and 500), except by time: hence the long wait.
DEAD_WINDOWS = 16
DEAD_TOL = 0.05
#: A raise that overfits is undone (``events["guard_overfits"]``; only when the loop reports
#: validation): while the multiplier is above 1, the validation losses reported since the raise
#: that took it there are watched against their best (the last one reported before that raise
#: counts too). When ``OVERFIT_REPORTS`` reports in a row exceed that best by more than
#: ``OVERFIT_TOL`` (relative), each at least as high as the one before, the next decision sets the
#: multiplier back to 1 (the base schedule), later raises stop there, and (with rollback, one
#: controller unit) the weights and optimizer state go back to where the best report found them
#: (at most one copy per decision window; the best before the raise: the raise's own copy). The
#: training loss rewards a raise that fits the training set faster, also past the point where the
#: held-out loss turns: `multiout-regression` (2,000 steps, Adamax) raised to x32 by step 250 had
#: its validation loss rise from 0.0153 at step 250 to 0.0218 at step 1,750 while its training
#: loss fell all along (1.44x cosine's test loss). Overfitting is a trend, and "still rising" over
#: three reports (two rises in a row) tells it from the bumps of a run at a high LR that it comes
#: back from: `tanh-friedman1` at x32 rose 23 % and 17 % above its best, then fell to a fifth of
#: it at x64-100 (0.19x cosine; undone at the second report: 1.0x), and a noisy plateau 29 % and
#: 35 % above the best (`bnmlp-digits`, 50 steps before its end) is not a trend either. A rollback
#: of the guard starts the count again: the reports before it measured weights that are gone.
OVERFIT_TOL = 0.1
OVERFIT_REPORTS = 3

#: How many superseded raises a unit remembers (each watched again when the raise after it is
#: undone; the multiplier's ceiling bounds how many raises a run can stack anyway).
MAX_PARENTS = 8
#: The counters of ``ControllerScheduler.events``.
EVENTS = (
    "decisions",
    "held_nonfinite",
    "errors",
    "skipped_steps",
    "extra_optimizer_steps",
    "missing_loss",
    "bad_loss",
    "late_validation",
    "bad_validation",
    "validation_reports",
    "kept_by_rule",
    "guard_reverts",
    "guard_capped",
    "guard_rollbacks",
    "guard_rolled_back_steps",
    "guard_rescues",
    "guard_relapses",
    "guard_stalls",
    "guard_overfits",
)
#: What ``summary()`` calls each raise-guard counter of ``events``.
_GUARD_WORDS = {
    "guard_reverts": ("raise reverted", "raises reverted"),
    "guard_relapses": ("relapse undone", "relapses undone"),
    "guard_stalls": (
        "stall undone (a cut lifted, or a raise that went nowhere)",
        "stalls undone (a cut lifted, or raises that went nowhere)",
    ),
    "guard_overfits": ("overfitting raise undone", "overfitting raises undone"),
    "guard_rescues": ("rescue of a non-finite start", "rescues of a non-finite start"),
    "guard_rollbacks": ("weight rollback", "weight rollbacks"),
}
#: What ``summary()`` calls each counter of ``events`` that says something went wrong.
_PROBLEM_WORDS = {
    "held_nonfinite": ("decision held on non-finite input", "decisions held on non-finite input"),
    "errors": ("error caught in the decision path", "errors caught in the decision path"),
    "skipped_steps": (
        "step() call without an optimizer step",
        "step() calls without an optimizer step",
    ),
    "extra_optimizer_steps": (
        "optimizer step without a step() call",
        "optimizer steps without a step() call",
    ),
    "missing_loss": ("step without observe()", "steps without observe()"),
    "bad_loss": ("loss not a finite scalar", "losses not a finite scalar"),
    "late_validation": (
        "validation report too late for its decision",
        "validation reports too late for their decision",
    ),
    "bad_validation": ("validation value not finite", "validation values not finite"),
}


def _count(n: int, words: tuple[str, str]) -> str:
    """``n`` and the singular or plural of ``words``: "1 LR cut", "2 LR cuts"."""
    return f"{n} {words[0] if n == 1 else words[1]}"


#: Hyperparameters a ControllerScheduler can set on a torch optimizer.
SETTABLE = ("lr", "momentum", "weight_decay")
#: Bounds used when a checkpoint's action space moves a hyperparameter its hp space lacks.
_FALLBACK_BOUNDS = {
    "momentum": HyperParam("momentum", 1e-3, 0.999, "logit"),
    "weight_decay": HyperParam("weight_decay", 1e-8, 1.0, "log"),
}
_STAT_COLS = PROBE_COLUMNS[:-1]  # everything but "finite" (set from the loss too)
#: The keys of torch's own ``LRScheduler`` bookkeeping that ``state_dict`` carries.
_TORCH_KEYS = ("base_lrs", "last_epoch", "_step_count", "_last_lr")


def guard_tag(guard: float, rollback: bool = True) -> str:
    """The raise guard's settings as a tag (result caches key runs by it): ``guard<tol>w<windows>``
    (``revert...`` without rollback), ``r<tol>x<windows>g`` and ``s<z>p`` for the relapse watch,
    ``t<windows>x<factor>b<backoff>`` for the stall check, ``d<windows>x<tol>`` for the dead-run
    check, ``v<reports>x<tol>`` for the overfit check."""
    return (
        f"{'guard' if rollback else 'revert'}{guard:g}w{GUARD_WINDOWS}"
        f"r{RELAPSE_TOL:g}x{RELAPSE_WINDOWS}g"  # g: tolerance of max(|best|, gain)
        f"s{RELAPSE_START_Z:g}p"  # s: the start criterion's z; p: the pre-raise window's
        f"t{STALL_WINDOWS}x{STALL_FACTOR:g}b{STALL_BACKOFF}"  # t: the stall check, b: retries
        f"d{DEAD_WINDOWS}x{DEAD_TOL:g}"  # d: the dead-run check
        f"v{OVERFIT_REPORTS}x{OVERFIT_TOL:g}"  # v: the overfit check
    )


def _check_arguments(optimizer: Any, total_steps: Any, every: Any, guard: Any) -> None:
    """Misuse fails up front, with one line naming the argument."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(
            "optimizer",
            "a torch.optim.Optimizer",
            type(optimizer).__name__,
            "pass the optimizer itself (for a wrapped one, its .optimizer)",
        )
    if (
        isinstance(total_steps, bool)
        or not isinstance(total_steps, int | np.integer)
        or total_steps <= 0
    ):
        raise ConfigError("total_steps", "a positive integer (the budget in steps)", total_steps)
    if every is not None and (
        isinstance(every, bool) or not isinstance(every, int | np.integer) or every <= 0
    ):
        raise ConfigError("every", "a positive integer (steps between decisions)", every)
    if guard is not None and (
        isinstance(guard, bool) or not isinstance(guard, int | float) or not guard > 0
    ):
        raise ConfigError("guard", "None or a tolerance > 0 (e.g. 0.5)", guard)


def _load_checked(controller: str | Path | LoadedController) -> tuple[LoadedController, Any]:
    """The controller, loaded, and its feature set (which must be this trajlib's)."""
    loaded = controller if isinstance(controller, LoadedController) else load_controller(controller)
    fs = get_feature_set(loaded.feature_set_name)
    if fs.hash != loaded.feature_set_hash:
        raise FeatureSetMismatchError(
            f"checkpoint was trained on feature set {fs.name!r} hash "
            f"{loaded.feature_set_hash}, this trajlib computes hash {fs.hash}; refit the "
            "controller or install the matching trajlib"
        )
    return loaded, fs


#: Frames a warning skips to reach the user's line: trajlib's own, and torch's (the
#: ``LRScheduler`` machinery and the optimizer's step hooks run between the user and trajlib).
_OWN_FRAMES = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
    os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
)


def _user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside trajlib and
    torch: the user's line that called ``step()`` / ``observe()`` / ``optimizer.step()``."""
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_OWN_FRAMES):
        frame, level = frame.f_back, level + 1
    return level


def _number(v: Any) -> float | None:
    """``float(v)``, or None for what is not a number (a string is not, even "0.5")."""
    if isinstance(v, str | bytes):
        return None
    try:
        return float(v)
    except (TypeError, ValueError, RuntimeError):
        return None


@dataclass
class _Unit:
    """What one controller instance decides for: all param groups, or one (layer-wise mode)."""

    groups: list[int] | None  # None = every param group
    features: OnlineFeatures
    mult: float
    ctrl_state: Any
    prev_norms: np.ndarray | None = None
    #: the raise guard: (multiplier before the last LR raise, median training loss of the
    #: window before it, windows left to judge, the raise's step, the standard error of that
    #: window's median); None when nothing is on trial
    probation: tuple[float, float, int, int, float] | None = None
    #: the highest multiplier the guard allows (a reverted raise's starting point)
    ceiling: float = math.inf
    #: the decision step the guard last judged (a decision the lookahead hands back to the plain
    #: path asks twice)
    guarded_at: int = -1
    #: a raise that passed its trial, watched for a relapse until the next raise: (multiplier
    #: before it, best window median since it, the window median before it, that median's
    #: standard error); None when no raise is watched
    relapse: tuple[float, float, float, float] | None = None
    #: windows in a row worse than that best by more than RELAPSE_TOL (or than the run's first
    #: window or the window before the raise, RELAPSE_START_Z)
    worse_windows: int = 0
    #: the last windows of the relapse watch (median, standard error), at most RELAPSE_WINDOWS
    recent: list[tuple[float, float]] = field(default_factory=list)
    #: earlier raises a newer one superseded, oldest first, each as a relapse watch (the tuple
    #: of ``relapse``): when the newer raise is undone, the one before it is watched again
    parents: list[tuple[float, float, float, float]] = field(default_factory=list)
    #: the lowest multiplier a cut may set (``STALL_WINDOWS``: where a stalled cut was undone)
    floor: float = 0.0
    #: the best (lowest) window median training loss of the run and the decision step it closed
    best: tuple[float, int] = (math.inf, 0)
    #: the decision step the stall check last ran (asked twice, like ``guarded_at``)
    stalled_at: int = -1
    #: the last ``STALL_WINDOWS`` windows (median, standard error): the plateau a lift is judged on
    span: list[tuple[float, float]] = field(default_factory=list)
    #: the decision step of the stall check's last lift (-1: none); whether the relapse watch is
    #: on that lift; how many lifts were undone (each doubles the wait before the next)
    lift_at: int = -1
    lift_watch: bool = False
    lift_fails: int = 0
    #: the decision step from which the multiplier has been above 1 (-1: it is not)
    raised_from: int = -1
    #: while it is: the best (lowest) validation loss since then (or the last one before) and
    #: how many reports in a row exceeded it by more than OVERFIT_TOL
    val_best: float = math.inf
    val_worse: int = 0


@dataclass(slots=True)
class _Row:
    """One closed optimizer step, buffered until the next decision (read in one host transfer)."""

    loss: torch.Tensor | float | None
    #: ([5, L] sums, present [L] | None); STRIDED for a step the feature set's ``stats_every``
    #: leaves out; None when no optimizer step ran
    stats: Any
    val_loss: float | None
    val_acc: float | None
    step: int
    base_factor: float


class ControllerScheduler(LRScheduler):
    """A learned controller as a torch LR scheduler: sets the learning rate (and momentum / weight
    decay where the controller moves them) of ``optimizer`` every ``every`` steps.

    It *is* a :class:`torch.optim.lr_scheduler.LRScheduler`: call ``step()`` once after each
    ``optimizer.step()``; ``get_last_lr()``, ``last_epoch``, ``base_lrs``, the order warning and
    ``state_dict`` are torch's own. It composes with :class:`~torch.optim.lr_scheduler.SequentialLR`
    (e.g. a ``LinearLR`` warm-up, then the controller: its clock starts at the milestone, so give
    it the remaining steps as ``total_steps``) and with
    :class:`~torch.optim.lr_scheduler.ChainedScheduler` (like torch's chainable schedulers, a
    factor another scheduler applies to a group's LR between two steps is kept).

    Give it the training loss of the step with ``observe(loss)`` and, when you validate, the
    validation loss with ``observe_validation(val_loss)`` — both *before* ``step()``. Validation is
    optional for the scheduler; a controller trained with validation features that never gets one
    holds its decisions and warns once, saying so. Gradient, weight and update statistics come from
    optimizer step hooks (:class:`~trajlib.deploy.StepProbe`), with no host synchronisation per
    step: rows are buffered and read once per decision.

    LR of param group ``g``: ``initial_lr_g * base(t / total_steps) * m``, where ``m`` is the
    controller's multiplier (clamped to the checkpoint's ``lr`` bounds, relative to the initial LR)
    and ``base`` the checkpoint's base schedule (constant in free mode, cosine / WSD in residual
    mode). Momentum (SGD/RMSprop ``momentum``, Adam-style ``betas[0]``) and ``weight_decay`` move
    only where the checkpoint's action space moves them **and** the optimizer has them switched on
    (a value > 0): momentum 0 stays 0, weight decay 0 stays 0, and an optimizer without momentum
    (Adagrad, Adadelta, Rprop, ASGD, Adafactor, ...) gets LR-only control (a momentum move acts as
    "keep"). Each group's own value moves by the same step in the hyperparameter's scale, clamped
    to the checkpoint's bounds.

    **Layer-wise mode** (``layerwise=True``): one feature stream, one multiplier and one controller
    state per param group, each reading its *own* gradient / weight / update statistics plus the
    shared loss and validation. The shipped controllers were fitted on whole-model features, so
    layer-wise use is an extrapolation unless the controller was fitted on per-layer data.

    Do no harm: a checkpoint saved with a ``decision_rule`` (an ensemble's lower bound
    ``mean - z * std`` of the best action's advantage over keep must exceed a margin) keeps the
    current values when the bound is not confidently positive; such decisions count in
    ``events["decisions"]`` and, when the plain argmax of the actions the rule may take would have
    moved, in ``events["kept_by_rule"]`` (holds for non-finite input are
    ``events["held_nonfinite"]``). A rule that never takes some moves (calibrated per move) lets
    the controller skip scoring them: ``decide_spread(..., only=...)``.

    The raise guard (on by default): every LR raise is on trial for the next ``GUARD_WINDOWS`` (2)
    decision windows. If the median training loss of such a window exceeds the median of the window
    before the raise by more than ``guard`` x its magnitude, or a loss turned non-finite, that
    window's decision is a revert: the multiplier goes back, and no later raise goes above it. With
    ``rollback`` (the default) the weights and optimizer state (and ``model``'s buffers, when given)
    go back to those of the raise too: a raise into divergence costs ``every`` steps of training,
    not the run. A raise that passed its trial is watched until the next raise (``RELAPSE_TOL``,
    ``RELAPSE_START_Z``): a relapse (clearly worse than the best window since the raise, or than
    the run's first window or the window before the raise), or a training loss still non-finite
    at a decision, undoes it and rolls back to its copy (only the LR, when the run is still below
    the window before the raise: the copy would be behind it). The copy is taken only at a raise and kept until the next raise. The start is on trial
    too: a copy of the initial parameters is kept until the first decision, and a loss that turns
    non-finite before it sends the run back to its start with the multiplier cut by the
    checkpoint's largest cut (capped there; ``events["guard_rescues"]``); so does a loss still
    non-finite at a decision after a rollback left no raise to undo (back to the restored copy,
    the run's last known good state until the next raise). A cut that stalls the run is partly
    undone (``STALL_WINDOWS``: no new best window for four windows at a multiplier below 1; x4,
    at most to 1, on trial like a raise, judged on the plateau it left; later cuts stop there;
    a lift undone is tried again after twice the wait, ``STALL_BACKOFF``). A raise that leaves
    the training loss within ``DEAD_TOL`` of its first window's level for ``DEAD_WINDOWS`` windows
    is undone: the multiplier back to 1 and capped there, the weights back to where the first
    raise above 1 found them. With validation reports, a raise whose validation loss rises for
    ``OVERFIT_REPORTS`` reports in a row more than ``OVERFIT_TOL`` above its best since the raise
    is undone the same way, back to the best report's weights. Counted in
    ``events["guard_reverts"]``, ``["guard_relapses"]``, ``["guard_rollbacks"]``,
    ``["guard_rolled_back_steps"]``, ``["guard_capped"]``, ``["guard_stalls"]`` and
    ``["guard_overfits"]``; the first revert, relapse, rescue, stall and overfit warn once.

    What the controller did in a run, in plain lines (its moves, the multiplier, what the guard
    undid, validation reports, problems): :meth:`summary`.

    Safety: a non-finite feature that the controller never saw non-finite in training, a
    non-finite controller output, or any exception in the decision path keeps the current values
    and is counted in ``events``; ``step()``, ``observe_validation()`` and the hooks never raise
    for a runtime condition. Misuse fails up front: a wrong optimizer, ``total_steps <= 0``, a
    checkpoint that moves a hyperparameter no torch optimizer has, ``observe()`` of a non-scalar
    tensor.

    Args:
        optimizer: the optimizer whose ``param_groups`` the scheduler drives.
        controller: a checkpoint folder or a :class:`~trajlib.controllers.LoadedController`.
        total_steps: the training budget in optimizer steps (the features' progress is
            ``step / total_steps``).
        every: decision interval in steps (default: the checkpoint's).
        layerwise: one decision per param group from that group's own statistics.
        lookahead: a :class:`~trajlib.deploy.Lookahead`: at each decision point, try the
            controller's top candidates for a few steps on the next batches (iterate them
            through :meth:`batches`) and apply the best (docs/deploy.md, "Lookahead").
        guard: the raise guard's tolerance (default ``GUARD`` = 0.5); None turns it off.
        rollback: a reverted raise also restores the weights and optimizer state of the raise
            (one copy of them is held while a raise is on trial; not in layer-wise mode).
        model: the model, so that a rollback restores its buffers (BatchNorm running statistics)
            too (default: the lookahead's model, if any; else parameters and optimizer state only).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        controller: str | Path | LoadedController,
        total_steps: int,
        *,
        every: int | None = None,
        layerwise: bool = False,
        lookahead: Lookahead | None = None,
        guard: float | None = GUARD,
        rollback: bool = True,
        model: torch.nn.Module | None = None,
    ) -> None:
        _check_arguments(optimizer, total_steps, every, guard)
        self.guard = None if guard is None else float(guard)
        self.rollback = bool(rollback)
        self._model = model if model is not None else getattr(lookahead, "model", None)
        self._saved: dict[str, Any] | None = None  # the weights at the raise on trial
        self._kept: dict[str, Any] | None = None  # ... at the raise that passed it (relapse)
        # ... at the raise that took the multiplier above 1, while it stays there (DEAD_WINDOWS)
        self._base_copy: dict[str, Any] | None = None
        # ... where the best validation report since then found them (OVERFIT_REPORTS)
        self._val_copy: dict[str, Any] | None = None
        self.loaded, fs = _load_checked(controller)
        self._fs = fs
        self.total_steps = int(total_steps)
        self.every = int(every or self.loaded.every)
        self.layerwise = bool(layerwise)
        self.base_schedule = (
            self.loaded.base_schedule if self.loaded.mode == "residual" else "constant"
        )
        self.actions = self.loaded.action_space
        self.space = self.loaded.hp_space
        self._check_optimizer(optimizer)
        self._read_checkpoint(fs)
        self._init_run_state()
        # the checkpoint's do-no-harm rule (None: act on the argmax, as before rules existed)
        self._rule = self.loaded.decision_rule
        self._keep = self.actions.keep_index
        # the actions the rule may take, and keep: the controller need not score the others
        self._only = (
            None if self._rule is None else self._rule.actions_read(self._keep, len(self.actions))
        )
        # torch's own set-up: initial_lr, base_lrs, last_epoch, the optimizer.step patch that
        # detects a wrong call order, and the initial step (which sets the LRs through get_lr)
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self.units: list[_Unit] = []
        n_units = len(optimizer.param_groups) if self.layerwise else 1
        for i in range(n_units):
            self.units.append(self._new_unit([i] if self.layerwise else None))
        self._unit_of_group = self._map_groups(len(optimizer.param_groups))
        # the controller's own LR of each group as last applied (a group LR that differs from it
        # at the next step carries a factor somebody else applied: kept, as chainable torch
        # schedulers keep each other's factors)
        self._targets: list[float] = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self._probe = StepProbe(optimizer, dots=self._dots, stats_every=fs.stats_every)
        self._closed = False
        self.lookahead = lookahead
        if lookahead is not None:
            lookahead.attach(self)
        super().__init__(optimizer)
        if self.guard is not None and self.rollback and n_units == 1:
            # the start is on trial until the first decision (a loss that turns non-finite
            # before it is rescued): one copy of the parameters, dropped at that decision
            self._saved = self._copy(self.units[0], 0, start=True)
        if self.total_steps <= self.every:
            self._warn_once(
                "short",
                f"ControllerScheduler: total_steps={self.total_steps} is not longer than the "
                f"controller's decision interval ({self.every} steps), so it never decides and "
                "the run follows the base schedule; total_steps counts optimizer steps (the "
                "whole run's, not epochs)",
                UserWarning,
            )

    # ----------------------------------------------------------------- construction helpers
    def _init_run_state(self) -> None:
        """The run's counters and buffers: events, the guard's loss window, the open step, the
        rows buffered until the next decision."""
        self.events = dict.fromkeys(EVENTS, 0)
        # the training losses since the last decision (the raise guard's window)
        self._window: list[float] = []
        self._window_bad = False
        self._last_loss_bad = False  # the last training loss observed was not finite
        self._zero_loss_at: int | None = None  # the last step whose training loss was exactly 0
        self._skipped_before = 0  # events["skipped_steps"] at the last decision point
        # the first negative training loss (step, value): the loss features assume a loss >= 0
        self._neg_loss: tuple[int, float] | None = None
        self._window_stat: tuple[int, float | None, bool] = (-1, None, False)
        self._window_se = math.nan  # the standard error of that window's median
        # the first window with a finite median: (median, its standard error); the relapse watch
        # judges a raise against it too (RELAPSE_START_Z)
        self._start_window: tuple[float, float] | None = None
        self.actions_taken: list[tuple[int, int, int]] = []  # (step, unit, action index)
        self._loss: torch.Tensor | float | None = None
        self._loss_n = 0
        self._val: tuple[float | None, float | None] | None = None
        self._last_val = math.inf  # the last finite validation loss reported
        self._bf_memo: tuple[int, int, float] = (-1, 0, 1.0)
        self._rows: list[_Row] = []
        self._rows_layout = -1
        self._layer_groups: list[int] = []
        self._warned: set[str] = set()

    def _read_checkpoint(self, fs: Any) -> None:
        """What the scheduler derives from the checkpoint once: each move's bounds, the features
        allowed to be NaN, whether the probe needs dot products, the initial multiplier."""
        self._bounds: dict[str, HyperParam | None] = {
            n: (self.space[n] if n in self.space else _FALLBACK_BOUNDS.get(n))
            for n in self.actions.hyperparameters
        }
        self._moves = [
            [(n, float(d), self._bounds[n]) for n, d in a.moves.items()]
            for a in self.actions.actions
        ]
        nan_frac = self.loaded.feature_nan_fraction
        self._nan_ok = np.array(
            [nan_frac.get(n, 1.0) > 0 for n in self.loaded.feature_names], dtype=bool
        )
        self._nan_ok_list = self._nan_ok.tolist()
        self._none_bad = np.zeros(len(self._nan_ok_list), dtype=bool)
        self._none_bad.flags.writeable = False
        cols = {getattr(p, "col", None) for f in fs.features for p in f.requires()}
        self._dots = bool(cols & {"grad_cos", "update_cos"})
        lr_bounds = self._bounds.get("lr")
        self._mult0 = lr_bounds.clamp(1.0) if lr_bounds is not None else 1.0

    def _check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        path = getattr(self.loaded, "path", None)
        src = str(path) if path is not None and str(path) not in ("", ".") else "the checkpoint"
        for name in self.actions.hyperparameters:
            if name not in SETTABLE:
                raise ConfigError(
                    "controller",
                    f"a checkpoint whose actions move only {SETTABLE}",
                    f"{src} moves {name!r}",
                    "ControllerScheduler cannot set this hyperparameter on a torch optimizer",
                )
            if name == "lr":
                continue
            bound = self.space[name] if name in self.space else None
            vals = [hp_get(g, name) or 0.0 for g in optimizer.param_groups if hp_movable(g, name)]
            out = [v for v in vals if bound is not None and not bound.low <= v <= bound.high]
            if out and bound is not None:
                warnings.warn(
                    f"ControllerScheduler: {name} {out[0]} is outside the checkpoint's bounds "
                    f"[{bound.low}, {bound.high}]; the controller's first move clamps it",
                    UserWarning,
                    stacklevel=3,
                )

    def _new_unit(self, groups: list[int] | None) -> _Unit:
        return _Unit(
            groups=groups,
            features=OnlineFeatures(self._fs.name, budget=self.total_steps),
            mult=self._mult0,
            ctrl_state=self.loaded.controller.initial_state(),
        )

    def _map_groups(self, n_groups: int) -> list[int]:
        if not self.layerwise:
            return [0] * n_groups
        return [u.groups[0] for u in self.units if u.groups is not None]

    def _sync_groups(self) -> None:
        """Adopt param groups added with ``optimizer.add_param_group`` after construction."""
        groups = self.optimizer.param_groups
        # the raise guard's copies take the new parameters as they are now, so a rollback puts
        # them back too instead of leaving them diverged next to restored weights
        added = [p for g in groups[len(self.base_lrs) :] for p in g["params"]]
        copies = {id(c): c for c in self._copies() if c is not None}
        for c in copies.values():
            c["weights"]["params"].extend((p, p.detach().clone()) for p in added)
        for g in groups[len(self.base_lrs) :]:
            g.setdefault("initial_lr", g["lr"])
            self.base_lrs.append(float(g["initial_lr"]))
            self._targets.append(float(g["initial_lr"]))
            if self.layerwise:
                self.units.append(self._new_unit([len(self.units)]))
        self._unit_of_group = self._map_groups(len(groups))

    # ----------------------------------------------------------------- torch's LRScheduler
    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Each group's LR for the next step: ``initial_lr * base(t / total_steps) * m``, times
        whatever factor another scheduler (or you) applied to the group since the last step."""
        targets = self._lr_targets()
        out = []
        for g, new, prev in zip(self.optimizer.param_groups, targets, self._targets):
            cur = g["lr"]
            if isinstance(cur, torch.Tensor) or prev <= 0.0 or cur == prev:
                out.append(new)
            else:
                out.append(float(cur) / prev * new)
        self._targets = targets
        return out

    def _get_closed_form_lr(self) -> list[float]:
        """The controller's LRs at ``last_epoch`` alone (torch calls it on a restart at an
        explicit epoch, e.g. ``SequentialLR`` handing over at its milestone)."""
        self._targets = self._lr_targets()
        return list(self._targets)

    def _update_lr(self, epoch: int | None = None) -> None:
        if len(self.optimizer.param_groups) != len(self.base_lrs):
            self._sync_groups()
        if epoch is not None:
            # a restart (SequentialLR's milestone): what was observed so far belongs to steps
            # another scheduler ran; the controller's clock and rows start here
            self._loss, self._loss_n, self._val = None, 0, None
            self._probe.take()
            self._probe.next_step = epoch  # the stride counts the controller's own steps
            self._rows = []
        groups = self.optimizer.param_groups
        tensor_lr = False
        for g in groups:  # (a loop, not any() over a generator: this runs every step)
            if isinstance(g["lr"], torch.Tensor):
                tensor_lr = True
                break
        if epoch is not None or tensor_lr:
            super()._update_lr(epoch)
            return
        # the usual step with float LRs: what torch's _update_lr does (next epoch, get_lr, write
        # the groups, remember the last LRs) without its per-group generic helpers — it runs
        # every optimizer step of the user's training
        self.last_epoch += 1
        values = self.get_lr()
        for g, lr in zip(groups, values, strict=True):
            g["lr"] = lr
        self._last_lr = list(values)

    def _lr_targets(self) -> list[float]:
        f = self._base_factor(max(self.last_epoch, 0))
        units = self.units
        return [
            float(base) * f * units[u].mult for base, u in zip(self.base_lrs, self._unit_of_group)
        ]

    @property
    def step_count(self) -> int:
        """Optimizer steps this scheduler has closed (torch's ``last_epoch``, from 0)."""
        return max(self.last_epoch, 0)

    @property
    def lr_multipliers(self) -> list[float]:
        """The controller's current LR multiplier of each param group."""
        return [self.units[u].mult for u in self._unit_of_group]

    @property
    def mult(self) -> float:
        """The LR multiplier of param group 0."""
        return self.units[self._unit_of_group[0]].mult

    def observe(self, loss: torch.Tensor | float | None) -> None:
        """The training loss of the current step (a GPU tensor is not synchronised to the host).

        With gradient accumulation, call it for every micro-batch: the step's loss is their mean.
        ``None`` means "no loss for this step". It never raises inside the training: a tensor of
        per-sample losses (more than one element) counts as its mean, and a value that is not a
        number is skipped (``events["bad_loss"]``); each says so once, naming what it got.
        """
        if loss is None:
            return
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                loss = self._mean_of("loss", loss)
            # on the CPU a host float now (cheaper than detach(), and nothing to stack at the
            # decision); elsewhere the tensor stays on its device (no synchronisation per step)
            value: torch.Tensor | float = loss.item() if loss.is_cpu else loss.detach()
        else:
            number = _number(loss)
            if number is None:
                self._not_a_number("loss", loss, "bad_loss")
                return
            value = number
        if self._loss is None:
            self._loss, self._loss_n = value, 1
        else:
            self._loss = self._loss + value  # type: ignore[operator]
            self._loss_n += 1

    def observe_validation(
        self, val_loss: float | torch.Tensor | None, val_acc: float | torch.Tensor | None = None
    ) -> None:
        """Validation measured after the current step's update; call it before ``step()``.

        Reported after ``step()``, it is attached to the step just closed, unless that step was a
        decision point (then it is too late for that decision: counted in
        ``events["late_validation"]``).
        """
        vl = self._validation_value("val_loss", val_loss)
        va = self._validation_value("val_acc", val_acc)
        if vl is None and va is None:
            return
        self.events["validation_reports"] += 1
        if vl is not None and math.isfinite(vl):
            try:
                self._watch_validation(vl)
            except Exception:  # noqa: BLE001 - a deployed controller never crashes its training
                self._count_error()
        if self._loss is not None or self._probe.has_pending:
            self._val = (vl, va)
            return
        # reported after step(): attach to the last closed row
        if self._rows:
            self._rows[-1].val_loss, self._rows[-1].val_acc = vl, va
            return
        self.events["late_validation"] += 1
        self._warn_once(
            "late_val",
            "ControllerScheduler: validation reported after step() at a decision point is too "
            "late for that decision; call observe_validation() before step()",
        )

    def _watch_validation(self, vl: float) -> None:
        """The overfit check's bookkeeping (``OVERFIT_TOL``) for a validation loss reported now:
        while a unit's multiplier is above 1, a new best takes a copy of the run (one controller
        unit with rollback; at most one per decision window), a report clearly above the best and
        not below the report before it counts toward the undo."""
        prev, self._last_val = self._last_val, vl
        if self.guard is None or self._closed:
            return
        # the optimizer steps these weights have had (reported before step(): the open one too)
        done = max(self.last_epoch, 0) + (self._loss is not None or self._probe.has_pending)
        window = (done - 1) // self.every
        for u in self.units:
            if u.raised_from < 0:
                continue
            if vl > u.val_best * (1.0 + OVERFIT_TOL):
                # a streak of reports still rising: one lower than the report before it (a bump
                # the run is coming back from) starts the streak again
                u.val_worse = u.val_worse + 1 if vl >= prev else 1
                continue
            u.val_worse = 0
            if vl >= u.val_best:
                continue
            if self.rollback and len(self.units) == 1:
                c = self._val_copy
                if c is not None and (c["step"] - 1) // self.every == window:
                    continue  # one copy per window: this best stays the copy's
                self._val_copy = self._copy(u, done)
            u.val_best = vl

    def _validation_value(self, name: str, v: Any) -> float | None:
        """``v`` as a float for :meth:`observe_validation`: a tensor of several values counts as
        its mean, and a value that is not a number is skipped (``events["bad_validation"]``);
        each says so once, naming the argument and what it got."""
        if v is None:
            return None
        if isinstance(v, torch.Tensor) and v.numel() != 1:
            v = self._mean_of(name, v)
        number = _number(v)
        if number is None:
            self._not_a_number(name, v, "bad_validation")
        return number

    def _mean_of(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor handed over as ``name`` with more than one element (said once)."""
        self._warn_once(
            f"{name}_shape",
            f"ControllerScheduler: `{name}` expected a scalar (one-element) tensor or a float; "
            f"got a tensor of shape {tuple(t.shape)}: using its mean (reduce it first, e.g. "
            "loss.mean())",
            UserWarning,
        )
        flat = t.detach()
        return (flat.real if flat.is_complex() else flat).double().mean()  # empty: NaN

    def _not_a_number(self, name: str, v: Any, counter: str) -> None:
        """``name`` was not a number: counted in ``events[counter]`` and said once."""
        self.events[counter] += 1
        self._warn_once(
            f"{name}_bad",
            f"ControllerScheduler: `{name}` expected a scalar tensor or a float; got "
            f"{type(v).__name__!r}: skipped (events['{counter}'] counts them)",
            UserWarning,
        )

    def step(self, epoch: None = None) -> None:  # type: ignore[override]
        """Close the current step's record; every ``every`` steps, ask the controller; then set
        the next step's LRs (torch's ``LRScheduler.step``)."""
        if epoch is not None:  # torch's deprecated epoch argument: said once, then ignored
            self._warn_once(
                "epoch",
                "ControllerScheduler: `epoch` expected None (it counts optimizer steps itself); "
                f"got {epoch!r}: ignored",
                UserWarning,
            )
        if not self._is_initial:
            try:
                self._close_step()
            except Exception:  # noqa: BLE001 - a deployed controller never crashes its training
                self._count_error()
                self._rows = self._rows[-self.every :]  # bounded even if decisions keep failing
        try:
            super().step()
        except Exception:  # noqa: BLE001
            self._count_error()

    # ----------------------------------------------------------------- internals
    def _close_step(self) -> None:
        if self._closed:
            self._loss, self._loss_n, self._val = None, 0, None
            return
        probe = self._probe
        step = max(self.last_epoch, 0)  # index of the step just performed
        taken = probe.take()
        if probe.last_take_steps > 1:
            self._extra_steps(probe.last_take_steps)
        if taken is None:
            self.events["skipped_steps"] += 1
        elif probe.layout_version != self._rows_layout:
            self._flush()
            self._rows_layout = probe.layout_version
            self._layer_groups = list(probe.layer_groups)
            if len(self.optimizer.param_groups) != len(self.base_lrs):
                self._sync_groups()
        loss = self._loss
        if loss is None:
            self.events["missing_loss"] += 1
        elif self._loss_n > 1:
            loss = loss / self._loss_n
        val = self._val
        self._rows.append(
            _Row(
                loss,
                taken,
                val[0] if val else None,
                val[1] if val else None,
                step,
                self._base_factor(step),
            )
        )
        self._loss, self._loss_n, self._val = None, 0, None
        closed = step + 1
        if closed == self.total_steps + 1:
            self._warn_once(
                "past_total",
                f"ControllerScheduler: step() called past total_steps={self.total_steps}: the "
                "base schedule has ended, so the LR stays at its final value (cosine: 0); "
                "total_steps is the whole run's number of optimizer steps",
                UserWarning,
            )
        if closed % self.every == 0:
            skipped = self.events["skipped_steps"] - self._skipped_before
            self._skipped_before = self.events["skipped_steps"]
            if 2 * skipped > self.every:
                self._warn_once(
                    "skipped",
                    f"ControllerScheduler: {skipped} of the last {self.every} step() calls "
                    "followed no optimizer step (step() called twice per optimizer step?); call "
                    "it once after each optimizer step (events['skipped_steps'])",
                    UserWarning,
                )
            if closed < self.total_steps:
                self._decide(closed)

    def _extra_steps(self, n: int) -> None:
        """``n`` optimizer steps ran in one of the scheduler's steps: counted, and said once."""
        self.events["extra_optimizer_steps"] += n - 1
        self._warn_once(
            "extra_steps",
            f"ControllerScheduler: {n} optimizer steps ran between two step() calls; call "
            "step() after every optimizer step (total_steps counts optimizer steps, not epochs). "
            "Stepped less often, the controller decides every "
            f"{self.every} of your step() calls on the last optimizer step's statistics "
            "(events['extra_optimizer_steps'])",
            UserWarning,
        )

    def _warn_once(self, key: str, msg: str, cat: type[Warning] = RuntimeWarning) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg, cat, stacklevel=_user_stacklevel())

    def _count_error(self) -> None:
        self.events["errors"] += 1
        exc = sys.exc_info()[1]
        what = "" if exc is None else f" ({type(exc).__name__}: {str(exc)[:200]})"
        self._warn_once(
            "error",
            f"ControllerScheduler: an error in the decision path{what}; holding the current "
            "values (see scheduler.events)",
        )

    def _unit_layers(self, unit: _Unit) -> list[int] | None:
        if unit.groups is None:
            return None
        gs = set(unit.groups)
        return [i for i, g in enumerate(self._layer_groups) if g in gs]

    def _flush(self) -> None:
        """Feed buffered rows to the online features (one host transfer for all of them)."""
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        tensors = [r.loss for r in rows if isinstance(r.loss, torch.Tensor)]
        host_losses = iter(_losses_to_host(tensors)) if tensors else iter(())
        losses = [next(host_losses) if isinstance(r.loss, torch.Tensor) else r.loss for r in rows]
        per_unit = self._unit_stats([r.stats for r in rows if isinstance(r.stats, tuple)])
        g_all = self.optimizer.param_groups
        n = len(rows)
        bfs = [r.base_factor for r in rows]
        loss_ok = [v is None or math.isfinite(v) for v in losses]
        self._window.extend(v for v in losses if v is not None and math.isfinite(v))
        if 0.0 in losses:  # hinge / triplet losses reach it: log-loss features are undefined
            self._zero_loss_at = max(r.step for r, v in zip(rows, losses) if v == 0.0)
        if self._neg_loss is None:  # a Gaussian NLL or a log-density can go below 0
            self._neg_loss = next(
                ((r.step, v) for r, v in zip(rows, losses) if v is not None and v < 0), None
            )
        self._window_bad = self._window_bad or not all(loss_ok)
        last = next((v for v in reversed(losses) if v is not None), None)
        if last is not None:
            self._last_loss_bad = not math.isfinite(last)
        is_measured = [isinstance(r.stats, tuple) for r in rows]
        # a step left out by the feature set's stats_every: no statistics, finite unknown (None)
        strided = [r.stats is STRIDED for r in rows]
        common: dict[str, Any] = {
            "loss": losses,
            "base_factor": bfs,
            "val_loss": [r.val_loss for r in rows],
            "val_acc": [r.val_acc for r in rows],
        }
        for ui, u in enumerate(self.units):
            g0 = self._feature_group(u)
            group = g_all[g0] if g0 < len(g_all) else g_all[0]
            base = self.base_lrs[g0] if g0 < len(self.base_lrs) else self.base_lrs[0]
            mult = u.mult
            cols: dict[str, Any] = dict(common)
            cols["lr"] = [base * bf * mult for bf in bfs]
            cols["lr_mult"] = (mult,) * n
            # an optimizer without momentum runs as momentum 0 (what it does)
            cols["momentum"] = (hp_get(group, "momentum") or 0.0,) * n
            cols["weight_decay"] = (hp_get(group, "weight_decay"),) * n
            stats_u = per_unit[ui]
            if stats_u is None:  # no statistics for this unit: finite follows the loss only
                cols["finite"] = [
                    None if s else m and ok for s, m, ok in zip(strided, is_measured, loss_ok)
                ]
            elif len(stats_u) == n:  # every row measured (the usual case): columns at once
                by_col = stats_u.T.tolist()
                for j, name in enumerate(_STAT_COLS):
                    cols[name] = by_col[j]
                cols["finite"] = [f != 0.0 and ok for f, ok in zip(by_col[-1], loss_ok)]
            else:
                it = iter(stats_u.tolist())
                per_row: list[Any] = [next(it) if m else None for m in is_measured]
                for j, name in enumerate(_STAT_COLS):
                    cols[name] = [None if v is None else v[j] for v in per_row]
                cols["finite"] = [
                    None if s else v is not None and bool(v[-1]) and ok
                    for s, v, ok in zip(strided, per_row, loss_ok)
                ]
            u.features.update_many(cols, n)

    def _feature_group(self, u: _Unit) -> int:
        """The param group whose LR, momentum and weight decay stand for unit ``u`` in its
        features: the first of its groups with an initial LR > 0 (a group at LR 0 is frozen, and
        its log LR is undefined), else its first."""
        groups = list(range(len(self.base_lrs))) if u.groups is None else u.groups
        i = lr_group(self.base_lrs[g] for g in groups)
        return groups[0 if i is None else i] if groups else 0

    def _unit_stats(
        self, measured: list[tuple[torch.Tensor, torch.Tensor | None]]
    ) -> list[np.ndarray | None]:
        """Each unit's step-table statistics of the measured rows (one batch on the device)."""
        if not measured:
            return [None] * len(self.units)
        stats = torch.stack([m[0] for m in measured])  # [n, 5, L]
        present = None
        if any(m[1] is not None for m in measured):
            ones = torch.ones(stats.shape[-1], dtype=torch.bool, device=stats.device)
            present = torch.stack([ones if m[1] is None else m[1] for m in measured])
        outs: list[np.ndarray | None] = []
        for u in self.units:
            layers = self._unit_layers(u)
            s, p = stats, present
            if layers is not None:
                if not layers:
                    outs.append(None)
                    continue
                idx = torch.tensor(layers, device=stats.device)
                s = stats.index_select(2, idx)
                p = None if present is None else present.index_select(1, idx)
            out, u.prev_norms = summarise(s, p, u.prev_norms)
            outs.append(out)
        return outs

    def _decide(self, step: int) -> None:
        if self.lookahead is not None and self.lookahead.defer(step):
            return  # decided by the lookahead once batches() holds the next batches
        self._flush()
        for ui, u in enumerate(self.units):
            if u.groups is not None and self._unit_layers(u) == []:
                continue  # layer-wise, a param group without parameters: nothing to decide for
            try:
                if not self._guard(u, step):
                    self._decide_unit(ui, u, step)
                self._arm(u)  # a raise of the controller or of the stall check
            except Exception:  # noqa: BLE001
                self._count_error()

    def _arm(self, u: _Unit) -> None:
        """After a decision that raised the LR, keep what a rollback restores (one controller
        unit only: in layer-wise mode a raise is undone, not rolled back)."""
        step = self._window_stat[0]
        if u.probation is None or u.probation[3] != step:
            return  # no raise at this decision (a trial that goes on keeps its copy)
        if not self.rollback or len(self.units) != 1:
            return
        self._saved = self._copy(u, step)
        if u.probation[0] <= 1.0 < u.mult:  # the first raise above the base schedule
            self._base_copy = self._saved

    def _copies(self) -> tuple[dict[str, Any] | None, ...]:
        """The raise guard's copies of the run (the same copy may appear twice)."""
        return self._saved, self._kept, self._base_copy, self._val_copy

    def _copy(self, u: _Unit, step: int, start: bool = False) -> dict[str, Any]:
        return {
            "weights": take_weights(self.optimizer, self._model),
            "features": u.features.state_dict(),
            "ctrl_state": u.ctrl_state,
            "step": step,
            "start": start,
        }

    def _roll_back(self, u: _Unit, saved: dict[str, Any], step: int) -> None:
        restore_weights(saved["weights"], self.optimizer, self._model)
        u.features.load_state_dict(saved["features"])
        u.ctrl_state = saved["ctrl_state"]
        u.val_worse = 0  # the reports since the copy measured weights that are gone
        self.events["guard_rollbacks"] += 1
        self.events["guard_rolled_back_steps"] += step - saved["step"]

    def _rescue(self, u: _Unit, saved: dict[str, Any], step: int) -> None:
        """The loss turned non-finite before the first decision, or after a rollback with no raise
        left to undo: back to the copy (the start, or the state the rollback restored), the LR
        multiplier cut by the largest cut the checkpoint knows (x0.5 if it has none), raises capped
        there, and (at the start) the start on trial again."""
        self._roll_back(u, saved, step)
        cuts = [d for a in self._moves for n, d, _ in a if n == "lr" and d < 0]
        delta = min(cuts) if cuts else math.log(0.5)
        hp = self._bounds.get("lr")
        before = u.mult
        u.mult = hp.move(before, delta) if hp else before * math.exp(delta)
        u.ceiling = min(u.ceiling, u.mult)
        self._guard_decision("guard_rescues")
        if saved["start"]:
            self._saved = {**saved, "step": step}
            where = "before the first decision", "its start"
        else:
            self._kept = {**saved, "step": step}
            where = "after a rollback, at the base LR", f"step {saved['step']}"
        self._warn_once(
            "rescue",
            f"ControllerScheduler: the training loss turned non-finite {where[0]} and still was "
            f"at it (step {step}); the run went back to {where[1]} and the LR multiplier was cut "
            f"from {before:.3g} to {u.mult:.3g} (events['guard_rescues'])",
        )

    def _window_loss(self, step: int) -> tuple[float | None, bool]:
        """The median training loss of the window that ends at decision ``step`` and whether a
        loss in it was non-finite (the window closes at the first call for a step)."""
        if self._window_stat[0] != step:
            w = self._window
            med = _median(w) if w else None
            self._window_se = _median_se(w, med) if med is not None else math.nan
            if self._start_window is None and med is not None and not self._window_bad:
                self._start_window = (med, self._window_se)
            self._window_stat = (step, med, self._window_bad)
            self._window, self._window_bad = [], False
        return self._window_stat[1], self._window_stat[2]

    def _guard(self, u: _Unit, step: int) -> bool:
        """The raise guard at decision ``step`` (:meth:`_judge`), then the stall check
        (:meth:`_stall`); True when one of them took this decision."""
        return self._judge(u, step) or self._stall(u, step)

    def _stall(self, u: _Unit, step: int) -> bool:
        """Undo a cut that stalled the run (``STALL_WINDOWS``), or the raises of a run that went
        nowhere (:meth:`_dead`); True when this decision did."""
        if u.stalled_at == step or self.guard is None:
            return False
        u.stalled_at = step
        now = self._window_stat[1] if self._window_stat[0] == step else None
        if now is None or not math.isfinite(now):
            return False
        u.span = [*u.span, (now, self._window_se)][-STALL_WINDOWS:]
        if u.mult <= 1.0:  # at or below the base schedule: no raise to give up on
            self._not_raised(u)
        elif self._overfit(u, step) or self._dead(u, step):
            return True
        if now < u.best[0]:
            u.best = (now, step)
            return False
        span = STALL_WINDOWS * self.every
        wait = span << min(u.lift_fails, STALL_BACKOFF)
        if u.mult >= 1.0 or step - u.best[1] < wait or self.total_steps - step < span:
            return False
        old, lift = u.mult, min(1.0, u.mult * STALL_FACTOR)
        if u.lift_fails:  # a retry: the ceiling a failed lift set does not hold it
            u.ceiling = max(u.ceiling, lift)
        self._set_mult(u, lift, step)
        if u.mult <= old:  # held at the guard's ceiling: nothing undone
            return False
        if u.probation is not None and u.probation[3] == step:  # judged on the plateau
            level, level_se = _plateau(u.span)
            u.probation = (old, level, GUARD_WINDOWS, step, level_se)
        u.floor, u.best, u.lift_at = u.mult, (u.best[0], step), step
        self._guard_decision("guard_stalls")
        self._warn_once(
            "stall",
            f"ControllerScheduler: no decision window set a new best training loss for "
            f"{STALL_WINDOWS} windows (best {u.best[0]:.4g}) at an LR multiplier below 1; the "
            f"cut was partly undone at step {step} ({old:.3g}x -> {u.mult:.3g}x), on trial like a "
            "raise, and later cuts stop there (events['guard_stalls'])",
        )
        return True

    def _guard_decision(self, counter: str) -> None:
        """The guard took this decision point's decision: counted in ``events[counter]`` and, as
        one decision per decision point, in ``events["decisions"]``."""
        self.events[counter] += 1
        self.events["decisions"] += 1

    def _not_raised(self, u: _Unit) -> None:
        """The multiplier is at or below 1: the dead-run and overfit checks' state goes."""
        u.raised_from, u.val_best, u.val_worse = -1, math.inf, 0
        self._base_copy = self._val_copy = None

    def _overfit(self, u: _Unit, step: int) -> bool:
        """Undo the raises of a run whose validation loss rose past its best since them
        (``OVERFIT_REPORTS``); True when done."""
        if u.raised_from < 0 or u.val_worse < OVERFIT_REPORTS:
            return False
        best, copy = u.val_best, self._val_copy or self._base_copy
        old = self._back_to_base(u, copy, step)
        u.best = (math.inf, step) if copy is not None else (u.best[0], step)
        self._guard_decision("guard_overfits")
        where = f", weights back to step {copy['step']}" if copy is not None else ""
        self._warn_once(
            "overfit",
            f"ControllerScheduler: the validation loss rose more than {OVERFIT_TOL:.0%} above "
            f"its best since an LR raise ({best:.4g}; {self._last_val:.4g} now) in "
            f"{OVERFIT_REPORTS} reports in a row; the raises were undone at step {step} "
            f"({old:.3g}x -> 1x{where}) and later raises stop there (events['guard_overfits'])",
        )
        return True

    def _back_to_base(self, u: _Unit, copy: dict[str, Any] | None, step: int) -> float:
        """The multiplier back to 1 and capped there, the guard's trials and watches dropped,
        and, with a ``copy``, the run rolled back to it; returns the multiplier it had."""
        old = u.mult
        u.mult = 1.0
        u.ceiling = min(u.ceiling, 1.0)
        u.probation, u.relapse, u.parents, u.recent, u.worse_windows = None, None, [], [], 0
        self._saved = self._kept = None
        self._not_raised(u)
        if copy is not None:
            self._roll_back(u, copy, step)
        return old

    def _dead(self, u: _Unit, step: int) -> bool:
        """Undo the raises of a run that has gone nowhere (``DEAD_WINDOWS``); True when done."""
        start = self._start_window
        if start is None or u.raised_from < 0 or step - u.raised_from < DEAD_WINDOWS * self.every:
            return False
        if len(u.span) < STALL_WINDOWS:
            return False
        level = _plateau(u.span)[0]
        if not (level >= start[0] * (1.0 - DEAD_TOL)):
            return False
        # the weights as the first raise found them
        old = self._back_to_base(u, self._base_copy, step)
        u.best = (u.best[0], step)
        self._guard_decision("guard_stalls")
        self._warn_once(
            "dead",
            f"ControllerScheduler: the training loss has stayed at its first window's level "
            f"({level:.4g} against {start[0]:.4g}) for {DEAD_WINDOWS} windows at a raised LR; "
            f"the raises were undone at step {step} ({old:.3g}x -> 1x) and later raises stop "
            "there (events['guard_stalls'])",
        )
        return True

    def _judge(self, u: _Unit, step: int) -> bool:
        """Judge the unit's last LR raise on the window that ends here: when its median training
        loss exceeds the window before the raise by more than ``guard`` x its magnitude (or a loss
        turned non-finite), undo the raise, cap later raises there, and return True (this
        decision is the revert). A raise that passes ``GUARD_WINDOWS`` windows is not judged
        again."""
        after, bad = self._window_loss(step)
        if u.guarded_at == step:
            return False
        u.guarded_at = step
        trial, u.probation = u.probation, None
        saved, self._saved = self._saved, None
        # a run still non-finite at the decision diverged; one bad batch (a GradScaler-skipped
        # step, a corrupt sample) in a run that goes on finite did not
        diverged = bad and self._last_loss_bad
        if saved is not None and saved["start"]:  # the first window is on trial too
            if diverged:
                self._rescue(u, saved, step)
            return diverged
        if self.guard is None:
            return False
        if trial is None:  # a raise that passed its trial: undone at once if the run diverged
            return self._relapse(u, after, diverged, step)
        before_mult, before, left, at, before_se = trial
        if not bad and (after is None or after <= before + self.guard * abs(before)):
            if left > 1:  # judged again after the next window, from the same copy
                u.probation, self._saved = (before_mult, before, left - 1, at, before_se), saved
            else:  # passed: watched for a relapse until the next raise, from the same copy
                best = before if after is None else min(before, after)
                u.relapse = (before_mult, best, before, before_se)
                u.worse_windows, u.recent, self._kept = 0, [], saved
                u.lift_watch = at == u.lift_at
            return False
        if at == u.lift_at:
            self._lift_failed(u, step)
        self._undo_raise(u, before_mult, saved, step, "guard_reverts")
        why = (
            "the training loss turned non-finite after an LR raise"
            if bad
            else (
                f"the training loss rose after an LR raise (median {before:.4g} -> "
                f"{after if after is not None else float('nan'):.4g} over {self.every} steps)"
            )
        )
        self._warn_once(
            "guard",
            f"ControllerScheduler: {why}; the raise was undone at step {step} and later raises "
            "are capped there (events['guard_reverts'])",
        )
        return True

    def _undo_raise(
        self, u: _Unit, before_mult: float, copy: dict[str, Any] | None, step: int, counter: str
    ) -> None:
        """Undo a raise (a failed trial or a relapse): the multiplier back to ``before_mult`` and
        capped there, counted in ``events[counter]`` as this step's decision, and, with a
        ``copy`` of the raise, the weights and optimizer state back to it. The raise it had
        superseded, if any, is watched for a relapse again, from that copy (the last state known
        good)."""
        u.mult = min(u.mult, before_mult)
        u.ceiling = min(u.ceiling, before_mult)
        u.floor = min(u.floor, before_mult)
        self._guard_decision(counter)
        if copy is not None:  # the weights and optimizer state as they were at the raise
            self._roll_back(u, copy, step)
        u.recent, u.lift_watch = [], False
        if u.parents:
            u.relapse, u.worse_windows, self._kept = u.parents.pop(), 0, copy
        elif copy is not None:
            # no raise left to watch, but the run now follows a trajectory of its own: the copy
            # stays as its last known good state, should it diverge at the base LR (_relapse)
            self._kept = copy

    @staticmethod
    def _lift_failed(u: _Unit, step: int) -> None:
        """A stall lift was undone: the next waits twice as long, counted from here."""
        u.lift_fails += 1
        u.best = (u.best[0], step)

    @staticmethod
    def _above(window: tuple[float, float] | None, recent: list[tuple[float, float]]) -> bool:
        """Whether each of the ``recent`` windows' medians is above ``window``'s median and their
        mean by more than ``RELAPSE_START_Z`` standard errors of the difference (each window a
        (median, standard error); a NaN error: not judged). Pooling the windows tests their
        level with less noise than each alone; every one above keeps a single bad window (a
        spike the run recovers from) from deciding on its own."""
        if window is None or len(recent) < RELAPSE_WINDOWS:
            return False
        if not all(m > window[0] for m, _ in recent):
            return False
        mean, se = _pooled(recent)
        return mean > window[0] + RELAPSE_START_Z * math.hypot(window[1], se)  # NaN: False

    def _relapse(self, u: _Unit, after: float | None, bad: bool, step: int) -> bool:
        """Judge the raise that passed its trial (``RELAPSE_TOL``): track the best window since
        it; after ``RELAPSE_WINDOWS`` windows in a row clearly worse, or at once when the run
        diverged (``bad``: a loss of the window and its last loss were non-finite), undo it (and
        roll back to its copy where one is kept) and return True (this decision is the undo)."""
        if u.relapse is None:
            if bad and self._kept is not None:  # diverged at the base LR after a rollback
                self._rescue(u, self._kept, step)
                return True
            return False
        before_mult, best, ref, ref_se = u.relapse
        above_start = above_ref = False  # judged worse than the first window / the raise's
        if not bad:
            if after is None or not math.isfinite(after):
                return False
            u.recent = [*u.recent, (after, self._window_se)][-RELAPSE_WINDOWS:]
            if after < best:
                u.relapse, u.worse_windows = (before_mult, after, ref, ref_se), 0
                return False
            # a stall lift: judged on its plateau's level only (the pooled test below)
            worse = not u.lift_watch and after > best + RELAPSE_TOL * max(abs(best), ref - best)
            u.worse_windows = u.worse_windows + 1 if worse else 0
            if u.worse_windows < RELAPSE_WINDOWS:
                above_start = self._above(self._start_window, u.recent)
                above_ref = not above_start and self._above((ref, ref_se), u.recent)
                if not (above_start or above_ref):
                    return False
        raised, kept, self._kept = u.mult, self._kept, None
        last = u.recent[-1][0] if u.recent else math.nan
        u.relapse, u.worse_windows = None, 0
        # the copy is the run as the raise found it: a run that relapsed from its best but is
        # still below the window before the raise is ahead of it, so only the LR is undone
        ahead = not bad and after is not None and after <= ref
        if ahead:
            kept = None
        if u.lift_watch:
            self._lift_failed(u, step)
        self._undo_raise(u, before_mult, kept, step, "guard_relapses")
        key, what, why = "relapse_nonfinite", "a training loss turned non-finite", ""
        if not bad:
            key, what = "relapse", "the training loss relapsed"
            why = f" (best window median {best:.4g} -> {after:.4g}, {RELAPSE_WINDOWS} windows in a row)"
            if above_start and self._start_window is not None:
                why = (
                    f" (window median {last:.4g}, its last {RELAPSE_WINDOWS} windows above the "
                    f"run's first window's {self._start_window[0]:.4g})"
                )
            elif above_ref:
                why = (
                    f" (window median {last:.4g}, its last {RELAPSE_WINDOWS} windows above the "
                    f"{ref:.4g} of the window before the raise)"
                )
        self._warn_once(
            key,
            f"ControllerScheduler: {what} after an LR raise had passed its trial{why}; the raise "
            f"({before_mult:.3g}x -> {raised:.3g}x) was undone at step {step}"
            + (f", weights back to step {kept['step']}" if kept is not None else "")
            + (", weights kept (still below the window before the raise)" if ahead else "")
            + " (events['guard_relapses'])",
        )
        return True

    def _hold(self, why: str) -> None:
        self.events["held_nonfinite"] += 1
        self._warn_once(
            "held",
            f"ControllerScheduler: holding the current values at a decision: {why} "
            "(counted in scheduler.events['held_nonfinite']; further holds are not reported)",
        )

    def _bad_features(self, x: np.ndarray) -> np.ndarray:
        """Which feature values the controller cannot take: non-finite where it never saw them
        so in training (a NaN it was trained with, e.g. no validation yet, is fine)."""
        # the usual answer (nothing bad) in plain floats: a few NumPy calls on cold caches cost
        # more than this loop over a few dozen values
        if len(x) == len(self._nan_ok_list) and all(
            v - v == 0.0 or (v != v and ok) for v, ok in zip(x.tolist(), self._nan_ok_list)
        ):
            return self._none_bad
        return ~np.isfinite(x) & ~(np.isnan(x) & self._nan_ok)

    def _decide_unit(self, ui: int, u: _Unit, step: int) -> None:
        if self._neg_loss is not None:
            # ratios and logs of a loss that crossed 0 are undefined or inverted (a falling
            # negative loss reads as rising): following the base schedule is the safe answer
            at, neg = self._neg_loss
            self._hold(
                f"the training loss went below 0 ({neg:.4g} at step {at}, e.g. a Gaussian NLL or "
                "a log-density); the controller's features assume a loss >= 0 whose floor is 0 "
                "(cross-entropy, MSE), so it holds for the rest of the run: observe such a loss "
                "instead (e.g. the squared error of the predicted mean)"
            )
            return
        x = u.features.values()
        bad = self._bad_features(x)
        if bad.any():
            names = [n for n, b in zip(self.loaded.feature_names, bad) if b]
            if all(n.startswith("val_") for n in names):
                self._hold(
                    f"no validation reported ({', '.join(names)} undefined); this controller "
                    "was trained with validation: call observe_validation() before step() every "
                    "so often, or use a validation-optional checkpoint (trajlib fit --val-withhold)"
                )
            elif self._window_stat == (step, None, False):  # not one loss in the window
                self._hold(
                    "no training loss was reported since the last decision: call "
                    "observe(loss) after each optimizer step, before step()"
                )
            elif self.base_lrs[self._feature_group(u)] == 0:
                self._hold(
                    "the initial LR is 0 in every param group the controller steers (it sets a "
                    "multiple of each group's LR: 0 stays 0), so there is nothing to steer"
                )
            elif self._zero_loss_at is not None and all(n.startswith("loss_") for n in names):
                self._hold(
                    f"features {', '.join(names[:4])} are undefined: the training loss was "
                    f"exactly 0 (last at step {self._zero_loss_at}) and they read its log; the "
                    "controller holds while such steps are in their windows"
                )
            else:
                more = f" and {len(names) - 4} more" if len(names) > 4 else ""
                self._hold(
                    f"features {', '.join(names[:4])}{more} are not finite, which they never "
                    "were in training (a non-finite loss or gradient?)"
                )
            return
        if self._rule is None:
            values, state = self.loaded.controller.decide_values(x, u.ctrl_state)
            spread = None
        elif self._only is None:  # (a controller's decide_spread need not take ``only`` then)
            values, spread, state = self.loaded.controller.decide_spread(x, u.ctrl_state)
        else:
            values, spread, state = self.loaded.controller.decide_spread(
                x, u.ctrl_state, only=self._only
            )
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        vals = v.tolist()  # the checks in plain floats (a handful of values)
        read = range(len(vals)) if self._only is None else self._only  # the actions scored
        if len(vals) != len(self.actions) or not all(vals[i] - vals[i] == 0.0 for i in read):
            self._hold("the controller's output is not finite")
            return
        sd = None if spread is None else np.asarray(spread, dtype=np.float64).reshape(-1)
        if sd is not None and (sd.shape != v.shape or not all(e - e == 0.0 for e in sd.tolist())):
            self._hold("the controller's spread is not finite")
            return
        if isinstance(state, np.ndarray) and not np.isfinite(state).all():
            self._hold("the controller's state is not finite")
            return
        if self._rule is None or sd is None:
            a = int(v.argmax())
        else:  # do no harm: act only when the best action is confidently better than keep
            a, kept = self._rule.choose(v, sd, self._keep)
            self.events["kept_by_rule"] += int(kept)
        u.ctrl_state = state
        self._apply_action(ui, u, a, step)

    def _apply_action(self, ui: int, u: _Unit, a: int, step: int) -> None:
        """Take action ``a`` for unit ``u`` at ``step`` (its multiplier and hyperparameters)."""
        self.events["decisions"] += 1
        self.actions_taken.append((step, ui, a))
        groups = range(len(self.optimizer.param_groups)) if u.groups is None else u.groups
        for name, delta, hp in self._moves[a]:
            if name == "lr":
                self._set_mult(u, hp.move(u.mult, delta) if hp else u.mult * math.exp(delta), step)
                continue
            for gi in groups:
                g = self.optimizer.param_groups[gi]
                # never a hyperparameter the optimizer lacks or the user switched off
                if hp is not None and hp_movable(g, name):
                    hp_set(g, name, hp.move(hp_get(g, name), delta))  # type: ignore[arg-type]

    def _set_mult(self, u: _Unit, new: float, step: int) -> None:
        """Set unit ``u``'s LR multiplier at decision ``step``; a raise is capped at the guard's
        ceiling and put on trial."""
        old = u.mult
        capped = self._cap(u, new)
        if capped != new:  # the guard undid a raise to here: no higher
            self.events["guard_capped"] += 1
            new = capped
        if new > 1.0 >= old:
            # the overfit check starts from the last validation loss before the raise
            u.raised_from, u.val_best, u.val_worse = step, self._last_val, 0
            self._val_copy = None
        if new > old and self.guard is not None:
            pre = self._window_stat[1] if self._window_stat[0] == step else None
            if pre is not None:
                # a new raise on trial supersedes the raise before it (on trial or watched for a
                # relapse; one copy): that one is remembered, to be watched again if this is undone
                watch = None
                if u.probation is not None:
                    p_mult, p_before, _, _, p_se = u.probation
                    watch = (p_mult, min(p_before, pre), p_before, p_se)
                elif u.relapse is not None:
                    r_mult, r_best, r_ref, r_se = u.relapse
                    watch = (r_mult, min(r_best, pre), r_ref, r_se)
                if watch is not None:
                    u.parents = [*u.parents, watch][-MAX_PARENTS:]
                u.probation = (old, pre, GUARD_WINDOWS, step, self._window_se)
                u.relapse, u.worse_windows, u.recent, self._kept = None, 0, [], None
                u.lift_watch = False
        u.mult = new

    def _guard_snapshot(self, u: _Unit) -> tuple[Any, ...]:
        """Unit ``u``'s raise guard as it stands (its trial, watch, ceiling, the copies of the
        weights and the capped counter), for :meth:`_guard_restore` after a lookahead branch
        tried a move on it: a raise tried there supersedes the watched raise and drops its copy."""
        return (
            u.probation, u.ceiling, u.relapse, u.worse_windows, list(u.recent),
            list(u.parents), self._saved, self._kept, self.events["guard_capped"], u.lift_watch,
            u.raised_from, self._base_copy, u.val_best, u.val_worse, self._val_copy,
        )  # fmt: skip

    def _guard_restore(self, u: _Unit, snap: tuple[Any, ...]) -> None:
        (
            u.probation, u.ceiling, u.relapse, u.worse_windows, u.recent, u.parents,
            self._saved, self._kept, self.events["guard_capped"], u.lift_watch,
            u.raised_from, self._base_copy, u.val_best, u.val_worse, self._val_copy,
        ) = snap  # fmt: skip
        u.recent, u.parents = list(u.recent), list(u.parents)

    def _cap(self, u: _Unit, new: float) -> float:
        """``new`` for unit ``u``'s multiplier, a raise held at the guard's ceiling (never below
        the current multiplier), a cut at its floor (never above it)."""
        if new > u.mult and self.guard is not None and new > u.ceiling:
            return max(u.mult, u.ceiling)
        if new < u.mult and self.guard is not None and new < u.floor:
            return min(u.mult, u.floor)
        return new

    def _base_factor(self, step: int) -> float:
        """The base schedule's factor at ``step`` (the last value is kept: every step asks for
        it twice, once for its LR and once for its row)."""
        memo = self._bf_memo
        if memo[0] == step and memo[1] == self.total_steps:
            return memo[2]
        sched = self.base_schedule
        f = 1.0 if sched == "constant" else base_factor(sched, min(step / self.total_steps, 1.0))
        self._bf_memo = (step, self.total_steps, f)
        return f

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """torch's scheduler state (``last_epoch``, ``base_lrs``, ``_step_count``,
        ``_last_lr``) plus trajlib's, versioned, under ``"trajlib"``: plain Python values and a
        few tensors (the buffered rows' per-layer statistics, the probe's previous gradient and
        update). ``torch.save`` it and read it back with ``torch.load(..., weights_only=True)``.

        Taking the state does not change what the scheduler will do: buffered rows are saved as
        they are, not fed to the features early.
        """
        torch_state = {k: v for k, v in super().state_dict().items() if k in _TORCH_KEYS}
        return {**torch_state, "trajlib": self._trajlib_state()}

    def _trajlib_state(self) -> dict[str, Any]:
        rows = self._rows
        measured = [r.stats for r in rows if isinstance(r.stats, tuple)]
        present = None
        if measured and any(m[1] is not None for m in measured):
            L = measured[0][0].shape[-1]
            present = torch.stack(
                [torch.ones(L, dtype=torch.bool) if m[1] is None else m[1].cpu() for m in measured]
            )
        return {
            "version": STATE_VERSION,
            "feature_set_hash": self.loaded.feature_set_hash,
            "layerwise": self.layerwise,
            "total_steps": self.total_steps,
            "every": self.every,
            "targets": list(self._targets),
            "hp": [
                {n: hp_get(g, n) for n in ("momentum", "weight_decay")}
                for g in self.optimizer.param_groups
            ],
            "units": [
                {
                    "groups": None if u.groups is None else list(u.groups),
                    "mult": u.mult,
                    "probation": None if u.probation is None else list(u.probation),
                    "ceiling": u.ceiling,
                    "floor": u.floor,
                    "best": list(u.best),
                    "span": [list(w) for w in u.span],
                    "lift": [u.lift_at, u.lift_watch, u.lift_fails],
                    "raised_from": u.raised_from,
                    "val_watch": [u.val_best, u.val_worse],
                    "relapse": None if u.relapse is None else list(u.relapse),
                    "worse_windows": u.worse_windows,
                    "recent": [list(w) for w in u.recent],
                    "parents": [list(w) for w in u.parents],
                    "features": u.features.state_dict(),
                    "controller_state": _state_out(u.ctrl_state),
                    "prev_norms": None
                    if u.prev_norms is None
                    else torch.as_tensor(np.asarray(u.prev_norms, dtype=np.float64)),
                }
                for u in self.units
            ],
            "events": dict(self.events),
            "window": {
                "losses": list(self._window),
                "bad": self._window_bad,
                "last_bad": self._last_loss_bad,
                "stat": list(self._window_stat),
                "se": self._window_se,
                "start": None if self._start_window is None else list(self._start_window),
                "last_val": self._last_val,
            },
            "actions_taken": [list(a) for a in self.actions_taken],
            "rows": {
                "loss": [_loss_out(r.loss) for r in rows],
                "val_loss": [r.val_loss for r in rows],
                "val_acc": [r.val_acc for r in rows],
                "step": [r.step for r in rows],
                "measured": [isinstance(r.stats, tuple) for r in rows],
                "strided": [r.stats is STRIDED for r in rows],
                "stats": torch.stack([m[0] for m in measured]).cpu() if measured else None,
                "present": present,
                "layer_groups": list(self._layer_groups),
            },
            "open": {"loss": _loss_out(self._loss), "loss_n": self._loss_n, "val": self._val},
            "probe": self._probe.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (into a scheduler built with the same checkpoint)."""
        t = state.get("trajlib") if isinstance(state, dict) else None
        if not isinstance(t, dict) or t.get("version") != STATE_VERSION:
            got = t.get("version") if isinstance(t, dict) else "no 'trajlib' entry"
            raise ConfigError(
                "state_dict['trajlib'].version",
                f"{STATE_VERSION}",
                got,
                "this state was written by another trajlib version",
            )
        if t.get("feature_set_hash") != self.loaded.feature_set_hash:
            raise FeatureSetMismatchError(
                f"scheduler state was saved with feature set hash {t.get('feature_set_hash')}, "
                f"this controller uses {self.loaded.feature_set_hash}"
            )
        if bool(t["layerwise"]) != self.layerwise:
            raise ConfigError("layerwise", f"{bool(t['layerwise'])} (as saved)", self.layerwise)
        if len(state["base_lrs"]) != len(self.optimizer.param_groups):
            raise ConfigError(
                "optimizer.param_groups",
                f"{len(state['base_lrs'])} param groups (as when the state was saved)",
                len(self.optimizer.param_groups),
            )
        super().load_state_dict({k: state[k] for k in _TORCH_KEYS if k in state})
        self.base_lrs = [float(x) for x in self.base_lrs]
        self.total_steps = int(t["total_steps"])
        self.every = int(t["every"])
        self._targets = [float(x) for x in t["targets"]]
        self.units = [self._unit_from_state(d) for d in t["units"]]
        self._unit_of_group = self._map_groups(len(self.optimizer.param_groups))
        # a resumed run's start is not on trial; a raise on trial or relapsing is undone, not
        # rolled back (the copies stay with the process that took them)
        self._saved = self._kept = self._base_copy = self._val_copy = None
        self.events = {**self.events, **{k: int(v) for k, v in t["events"].items()}}
        self.actions_taken = [(int(a), int(b), int(c)) for a, b, c in t["actions_taken"]]
        w = t.get("window", {"losses": [], "bad": False, "stat": [-1, None, False]})
        self._window, self._window_bad = [float(v) for v in w["losses"]], bool(w["bad"])
        self._last_loss_bad = bool(w.get("last_bad", False))
        st = w["stat"]
        self._window_stat = (int(st[0]), None if st[1] is None else float(st[1]), bool(st[2]))
        self._window_se = float(w.get("se", math.nan))  # absent before the start criterion
        sw = w.get("start")
        self._start_window = None if sw is None else (float(sw[0]), float(sw[1]))
        self._last_val = float(w.get("last_val", math.inf))  # absent before the overfit check
        for g, hp in zip(self.optimizer.param_groups, t["hp"]):
            for name, v in hp.items():
                if v is not None and hp_get(g, name) is not None:
                    hp_set(g, name, float(v))
        self._probe.load_state_dict(t["probe"])
        self._load_rows(t["rows"])
        o = t["open"]
        self._loss, self._loss_n = o["loss"], int(o["loss_n"])
        self._val = None if o["val"] is None else (o["val"][0], o["val"][1])
        for g, base, lr in zip(self.optimizer.param_groups, self.base_lrs, self._last_lr):
            g["initial_lr"] = base
            g["lr"] = lr

    def _unit_from_state(self, d: dict[str, Any]) -> _Unit:
        """One unit of :meth:`state_dict`'s ``"units"`` (keys absent in older states default)."""
        u = self._new_unit(None if d["groups"] is None else [int(g) for g in d["groups"]])
        u.mult = float(d["mult"])
        pr = d.get("probation")  # absent in states saved before the guard
        if pr is not None:  # (the standard error is absent before the pre-raise criterion)
            se = float(pr[4]) if len(pr) > 4 else math.nan
            u.probation = (float(pr[0]), float(pr[1]), int(pr[2]), int(pr[3]), se)
        u.ceiling = float(d.get("ceiling", math.inf))
        u.floor = float(d.get("floor", 0.0))  # absent before the stall check
        b = d.get("best")
        u.best = (math.inf, 0) if b is None else (float(b[0]), int(b[1]))
        u.span = [(float(m), float(e)) for m, e in d.get("span", [])]  # absent before retries
        lift = d.get("lift", [-1, False, 0])
        u.lift_at, u.lift_watch, u.lift_fails = int(lift[0]), bool(lift[1]), int(lift[2])
        u.raised_from = int(d.get("raised_from", -1))  # absent before the dead-run check
        vw = d.get("val_watch", [math.inf, 0])  # absent before the overfit check
        u.val_best, u.val_worse = float(vw[0]), int(vw[1])
        rl = d.get("relapse")  # absent in states saved before the relapse watch
        u.relapse = None if rl is None else _watch(rl)
        u.worse_windows = int(d.get("worse_windows", 0))
        u.recent = [(float(m), float(e)) for m, e in d.get("recent", [])]
        u.parents = [_watch(w) for w in d.get("parents", [])]
        u.features.load_state_dict(d["features"])
        u.ctrl_state = _state_in(d["controller_state"])
        pn = d["prev_norms"]
        u.prev_norms = None if pn is None else torch.as_tensor(pn).double().numpy()
        return u

    # ----------------------------------------------------------------- copy and pickle
    def __getstate__(self) -> dict[str, Any]:
        """``copy.deepcopy``, ``pickle`` and ``torch.save(scheduler)``: the scheduler travels as
        its constructor's arguments, :meth:`state_dict` and the raise guard's copies, and is
        rebuilt from them, with its own hooks on the (copied) optimizer. A deep copy shares the
        read-only controller; pickle stores its checkpoint folder and loads it again."""
        if self.lookahead is not None:
            raise TypeError(
                "ControllerScheduler: a scheduler with a lookahead cannot be copied or pickled "
                "(its train_step trains the original model); save state_dict() and build a new "
                "scheduler with its own Lookahead"
            )
        return {
            "optimizer": self.optimizer,
            "controller": self.loaded,
            "total_steps": self.total_steps,
            "options": {
                "every": self.every,
                "layerwise": self.layerwise,
                "guard": self.guard,
                "rollback": self.rollback,
                "model": self._model,
            },
            "state": self.state_dict(),
            "copies": self._copies(),
            "warned": sorted(self._warned),
            "closed": self._closed,
        }

    def __setstate__(self, d: dict[str, Any]) -> None:
        with warnings.catch_warnings():  # the original warned already (``warned``)
            warnings.simplefilter("ignore")
            self.__init__(  # type: ignore[misc]
                d["optimizer"], d["controller"], d["total_steps"], **d["options"]
            )
        self.load_state_dict(d["state"])
        self._saved, self._kept, self._base_copy, self._val_copy = (*d["copies"], None)[:4]
        self._warned = set(d["warned"])
        if d["closed"]:
            self.close()

    def _load_rows(self, r: dict[str, Any]) -> None:
        dev = self._probe.device
        stats, present = r["stats"], r["present"]
        self._rows = []
        k = 0
        strided = r.get("strided") or [False] * len(r["measured"])
        for loss, vl, va, step, measured, st in zip(
            r["loss"], r["val_loss"], r["val_acc"], r["step"], r["measured"], strided
        ):
            taken: Any = STRIDED if st else None
            if measured:
                m = None
                if present is not None and not bool(present[k].all()):
                    m = present[k].to(dev)
                taken = (stats[k].to(dev), m)
                k += 1
            self._rows.append(_Row(loss, taken, vl, va, int(step), self._base_factor(int(step))))
        self._layer_groups = [int(x) for x in r["layer_groups"]]
        self._rows_layout = self._probe.layout_version

    def close(self) -> None:
        """Remove the optimizer hooks: the scheduler stops measuring and deciding; a ``step()``
        after it follows the base schedule at the current multipliers."""
        self._probe.remove()
        self._closed = True

    # ----------------------------------------------------------------- lookahead (opt-in)
    def batches(self, source: Iterable[Any]) -> Iterator[Any]:
        """Yield the batches of ``source``; with a :class:`~trajlib.deploy.Lookahead`, the
        batches after each decision point are first tried by its candidate actions (then yielded
        to your loop, unchanged). Without one, the batches pass straight through."""
        if self.lookahead is None:
            yield from source
        else:
            yield from self.lookahead.batches(source)

    def summary(self) -> str:
        """What the controller did in this run so far, in a few plain lines: its decisions and
        the moves they took, the multiplier now, what the raise guard undid, whether validation
        was reported, and anything that went wrong (each from :attr:`events`). Print it after
        training to see whether, and why, the run differed from the base schedule."""
        e = self.events
        raises = cuts = other = 0
        for _, _, a in self.actions_taken:
            lr = [d for n, d, _ in self._moves[a] if n == "lr"]
            if lr and lr[0] > 0:
                raises += 1
            elif lr and lr[0] < 0:
                cuts += 1
            elif a != self._keep:
                other += 1
        kept = e["decisions"] - raises - cuts - other
        where = Path(self.loaded.path)
        name = where.parent.name if where.name == "checkpoint" else ""
        moves = [_count(raises, ("LR raise", "LR raises")), _count(cuts, ("LR cut", "LR cuts"))]
        if other:
            moves.append(_count(other, ("other move", "other moves")))
        moves.append(f"{kept} kept")
        if e["kept_by_rule"]:
            moves[-1] += f" ({e['kept_by_rule']} by the do-no-harm rule: no move was sure to help)"
        lines = [
            f"ControllerScheduler{f' ({name})' if name else ''}: {self.step_count} of "
            f"{self.total_steps} steps, a decision every {self.every} steps; "
            f"{_count(e['decisions'], ('decision', 'decisions'))}: {', '.join(moves)}",
            "LR multiplier now (x the base schedule): "
            + ", ".join(f"{m:.3g}" for m in dict.fromkeys(self.lr_multipliers)),
        ]
        done = [_count(e[k], words) for k, words in _GUARD_WORDS.items() if e.get(k)]
        if self.guard is None:
            lines.append("raise guard: off")
        else:
            lines.append("raise guard: " + ("; ".join(done) if done else "nothing undone"))
        n_val = e["validation_reports"]
        lines.append(
            f"validation: {_count(n_val, ('report', 'reports'))}"
            if n_val
            else "validation: none reported (decisions from training signals alone)"
        )
        if self.lookahead is not None:
            lines.append(f"lookahead: compute {self.compute_ratio:.3g}x the run alone")
        bad = [_count(e[k], words) for k, words in _PROBLEM_WORDS.items() if e.get(k)]
        lines.append("problems: " + ("; ".join(bad) if bad else "none"))
        return "\n".join(lines)

    @property
    def compute_ratio(self) -> float:
        """Training compute relative to the run alone: ``1 + lookahead steps / main steps``."""
        extra = self.events.get("lookahead_steps", 0)
        return 1.0 + extra / max(self.step_count, 1)


def _watch(w: Any) -> tuple[float, float, float, float]:
    """A saved relapse watch (states saved before the pre-raise criterion lack the error)."""
    return (float(w[0]), float(w[1]), float(w[2]), float(w[3]) if len(w) > 3 else math.nan)


def _pooled(windows: list[tuple[float, float]]) -> tuple[float, float]:
    """The mean of windows' medians (each a (median, standard error)) and its standard error
    from theirs (NaN where a window had one loss)."""
    n = len(windows)
    return math.fsum(m for m, _ in windows) / n, math.sqrt(math.fsum(e * e for _, e in windows)) / n


def _plateau(windows: list[tuple[float, float]]) -> tuple[float, float]:
    """The level of a run of windows (median, standard error): their medians' mean and its
    standard error, the larger of what the windows' own errors and their scatter say."""
    n = len(windows)
    mean, own = _pooled(windows)
    scatter = (
        math.sqrt(math.fsum((m - mean) ** 2 for m, _ in windows) / (n - 1) / n) if n > 1 else 0.0
    )
    return mean, scatter if not own >= scatter else own


def _median(values: list[float]) -> float:
    """``float(np.median(values))`` of finite floats, the same bits, without NumPy's overhead
    (the middle value, or the mean of the two middle values)."""
    v = sorted(values)
    k = len(v) // 2
    return float(v[k]) if len(v) % 2 else float((v[k - 1] + v[k]) / 2)


def _median_se(values: list[float], med: float) -> float:
    """The standard error of the median of ``values`` (their median ``med``), from their median
    absolute deviation: ``1.2533 * 1.4826 * MAD / sqrt(n)`` (a normal sample's); NaN under 5
    values."""
    n = len(values)
    if n < 5:
        return math.nan
    return 1.2533 * 1.4826 * _median([abs(v - med) for v in values]) / math.sqrt(n)


def _losses_to_host(tensors: list[torch.Tensor]) -> list[float]:
    """One-element loss tensors as host floats: one stack and one transfer when they share a
    shape and device (the usual case), else one by one."""
    try:
        return torch.stack(tensors).reshape(-1).float().cpu().tolist()
    except RuntimeError:  # mixed shapes or devices
        return torch.stack([t.float().reshape(()).cpu() for t in tensors]).tolist()


def _loss_out(loss: torch.Tensor | float | None) -> float | None:
    if loss is None:
        return None
    if isinstance(loss, torch.Tensor):
        return float(loss.detach().float().reshape(()).cpu())
    return float(loss)


def _state_out(cs: Any) -> Any:
    """A controller state as plain Python / tensors (numpy arrays become tensors)."""
    if cs is None:
        return None
    if isinstance(cs, np.ndarray):
        return {"ndarray": torch.from_numpy(np.array(cs, copy=True))}
    return {"value": cs}


def _state_in(d: Any) -> Any:
    if d is None:
        return None
    if "ndarray" in d:
        return d["ndarray"].numpy().copy()
    return d["value"]
