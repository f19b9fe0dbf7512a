"""The measurement contract: per-layer sums of an optimizer step, and the statistics derived from them.

Every part of trajlib that measures training (the collector's per-step record, the deployed
scheduler's optimizer hooks) reduces a step to five sums per layer (a layer is a parameter tensor),
:data:`RAW_LAYER_SUMS`: ``|g|^2``, ``|theta|^2``, ``|u|^2``, ``g . g_prev`` and ``u . u_prev``,
where g is the gradient the step used, theta the weights before it, u = theta_after - theta the
update, and ``_prev`` the previous performed step. :func:`step_stats` turns a run of such sums into
the step-table statistics (:data:`STEP_STATS`: norms, cosines, update ratios), one definition for
training data and deployment alike; :func:`is_measured` / :func:`stride_masks` say which steps a
feature set's statistics stride (``stats_every``) measures, for both sides.

A backend is anything that follows :class:`LayerSums`. Two ship:

* :class:`TorchSums` (:mod:`trajlib.measure._torch`), the reference: one flat buffer and a few
  whole-model torch operations, on every device, never synchronising with the host;
* :class:`NativeSums` (:mod:`trajlib.measure._native`), optional, CPU float32 only: C kernels over
  plain buffers and lengths, compiled on first use (the torch backend is used where they do not
  load). It is kept because it is cheaper on small CPU models (``tests/benchmarks/bench_deploy.py``
  reports both side by side).

:func:`layer_sums` picks one for a list of parameters. Adding a backend: a class with the methods
of :class:`LayerSums`, an entry in :data:`BACKENDS`, and its case in the parity tests
(``tests/measure/test_backends.py``).

:class:`StepProbe` (:mod:`trajlib.measure._hooks`) hooks a user's optimizer (pre / post step
hooks) and measures every real step with such a backend; the Recorder of :mod:`trajlib.collect` and
the deployed scheduler of :mod:`trajlib.deploy` both use it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

from trajlib.measure import _native
from trajlib.measure._native import NativeSums, native_ok
from trajlib.measure._stats import RAW_LAYER_SUMS, STEP_STATS, step_stats
from trajlib.measure._stride import is_measured, stride_masks
from trajlib.measure._torch import TorchSums

__all__ = [
    "BACKENDS",
    "LayerSums",
    "NativeSums",
    "PROBE_COLUMNS",
    "RAW_LAYER_SUMS",
    "STEP_STATS",
    "STRIDED",
    "StepProbe",
    "TorchSums",
    "is_measured",
    "layer_sums",
    "native_status",
    "step_stats",
    "stride_masks",
    "summarise",
]


@runtime_checkable
class LayerSums(Protocol):
    """Per-layer sums of optimizer steps over one fixed list of parameters (the layers).

    A step is measured by two calls around the optimizer's update: ``pre(params, grads)`` before
    it (or ``pre(params, None)`` then ``grads(grads)`` when the gradient is computed inside
    ``step()`` by a closure), and ``post(params)`` after it, which returns the step's sums as a
    float32 tensor ``[5, L]`` on :attr:`device` (rows :data:`RAW_LAYER_SUMS`; the two dot-product
    rows NaN when there is no previous step or without ``dots``). A ``None`` gradient counts as
    zero. Calls never read a result on the host.
    """

    name: str
    device: torch.device
    n_layers: int
    dots: bool

    def usable(self, params: Sequence[torch.Tensor]) -> bool:
        """Whether this instance can still read ``params`` (they may have moved since)."""
        ...

    def pre(
        self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None] | None
    ) -> None:
        """Before the update: keep the weights and, unless ``grads`` is None, the gradients."""
        ...

    def grads(self, grads: Sequence[torch.Tensor | None]) -> None:
        """The gradients of a step whose :meth:`pre` had none."""
        ...

    def post(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """After the update: the update kept; the step's ``[5, L]`` sums (a new tensor)."""
        ...

    def forget(self) -> None:
        """Drop the previous step (the next dot products are NaN)."""
        ...

    def previous(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The last kept step's gradient and update, each flat ``[sum of numels]``, or None."""
        ...

    def restore(self, grad: torch.Tensor, update: torch.Tensor) -> None:
        """Make a step saved by :meth:`previous` the previous step."""
        ...


#: Backend name -> (constructor, whether it can read these parameters).
BACKENDS: dict[str, tuple[Callable[..., LayerSums], Callable[[Sequence[torch.Tensor]], bool]]] = {
    "torch": (TorchSums, lambda params: True),
    "native": (
        NativeSums,
        lambda params: _native.lib() is not None and all(native_ok(p) for p in params),
    ),
}


def layer_sums(
    params: Sequence[torch.Tensor], *, dots: bool = True, backend: str = "auto"
) -> LayerSums:
    """A backend for these parameters.

    Args:
        params: the layers, in order (at least one).
        dots: compute the consecutive-step dot products.
        backend: ``"auto"`` (native where it loads and can read every parameter, else torch),
            ``"torch"`` or ``"native"`` (which falls back to torch where it cannot read them).
    """
    if backend not in ("auto", *BACKENDS):
        from trajlib.errors import ConfigError

        raise ConfigError("backend", f"one of {['auto', *BACKENDS]}", backend)
    order = ["native", "torch"] if backend in ("auto", "native") else [backend]
    for name in order:
        make, can_read = BACKENDS[name]
        if can_read(params):
            return make(params, dots=dots)
    return TorchSums(params, dots=dots)


def native_status() -> str:
    """Whether the native kernels load here, and why not (compiles them on first call)."""
    _native.lib()
    return _native.status()


# the hook layer builds on the names above (it imports layer_sums when it first measures)
from trajlib.measure._hooks import PROBE_COLUMNS, STRIDED, StepProbe, summarise  # noqa: E402
