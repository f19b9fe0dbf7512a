"""The optional native backend: CPU float32 per-layer sums in one pass per layer (C, ctypes).

``layer_sums.c`` takes plain buffers and lengths only (arrays of addresses and element counts; it
knows nothing of Python objects) and does, per layer, what the torch backend
(:mod:`trajlib.measure._torch`) does with whole-model operations: before a step, |g|^2, g . g_prev
and |theta|^2 while keeping g and theta; after it, u = theta_new - theta, |u|^2 and u . u_prev while
keeping u. On small CPU models the chain of eager torch operations costs more in dispatch than the
arithmetic; one C pass per layer does not (figures: ``tests/benchmarks/bench_deploy.py``, which
reports both backends side by side).

The library is compiled on first use with the C compiler found on the machine (``$CC``, ``cc`` or
``gcc``), cached under ``$TRAJLIB_CACHE`` (default ``~/.cache/trajlib``) and keyed by the source,
the flags and the CPU. Without a compiler, or with ``TRAJLIB_NATIVE=0``, :func:`lib` returns
``None`` and :func:`trajlib.measure.layer_sums` picks the torch backend: the numbers agree to
float32 rounding (tested), only the speed differs. ``tl_record`` (the collector's per-step record of
a population) and ``tl_step_stats`` (:func:`trajlib.measure.step_stats`) live in the same library.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["NativeSums", "lib", "load_source", "native_ok", "ptrs", "status"]

_log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("layer_sums.c")
_FLAGS = (
    "-std=c99",
    "-O3",
    "-fPIC",
    "-shared",
    # let the compiler vectorise the float32 reductions (reassociation only; NaN and inf still
    # propagate: no -ffinite-math-only)
    "-fno-math-errno",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
)
_LIBS = ("-lm",)  # after the source: libm for sqrt where the compiler does not inline it
_STATUS = "not loaded"
_T = TypeVar("_T")

_P = ctypes.c_void_p
_I = ctypes.c_int64
_SIGNATURES = {
    "tl_record": (_I, _P, _P, _P, _P, _P, _P, _P, _I, _P, _P),
    "tl_grad": (_I, _P, _P, _P, ctypes.c_int, _P),
    "tl_weights": (_I, _P, _P, _P, _P),
    "tl_pre": (_I, _P, _P, _P, _P, _P, ctypes.c_int, _P),
    "tl_update": (_I, _P, _P, _P, _P, ctypes.c_int, _P),
    "tl_step_stats": (_I, _I, _I, _P, _P, _P, _P, _P, _P),
}


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(sorted(set(keep)))


def _cache_dir() -> Path:
    env = os.environ.get("TRAJLIB_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trajlib"


def _compile(cc: str, flags: tuple[str, ...], out: Path, source: Path = _SOURCE) -> bool:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        r = subprocess.run(
            [cc, *flags, "-o", tmp, str(source), *_LIBS],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            _log.debug("native kernels: %s failed: %s", cc, r.stderr.strip()[-2000:])
            return False
        os.replace(tmp, out)  # atomic: concurrent workers may compile at the same time
        return True
    except (OSError, subprocess.SubprocessError) as e:
        _log.debug("native kernels: %s", e)
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _unavailable() -> str | None:
    """Why nothing native can be built here, or None."""
    if os.environ.get("TRAJLIB_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return "disabled (TRAJLIB_NATIVE=0)"
    if sys.platform == "win32":
        return "unavailable on Windows"
    return None


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _candidates(cc: str, source: Path, stem: str) -> Iterator[Path]:
    """Compiled builds of ``source`` to try loading, in order: with ``-march=native`` first, then
    without; in the cache, then in a temporary folder. Each is keyed by every input of the build
    (the sources, flags, CPU and compiler) and compiled on demand."""
    src = source.read_bytes()
    for flags in ((*_FLAGS, "-march=native"), _FLAGS):
        key = hashlib.sha256(
            b"\0".join([src, " ".join((*flags, *_LIBS)).encode(), _cpu_id().encode(), cc.encode()])
        ).hexdigest()[:16]
        for d in (_cache_dir(), Path(tempfile.gettempdir()) / f"trajlib-{os.getuid()}"):
            path = d / f"{stem}-{platform.machine()}-{key}.so"
            if path.exists() or _compile(cc, flags, path, source):
                yield path


def load_source(
    source: Path, stem: str, signatures: Mapping[str, tuple[Any, ...]]
) -> tuple[ctypes.PyDLL | None, str]:
    """Compile (or find cached) and load the C file ``source`` as ``stem-*.so``; declare each of
    ``signatures``' functions (argument types; no return value). Returns the library, or None,
    and a line saying which file was loaded or why none was. The same rules as the kernels':
    ``TRAJLIB_NATIVE=0`` disables it, the compiler is ``$CC``, ``cc`` or ``gcc``, builds are
    cached under ``$TRAJLIB_CACHE`` and keyed by every input of the build."""
    why = _unavailable()
    if why:
        return None, why
    cc = _compiler()
    if not cc:
        return None, "no C compiler found ($CC, cc, gcc)"
    for path in _candidates(cc, source, stem):
        try:
            so = ctypes.PyDLL(str(path))  # keeps the GIL: calls are microseconds
        except OSError as e:
            _log.debug("native %s: %s", stem, e)
            continue
        for name, argtypes in signatures.items():
            fn = getattr(so, name)
            fn.argtypes = argtypes
            fn.restype = None
        return so, f"loaded {path}"
    return None, f"compiling {source.name} with {cc} failed (set TRAJLIB_NATIVE=0 to skip)"


def _load() -> ctypes.PyDLL | None:
    global _STATUS
    so, _STATUS = load_source(_SOURCE, "layer_sums", _SIGNATURES)
    return so


def _logged(obj: _T, what: str, why: Callable[[], str]) -> _T:
    if obj is None:
        _log.info("trajlib native %s not used: %s", what, why())
    return obj


@functools.cache
def lib() -> ctypes.PyDLL | None:
    """The compiled kernels (compiled and cached on first call), or ``None`` when unavailable."""
    return _logged(_load(), "kernels", status)


def status() -> str:
    """Why the kernels are or are not used (after :func:`lib` was called)."""
    return _STATUS


def ptrs(values: list[int]) -> np.ndarray:
    """An int64 array of addresses, to pass as ``arr.ctypes.data``."""
    return np.asarray(values, dtype=np.int64)


def native_ok(p: torch.Tensor) -> bool:
    """Whether the native backend can read this parameter (CPU, float32, contiguous, dense)."""
    return (
        p.device.type == "cpu"
        and p.dtype is torch.float32
        and p.is_contiguous()
        and not p.is_sparse
        and p.numel() > 0
    )


#: Steps whose ``[5, L]`` outputs share one allocation.
_OUT_CHUNK = 64


class NativeSums:
    """:class:`~trajlib.measure.LayerSums` by the C kernels (CPU float32 parameters only).

    One buffer ``[3, P]`` (rows g, theta, u; layers back to back) keeps the last step; the
    kernels update it in place while they sum, so the previous step is read as it is overwritten
    (no second buffer, no swap). The address tables (counts, weights, kept rows) are made once per
    layout; the weights' addresses are checked every step (:meth:`usable`), the gradients' are
    read every step (a missing gradient is address 0: a zero gradient).

    Args:
        params: the layers, each :func:`native_ok`.
        dots: compute g . g_prev and u . u_prev (else those rows are NaN).

    Raises:
        RuntimeError: the kernels are not available (:func:`status` says why).
    """

    name = "native"

    def __init__(self, params: Sequence[torch.Tensor], *, dots: bool = True) -> None:
        kernels = lib()
        if kernels is None:
            raise RuntimeError(f"native kernels not available: {status()}")
        if not params or not all(native_ok(p) for p in params):
            raise ValueError("NativeSums reads CPU float32 contiguous dense parameters only")
        self._lib = kernels
        self.dots = bool(dots)
        self.device = torch.device("cpu")
        self.n_layers = L = len(params)
        self._numels = numels = [p.numel() for p in params]
        offsets = np.concatenate([[0], np.cumsum(numels)[:-1]]).astype(np.int64)
        P = int(sum(numels))
        self._store = torch.zeros(3, P, dtype=torch.float32)
        base = self._store.data_ptr()
        rows = [ptrs([base + 4 * (r * P + int(o)) for o in offsets]) for r in range(3)]
        self._n = ptrs(numels)
        self._w = ptrs([p.data_ptr() for p in params])
        self._g = np.zeros(L, dtype=np.int64)
        self._wptrs = [p.data_ptr() for p in params]
        self._keep = rows  # the address arrays must outlive the calls
        n, w, g = self._n.ctypes.data, self._w.ctypes.data, self._g.ctypes.data
        self._addr = (n, w, g, *(a.ctypes.data for a in rows))
        self._has_prev = False
        self._out: tuple[torch.Tensor, int] | None = None
        self._views: tuple[torch.Tensor, ...] = ()
        self._next, self._base = _OUT_CHUNK, 0

    # ------------------------------------------------------------------ the contract
    def usable(self, params: Sequence[torch.Tensor]) -> bool:
        """Whether the parameters are where the address table says (``model.to(...)`` or
        ``p.data = ...`` moves them: re-pointed here if they are still CPU float32, else False)."""
        w = [p.data_ptr() for p in params]
        if w != self._wptrs:
            if not all(native_ok(p) for p in params):
                return False
            self._wptrs = w
            self._w[:] = w
        return True

    def _new_out(self) -> int:
        """This step's ``[5, L]`` output (rows of a chunk allocated every ``_OUT_CHUNK`` steps;
        a chunk lives while anyone holds one of its rows); returns its address."""
        i = self._next
        L = self.n_layers
        if i == _OUT_CHUNK:
            chunk = torch.empty(_OUT_CHUNK, 5, L, dtype=torch.float32)
            self._views, self._base, i = chunk.unbind(0), chunk.data_ptr(), 0
        self._next = i + 1
        self._out = (self._views[i], self._base + 20 * L * i)
        return self._out[1]

    def _grad_ptrs(self, grads: Sequence[torch.Tensor | None]) -> list[Any]:
        """The gradients' addresses into the table (0 for a missing one; an odd layout or dtype
        is copied to a dense float32 tensor first); returns what must stay alive for the call."""
        keep: list[Any] = list(grads)
        try:
            addr = [g.data_ptr() for g in keep if g.is_contiguous()]
        except Exception:  # noqa: BLE001 - None, sparse or exotic gradients: the loop below
            addr = []
        if len(addr) == len(keep):  # the usual case: every gradient there and contiguous
            self._g[:] = addr
            return keep
        for i, g in enumerate(keep):
            if g is None:
                self._g[i] = 0
                continue
            if g.is_sparse or not g.is_contiguous() or g.dtype is not torch.float32:
                keep[i] = g = g.to_dense().to(torch.float32).contiguous()
            self._g[i] = g.data_ptr()
        return keep

    def pre(
        self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None] | None
    ) -> None:
        """|theta|^2 (theta kept) and, unless ``grads`` is None, |g|^2 and g . g_prev (g kept)."""
        n, w, g, gbuf, wbuf, _ = self._addr
        out = self._new_out()
        if grads is None:
            self._lib.tl_weights(self.n_layers, n, w, wbuf, out)
            return
        keep = self._grad_ptrs(grads)
        self._lib.tl_pre(self.n_layers, n, w, g, wbuf, gbuf, int(self._has_prev), out)
        del keep

    def grads(self, grads: Sequence[torch.Tensor | None]) -> None:
        """|g|^2 and g . g_prev, g kept (after :meth:`pre` with ``grads=None``)."""
        if self._out is None:
            return
        keep = self._grad_ptrs(grads)
        n, _, g, gbuf, _, _ = self._addr
        self._lib.tl_grad(self.n_layers, n, g, gbuf, int(self._has_prev), self._out[1])
        del keep

    def post(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """u = theta_new - theta, |u|^2 and u . u_prev, u kept; the step's ``[5, L]`` sums."""
        if self._out is None:
            raise RuntimeError("NativeSums.post() without pre()")
        stats, out = self._out
        self._out = None
        n, w, _, _, wbuf, ubuf = self._addr
        self._lib.tl_update(self.n_layers, n, w, wbuf, ubuf, int(self._has_prev), out)
        self._has_prev = self.dots
        return stats

    def forget(self) -> None:
        """No previous step: the next step's dot products are NaN."""
        self._has_prev = False

    def previous(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The kept step's gradient and update, flat float32 ``[P]`` (None if none)."""
        if not self._has_prev:
            return None
        return self._store[0].clone(), self._store[2].clone()

    def restore(self, grad: torch.Tensor, update: torch.Tensor) -> None:
        """Make ``(grad, update)`` (as :meth:`previous` returns them) the previous step."""
        if not self.dots:
            return
        self._store[0].copy_(grad)
        self._store[2].copy_(update)
        self._has_prev = True
