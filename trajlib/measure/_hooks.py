"""Optimizer step hooks that measure what the features need, in a user's own training loop.

Part of the measurement contract, so that both the Recorder (:mod:`trajlib.collect`) and the
deployed scheduler (:mod:`trajlib.deploy`) hook a user's optimizer with the same code.

The probe registers a pre- and a post-hook on the optimizer, so it sees every real ``step()`` —
whoever calls ``zero_grad``, with gradient accumulation (the statistics are of the accumulated
gradient), with ``torch.amp.GradScaler`` (a step the scaler skips never reaches the hooks; the
scheduler records it as not finite), and with ``step(closure)`` as Lightning calls it (the closure
is wrapped so the gradient is read after the closure has computed it).

The measuring itself is the measurement contract's (:mod:`trajlib.measure`): the hooks hand the
parameters and gradients to a :class:`~trajlib.measure.LayerSums` backend (the native kernels on
CPU float32 parameters where they load, else the torch backend) and keep its ``[5, L]`` result
for :meth:`StepProbe.take`. Nothing is read on the host: the per-layer tensors are reduced to the
step-table statistics (:func:`summarise`) in one batch when the scheduler needs them.

With ``stats_every = k > 1`` only every k-th step is measured, as
:func:`trajlib.measure.is_measured` defines it (steps are counted by :meth:`StepProbe.take`: the
step after ``n`` takes is step ``n``). With ``dots`` the step before a measured one is measured
too: a cosine is with the previous performed step, as in the collector's record. The other steps
cost the hooks a counter and a comparison, nothing is copied, and :meth:`StepProbe.take` returns
:data:`STRIDED` for them.

Definitions match the collector's (``trajlib.schema``): layers are parameter tensors; weight norms
are of theta_t (before the update); the update is u_t = theta_{t+1} - theta_t; cosines are with the
previous *performed* step. Parameters without a gradient at a step count as a zero gradient in the
norms and are left out of that step's per-layer update ratios (their ``present`` flag is 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import numpy as np
import torch

from trajlib.errors import ConfigError
from trajlib.measure._stats import RAW_LAYER_SUMS, STEP_STATS, step_stats
from trajlib.measure._stride import is_measured

if TYPE_CHECKING:
    from trajlib.measure import LayerSums

__all__ = ["StepProbe", "PROBE_COLUMNS", "LAYER_ROWS", "STRIDED", "summarise"]

PROBE_COLUMNS = (*STEP_STATS, "finite")
#: Rows of the per-layer tensor of one step, ``[len(LAYER_ROWS), L]``.
LAYER_ROWS = RAW_LAYER_SUMS
_STATE_FORMAT = "trajlib-step-probe/2"
_OLD_FORMAT = "trajlib-step-probe/1"  # prev kept in the old block-padded layout


class _Strided:
    """The type of :data:`STRIDED`."""

    _instance: _Strided | None = None

    def __new__(cls) -> _Strided:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "STRIDED"

    def __reduce__(self) -> str:
        return "STRIDED"


#: What :meth:`StepProbe.take` returns for an optimizer step that ran but was not measured
#: (``stats_every > 1``); ``None`` means no optimizer step ran (e.g. GradScaler skipped it).
STRIDED: Final = _Strided()

Taken = tuple[torch.Tensor, torch.Tensor | None]


class StepProbe:
    """Measures gradient / weight / update statistics of optimizer steps.

    After each ``optimizer.step()``, :meth:`take` returns ``(layer_stats, present)``:
    ``layer_stats`` is a float32 tensor ``[5, L]`` on :attr:`device` (rows :data:`LAYER_ROWS`;
    the two dot-product rows are NaN when there is no previous step) and ``present`` is ``None``
    when every parameter had a gradient, else a bool tensor ``[L]``; :data:`STRIDED` for a step
    left out by ``stats_every``; ``None`` when no optimizer step ran since the last take.
    Layers are the parameter tensors of ``optimizer.param_groups``, in order; :attr:`layer_groups`
    gives the param-group index of each layer.

    Args:
        optimizer: the optimizer to hook.
        dots: compute the consecutive-step dot products (grad/update cosines). ``False`` saves a
            buffer and a reduction per step when the feature set reads no cosine.
        stats_every: measure every k-th step only (see the module docstring).
        backend: the :func:`trajlib.measure.layer_sums` backend: ``"auto"``, ``"torch"`` or
            ``"native"``.
    """

    STRIDED: Final = STRIDED

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        dots: bool = True,
        stats_every: int = 1,
        backend: str = "auto",
    ) -> None:
        if isinstance(stats_every, bool) or not isinstance(stats_every, int) or stats_every < 1:
            raise ConfigError("stats_every", "a positive integer", stats_every)
        self.optimizer = optimizer
        self.dots = bool(dots)
        self.stats_every = stats_every
        self.backend = backend
        self.steps_seen = 0  # optimizer steps the hooks saw (measured or not)
        #: optimizer steps in the step the last :meth:`take` closed (1 when the caller takes after
        #: every optimizer step; more when several ran in between, e.g. a scheduler stepped per
        #: epoch; 0 when none ran)
        self.last_take_steps = 0
        self._since = 0
        self.errors = 0  # exceptions caught inside the hooks (the step itself is never affected)
        self.layout_version = 0  # bumped whenever the parameter layout changes
        self.layer_groups: list[int] = []
        self._group_lists: list[Any] = []
        self._params: list[torch.Tensor] = []  # what is measured (complex: the real views)
        self._owners: list[torch.Tensor] = []  # the optimizer's parameters themselves
        self._complex = False
        self._sums: LayerSums | None = None
        self._present_cache: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}
        self._index = 0  # the step in flight (takes so far)
        self._skip = False  # the step in flight is left out by the stride
        self._armed = False
        self._missing: list[int] = []
        self._pending: Taken | _Strided | None = None
        # Under ``torch.compile(opt.step)`` dynamo traces the step's hooks with fake tensors, whose
        # storage the native kernels must never see: the hooks then run eagerly (a graph break).
        self._pre_eager = torch.compiler.disable(self._pre)
        self._post_eager = torch.compiler.disable(self._post)
        self._handles = [
            optimizer.register_step_pre_hook(self._pre_hook),
            optimizer.register_step_post_hook(self._post_hook),
        ]

    def remove(self) -> None:
        """Remove the optimizer hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def device(self) -> torch.device:
        """Where the per-layer tensors live (the parameters' device; CPU before any parameter)."""
        if self._sums is not None:
            return self._sums.device
        if self._params:
            return self._params[0].device
        return torch.device("cpu")

    @property
    def backend_name(self) -> str | None:
        """The measuring backend in use (``"native"``, ``"torch"``), None before the first step."""
        return None if self._sums is None else self._sums.name

    # ------------------------------------------------------------------ layout
    def _layout_changed(self) -> bool:
        groups = self.optimizer.param_groups
        gl = self._group_lists
        if len(groups) != len(gl):
            return True
        for g, lst in zip(groups, gl):
            if g["params"] is not lst[0] or len(lst[0]) != lst[1]:
                return True
        return False

    def _rebuild(self) -> None:
        groups = self.optimizer.param_groups
        self._group_lists = [(g["params"], len(g["params"])) for g in groups]
        owners = [p for g in groups for p in g["params"]]
        self._owners = owners
        # a complex parameter is measured as its real view (real and imaginary parts as two
        # floats: the same norms, and the real part of the inner products for the cosines)
        self._complex = any(p.is_complex() for p in owners)
        self._params = [torch.view_as_real(p.detach()) if p.is_complex() else p for p in owners]
        self.layer_groups = [gi for gi, g in enumerate(groups) for _ in g["params"]]
        self.layout_version += 1
        self._present_cache = {}
        self._sums = None
        if self._params:
            from trajlib.measure import layer_sums

            self._sums = layer_sums(self._params, dots=self.dots, backend=self.backend)

    def _grads(self) -> list[torch.Tensor | None]:
        grads = [p.grad for p in self._owners]
        self._missing = [i for i, g in enumerate(grads) if g is None]
        if self._complex:
            return [g if g is None or not g.is_complex() else torch.view_as_real(g) for g in grads]
        return grads

    # ------------------------------------------------------------------ hooks
    def _pre_hook(self, opt: Any, args: Any, kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return self._pre_eager(opt, args, kwargs)
        return self._pre(opt, args, kwargs)

    def _post_hook(self, opt: Any, args: Any, kwargs: Any) -> None:
        if torch.compiler.is_compiling():
            self._post_eager(opt, args, kwargs)
            return
        self._post(opt, args, kwargs)

    def _pre(self, opt: Any, args: Any, kwargs: Any) -> Any:
        self._armed = False
        if self.stats_every > 1:
            self._skip = not is_measured(self._index, self.stats_every, self.dots)
            if self._skip:
                return None
        grad_mode = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)  # cheaper than torch.no_grad() per call
        try:
            if self._layout_changed():
                self._rebuild()
            sums = self._sums
            if sums is None:
                return None
            if not sums.usable(self._params):
                self._rebuild()  # the parameters moved or changed type
                sums = self._sums
                if sums is None:
                    return None
            # torch passes ``args`` including the optimizer itself: (self, closure?)
            closure = kwargs.get("closure") if kwargs else None
            if closure is None and len(args) > 1:
                closure = args[1]
            if closure is None:
                sums.pre(self._params, self._grads())
                self._armed = True
                return None
            # The gradient is computed inside step() by the closure (Lightning, LBFGS): keep the
            # weights now and the gradient when the closure returns.
            sums.pre(self._params, None)
            self._armed = True

            def wrapped() -> Any:
                out = closure()
                mode = torch.is_grad_enabled()
                torch._C._set_grad_enabled(False)
                try:
                    if self._sums is not None:
                        self._sums.grads(self._grads())
                except Exception:  # noqa: BLE001 - instrumentation never breaks the step
                    self._failed()
                finally:
                    torch._C._set_grad_enabled(mode)
                return out

            if kwargs and "closure" in kwargs:
                return args, {**kwargs, "closure": wrapped}
            return (args[0], wrapped, *args[2:]), kwargs
        except Exception:  # noqa: BLE001 - instrumentation never breaks the step it watches
            self._failed()
        finally:
            torch._C._set_grad_enabled(grad_mode)
        return None

    def _post(self, opt: Any, args: Any, kwargs: Any) -> None:
        self._since += 1
        if self._skip:
            self._pending = STRIDED
            self.steps_seen += 1
            if self._sums is not None:
                self._sums.forget()  # the previous performed step is not kept
            return
        if not self._armed:
            return
        self._armed = False
        grad_mode = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            sums = self._sums
            if sums is None:
                return
            stats = sums.post(self._params)
            self.steps_seen += 1
            present = None
            if self._missing:
                present = self._present(tuple(self._missing), stats.device)
            self._pending = (stats, present)
        except Exception:  # noqa: BLE001
            self._failed()
        finally:
            torch._C._set_grad_enabled(grad_mode)

    def _present(self, missing: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The ``present`` flags for these missing layers, made once per pattern and device (no
        host-to-device copy on later steps; nobody writes them)."""
        key = (missing, device)
        flags = self._present_cache.get(key)
        if flags is None:
            cpu = torch.ones(len(self._params), dtype=torch.bool)
            cpu[list(missing)] = False
            flags = self._present_cache[key] = cpu.to(device)
        return flags

    def _failed(self) -> None:
        self.errors += 1
        self._armed = False
        self._group_lists = []  # rebuild on the next step

    # ------------------------------------------------------------------ reading
    def take(self) -> Taken | _Strided | None:
        """The step since the last ``take``: its per-layer statistics, :data:`STRIDED` (it ran
        but was not measured) or None (no optimizer step ran). Each call closes one step."""
        out, self._pending = self._pending, None
        self._index += 1
        self.last_take_steps, self._since = self._since, 0
        return out

    @property
    def next_step(self) -> int:
        """Index of the next optimizer step the hooks will see: what ``stats_every`` counts.
        Each :meth:`take` advances it; set it to align the probe with a scheduler's own count of
        steps (e.g. after a restart at another step)."""
        return self._index

    @next_step.setter
    def next_step(self, value: int) -> None:
        self._index = int(value)

    @property
    def has_pending(self) -> bool:
        """Whether an optimizer step ran (measured or strided) and was not yet taken."""
        return self._pending is not None

    def reset(self) -> None:
        """Forget the previous step (the next cosines are undefined)."""
        if self._sums is not None:
            self._sums.forget()
        self._pending = None
        self._since = 0

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The previous step's gradient and update (flat float32 tensors) and plain counters.

        Tensors are saved as they are (``torch.save`` / ``torch.load(weights_only=True)`` read
        them); everything else is plain Python.
        """
        prev = None
        if self._sums is not None and self.dots:
            kept = self._sums.previous()
            if kept is not None:
                prev = {"grad": kept[0].clone(), "update": kept[1].clone()}
        pending: Any = None
        if self._pending is STRIDED:
            pending = "strided"
        elif isinstance(self._pending, tuple):
            s, m = self._pending
            pending = {"stats": s.clone(), "present": None if m is None else m.clone()}
        return {
            "format": _STATE_FORMAT,
            "steps_seen": self.steps_seen,
            "errors": self.errors,
            "stats_every": self.stats_every,
            "index": self._index,
            "layer_numels": [p.numel() for p in self._params] if self._params else None,
            "prev": prev,
            "pending": pending,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (also the previous format). When the optimizer's parameters
        differ in shape from the saved ones, the previous step is forgotten (the next cosines are
        NaN)."""
        fmt = state.get("format") if isinstance(state, dict) else None
        if fmt not in (_STATE_FORMAT, _OLD_FORMAT):
            got = fmt if isinstance(state, dict) else type(state).__name__
            raise ConfigError("state_dict.probe.format", repr(_STATE_FORMAT), got)
        self.steps_seen = int(state["steps_seen"])
        self.errors = int(state["errors"])
        self._since = 0
        self._index = int(state.get("index", 0))
        self._rebuild()
        pending = state.get("pending")
        self._pending = None
        if pending == "strided":
            self._pending = STRIDED
        elif pending is not None and self._params:
            dev = self.device
            m = pending["present"]
            self._pending = (pending["stats"].to(dev), None if m is None else m.to(dev))
        prev = state.get("prev")
        numels = [p.numel() for p in self._params]
        if prev is None or self._sums is None or state.get("layer_numels") != numels:
            return
        grad, update = prev["grad"], prev["update"]
        if fmt == _OLD_FORMAT:  # block-padded: each layer started on a block boundary
            from trajlib.measure._torch import block_layout

            block, _, offsets = block_layout(numels)
            grad, update = (
                torch.cat([t[o : o + k] for o, k in zip(offsets, numels)]) for t in (grad, update)
            )
        self._sums.restore(grad, update)


def summarise(
    stats: torch.Tensor | np.ndarray,
    present: torch.Tensor | np.ndarray | None,
    prev_norms: torch.Tensor | np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Step-table statistics from per-layer statistics, for a run of consecutive steps.

    Args:
        stats: ``[n, 5, L]`` per-layer rows (:data:`LAYER_ROWS`) of ``n`` consecutive measured
            steps (of the layers that make up one unit: the whole model or one param group).
        present: ``None`` or bool ``[n, L]``: layers that had a gradient (others are left out of
            the update ratios).
        prev_norms: ``[2]`` global gradient and update norm of the step before the first one, or
            ``None``.

    Returns:
        ``([n, len(PROBE_COLUMNS)] float32, [2] norms of the last step)``, host arrays (one
        transfer of the small ``stats``; float32 like the step table the controllers learned on).
    """
    out, last = step_stats(stats, prev_norms, present)
    finite = np.isfinite(out[:, 0])
    return np.concatenate([out, finite[:, None]], 1).astype(np.float32), last
