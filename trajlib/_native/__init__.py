"""Optional native kernels: fused per-layer sums for the step statistics.

The per-step record (collector) and the optimizer-hook probe (deploy) reduce every step to five
per-layer sums (:data:`trajlib.stepstats.RAW_LAYER_SUMS`). In eager PyTorch that is a chain of
whole-model operations (copies, products, block sums, a small matmul), each a pass over memory
plus a few microseconds of dispatch: on small CPU models it costs 10-20 % of the training step.
``layer_sums.c`` does it in one pass per layer, called through :mod:`ctypes` in about a
microsecond. (``torch.compile`` fuses as well, but its per-call overhead is larger than the
whole step statistics of a small model.)

The library is compiled on first use with the C compiler found on the machine (``$CC``, ``cc``
or ``gcc``), cached under ``$TRAJLIB_CACHE`` (default ``~/.cache/trajlib``), and keyed by the
source, the flags and the CPU. Without a compiler, or with ``TRAJLIB_NATIVE=0``, :func:`lib`
returns ``None`` and callers use their PyTorch path: the numbers agree to float32 rounding
(tested), only the speed differs. CPU float32 tensors only.

``hooks.c`` is a small CPython extension built the same way where the Python headers are
installed (:func:`hooks`): the deployed probe's optimizer hooks, whose usual step then runs
without the interpreter (its checks, the gradients' addresses and the two kernels). Without the
headers the probe's Python hooks call the same kernels through :mod:`ctypes`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import numpy as np

__all__ = ["hooks", "hooks_status", "lib", "ptrs", "status"]

_log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("layer_sums.c")
_HOOKS_SOURCE = Path(__file__).with_name("hooks.c")  # includes layer_sums.c
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
_HOOKS_STATUS = "not loaded"
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


def _candidates(
    cc: str, source: Path, stem: str, extra: tuple[str, ...] = (), suffix: str = ".so"
) -> Iterator[Path]:
    """Compiled builds of ``source`` to try loading, in order: with ``-march=native`` first, then
    without; in the cache, then in a temporary folder. Each is keyed by every input of the build
    (the sources, flags, CPU and compiler) and compiled on demand."""
    src = b"".join(p.read_bytes() for p in dict.fromkeys((source, _SOURCE)))  # hooks.c includes
    for flags in ((*_FLAGS, "-march=native", *extra), (*_FLAGS, *extra)):
        key = hashlib.sha256(
            b"\0".join([src, " ".join((*flags, *_LIBS)).encode(), _cpu_id().encode(), cc.encode()])
        ).hexdigest()[:16]
        for d in (_cache_dir(), Path(tempfile.gettempdir()) / f"trajlib-{os.getuid()}"):
            path = d / f"{stem}-{platform.machine()}-{key}{suffix}"
            if path.exists() or _compile(cc, flags, path, source):
                yield path


def _load() -> ctypes.PyDLL | None:
    global _STATUS
    why = _unavailable()
    if why:
        _STATUS = why
        return None
    cc = _compiler()
    if not cc:
        _STATUS = "no C compiler found ($CC, cc, gcc)"
        return None
    for path in _candidates(cc, _SOURCE, "layer_sums"):
        try:
            so = ctypes.PyDLL(str(path))  # keeps the GIL: calls are microseconds
        except OSError as e:
            _log.debug("native kernels: %s", e)
            continue
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(so, name)
            fn.argtypes = argtypes
            fn.restype = None
        _STATUS = f"loaded {path}"
        return so
    _STATUS = f"compiling {_SOURCE.name} with {cc} failed (set TRAJLIB_NATIVE=0 to skip)"
    return None


def _load_hooks() -> ModuleType | None:
    global _HOOKS_STATUS
    if lib() is None:
        _HOOKS_STATUS = f"no native kernels: {_STATUS}"
        return None
    include = sysconfig.get_paths().get("include") or ""
    if not (Path(include) / "Python.h").exists():
        _HOOKS_STATUS = f"no Python headers (Python.h) in {include!r}"
        return None
    cc = _compiler() or "cc"
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    for path in _candidates(cc, _HOOKS_SOURCE, "hooks", (f"-I{include}",), suffix):
        try:
            spec = importlib.util.spec_from_file_location("_trajlib_hooks", path)
            if spec is None or spec.loader is None:
                continue
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        except (ImportError, OSError) as e:
            _log.debug("native hooks: %s", e)
            continue
        _HOOKS_STATUS = f"loaded {path}"
        return mod
    _HOOKS_STATUS = f"compiling {_HOOKS_SOURCE.name} with {cc} failed"
    return None


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


@functools.cache
def hooks() -> ModuleType | None:
    """The probe's hooks as a CPython extension (compiled and cached on first call), or ``None``
    (no native kernels, no Python headers, or the build failed: the Python hooks run)."""
    return _logged(_load_hooks(), "hooks", hooks_status)


def hooks_status() -> str:
    """Why the native hooks are or are not used (after :func:`hooks` was called)."""
    return _HOOKS_STATUS


def ptrs(values: list[int]) -> np.ndarray:
    """An int64 array of addresses, to pass as ``arr.ctypes.data``."""
    return np.asarray(values, dtype=np.int64)
