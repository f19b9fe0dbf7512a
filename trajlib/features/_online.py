"""Online (streaming) features: O(1) work per training step, same numbers as :func:`derive`.

The engine keeps only the primitives its feature set needs (:mod:`trajlib.features._prims`), each in
a small *updater* object written as plain code: an EMA, the last/first finite value of a column,
the row of the last change of a column, and cumulative window sums (least-squares sums, log
differences, spike and bad-row counts) with their values after each of the last ``window + 1``
rows, so that a window or a lag is one subtraction or one index at a decision.

Rows are buffered as they arrive (:meth:`OnlineFeatures.update` copies the cells the set reads,
:meth:`OnlineFeatures.update_many` takes whole columns) and folded into the updaters a block at a
time when features are asked for: numpy converts the buffered cells to float columns once, then
each updater makes one tight float loop over its column(s) -- one Python call per primitive per
block, not per row. Every updater reproduces the row-by-row recursion bit for bit (sums in row
order, ``alpha * x + beta * m``, ``math.log``), so how rows are grouped into blocks never changes
a number.

The last row given stays buffered until features are asked for, so :meth:`OnlineFeatures.amend`
can still change it (validation is reported after the step).
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from trajlib.errors import ConfigError, FeatureSetMismatchError
from trajlib.features._feature import FLOAT_OPS
from trajlib.features._prims import (
    Budget,
    ChangeStep,
    Ema,
    First,
    Last,
    LastStep,
    PrevLast,
    Prim,
    Steps,
    WinBad,
    WinLogDiff,
    WinLogLs,
    WinSpike,
    beta_of,
    prim_columns,
)
from trajlib.features._set import FeatureSet, get_feature_set

__all__ = ["OnlineFeatures"]

_STATE_FORMAT = 2
_nan = math.nan
_log = math.log
#: rows buffered by :meth:`OnlineFeatures.update` before they are folded in without being asked
_MAX_BUFFER = 4096


def _plain(a: Any) -> list[Any]:
    """A sequence of numbers as a list of Python floats, every NaN the one ``math.nan`` object (so
    that two equal states compare equal as lists)."""
    return [_nan if x != x else float(x) for x in a]


def _to_float(x: Any) -> float:
    """One cell as float64 (None and anything not convertible: NaN)."""
    if x is None:
        return _nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return _nan


def _column(col: Any, n: int) -> list[float]:
    """A column of ``n`` cells as Python floats (a missing column or a None cell: NaN)."""
    if col is None:
        return [_nan] * n
    if n > 16:  # numpy converts long columns faster
        try:
            return np.asarray(col, dtype=np.float64).reshape(n).tolist()  # type: ignore[no-any-return]
        except (TypeError, ValueError):
            pass
    try:
        return [_nan if x is None else float(x) for x in col]
    except (TypeError, ValueError):
        return [_to_float(x) for x in col]


# ---------------------------------------------------------------------------------------- block
class _Block:
    """``n`` consecutive rows (row indices ``t0 .. t0 + n - 1``) as columns of Python floats.

    A null cell is NaN; the ``finite`` flag column is 1.0 / 0.0 / NaN (null: unknown). Transformed
    sources are computed once per block and shared by the updaters that read them. "Finite" is
    tested as ``x - x == 0.0`` (False for NaN and +-inf).
    """

    def __init__(self, t0: int, cols: Mapping[str, list[float]], n: int) -> None:
        self.t0 = t0
        self.n = n
        self._cols = cols
        self._src: dict[tuple[str, str], list[float]] = {}
        self._kept: dict[tuple[str, str], list[float]] = {}

    def col(self, name: str) -> list[float]:
        c = self._cols.get(name)
        return [_nan] * self.n if c is None else c

    def values(self, col: str, tf: str) -> list[float]:
        """A source: the column after a transform (``id``; ``sq`` = x * x; ``log`` = log(x) for
        finite x > 0, else NaN), one value per row."""
        key = (col, tf)
        if key not in self._src:
            x = self.col(col)
            if tf == "id":
                v = x
            elif tf == "sq":
                v = [a * a for a in x]  # a float product never raises (overflow: inf)
            else:
                v = [_log(a) if a > 0.0 and a - a == 0.0 else _nan for a in x]
            self._src[key] = v
        return self._src[key]

    def kept(self, col: str, tf: str) -> list[float]:
        """The finite values of a source, in row order."""
        key = (col, tf)
        if key not in self._kept:
            v = self.values(col, tf)
            total = sum(v)  # finite only if every value is (NaN and +-inf propagate)
            self._kept[key] = v if total - total == 0.0 else [x for x in v if x - x == 0.0]
        return self._kept[key]

    def spread(self, before: float, per_finite: list[float], col: str, tf: str) -> list[float]:
        """Per row: the entry of ``per_finite`` (one per finite row of the source, in order) of the
        last finite row up to and including it; ``before`` until the first finite row."""
        out: list[float] = []
        append, cur, it = out.append, before, iter(per_finite)
        for x in self.values(col, tf):
            if x - x == 0.0:
                cur = next(it)
            append(cur)
        return out


# ---------------------------------------------------------------------------------------- updaters
class _Updater(ABC):
    """Streaming state of one primitive (or of one family sharing a state), updated a block of
    rows at a time. ``state()`` / ``load()`` give and take it as plain Python floats."""

    @abstractmethod
    def update(self, blk: _Block) -> None:
        """Fold the block's rows in."""

    @abstractmethod
    def state(self) -> list[Any]:
        """The state as a list of floats (nested lists for per-row tails)."""

    @abstractmethod
    def load(self, state: Sequence[Any]) -> None:
        """Restore :meth:`state`."""


