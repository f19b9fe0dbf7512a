"""The :class:`Feature` interface and the two arithmetic back-ends its formula runs on.

A feature names the primitives it needs (:mod:`trajlib.features._prims`) and combines their values
in :meth:`Feature.compute`, written once against a small ``ops`` namespace. The offline engine calls
it with :data:`NUMPY_OPS` and arrays of shape ``[n_points]``; the online engine calls it with
:data:`FLOAT_OPS` and Python floats. Same formula, same primitives: same numbers.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from trajlib.features._prims import Prim, prim_columns

__all__ = ["Feature", "FloatOps", "NumpyOps", "FLOAT_OPS", "NUMPY_OPS"]


class FloatOps:
    """Scalar (Python float) arithmetic that never raises: undefined results are NaN."""

    nan = math.nan

    @staticmethod
    def log(x: float) -> float:
        """log(x) for finite x > 0, else NaN."""
        return math.log(x) if (x > 0.0 and x - x == 0.0) else math.nan

    @staticmethod
    def div(a: float, b: float) -> float:
        """a / b, NaN when b is 0 or either is NaN."""
        try:
            return a / b
        except ZeroDivisionError:
            return math.nan

    @staticmethod
    def sqrt0(x: float) -> float:
        """sqrt(max(x, 0)); NaN stays NaN."""
        if x != x:
            return math.nan
        return math.sqrt(x) if x > 0.0 else 0.0

    @staticmethod
    def where(cond: bool, a: float, b: float) -> float:
        return a if cond else b

    @staticmethod
    def maximum(a: float, b: float) -> float:
        if a != a or b != b:
            return math.nan
        return a if a >= b else b

    @staticmethod
    def minimum(a: float, b: float) -> float:
        if a != a or b != b:
            return math.nan
        return a if a <= b else b


class NumpyOps:
    """Vectorized counterpart of :class:`FloatOps` (float64 arrays; call under ``np.errstate``)."""

    nan = math.nan

    @staticmethod
    def log(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        ok = (x > 0.0) & np.isfinite(x)
        return np.log(np.where(ok, x, 1.0)) + np.where(ok, 0.0, np.nan)

    @staticmethod
    def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        return np.where(b == 0.0, np.nan, a / np.where(b == 0.0, 1.0, b))

    @staticmethod
    def sqrt0(x: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(x, 0.0))  # np.maximum propagates NaN

    @staticmethod
    def where(cond: np.ndarray, a: Any, b: Any) -> np.ndarray:
        return np.where(cond, a, b)

    @staticmethod
    def maximum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.maximum(a, b)

    @staticmethod
    def minimum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.minimum(a, b)


FLOAT_OPS = FloatOps()
NUMPY_OPS = NumpyOps()


class Feature(ABC):
    """One named, scale-free number computed at a decision point from the rows before it.

    Subclasses are small frozen dataclasses: their fields are the feature's parameters (they enter
    the feature-set hash together with ``name`` and the class's ``version``). Implement
    :meth:`requires` (the primitives read) and :meth:`compute` (the formula over primitive values,
    written against ``ops`` so it runs on floats online and on arrays offline).

    Class attributes: ``version`` (bump when the definition changes), ``scale_free`` (invariant to
    multiplying the ``loss``/``val_loss`` columns by a constant and the ``lr`` column by another;
    checked by a test).
    """

    version: ClassVar[int] = 1
    scale_free: ClassVar[bool] = True

    @property
    @abstractmethod
    def name(self) -> str:
        """Column name of the feature in derived tables."""

    @abstractmethod
    def requires(self) -> tuple[Prim, ...]:
        """Primitives this feature reads."""

    @abstractmethod
    def compute(self, v: Sequence[Any], ops: Any) -> Any:
        """The feature from the values of :meth:`requires`'s primitives, in that order.

        Values are floats (window primitives: tuples of floats) with ``ops = FLOAT_OPS`` online,
        and float64 arrays ``[n_points]`` (tuples of arrays) with ``ops = NUMPY_OPS`` offline.
        """

    @property
    def columns(self) -> tuple[str, ...]:
        """Step-table columns read (through the primitives)."""
        cols: list[str] = []
        for prim in self.requires():
            for c in prim_columns(prim):
                if c not in cols:
                    cols.append(c)
        return tuple(cols)

    def params(self) -> dict[str, Any]:
        """Parameters (dataclass fields) as plain JSON-able values."""
        if dataclasses.is_dataclass(self):
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {}

    def describe(self) -> str:
        """One-line definition: the first docstring line after ``name:``, with parameters filled in."""
        doc = (type(self).__doc__ or "").strip().splitlines()
        line = doc[0].split(": ", 1)[-1] if doc else self.name
        try:
            return line.format(**self.params())
        except (KeyError, IndexError, ValueError):
            return line

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"
