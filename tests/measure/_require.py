"""The native kernels in tests: required wherever a C compiler is (every supported setup has one:
the README's setup assumes gcc), skipped only where there is none."""

from __future__ import annotations

import os
import shutil

import pytest

from trajlib.measure import _native


def require_native():
    """The loaded kernels; a failure if a compiler is present and they did not load."""
    lib = _native.lib()
    if lib is None:
        if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
            pytest.skip("no C compiler on this machine: the PyTorch paths are used")
        if os.environ.get("TRAJLIB_NATIVE", "1") == "0":
            pytest.skip("native kernels disabled by TRAJLIB_NATIVE=0")
        pytest.fail(f"native kernels did not load: {_native.status()}")
    return lib
