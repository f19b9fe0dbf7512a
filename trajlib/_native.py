"""Build and load trajlib's small C libraries (ctypes), shared by every stage that has one.

A library is one C source next to the module that uses it (``measure/layer_sums.c``,
``controllers/forest_walk.c``). It takes plain buffers and lengths only and knows nothing of
Python objects. It is compiled on first use with the C compiler found on the machine (``$CC``,
``cc`` or ``gcc``), cached under ``$TRAJLIB_CACHE`` (default ``~/.cache/trajlib``) and keyed by
the source, the flags, the CPU and the compiler. Without a compiler, or with
``TRAJLIB_NATIVE=0``, :meth:`NativeLibrary.load` returns ``None`` and each caller keeps its
Python path, which gives the same numbers (tested per library), only slower.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

__all__ = ["NativeLibrary", "P", "I"]

_log = logging.getLogger(__name__)

#: ctypes argument types: an address, an int64
P = ctypes.c_void_p
I = ctypes.c_int64  # noqa: E741 - the C type's name
_LIBS = ("-lm",)  # after the source: libm for sqrt where the compiler does not inline it


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


def _compile(cc: str, flags: Sequence[str], out: Path, source: Path) -> bool:
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
            _log.debug("native %s: %s failed: %s", source.name, cc, r.stderr.strip()[-2000:])
            return False
        os.replace(tmp, out)  # atomic: concurrent workers may compile at the same time
        return True
    except (OSError, subprocess.SubprocessError) as e:
        _log.debug("native %s: %s", source.name, e)
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def unavailable() -> str | None:
    """Why nothing native can be built here, or None."""
    if os.environ.get("TRAJLIB_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return "disabled (TRAJLIB_NATIVE=0)"
    if sys.platform == "win32":
        return "unavailable on Windows"
    return None


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


class NativeLibrary:
    """One C source, compiled on demand (see the module docstring) and loaded with ctypes.

    Args:
        source: the C file.
        flags: the compiler flags; ``-march=native`` is tried first, then these alone.
        signatures: each function's argument types (all return ``void``).
    """

    def __init__(
        self, source: Path, flags: Sequence[str], signatures: Mapping[str, tuple[type, ...]]
    ) -> None:
        self.source = source
        self.stem = source.stem
        self.flags = tuple(flags)
        self.signatures = dict(signatures)
        self.status = "not loaded"

    def _candidates(self, cc: str) -> Iterator[Path]:
        """Compiled builds to try loading, in order: with ``-march=native`` first, then without;
        in the cache, then in a temporary folder. Each is keyed by every input of the build (the
        source, flags, CPU and compiler) and compiled on demand."""
        src = self.source.read_bytes()
        for flags in ((*self.flags, "-march=native"), self.flags):
            key = hashlib.sha256(
                b"\0".join(
                    [src, " ".join((*flags, *_LIBS)).encode(), _cpu_id().encode(), cc.encode()]
                )
            ).hexdigest()[:16]
            for d in (_cache_dir(), Path(tempfile.gettempdir()) / f"trajlib-{os.getuid()}"):
                path = d / f"{self.stem}-{platform.machine()}-{key}.so"
                if path.exists() or _compile(cc, flags, path, self.source):
                    yield path

    def load(self) -> ctypes.PyDLL | None:
        """The loaded library, or None (:attr:`status` says why)."""
        why = unavailable()
        if why:
            self.status = why
            return None
        cc = _compiler()
        if not cc:
            self.status = "no C compiler found ($CC, cc, gcc)"
            return None
        for path in self._candidates(cc):
            try:
                so = ctypes.PyDLL(str(path))  # keeps the GIL: calls are microseconds
            except OSError as e:
                _log.debug("native %s: %s", self.stem, e)
                continue
            for name, argtypes in self.signatures.items():
                fn = getattr(so, name)
                fn.argtypes = argtypes
                fn.restype = None
            self.status = f"loaded {path}"
            return so
        self.status = (
            f"compiling {self.source.name} with {cc} failed (set TRAJLIB_NATIVE=0 to skip)"
        )
        return None