def _tail(state: Any, length: int, what: str) -> list[float]:
    tail = _plain(state)
    if len(tail) != length:
        raise ConfigError("state_dict.state", f"{length} {what}", len(tail))
    return tail


class _EmaUpdater(_Updater):
    """EMA of a source: ``m = x`` at the first finite row, then ``m = alpha * x + beta * m`` at each
    later finite row. ``keep`` > 0 also keeps ``m`` after each of the last ``keep`` rows (for a lag),
    and ``before`` (the value before each row of the last block) is kept when asked for (spikes)."""

    def __init__(self, col: str, tf: str, half_life: float, keep: int = 0) -> None:
        self.col, self.tf = col, tf
        self.beta = beta_of(half_life)
        self.alpha = 1.0 - self.beta
        self.keep = keep
        self.want_before = False
        self.m = _nan
        self.tail: list[float] = [_nan] * keep
        self.before: list[float] = []

    def update(self, blk: _Block) -> None:
        a, b = self.alpha, self.beta
        m = self.m
        it = iter(blk.kept(self.col, self.tf))
        if not (self.keep or self.want_before):  # only the last value
            if m != m:
                m = next(it, _nan)
            for x in it:
                m = a * x + b * m
            self.m = m
            return
        out: list[float] = []  # m after each finite row
        append = out.append
        if m != m:
            for x in it:
                m = x
                append(m)
                break
        for x in it:
            m = a * x + b * m
            append(m)
        after = out if len(out) == blk.n else blk.spread(self.m, out, self.col, self.tf)
        if self.want_before:
            self.before = [self.m, *after[:-1]]
        if self.keep:
            self.tail.extend(after)
            del self.tail[: -self.keep]
        self.m = m

    def lagged(self, lag: int) -> float:
        return self.tail[len(self.tail) - 1 - lag]

    def state(self) -> list[Any]:
        return [*_plain([self.m]), _plain(self.tail)]

    def load(self, state: Sequence[Any]) -> None:
        self.m = float(state[0])
        self.tail = _tail(state[1], self.keep, "lagged EMA values")


