"""Online (streaming) features: O(1) work per training step, same numbers as :func:`derive`.

The engine keeps only the primitives its feature set needs (:mod:`trajlib.features._prims`): EMA
states, last/first values, cumulative window sums and a ring buffer of the cumulative sums (and of
the lagged states) over the last ``max(window, lag) + 1`` steps. Per step it runs one straight-line
function generated for the set (no loop over features), so the cost per step is a few dozen float
operations; the features themselves are only combined in :meth:`OnlineFeatures.values`.

A row is processed when the *next* row arrives or when :meth:`OnlineFeatures.values` is called, so
:meth:`OnlineFeatures.amend` can still change it (validation is reported after the step).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
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
)
from trajlib.features._set import FeatureSet, get_feature_set

__all__ = ["OnlineFeatures"]

_STATE_FORMAT = 1


class _Plan:
    """Slot layout and the generated per-step function for one feature set."""

    def __init__(self, fs: FeatureSet) -> None:
        self.prims = fs.prims()
        self.n_slots = 1  # slot 0: rows seen (int)
        self.init: list[float] = [0]
        self.cols: list[str] = []
        self.srcs: list[tuple[str, str]] = []
        self.ema: dict[tuple[str, float, str], int] = {}
        self.last: dict[str, tuple[int, int, int]] = {}  # col -> (value, step, previous value)
        self.first: dict[str, int] = {}
        self.change: dict[str, tuple[int, int]] = {}  # col -> (previous value, change step)
        self.ls: dict[str, int] = {}  # col -> first of 5 cumulative slots
        self.diff: dict[str, tuple[int, int]] = {}  # col -> (previous y, first of 3 cumulative)
        self.spike: dict[tuple[str, float, float], int] = {}
        self.bad: int | None = None
        self.hist_slots: list[int] = []
        self.max_back = 0
        for p in self.prims:
            self._add(p)
        self.hist_size = self.max_back + 1
        self.hist_index = {slot: i for i, slot in enumerate(self.hist_slots)}
        self.source = self._generate()
        namespace: dict[str, Any] = {"_nan": math.nan, "_log": math.log}
        exec(compile(self.source, "<trajlib.features online step>", "exec"), namespace)  # noqa: S102
        self.step: Callable[[list[Any], list[Any], tuple[Any, ...]], None] = namespace["_step"]
        self.extract: Callable[[Mapping[str, Any]], tuple[Any, ...]] = namespace["_extract"]
        #: ``update(st, hist, pending, row) -> new pending``: step the pending row, extract ``row``
        self.update: Callable[
            [list[Any], list[Any], tuple[Any, ...] | None, Mapping[str, Any]], tuple[Any, ...]
        ] = namespace["_update"]
        #: ``update_many(st, hist, pending, columns, n) -> new pending``: ``update`` for n rows
        self.update_many: Callable[
            [list[Any], list[Any], tuple[Any, ...] | None, Mapping[str, Any], int],
            tuple[Any, ...] | None,
        ] = namespace["_update_many"]
        self.col_index = {c: i for i, c in enumerate(self.cols)}

    # ------------------------------------------------------------------ layout
    def _slot(self, init: float = math.nan, hist: bool = False) -> int:
        i = self.n_slots
        self.n_slots += 1
        self.init.append(init)
        if hist:
            self.hist_slots.append(i)
        return i

    def _col(self, col: str) -> None:
        if col not in self.cols:
            self.cols.append(col)

    def _src(self, col: str, tf: str) -> None:
        self._col(col)
        if (col, tf) not in self.srcs:
            self.srcs.append((col, tf))

    def _ema_slot(self, col: str, hl: float, tf: str) -> int:
        key = (col, float(hl), tf)
        if key not in self.ema:
            self._src(col, tf)
            self.ema[key] = self._slot()
        return self.ema[key]

    def _last_slots(self, col: str) -> tuple[int, int, int]:
        if col not in self.last:
            self._col(col)
            self.last[col] = (self._slot(), self._slot(), self._slot())
        return self.last[col]

    def _mark_hist(self, slot: int) -> None:
        if slot not in self.hist_slots:
            self.hist_slots.append(slot)

    def _add(self, p: Prim) -> None:
        if isinstance(p, Steps | Budget):
            return
        if isinstance(p, Ema):
            slot = self._ema_slot(p.col, p.half_life, p.transform)
            if p.lag > 0:
                self._mark_hist(slot)
                self.max_back = max(self.max_back, p.lag)
        elif isinstance(p, Last | LastStep | PrevLast):
            v, _, _ = self._last_slots(p.col)
            if isinstance(p, Last) and p.lag > 0:
                self._mark_hist(v)
                self.max_back = max(self.max_back, p.lag)
        elif isinstance(p, First):
            if p.col not in self.first:
                self._col(p.col)
                self.first[p.col] = self._slot()
        elif isinstance(p, ChangeStep):
            if p.col not in self.change:
                self._col(p.col)
                self.change[p.col] = (self._slot(), self._slot())
        elif isinstance(p, WinLogLs):
            if p.col not in self.ls:
                self._src(p.col, "log")
                self.ls[p.col] = self._slot(0.0, True)
                for _ in range(4):
                    self._slot(0.0, True)
            self.max_back = max(self.max_back, p.window)
        elif isinstance(p, WinLogDiff):
            if p.col not in self.diff:
                self._src(p.col, "log")
                prev = self._slot()
                c0 = self._slot(0.0, True)
                self._slot(0.0, True)
                self._slot(0.0, True)
                self.diff[p.col] = (prev, c0)
            self.max_back = max(self.max_back, p.window)
        elif isinstance(p, WinSpike):
            key = (p.col, float(p.half_life), float(p.factor))
            if key not in self.spike:
                self._ema_slot(p.col, p.half_life, "id")
                self.spike[key] = self._slot(0.0, True)
            self.max_back = max(self.max_back, p.window)
        elif isinstance(p, WinBad):
            if self.bad is None:
                self._col("loss")
                self._col("finite")
                self.bad = self._slot(0.0, True)
            self.max_back = max(self.max_back, p.window)
        else:  # pragma: no cover - every Prim kind is handled above
            raise ConfigError("primitive", "a known primitive kind", type(p).__name__)

    # ------------------------------------------------------------------ code generation
    def _generate(self) -> str:
        cv = {c: f"x{i}" for i, c in enumerate(self.cols)}
        L: list[str] = ["def _extract(row):", "    g = row.get"]
        conv = []
        for c, x in cv.items():
            L.append(f"    {x} = g({c!r})")
            if c == "finite":
                conv.append(f"None if {x} is None else bool({x})")
            else:
                conv.append(f"_nan if {x} is None else float({x})")
        ret = f"({', '.join(conv)},)" if conv else "()"
        L.append(f"    return {ret}")
        body = self._step_body(cv)
        L += ["", "def _step(st, hist, vals):", *body]
        # update: step the pending row (if any), then extract the new one -- one call per row
        L += ["", "def _update(st, hist, vals, row):", "    if vals is not None:"]
        L += ["    " + ln for ln in body]
        L.append("    g = row.get")
        L += [f"    {x} = g({c!r})" for c, x in cv.items()]
        L.append(f"    return {ret}")
        # update_many: the same per row, reading columns (sequences of n values, None = missing)
        L += ["", "def _update_many(st, hist, vals, _cols, _n):", "    _nn = None"]
        for i, c in enumerate(cv):
            L.append(f"    _c{i} = _cols.get({c!r})")
            L.append(f"    if _c{i} is None:")
            L.append("        _nn = _nn or (None,) * _n")
            L.append(f"        _c{i} = _nn")
        L.append("    for _i in range(_n):")
        L.append("        if vals is not None:")
        L += ["        " + ln for ln in body]
        L += [f"        {x} = _c{i}[_i]" for i, x in enumerate(cv.values())]
        L.append(f"        vals = {ret}")
        L.append("    return vals")
        return "\n".join(L) + "\n"

    def _step_body(self, cv: dict[str, str]) -> list[str]:
        """Lines of the per-row state update (``vals`` -> ``st``, ``hist``), indented 4."""
        L = ["    t = st[0]", "    st[0] = t + 1"]
        if cv:
            L.append(f"    {', '.join(cv.values())}, = vals")
        # one finiteness test per column (x - x == 0.0: False for NaN and +-inf)
        fin = {c: f"k{x[1:]}" for c, x in cv.items() if c != "finite"}
        for c, k in fin.items():
            L.append(f"    {k} = {cv[c]} - {cv[c]} == 0.0")
        sv: dict[tuple[str, str], tuple[str, str]] = {}
        for i, (c, tf) in enumerate(self.srcs):
            x, v, f = cv[c], f"v{i}", f"f{i}"
            if tf == "id":
                v, f = x, fin[c]
            elif tf == "sq":
                L.append(f"    {v} = {x} * {x}")
                L.append(f"    {f} = {v} - {v} == 0.0")
            else:  # log
                L.append(f"    {f} = {x} > 0.0 and {fin[c]}")
                L.append(f"    {v} = _log({x}) if {f} else _nan")
            sv[(c, tf)] = (v, f)
        if self.bad is not None:
            xf = cv["finite"]
            L.append(f"    if ({xf} is not None and not {xf}) or not {fin['loss']}:")
            L.append(f"        st[{self.bad}] += 1.0")
        for (c, hl, k), slot in self.spike.items():
            v, f = sv[(c, "id")]
            e = self.ema[(c, hl, "id")]
            L.append(f"    if {f} and st[{e}] == st[{e}] and {v} > {k!r} * st[{e}]:")
            L.append(f"        st[{slot}] += 1.0")
        # EMAs of one source start together (at its first finite value): one emptiness test each
        by_src: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for (c, hl, tf), e in self.ema.items():
            by_src.setdefault((c, tf), []).append((e, beta_of(hl)))
        for key, emas in by_src.items():
            v, f = sv[key]
            e0 = emas[0][0]
            L.append(f"    if {f}:")
            L.append(f"        if st[{e0}] == st[{e0}]:")
            for e, b in emas:
                L.append(f"            st[{e}] = {1.0 - b!r} * {v} + {b!r} * st[{e}]")
            L.append("        else:")
            L.append(f"            {' = '.join(f'st[{e}]' for e, _ in emas)} = {v}")
        for c, c0 in self.ls.items():
            v, f = sv[(c, "log")]
            L.append(f"    if {f}:")
            L.append(f"        st[{c0}] += 1.0")
            L.append(f"        st[{c0 + 1}] += t")
            L.append(f"        st[{c0 + 2}] += t * t")
            L.append(f"        st[{c0 + 3}] += {v}")
            L.append(f"        st[{c0 + 4}] += t * {v}")
        for c, (prev, c0) in self.diff.items():
            v, f = sv[(c, "log")]
            L.append(f"    if {f} and st[{prev}] - st[{prev}] == 0.0:")
            L.append(f"        d = {v} - st[{prev}]")
            L.append(f"        st[{c0}] += 1.0")
            L.append(f"        st[{c0 + 1}] += d")
            L.append(f"        st[{c0 + 2}] += d * d")
            L.append(f"    st[{prev}] = {v}")
        for c, (prev, ch) in self.change.items():
            x = cv[c]
            L.append(f"    if {fin[c]}:")
            L.append(f"        if st[{prev}] == st[{prev}] and {x} != st[{prev}]:")
            L.append(f"            st[{ch}] = float(t)")
            L.append(f"        elif st[{ch}] != st[{ch}]:")
            L.append(f"            st[{ch}] = -1.0")
            L.append(f"        st[{prev}] = {x}")
        if self.last:
            L.append("    ft = float(t)")
        for c, (lv, lt, lp) in self.last.items():
            x = cv[c]
            L.append(f"    if {fin[c]}:")
            L.append(f"        st[{lp}] = st[{lv}]")
            L.append(f"        st[{lv}] = {x}")
            L.append(f"        st[{lt}] = ft")
        for c, fi in self.first.items():
            L.append(f"    if {fin[c]} and st[{fi}] != st[{fi}]:")
            L.append(f"        st[{fi}] = {cv[c]}")
        if self.hist_slots:
            items = ", ".join(f"st[{s}]" for s in self.hist_slots)
            L.append(f"    hist[t % {self.hist_size}] = ({items},)")
        return L


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
        self._plan = _Plan(self._fs)
        self._update = self._plan.update
        self._features = self._fs.features
        pos = {p: i for i, p in enumerate(self._plan.prims)}
        self._getters = [self._getter(p) for p in self._plan.prims]
        self._args = [[pos[q] for q in f.requires()] for f in self._features]
        self._calls = [(f.compute, a) for f, a in zip(self._features, self._args, strict=True)]
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
        return int(self._st[0]) + (self._pending is not None)

    def reset(self) -> None:
        """Forget every row (start of a new run)."""
        self._st: list[Any] = list(self._plan.init)
        self._hist: list[Any] = [None] * self._plan.hist_size
        self._pending: tuple[Any, ...] | None = None

    def update(self, row: Mapping[str, Any]) -> None:
        """Add one step-table row (row ``t`` = step ``t``); missing keys and None mean null.

        Only the columns the feature set reads are copied; the row is folded into the state when
        the next row arrives or :meth:`values` is called (so :meth:`amend` can still change it).
        """
        self._pending = self._update(self._st, self._hist, self._pending, row)

    def update_many(self, columns: Mapping[str, Any], n: int) -> None:
        """Add ``n`` rows given as columns: name -> a sequence of ``n`` values (a missing name
        means null in every row). Same result as ``n`` calls of :meth:`update`, without building
        a mapping per row."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ConfigError("n", "a non-negative integer (rows)", n)
        for key in self._plan.cols:
            col = columns.get(key)
            if col is not None and len(col) != n:
                raise ConfigError(f"columns[{key!r}]", f"{n} values", len(col))
        if n:
            self._pending = self._plan.update_many(
                self._st, self._hist, self._pending, columns, int(n)
            )

    def amend(self, key: str, value: Any) -> None:
        """Set ``key`` on the last row given to :meth:`update` (allowed until the next update/values)."""
        if self._pending is None:
            raise ConfigError(
                "amend",
                "called after update() and before the next values()",
                key,
                "report validation for a step before asking for the next decision's features",
            )
        i = self._plan.col_index.get(key)
        if i is None:  # a column this feature set does not read
            return
        vals = list(self._pending)
        vals[i] = self._plan.extract({key: value})[i]
        self._pending = tuple(vals)

    def values(self) -> np.ndarray:
        """Features for a decision at ``s`` = rows seen: float64 array ``[len(feature_set)]``."""
        self._flush()
        pv = [g() for g in self._getters]
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
        return {
            "format": _STATE_FORMAT,
            "feature_set": self._fs.name,
            "feature_set_hash": self._fs.hash,
            "budget": self._budget,
            "state": list(self._st),
            "history": [None if h is None else list(h) for h in self._hist],
            "pending": None if self._pending is None else list(self._pending),
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
        st, hist = list(d["state"]), list(d["history"])
        if len(st) != len(self._plan.init) or len(hist) != self._plan.hist_size:
            raise ConfigError("state_dict.state", f"{len(self._plan.init)} slots", len(st))
        self._budget = int(d["budget"])
        self._st = [int(st[0])] + [float(x) for x in st[1:]]
        self._hist = [None if h is None else tuple(float(x) for x in h) for h in hist]
        pending = d.get("pending")
        if pending is not None and len(pending) != len(self._plan.cols):
            raise ConfigError("state_dict.pending", f"{len(self._plan.cols)} values", len(pending))
        self._pending = None if pending is None else tuple(pending)

    # ------------------------------------------------------------------ internals
    def _flush(self) -> None:
        if self._pending is not None:
            self._plan.step(self._st, self._hist, self._pending)
            self._pending = None

    def _back(self, slot: int, k: int) -> float:
        """State of ``slot`` after row ``s - k - 1`` (k < hist size); NaN before the first row."""
        s = self._st[0]
        if s - k - 1 < 0:
            return math.nan
        return self._hist[(s - k - 1) % self._plan.hist_size][self._plan.hist_index[slot]]

    def _win(self, first_slot: int, n: int, window: int) -> tuple[float, ...]:
        st, s = self._st, self._st[0]
        end = st[first_slot : first_slot + n]
        if s - window - 1 < 0:
            return tuple(e - 0.0 for e in end)
        h = self._hist[(s - window - 1) % self._plan.hist_size]
        j = self._plan.hist_index[first_slot]
        return tuple(map(operator.sub, end, h[j : j + n]))

    def _getter(self, p: Prim) -> Callable[[], Any]:
        """A closure returning the current value of primitive ``p`` (built once per engine)."""
        plan = self._plan
        if isinstance(p, Steps):
            return lambda: float(self._st[0])
        if isinstance(p, Budget):
            return lambda: float(self._budget)
        if isinstance(p, Ema | Last):
            if isinstance(p, Ema):
                slot = plan.ema[(p.col, float(p.half_life), p.transform)]
            else:
                slot = plan.last[p.col][0]
            lag = p.lag
            if lag == 0:
                return lambda: self._st[slot]
            return lambda: self._back(slot, lag)
        if isinstance(p, LastStep | PrevLast):
            slot = plan.last[p.col][1 if isinstance(p, LastStep) else 2]
            return lambda: self._st[slot]
        if isinstance(p, First):
            slot = plan.first[p.col]
            return lambda: self._st[slot]
        if isinstance(p, ChangeStep):
            slot = plan.change[p.col][1]
            return lambda: self._st[slot]
        if isinstance(p, WinLogLs | WinLogDiff):
            first, n = (plan.ls[p.col], 5) if isinstance(p, WinLogLs) else (plan.diff[p.col][1], 3)
            w = p.window
            return lambda: self._win(first, n, w)
        if isinstance(p, WinSpike | WinBad):
            if isinstance(p, WinSpike):
                slot = plan.spike[(p.col, float(p.half_life), float(p.factor))]
            else:
                slot = plan.bad  # type: ignore[assignment]
            w = p.window
            if w == 0:
                return lambda: (self._st[slot], float(self._st[0]))
            return lambda: (self._win(slot, 1, w)[0], float(min(w, self._st[0])))
        raise ConfigError("primitive", "a known primitive kind", type(p).__name__)
