"""Primitive statistics shared by features (the only state the online engine keeps).

A feature does not read the step table itself: it names the *primitives* it needs and combines
their values at a decision point. Both engines compute every primitive with the same semantics:
the offline engine (:mod:`trajlib.features._offline`) over many runs at once, the online engine
(:mod:`trajlib.features._online`) one step-table row at a time.

Semantics, for a decision at step ``s``: the visible rows are those with ``step < s``, in step
order; ``t`` is the 0-based row index within the run (``t = step`` in a complete step table). A
*window* of ``w`` is the last ``w`` visible rows; a *lag* of ``k`` hides the last ``k`` visible rows
(so in a complete table "rows ``s - w <= t < s``" and "rows ``t < s - k``"). A value is *finite* when it is not null, NaN or +-inf; a *source* is a column
after a transform (``id``, ``sq`` = x * x, ``log`` = log(x) for x > 0, else NaN) and a source row
counts only when the transformed value is finite.

* :class:`Ema` -- exponential moving average of a source with half-life ``half_life`` rows:
  ``m = x`` at the first finite row, then ``m = alpha * x + beta * m`` (``beta = 2 ** (-1 / h)``,
  ``alpha = 1 - beta``) at each later finite row; non-finite rows leave ``m`` unchanged. Value: ``m``
  after rows ``t < s - lag``; NaN if there was no finite row.
* :class:`Last` -- last finite value of a column among rows ``t < s - lag`` (NaN if none).
* :class:`LastStep` -- row index ``t`` of that last finite value (NaN if none).
* :class:`PrevLast` -- the finite value before the last one (NaN if fewer than two).
* :class:`First` -- first finite value of a column (NaN if none among rows ``t < s``).
* :class:`ChangeStep` -- row index of the last row whose finite value differs from the previous
  finite value of the column; -1 when finite values were seen but never changed; NaN if none seen.
* :class:`WinLogLs` -- sums over finite ``y_t = log(col_t)``, rows ``s - window <= t < s``:
  ``(n, sum t, sum t^2, sum y, sum t*y)`` (for a least-squares slope).
* :class:`WinLogDiff` -- over rows ``s - window <= t < s`` whose ``y_t`` and ``y_{t-1}`` are both
  finite, ``d_t = y_t - y_{t-1}``: ``(n, sum d, sum d^2)``.
* :class:`WinSpike` -- ``(count, rows)``: number of rows in the window whose finite value exceeds
  ``factor`` times the EMA (half-life ``half_life``) of the rows before it, and the number of rows
  in the window.
* :class:`WinBad` -- ``(count, rows)``: rows in the window (``window = 0``: all rows ``t < s``) whose
  ``finite`` flag is false or whose loss is not finite (null, NaN, inf).
* :class:`Steps` / :class:`Budget` -- the decision step ``s`` and the run's step budget (NaN when
  unknown or not positive).
"""

from __future__ import annotations

from dataclasses import dataclass

TRANSFORMS = ("id", "sq", "log")


def beta_of(half_life: float) -> float:
    """Decay per finite row of an EMA with this half-life (in rows)."""
    return 2.0 ** (-1.0 / float(half_life))


@dataclass(frozen=True)
class Steps:
    """The decision step ``s`` (number of rows visible)."""


@dataclass(frozen=True)
class Budget:
    """The run's step budget (NaN when unknown or not positive)."""


@dataclass(frozen=True)
class Ema:
    col: str
    half_life: float
    transform: str = "id"
    lag: int = 0

    @property
    def base(self) -> Ema:
        return Ema(self.col, self.half_life, self.transform, 0)


@dataclass(frozen=True)
class Last:
    col: str
    lag: int = 0


@dataclass(frozen=True)
class LastStep:
    col: str


@dataclass(frozen=True)
class PrevLast:
    col: str


@dataclass(frozen=True)
class First:
    col: str


@dataclass(frozen=True)
class ChangeStep:
    col: str


@dataclass(frozen=True)
class WinLogLs:
    col: str
    window: int


@dataclass(frozen=True)
class WinLogDiff:
    col: str
    window: int


@dataclass(frozen=True)
class WinSpike:
    col: str
    half_life: float
    factor: float
    window: int


@dataclass(frozen=True)
class WinBad:
    window: int = 0  # 0 = all rows seen


Prim = (
    Steps
    | Budget
    | Ema
    | Last
    | LastStep
    | PrevLast
    | First
    | ChangeStep
    | WinLogLs
    | WinLogDiff
    | WinSpike
    | WinBad
)


def prim_columns(p: Prim) -> tuple[str, ...]:
    """Step-table columns a primitive reads."""
    if isinstance(p, Steps | Budget):
        return ()
    if isinstance(p, WinBad):
        return ("loss", "finite")
    return (p.col,)