class _LastUpdater(_Updater):
    """Last finite value of a column and its row; with ``want_prev`` the finite value before it;
    ``keep`` > 0 keeps the last finite value after each of the last ``keep`` rows (for a lag)."""

    def __init__(self, col: str, keep: int = 0) -> None:
        self.col = col
        self.keep = keep
        self.want_prev = False
        self.last = self.step = self.prev = _nan
        self.tail: list[float] = [_nan] * keep

    def update(self, blk: _Block) -> None:
        xs = blk.col(self.col)
        if self.keep:
            kept = blk.kept(self.col, "id")
            after = kept if len(kept) == blk.n else blk.spread(self.last, kept, self.col, "id")
            self.tail.extend(after)
            del self.tail[: -self.keep]
        found = False
        for i in range(len(xs) - 1, -1, -1):  # from the end: usually the last row is finite
            x = xs[i]
            if x - x == 0.0:
                if found:
                    self.prev = x
                    return
                if self.want_prev:
                    self.prev = self.last
                self.last, self.step = x, float(blk.t0 + i)
                if not self.want_prev:
                    return
                found = True

    def lagged(self, lag: int) -> float:
        return self.tail[len(self.tail) - 1 - lag]

    def state(self) -> list[Any]:
        return [*_plain([self.last, self.step, self.prev]), _plain(self.tail)]

    def load(self, state: Sequence[Any]) -> None:
        self.last, self.step, self.prev = (float(s) for s in state[:3])
        self.tail = _tail(state[3], self.keep, "lagged values")


class _FirstUpdater(_Updater):
    """First finite value of a column."""

    def __init__(self, col: str) -> None:
        self.col = col
        self.first = _nan

    def update(self, blk: _Block) -> None:
        if self.first == self.first:
            return
        for x in blk.col(self.col):
            if x - x == 0.0:
                self.first = x
                return

    def state(self) -> list[Any]:
        return _plain([self.first])

    def load(self, state: Sequence[Any]) -> None:
        self.first = float(state[0])


class _ChangeUpdater(_Updater):
    """Row of the last finite value that differs from the finite value before it (-1: values
    seen, never changed; NaN: none seen)."""

    def __init__(self, col: str) -> None:
        self.col = col
        self.prev = self.change = _nan

    def update(self, blk: _Block) -> None:
        xs = blk.col(self.col)
        prev, change = self.prev, self.change
        if prev == prev and xs.count(prev) == len(xs):  # the usual case: no change in the block
            if change != change:
                self.change = -1.0
            return
        for i, x in enumerate(xs):
            if x - x == 0.0:
                if prev == prev and x != prev:
                    change = float(blk.t0 + i)
                elif change != change:
                    change = -1.0
                prev = x
        self.prev, self.change = prev, change

    def state(self) -> list[Any]:
        return _plain([self.prev, self.change])

    def load(self, state: Sequence[Any]) -> None:
        self.prev, self.change = float(state[0]), float(state[1])


class _WindowSums(_Updater):
    """Cumulative sums of ``width`` per-row terms, with their values after each of the last
    ``window + 1`` rows (zeros before the first row), so the sums over the last ``w <= window``
    rows are ``tail[-1] - tail[-1 - w]``; the sums run row by row (``((c + a_0) + a_1) + ...``)."""

    width = 1

    def __init__(self, window: int) -> None:
        self.window = window
        self.tail: list[tuple[float, ...]] = [(0.0,) * self.width] * (window + 1)

    def _extend(self, rows: list[tuple[float, ...]]) -> None:
        self.tail.extend(rows)
        del self.tail[: -(self.window + 1)]

    def sums(self, w: int) -> tuple[float, ...]:
        """Sums over the last ``w`` rows (``w = 0``: over all rows)."""
        end = self.tail[-1]
        if w == 0:
            return end
        return tuple(map(operator.sub, end, self.tail[len(self.tail) - 1 - w]))

    def state(self) -> list[Any]:
        return [_plain(r) for r in self.tail]

    def load(self, state: Sequence[Any]) -> None:
        tail = [tuple(_tail(r, self.width, "sums per row")) for r in state]
        if len(tail) != self.window + 1:
            raise ConfigError("state_dict.state", f"{self.window + 1} rows of sums", len(tail))
        self.tail = tail


class _LogLsSums(_WindowSums):
    """``(n, sum t, sum t^2, sum y, sum t*y)`` over rows with finite ``y = log(col)``."""

    width = 5

    def __init__(self, col: str, window: int) -> None:
        super().__init__(window)
        self.col = col

    def update(self, blk: _Block) -> None:
        n, st, stt, sy, sty = self.tail[-1]
        rows: list[tuple[float, ...]] = []
        append, t = rows.append, blk.t0
        for y in blk.values(self.col, "log"):
            if y == y:  # log values are finite or NaN
                n += 1.0
                st += t
                stt += t * t
                sy += y
                sty += t * y
            append((n, st, stt, sy, sty))
            t += 1
        self._extend(rows)


class _LogDiffSums(_WindowSums):
    """``(n, sum d, sum d^2)`` of ``d_t = y_t - y_{t-1}`` over rows where both logs are finite."""

    width = 3

    def __init__(self, col: str, window: int) -> None:
        super().__init__(window)
        self.col = col
        self.prev = _nan  # y of the row before the block

    def update(self, blk: _Block) -> None:
        n, sd, sdd = self.tail[-1]
        rows: list[tuple[float, ...]] = []
        append, prev = rows.append, self.prev
        for y in blk.values(self.col, "log"):
            if y == y and prev == prev:
                d = y - prev
                n += 1.0
                sd += d
                sdd += d * d
            prev = y
            append((n, sd, sdd))
        self.prev = prev
        self._extend(rows)

    def state(self) -> list[Any]:
        return [*_plain([self.prev]), super().state()]

    def load(self, state: Sequence[Any]) -> None:
        self.prev = float(state[0])
        super().load(state[1])


class _SpikeCount(_WindowSums):
    """Rows whose finite value exceeds ``factor`` times the EMA of the rows before it."""

    def __init__(self, ema: _EmaUpdater, factor: float, window: int) -> None:
        super().__init__(window)
        self.ema = ema
        self.factor = float(factor)
        ema.want_before = True

    def update(self, blk: _Block) -> None:
        # reads the EMA's values before each row: EMAs are updated first (see _Plan)
        (c,) = self.tail[-1]
        rows: list[tuple[float, ...]] = []
        append, k = rows.append, self.factor
        for x, m in zip(blk.values(self.ema.col, "id"), self.ema.before, strict=True):
            if x - x == 0.0 and m == m and x > k * m:
                c += 1.0
            append((c,))
        self._extend(rows)


class _BadCount(_WindowSums):
    """Rows whose ``finite`` flag is false or whose loss is not finite."""

    def update(self, blk: _Block) -> None:
        (c,) = self.tail[-1]
        rows: list[tuple[float, ...]] = []
        append = rows.append
        for flag, x in zip(blk.col("finite"), blk.col("loss"), strict=True):
            if flag == 0.0 or not x - x == 0.0:
                c += 1.0
            append((c,))
        self._extend(rows)


# ---------------------------------------------------------------------------------------- plan
class _Plan:
    """The updaters a feature set needs, in update order, and a reader per primitive."""

    def __init__(self, fs: FeatureSet) -> None:
        self.prims = fs.prims()
        self.cols: list[str] = []
        for p in self.prims:
            for c in prim_columns(p):
                if c not in self.cols:
                    self.cols.append(c)
        self.col_index = {c: i for i, c in enumerate(self.cols)}
        # how far back each lag / window reaches, per state
        ema_keep: dict[tuple[str, float, str], int] = {}
        last_keep: dict[str, int] = {}
        win: dict[Any, int] = {}
        for p in self.prims:
            if isinstance(p, Ema):
                key = (p.col, float(p.half_life), p.transform)
                ema_keep[key] = max(ema_keep.get(key, 0), p.lag + 1 if p.lag else 0)
            elif isinstance(p, Last | LastStep | PrevLast):
                lag = p.lag if isinstance(p, Last) else 0
                last_keep[p.col] = max(last_keep.get(p.col, 0), lag + 1 if lag else 0)
            elif isinstance(p, WinSpike):
                key = (p.col, float(p.half_life), "id")
                ema_keep.setdefault(key, 0)
                k: Any = ("spike", p.col, float(p.half_life), float(p.factor))
                win[k] = max(win.get(k, 0), p.window)
            elif isinstance(p, WinLogLs | WinLogDiff):
                k = (type(p).__name__, p.col)
                win[k] = max(win.get(k, 0), p.window)
            elif isinstance(p, WinBad):
                win["bad"] = max(win.get("bad", 0), p.window)
        self.emas = {k: _EmaUpdater(k[0], k[2], k[1], keep) for k, keep in ema_keep.items()}
        self.lasts = {c: _LastUpdater(c, keep) for c, keep in last_keep.items()}
        for p in self.prims:
            if isinstance(p, PrevLast):
                self.lasts[p.col].want_prev = True
        self.firsts = {p.col: _FirstUpdater(p.col) for p in self.prims if isinstance(p, First)}
        self.changes = {
            p.col: _ChangeUpdater(p.col) for p in self.prims if isinstance(p, ChangeStep)
        }
        self.windows: dict[Any, _WindowSums] = {}
        for k, w in win.items():
            if k == "bad":
                self.windows[k] = _BadCount(w)
            elif k[0] == "spike":
                self.windows[k] = _SpikeCount(self.emas[(k[1], k[2], "id")], k[3], w)
            elif k[0] == "WinLogLs":
                self.windows[k] = _LogLsSums(k[1], w)
            else:
                self.windows[k] = _LogDiffSums(k[1], w)
        # EMAs first: spike counts read the EMA before each row of the block
        self.updaters: list[_Updater] = [
            *self.emas.values(),
            *self.lasts.values(),
            *self.firsts.values(),
            *self.changes.values(),
            *self.windows.values(),
        ]

    def reader(self, p: Prim, eng: OnlineFeatures) -> Callable[[], Any]:
        """A closure returning the current value of primitive ``p``."""
        if isinstance(p, Steps):
            return lambda: float(eng._rows_done)
        if isinstance(p, Budget):
            return lambda: float(eng._budget)
        if isinstance(p, Ema):
            e = self.emas[(p.col, float(p.half_life), p.transform)]
            lag = p.lag
            return (lambda: e.m) if lag == 0 else (lambda: e.lagged(lag))
        if isinstance(p, Last):
            last = self.lasts[p.col]
            lag = p.lag
            return (lambda: last.last) if lag == 0 else (lambda: last.lagged(lag))
        if isinstance(p, LastStep):
            ls = self.lasts[p.col]
            return lambda: ls.step
        if isinstance(p, PrevLast):
            lp = self.lasts[p.col]
            return lambda: lp.prev
        if isinstance(p, First):
            fi = self.firsts[p.col]
            return lambda: fi.first
        if isinstance(p, ChangeStep):
            ch = self.changes[p.col]
            return lambda: ch.change
        if isinstance(p, WinLogLs | WinLogDiff):
            ws = self.windows[(type(p).__name__, p.col)]
            w = p.window
            return lambda: ws.sums(w)
        if isinstance(p, WinSpike | WinBad):
            if isinstance(p, WinSpike):
                cnt = self.windows[("spike", p.col, float(p.half_life), float(p.factor))]
            else:
                cnt = self.windows["bad"]
            w = p.window
            if w == 0:
                return lambda: (cnt.sums(0)[0], float(eng._rows_done))
            return lambda: (cnt.sums(w)[0], float(min(w, eng._rows_done)))
        raise ConfigError("primitive", "a known primitive kind", type(p).__name__)


# ---------------------------------------------------------------------------------------- engine
class OnlineFeatures:
    """Streaming features for one run: feed step-table rows, ask for features at decision points.

    ``update(row)`` takes one step-table row as a mapping (keys = :mod:`trajlib.schema` column names;
    a missing key means null) and costs O(1). ``values()`` returns the features for a decision at
    step ``s`` = number of rows given so far, as float64 ``[len(feature_set)]`` (NaN where a feature
    cannot be computed yet), equal to what :func:`trajlib.features.derive` gives for ``(run, s)``.
    """

    def __init__(self, feature_set: str | FeatureSet = "default", budget: int = 1) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget <= 0:
            raise ConfigError("budget", "a positive integer (steps)", budget)
        self._fs = get_feature_set(feature_set)
        self._budget = int(budget)
        self._features = self._fs.features
        self.reset()

    # ------------------------------------------------------------------ public API
    @property
    def feature_set(self) -> FeatureSet:
        return self._fs

    @property
    def names(self) -> list[str]:
        return self._fs.names

    @property
    def budget(self) -> int:
        return self._budget

    @property
    def steps_seen(self) -> int:
        """Rows given to :meth:`update` so far (the ``s`` of the next :meth:`values`)."""
        return self._rows_done + self._n_rows + self._n_blocked

    def reset(self) -> None:
        """Forget every row (start of a new run)."""
        self._plan = _Plan(self._fs)
        self._cols = tuple(self._plan.cols)
        get = operator.itemgetter(*self._cols) if self._cols else (lambda row: ())
        self._get: Callable[[Mapping[str, Any]], tuple[Any, ...]] = (
            get if len(self._cols) != 1 else (lambda row: (get(row),))
        )
        self._rows_done = 0
        self._flat: list[Any] = []  # buffered single rows' cells (raw), row after row
        self._n_rows = 0  # rows in self._flat
        # buffered blocks: (n, one list of n floats per column read)
        self._blocks: list[tuple[int, list[list[float]]]] = []
        self._n_blocked = 0  # rows in self._blocks
        pos = {p: i for i, p in enumerate(self._plan.prims)}
        self._readers = [self._plan.reader(p, self) for p in self._plan.prims]
        self._calls = [(f.compute, [pos[q] for q in f.requires()]) for f in self._features]

    def update(self, row: Mapping[str, Any]) -> None:
        """Add one step-table row (row ``t`` = step ``t``); missing keys and None mean null.

        Only the columns the feature set reads are copied; the rows are folded into the state
        when features are asked for (so :meth:`amend` can still change the last one).
        """
        if type(row) is dict:  # the usual row: all columns at once (a missing one: KeyError)
            try:
                self._flat.extend(self._get(row))
            except KeyError:
                self._flat.extend(map(row.get, self._cols))
        else:  # any other mapping (a defaultdict must not invent values): .get, as documented
            self._flat.extend(map(row.get, self._cols))
        self._n_rows += 1
        if self._n_rows >= _MAX_BUFFER:
            self._fold(keep_last=True)

    def update_many(self, columns: Mapping[str, Any], n: int) -> None:
        """Add ``n`` rows given as columns: name -> a sequence of ``n`` values (a missing name
        means null in every row). Same result as ``n`` calls of :meth:`update`, without building
        a mapping per row."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ConfigError("n", "a non-negative integer (rows)", n)
        for key in self._cols:
            col = columns.get(key)
            if col is not None and len(col) != n:
                raise ConfigError(f"columns[{key!r}]", f"{n} values", len(col))
        if not n:
            return
        n = int(n)
        cols = [_column(columns.get(key), n) for key in self._cols]
        self._rows_to_block()
        self._blocks.append((n, cols))
        self._n_blocked += n
        if self._n_blocked >= _MAX_BUFFER:
            self._fold(keep_last=True)

    def amend(self, key: str, value: Any) -> None:
        """Set ``key`` on the last row given to :meth:`update` (allowed until the next update/values)."""
        if not self._n_rows and not self._blocks:
            raise ConfigError(
                "amend",
                "called after update() and before the next values()",
                key,
                "report validation for a step before asking for the next decision's features",
            )
        i = self._plan.col_index.get(key)
        if i is None:  # a column this feature set does not read
            return
        if self._n_rows:  # the last row given came through update()
            self._flat[len(self._flat) - len(self._cols) + i] = value
        else:
            self._blocks[-1][1][i][-1] = _to_float(value)

    def values(self) -> np.ndarray:
        """Features for a decision at ``s`` = rows seen: float64 array ``[len(feature_set)]``."""
        self._fold()
        pv = [r() for r in self._readers]
        out: list[float] = []
        append, ops, nan = out.append, FLOAT_OPS, math.nan
        for compute, args in self._calls:
            try:
                v = float(compute([pv[i] for i in args], ops))
            except (ArithmeticError, ValueError, TypeError):  # a user feature may trip; never raise
                v = nan
            append(v if v - v == 0.0 else nan)
        return np.array(out, dtype=np.float64)

    def values_dict(self) -> dict[str, float]:
        """:meth:`values` keyed by feature name."""
        return dict(zip(self.names, self.values().tolist(), strict=True))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-exactly (plain Python types only)."""
        self._fold(keep_last=True)
        # after the fold, at most the last row is left, as a block of one row
        pending = _plain([c[0] for c in self._blocks[0][1]]) if self._blocks else None
        return {
            "format": _STATE_FORMAT,
            "feature_set": self._fs.name,
            "feature_set_hash": self._fs.hash,
            "budget": self._budget,
            "rows": self._rows_done,
            "state": [u.state() for u in self._plan.updaters],
            "pending": pending,
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` taken from an engine with the same feature set."""
        if not isinstance(d, Mapping) or d.get("format") != _STATE_FORMAT:
            raise ConfigError(
                "state_dict.format", f"{_STATE_FORMAT}", getattr(d, "get", lambda k: d)("format")
            )
        if d.get("feature_set_hash") != self._fs.hash:
            raise FeatureSetMismatchError(
                f"state_dict was taken with feature set {d.get('feature_set')!r} "
                f"(hash {str(d.get('feature_set_hash'))[:12]}); this engine uses {self._fs.name!r} "
                f"(hash {self._fs.hash[:12]})"
            )
        states = list(d["state"])
        if len(states) != len(self._plan.updaters):
            raise ConfigError(
                "state_dict.state", f"{len(self._plan.updaters)} updaters", len(states)
            )
        pending = d.get("pending")
        if pending is not None and len(pending) != len(self._cols):
            raise ConfigError("state_dict.pending", f"{len(self._cols)} values", len(pending))
        self.reset()
        for u, s in zip(self._plan.updaters, states, strict=True):
            u.load(s)
        self._budget = int(d["budget"])
        self._rows_done = int(d["rows"])
        if pending is not None:
            self._blocks.append((1, [[float(x)] for x in pending]))
            self._n_blocked = 1

    # ------------------------------------------------------------------ internals
    def _rows_to_block(self) -> None:
        """Turn the buffered single rows into a block (keeps the order with update_many)."""
        if not self._n_rows:
            return
        flat, n = self._flat, self._n_rows
        self._flat, self._n_rows = [], 0
        try:
            blk = np.array(flat, dtype=np.float64)
        except (TypeError, ValueError):  # an odd cell: convert one by one
            blk = np.array([_to_float(x) for x in flat], dtype=np.float64)
        self._blocks.append((n, blk.reshape(n, len(self._cols)).T.tolist()))
        self._n_blocked += n

    def _fold(self, keep_last: bool = False) -> None:
        """Run the updaters over the buffered rows (``keep_last``: all but the last one)."""
        self._rows_to_block()
        if not self._blocks:
            return
        if len(self._blocks) == 1:
            n, cols = self._blocks[0]
        else:
            n = self._n_blocked
            cols = [[x for _, b in self._blocks for x in b[i]] for i in range(len(self._cols))]
        self._blocks, self._n_blocked = [], 0
        if keep_last:
            self._blocks, self._n_blocked = [(1, [[c.pop()] for c in cols])], 1
            n -= 1
        if not n:
            return
        blk = _Block(self._rows_done, dict(zip(self._cols, cols, strict=True)), n)
        for u in self._plan.updaters:
            u.update(blk)
        self._rows_done += n
