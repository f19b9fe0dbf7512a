"""Offline features: :func:`derive` evaluates a feature set at decision points of many runs at once.

The step table is laid out as a ``[runs, max_len]`` float64 matrix per column (a free reshape when
all runs have the same length, NaN-padded otherwise). Primitives (:mod:`trajlib.features._prims`) are
computed with whole-matrix numpy/scipy passes along the step axis and *read only at the decision
rows*: EMAs with ``scipy.signal.lfilter`` (the exact online recursion, with non-finite rows squeezed
out per run so that they are skipped), window sums as per-run cumulative sums differenced at the
window ends, last/first values by gathering at the last finite row. No per-feature full-resolution
column is built: features are combined from primitive values at the points only.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import polars as pl
from scipy.signal import lfilter

from trajlib import schema
from trajlib.errors import ConfigError
from trajlib.features._feature import NUMPY_OPS
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
from trajlib.measure import STEP_STATS, stride_masks

__all__ = ["derive", "derive_arrays"]

N_MISSING = "n_missing"


def _ema_rows(c: np.ndarray, hl: float) -> np.ndarray:
    """Row-wise EMA recursion ``m_0 = c_0; m_k = alpha c_k + beta m_{k-1}`` (the online formula)."""
    b = beta_of(hl)
    c = c.astype(np.float64, copy=False)  # a float32 source: the recursion runs in float64
    y = np.empty_like(c)
    if c.shape[1]:
        y[:, 0] = c[:, 0]
    if c.shape[1] > 1:
        y[:, 1:] = lfilter([1.0 - b], [1.0, -b], c[:, 1:], axis=1, zi=b * c[:, 0:1])[0]
    return y


def _count_true(mask: np.ndarray, r: np.ndarray, a0: np.ndarray, a1: np.ndarray) -> np.ndarray:
    """Number of True in ``mask[r, a0:a1]`` per point (exact; sparse masks are cheap)."""
    L = mask.shape[1]
    pos = np.flatnonzero(mask.ravel())
    return (np.searchsorted(pos, r * L + a1) - np.searchsorted(pos, r * L + a0)).astype(np.float64)


# ---------------------------------------------------------------------------------------- layout
class _Table:
    """Columns of the step table as ``[R, L]`` float64 matrices (NaN beyond each run's length)."""

    def __init__(self, df: pl.DataFrame, lengths: np.ndarray) -> None:
        self.df = df
        self.lengths = lengths.astype(np.int64)
        self.R = len(lengths)
        self.L = int(lengths.max()) if self.R else 0
        self.equal = bool(self.R == 0 or (lengths == self.L).all())
        self._cache: dict[tuple[str, bool], np.ndarray] = {}
        if not self.equal:
            starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
            self._rows = np.repeat(np.arange(self.R), self.lengths)
            self._pos = np.arange(int(self.lengths.sum())) - np.repeat(starts, self.lengths)

    def _shape(self, flat: np.ndarray, fill: Any) -> np.ndarray:
        if self.equal:
            return flat.reshape(self.R, self.L)
        out = np.full((self.R, self.L), fill, dtype=flat.dtype)
        out[self._rows, self._pos] = flat
        return out

    def col(self, name: str, native: bool = False) -> np.ndarray:
        """``[R, L]`` float64 (``native``: the column's own float dtype, no conversion pass);
        nulls and missing columns are NaN."""
        key = (name, native)
        if key not in self._cache:
            if name in self.df.columns:
                s = self.df.get_column(name)
                if native and s.dtype in (pl.Float32, pl.Float64):
                    flat = s.to_numpy()  # nulls come back as NaN
                else:
                    flat = s.cast(pl.Float64).to_numpy()
                flat = np.ascontiguousarray(flat)
                if not native:
                    flat = flat.astype(np.float64, copy=False)
            else:
                flat = np.full(int(self.lengths.sum()), np.nan)
            self._cache[key] = self._shape(flat, np.nan)
        return self._cache[key]

    def bad(self) -> np.ndarray:
        """Bool ``[R, L]``: ``finite`` is false or the loss is not finite (padding counts as bad)."""
        bad = ~np.isfinite(self.col(schema.LOSS, native=True))
        s = self.df.get_column(schema.FINITE) if schema.FINITE in self.df.columns else None
        if s is not None and s.dtype == pl.Boolean and s.null_count() == 0:
            bad |= self._shape(~s.to_numpy(), False)  # the common case: no float copy
        else:
            bad |= self.col(schema.FINITE) == 0.0  # 1.0 / 0.0 / NaN(null -> unknown, not bad)
        return bad


class _Engine:
    """Primitive values at the points ``(r, s)`` (arrays of shape ``[P]``)."""

    def __init__(
        self,
        tab: _Table,
        r: np.ndarray,
        s: np.ndarray,
        avail: np.ndarray,
        budget: np.ndarray,
        prims: list[Prim] | None = None,
    ) -> None:
        self.tab = tab
        self.r = r
        self.s = s
        self.avail = avail  # rows of run r with t < s
        self.budget = budget
        self._src: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._dirty: dict[tuple[str, str], np.ndarray] = {}
        self._cf: dict[tuple[str, str], np.ndarray] = {}
        self._comp: dict[tuple[str, str], np.ndarray] = {}
        self._ema: dict[tuple[str, float, str], np.ndarray] = {}
        self._cum: dict[Any, list[np.ndarray]] = {}
        self._t = np.arange(tab.L, dtype=np.float64)
        self._ema_blk: dict[tuple[str, float, str], np.ndarray] = {}
        self._ema_dirty: dict[tuple[str, float, str], np.ndarray] = {}
        self._mask: dict[Any, np.ndarray] = {}
        self._prims = list(prims or [])
        self.K = self._block_size(self._prims)

    def _block_size(self, prims: list[Prim]) -> int:
        """Largest K dividing every row position the primitives cut at (0: no blocked path).

        When decision points are regular (e.g. every 50 steps, windows of 10/50/200 rows), EMAs and
        window sums only need per-block aggregates of K rows (one BLAS pass) instead of a
        full-resolution recursion or cumulative sum.
        """
        L = self.tab.L
        if L == 0 or len(self.avail) == 0:
            return 0
        shifts: set[int] = set()  # each distinct lag / window once
        for p in prims:
            if isinstance(p, Ema) and p.lag:
                shifts.add(int(p.lag))
            elif isinstance(p, WinLogLs | WinLogDiff | WinSpike | WinBad) and p.window:
                shifts.add(int(p.window))
        cuts = [self.avail] + [self._avail_lag(w) for w in sorted(shifts)]
        k = int(np.gcd.reduce(np.concatenate(cuts + [np.array([L])]).astype(np.int64)))
        return k if k >= 4 else 0

    # -------------------------------------------------------------- helpers
    def _gather(self, A: np.ndarray, idx: np.ndarray, fill: float = math.nan) -> np.ndarray:
        """``A[r, idx]`` where ``idx >= 0``, else ``fill``."""
        n = A.shape[1]
        if n == 0:
            return np.full(len(idx), fill)
        flat = A.ravel()  # a view for the C-contiguous matrices built here
        v = flat.take(self.r * n + np.clip(idx, 0, n - 1)).astype(np.float64, copy=False)
        return np.where(idx >= 0, v, fill)

    def _avail_lag(self, lag: int) -> np.ndarray:
        return np.clip(self.avail - lag, 0, None)

    def source(self, col: str, tf: str) -> tuple[np.ndarray, np.ndarray]:
        """Transformed column and its finite mask, ``[R, L]``."""
        key = (col, tf)
        if key not in self._src:
            # the column in its own float dtype (float32 in the step schema): raw and id sources
            # stay so (every float64 computation on them casts first); sq and log are computed
            # in float64 from it (exact upcast), so the numbers are those of a float64 column
            x = self.tab.col(col, native=True)
            if tf == "sq":
                v = np.multiply(x, x, dtype=np.float64)
            elif tf == "log":  # log(x) where x > 0, else NaN (no temporary copy of x)
                v = np.full(x.shape, np.nan)
                np.log(x, out=v, where=x > 0.0, dtype=np.float64)
            else:
                v = x
            f = np.isfinite(v)
            self._src[key] = (v, f)
            if self.tab.equal and f.all():
                self._dirty[key] = np.zeros(0, dtype=np.int64)
            else:
                self._dirty[key] = np.flatnonzero(np.count_nonzero(f, axis=1) < self.tab.lengths)
        return self._src[key]

    def count(self, key: tuple[str, str], a: np.ndarray) -> np.ndarray:
        """Number of finite source values among rows ``t < a`` of run ``r``."""
        dirty = self._dirty[key]
        if len(dirty) == 0:
            return a.copy()
        if key not in self._cf:
            cf = np.zeros((self.tab.R, self.tab.L), dtype=np.int64)
            cf[dirty] = np.cumsum(self._src[key][1][dirty], axis=1)
            self._cf[key] = cf
        cf = self._cf[key]
        isd = np.zeros(self.tab.R, dtype=bool)
        isd[dirty] = True
        return np.where(isd[self.r], self._gather(cf, a - 1, 0).astype(np.int64), a)

    def compressed(self, key: tuple[str, str]) -> np.ndarray:
        """Source with each dirty run's finite values moved to the front (order kept)."""
        if key not in self._comp:
            v, f = self._src[key]
            dirty = self._dirty[key]
            if len(dirty) == 0:
                self._comp[key] = v
            else:
                c = v.copy()
                order = np.argsort(~f[dirty], axis=1, kind="stable")
                c[dirty] = np.take_along_axis(v[dirty], order, axis=1)
                self._comp[key] = c
        return self._comp[key]

    def ema_matrix(self, col: str, hl: float, tf: str) -> np.ndarray:
        """EMA over the compressed source: entry ``[r, k]`` = state after the (k+1)-th finite value."""
        key = (col, float(hl), tf)
        if key not in self._ema:
            self.source(col, tf)
            c = self.compressed((col, tf))
            self._ema[key] = _ema_rows(c, hl)
        return self._ema[key]

    def ema_at(self, col: str, hl: float, tf: str, a: np.ndarray) -> np.ndarray:
        """EMA state after rows ``t < a`` of run ``r`` (NaN when no finite value yet)."""
        key, mk = (col, tf), (col, float(hl), tf)
        self.source(*key)
        n = self.count(key, a)
        if mk in self._ema or self.K == 0:
            return self._gather(self.ema_matrix(col, hl, tf), n - 1)
        dirty = self._dirty[key]
        if len(dirty) * 2 > self.tab.R:  # mostly dirty: the compressed recursion is cheaper
            return self._gather(self.ema_matrix(col, hl, tf), n - 1)
        out = self._gather(self._ema_blocks(mk), a // self.K - 1)
        if len(dirty):
            row = np.full(self.tab.R, -1)
            row[dirty] = np.arange(len(dirty))
            pd = row[self.r] >= 0
            yd = self._ema_dirty_rows(mk, dirty)
            idx = n[pd] - 1
            vals = yd[row[self.r[pd]], np.maximum(idx, 0)] if yd.shape[1] else np.nan
            out[pd] = np.where(idx >= 0, vals, np.nan)
        return out

    def _ema_blocks(self, mk: tuple[str, float, str]) -> np.ndarray:
        """``[R, L / K]``: EMA state after each block of K rows (valid for runs without gaps).

        All half-lives of one source come out of one ``[R * L / K, K] @ [K, H]`` product.
        """
        if mk not in self._ema_blk:
            col, _, tf = mk
            hls = sorted(
                {
                    float(p.half_life)
                    for p in self._prims
                    if isinstance(p, Ema) and (p.col, p.transform) == (col, tf)
                }
                | {mk[1]}
            )
            v, _ = self.source(col, tf)
            K, R, L = self.K, self.tab.R, self.tab.L
            betas = [beta_of(h) for h in hls]
            e = np.arange(K - 1, -1, -1, dtype=np.float64)
            w = np.stack([(1.0 - b) * b**e for b in betas] + [np.zeros(K)], axis=1)
            c = (v.reshape(R * (L // K), K) @ w).reshape(R, L // K, len(hls) + 1)
            v0 = v[:, 0].astype(np.float64)
            for i, (h, b) in enumerate(zip(hls, betas, strict=True)):
                # y_j = c_j + b^K y_{j-1}, y_{-1} = v_0: the recursion lfilter runs, op for op,
                # over L / K block columns of R runs each (lfilter's per-row setup dominated)
                bk = b**K
                blk = np.empty((R, L // K))
                z = bk * v0
                for j in range(L // K):
                    np.add(c[:, j, i], z, out=blk[:, j])
                    z = bk * blk[:, j]
                self._ema_blk[(col, h, tf)] = blk
        return self._ema_blk[mk]

    def _ema_dirty_rows(self, mk: tuple[str, float, str], rows: np.ndarray) -> np.ndarray:
        """Exact compressed EMA (as :meth:`ema_matrix`) for a subset of runs."""
        if mk not in self._ema_dirty:
            col, hl, tf = mk
            v, f = self._src[(col, tf)]
            order = np.argsort(~f[rows], axis=1, kind="stable")
            self._ema_dirty[mk] = _ema_rows(np.take_along_axis(v[rows], order, axis=1), hl)
        return self._ema_dirty[mk]

    def _last_true(self, mask: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Index of the last True of ``mask[r, :a]`` (-1 if none), via sorted flat positions."""
        L = self.tab.L
        pos = np.flatnonzero(mask.ravel())
        q = self.r * L + a - 1
        k = np.searchsorted(pos, q, side="right") - 1
        hit = pos[np.maximum(k, 0)] if len(pos) else np.zeros_like(q)
        ok = (a >= 1) & (k >= 0) & (hit >= self.r * L)
        return np.where(ok, hit - self.r * L, -1)

    def last_finite(self, col: str, a: np.ndarray) -> np.ndarray:
        """Row index of the last finite value of ``col`` among rows ``t < a`` (-1 if none)."""
        key = (col, "raw")
        self.source(*key)
        if len(self._dirty[key]) == 0:
            return np.where(a >= 1, a - 1, -1)
        return self._last_true(self._src[key][1], a)

    def _cum_window(self, name: Any, chans: Any, window: int) -> tuple[np.ndarray, ...]:
        """Sums of the channels over rows ``[s - window, s)`` (``window = 0``: all rows ``< s``).

        ``chans`` is a callable returning the per-row channel matrices; their per-run cumulative
        sums are cached under ``name`` and shared by every window.
        """
        if name not in self._cum:
            self._cum[name] = [np.cumsum(ch, axis=1) for ch in chans()]
        end = self.avail
        start = np.clip(end - window, 0, None) if window > 0 else np.zeros_like(end)
        return tuple(
            self._gather(c, end - 1, 0.0) - self._gather(c, start - 1, 0.0) for c in self._cum[name]
        )

    def _window_ends(self, window: int) -> tuple[np.ndarray, np.ndarray]:
        end = self.avail
        start = np.clip(end - window, 0, None) if window > 0 else np.zeros_like(end)
        return start, end

    def _count(self, mask: np.ndarray, window: int) -> np.ndarray:
        start, end = self._window_ends(window)
        return _count_true(mask, self.r, start, end)

    def _blocks(self, ch: np.ndarray) -> np.ndarray:
        """``[R, L / K]`` sums of a channel over blocks of K rows."""
        R, L = ch.shape
        return np.add.reduceat(ch.ravel(), np.arange(0, R * L, self.K)).reshape(R, L // self.K)

    def _block_window(self, name: Any, blocks: Any, window: int) -> tuple[np.ndarray, ...]:
        """Window sums from cumulated per-block sums (all cut positions are multiples of K)."""
        if name not in self._cum:
            self._cum[name] = [np.cumsum(b, axis=1) for b in blocks()]
        start, end = self._window_ends(window)
        K = self.K
        return tuple(
            self._gather(c, end // K - 1, 0.0) - self._gather(c, start // K - 1, 0.0)
            for c in self._cum[name]
        )

    def _ls_blocks(self, col: str) -> list[np.ndarray]:
        """Per-block ``n, sum t, sum t^2, sum y, sum t*y`` over finite log values (one BLAS pass)."""
        y, f = self.source(col, "log")
        R, L, K = self.tab.R, self.tab.L, self.K
        nb = L // K
        j = np.arange(K, dtype=np.float64)
        clean = len(self._dirty[(col, "log")]) == 0
        if clean:  # every row counts: the t-moments are the same for every block
            m1 = np.broadcast_to(np.array([K, j.sum(), (j * j).sum()]), (R, nb, 3))
        else:
            m1 = (f.reshape(R * nb, K).astype(np.float64) @ np.stack([j**0, j, j * j], 1)).reshape(
                R, nb, 3
            )
        yf = y if clean else np.where(f, y, 0.0)
        m2 = (yf.reshape(R * nb, K) @ np.stack([j**0, j], 1)).reshape(R, nb, 2)
        o = (np.arange(nb, dtype=np.float64) * K)[None, :]
        n = m1[..., 0]
        return [
            n,
            o * n + m1[..., 1],
            o * o * n + 2.0 * o * m1[..., 1] + m1[..., 2],
            m2[..., 0],
            o * m2[..., 0] + m2[..., 1],
        ]

    # -------------------------------------------------------------- primitives
    def value(self, p: Prim) -> Any:
        if isinstance(p, Steps):
            return self.s.astype(np.float64)
        if isinstance(p, Budget):
            return self.budget
        if isinstance(p, Ema):
            return self.ema_at(p.col, p.half_life, p.transform, self._avail_lag(p.lag))
        if isinstance(p, Last | LastStep | PrevLast):
            v, _ = self.source(p.col, "raw")
            a = self._avail_lag(p.lag) if isinstance(p, Last) else self.avail
            li = self.last_finite(p.col, a)
            if isinstance(p, Last):
                return self._gather(v, li)
            if isinstance(p, LastStep):
                return np.where(li >= 0, li.astype(np.float64), np.nan)
            prev = np.where(li >= 0, self.last_finite(p.col, li), -1)
            return self._gather(v, prev)
        if isinstance(p, First):
            v, f = self.source(p.col, "raw")
            if self.tab.L:
                fi = np.where(f.any(axis=1), f.argmax(axis=1), self.tab.L)[self.r]
            else:
                fi = np.zeros(len(self.r), dtype=np.int64)
            ok = fi < self.avail
            return np.where(ok, self._gather(v, np.where(ok, fi, -1)), np.nan)
        if isinstance(p, ChangeStep):
            key = (p.col, "raw")
            v, f = self.source(*key)
            changed = np.zeros_like(f)
            if self.tab.L > 1:
                changed[:, 1:] = v[:, 1:] != v[:, :-1]
                dirty = self._dirty[key]
                if len(dirty):  # compare with the previous *finite* value
                    vd, fd = v[dirty], f[dirty]
                    li = np.maximum.accumulate(np.where(fd, np.arange(self.tab.L), -1), axis=1)
                    prev = np.full_like(li, -1)
                    prev[:, 1:] = li[:, :-1]
                    pv = np.take_along_axis(vd, np.maximum(prev, 0), axis=1)
                    changed[dirty] = fd & (prev >= 0) & (vd != pv)
            seen = self.count(key, self.avail) > 0
            c = self._last_true(changed, self.avail).astype(np.float64)
            return np.where(seen, c, np.nan)
        if isinstance(p, WinLogLs):
            if self.K:
                return self._block_window(("ls", p.col), lambda: self._ls_blocks(p.col), p.window)
            return self._cum_window(("ls", p.col), lambda: self._ls_chans(p.col), p.window)
        if isinstance(p, WinLogDiff):
            chans = lambda: self._diff_chans(p.col)  # noqa: E731
            if self.K:
                blocks = lambda: self._diff_blocks(p.col)  # noqa: E731
                return self._block_window(("diff", p.col), blocks, p.window)
            return self._cum_window(("diff", p.col), chans, p.window)
        if isinstance(p, WinSpike):
            name = ("spike", p.col, float(p.half_life), float(p.factor))
            if name not in self._mask:
                self._mask[name] = self._spikes(p)
            return self._count(self._mask[name], p.window), self._rows(p.window)
        if isinstance(p, WinBad):
            if "bad" not in self._mask:
                self._mask["bad"] = self.tab.bad()
            return self._count(self._mask["bad"], p.window), self._rows(p.window)
        raise ConfigError("primitive", "a known primitive kind", type(p).__name__)

    def _ls_chans(self, col: str) -> list[np.ndarray]:
        y, f = self.source(col, "log")
        t = self._t[None, :]
        return [
            f.astype(np.float64),
            np.where(f, t, 0.0),
            np.where(f, t * t, 0.0),
            np.where(f, y, 0.0),
            np.where(f, t * y, 0.0),
        ]

    def _diff_blocks(self, col: str) -> list[np.ndarray]:
        """Per-block sums of the :meth:`_diff_chans` channels."""
        y, _ = self.source(col, "log")
        if len(self._dirty[(col, "log")]) or self.tab.L < 2:
            return [self._blocks(c) for c in self._diff_chans(col)]
        # no gaps: every row but each run's first has a difference (exact integer counts)
        R, L, K = self.tab.R, self.tab.L, self.K
        n = np.full((R, L // K), float(K))
        n[:, 0] = K - 1
        d = np.empty_like(y)
        d[:, 0] = 0.0
        np.subtract(y[:, 1:], y[:, :-1], out=d[:, 1:])
        sd = self._blocks(d)
        np.multiply(d, d, out=d)
        return [n, sd, self._blocks(d)]

    def _diff_chans(self, col: str) -> list[np.ndarray]:
        y, f = self.source(col, "log")
        d = np.zeros_like(y)
        if len(self._dirty[(col, "log")]) == 0:
            okf = np.ones_like(y)
            okf[:, :1] = 0.0
            if self.tab.L > 1:
                np.subtract(y[:, 1:], y[:, :-1], out=d[:, 1:])
            return [okf, d, d * d]
        ok = np.zeros_like(f)
        if self.tab.L > 1:
            ok[:, 1:] = f[:, 1:] & f[:, :-1]
            d[:, 1:] = np.where(ok[:, 1:], y[:, 1:] - np.where(ok[:, 1:], y[:, :-1], 0.0), 0.0)
        return [ok.astype(np.float64), d, d * d]

    def _spikes(self, p: WinSpike) -> np.ndarray:
        key = (p.col, "id")
        v, f = self.source(*key)
        factor = float(p.factor)
        mask = np.zeros(v.shape, dtype=bool)  # row 0: no EMA before it
        mk = (p.col, float(p.half_life), "id")
        if self.tab.L > 2 and len(self._dirty[key]) == 0 and mk not in self._ema:
            # no gaps: the EMA before row t >= 2 is entry t - 2 of the recursion over rows >= 1
            # (what ema_matrix stores from column 1 on), without assembling that matrix
            b = beta_of(p.half_life)
            c0 = v[:, 0:1].astype(np.float64)
            tail = lfilter([1.0 - b], [1.0, -b], v[:, 1:].astype(np.float64), axis=1, zi=b * c0)[0]
            np.greater(v[:, 1:2], factor * c0, out=mask[:, 1:2])
            np.greater(v[:, 2:], factor * tail[:, :-1], out=mask[:, 2:])
            mask &= f
            return mask
        y = self.ema_matrix(p.col, p.half_life, "id")
        if self.tab.L > 1:
            # v (float32 or float64) > factor * EMA before the row: compared in float64
            np.greater(v[:, 1:], factor * y[:, :-1], out=mask[:, 1:])
            mask &= f
            dirty = self._dirty[key]
            if len(dirty):  # the EMA before row t is the state after the finite rows < t
                cnt = np.cumsum(f[dirty], axis=1)  # finite values among rows <= t
                k = np.zeros_like(cnt)
                k[:, 1:] = cnt[:, :-1]  # among rows < t
                g = np.take_along_axis(y[dirty], np.maximum(k - 1, 0), axis=1)
                eprev = np.where(k > 0, g, np.nan)
                mask[dirty] = f[dirty] & (v[dirty] > factor * eprev)
        return mask

    def _rows(self, window: int) -> np.ndarray:
        if window == 0:
            return self.avail.astype(np.float64)
        return (self.avail - np.clip(self.avail - window, 0, None)).astype(np.float64)


# ---------------------------------------------------------------------------------------- derive
def _budget_frame(budgets: pl.DataFrame | Mapping[str, int]) -> pl.DataFrame:
    if isinstance(budgets, Mapping):
        return pl.DataFrame(
            {"run_id": [str(k) for k in budgets], "budget": [budgets[k] for k in budgets]},
            schema={"run_id": pl.String, "budget": pl.Float64},
        )
    if isinstance(budgets, pl.LazyFrame):
        budgets = budgets.collect()
    if not isinstance(budgets, pl.DataFrame) or not {"run_id", "budget"} <= set(budgets.columns):
        raise ConfigError(
            "budgets",
            "a DataFrame[run_id, budget] or a dict run_id -> budget",
            type(budgets).__name__,
        )
    return budgets.select(pl.col("run_id").cast(pl.String), pl.col("budget").cast(pl.Float64))


def _prepare_steps(steps: pl.DataFrame | pl.LazyFrame, cols: list[str]) -> pl.DataFrame:
    present = steps.collect_schema().names() if isinstance(steps, pl.LazyFrame) else steps.columns
    for c in ("run_id", "step"):
        if c not in present:
            raise ConfigError("steps", f"a step table with a {c!r} column", sorted(present))
    keep = ["run_id", "step"] + [c for c in cols if c in present and c not in ("run_id", "step")]
    df = steps.select(keep)
    if isinstance(df, pl.LazyFrame):
        df = df.collect()
    df = df.with_columns(pl.col("run_id").cast(pl.String))
    return df


def _layout(df: pl.DataFrame) -> tuple[pl.DataFrame, list[str], np.ndarray]:
    """Sort by (run_id, step) unless already grouped and ordered; run names and lengths."""
    if df.height == 0:
        return df, [], np.zeros(0, dtype=np.int64)
    rle = df.get_column("run_id").rle()
    names = rle.struct.field("value").to_list()
    ok = len(set(names)) == len(names)
    if ok:
        lengths = rle.struct.field("len").to_numpy().astype(np.int64)
        st = df.get_column("step").to_numpy()
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        inc = np.diff(st) >= 0 if len(st) > 1 else np.ones(0, dtype=bool)
        inc[starts[1:] - 1] = True  # run boundaries don't count
        ok = bool(inc.all())
    if not ok:
        df = df.sort(["run_id", "step"], maintain_order=True)
        rle = df.get_column("run_id").rle()
        names = rle.struct.field("value").to_list()
        lengths = rle.struct.field("len").to_numpy().astype(np.int64)
    return df, names, lengths


def _stride(df: pl.DataFrame, fs: FeatureSet) -> pl.DataFrame:
    """The rows a strided feature set reads statistics from (:func:`trajlib.measure.stride_masks`):
    elsewhere the statistics are null and ``finite`` unknown (null: only the loss can make such a
    row bad), as the deployed probe leaves those steps unmeasured."""
    k = fs.stats_every
    if k == 1 or df.height == 0:
        return df
    measured, cos_ok = stride_masks(df.get_column("step").to_numpy(), k, fs.reads_cosines)
    keep = {"m": pl.Series(measured), "c": pl.Series(cos_ok)}
    cos = (schema.GRAD_COS, schema.UPDATE_COS)
    cols = [c for c in (*STEP_STATS, schema.FINITE) if c in df.columns]
    return df.with_columns(
        pl.when(keep["c"] if c in cos else keep["m"]).then(pl.col(c)).otherwise(None).alias(c)
        for c in cols
    )


def _contiguous(step: np.ndarray, starts: np.ndarray) -> bool:
    """Every run's rows are exactly the steps 0, 1, ..., n-1."""
    if len(step) == 0:
        return True
    if (step[starts] != 0).any():
        return False
    d = np.diff(step)
    d[starts[1:] - 1] = 1  # run boundaries
    return bool((d == 1).all())


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS on one thread: the block products are memory-bound, and a multi-threaded BLAS spinning
    on a busy 2-core machine was measured 5-10x slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


def derive_arrays(
    steps: pl.DataFrame | pl.LazyFrame,
    points: pl.DataFrame,
    budgets: pl.DataFrame | Mapping[str, int],
    feature_set: str | FeatureSet = "default",
) -> tuple[np.ndarray, list[str]]:
    """Like :func:`derive` but returns ``(values float64 [n_points, n_features], names)``."""
    fs = get_feature_set(feature_set)
    if isinstance(points, pl.LazyFrame):
        points = points.collect()
    if not isinstance(points, pl.DataFrame) or not {"run_id", "step"} <= set(points.columns):
        raise ConfigError("points", "a DataFrame[run_id: str, step: int]", type(points).__name__)
    df, names, lengths = _layout(_prepare_steps(steps, fs.columns))
    df = _stride(df, fs)
    tab = _Table(df, lengths)
    P = points.height
    runs = pl.DataFrame(
        {"run_id": names, "_r": np.arange(len(names), dtype=np.int64), "_len": lengths},
        schema={"run_id": pl.String, "_r": pl.Int64, "_len": pl.Int64},
    )
    pts = (
        points.select(pl.col("run_id").cast(pl.String), pl.col("step").cast(pl.Int64))
        .with_row_index("_i")
        .join(runs, on="run_id", how="left")
        .join(_budget_frame(budgets), on="run_id", how="left")
        .sort("_i")
    )
    r = pts.get_column("_r").fill_null(0).to_numpy().astype(np.int64)
    plen = pts.get_column("_len").fill_null(0).to_numpy().astype(np.int64)
    s = pts.get_column("step").fill_null(0).to_numpy().astype(np.int64)
    budget = pts.get_column("budget").to_numpy().astype(np.float64)
    budget = np.where(np.isfinite(budget) & (budget > 0), budget, np.nan)
    step_all = df.get_column("step").cast(pl.Int64).to_numpy()
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    if len(names) and _contiguous(step_all, starts):
        avail = np.clip(s, 0, plen)  # rows are the steps 0 .. n-1
    elif len(names):
        # rows of run r with step < s (rows are sorted by step within a run)
        span = int(step_all.max() - min(step_all.min(), 0) + 2) if len(step_all) else 1
        lo = int(min(step_all.min(), 0)) if len(step_all) else 0
        key = np.repeat(np.arange(len(names), dtype=np.int64), lengths) * span + (step_all - lo)
        q = r * span + np.clip(s - lo, 0, span - 1)
        avail = np.searchsorted(key, q, side="left") - starts[r]
        avail = np.clip(avail, 0, plen)
    else:
        avail = np.zeros(P, dtype=np.int64)
    eng = _Engine(tab, r, s, avail, budget, fs.prims())
    out = np.empty((P, len(fs)), dtype=np.float64, order="F")
    with np.errstate(all="ignore"), _one_blas_thread():
        vals = {p: eng.value(p) for p in fs.prims()}
        for j, f in enumerate(fs.features):
            v = [vals[q] for q in f.requires()]
            out[:, j] = np.broadcast_to(np.asarray(f.compute(v, NUMPY_OPS), dtype=np.float64), (P,))
    out[~np.isfinite(out)] = np.nan
    return out, fs.names


def derive(
    steps: pl.DataFrame | pl.LazyFrame,
    points: pl.DataFrame,
    budgets: pl.DataFrame | Mapping[str, int],
    feature_set: str | FeatureSet = "default",
) -> pl.DataFrame:
    """Features of ``feature_set`` at decision points, one row per point (in ``points`` order).

    ``steps``: step table(s) with :data:`trajlib.schema.STEP_SCHEMA` columns (``run_id``, ``step``
    required; a missing feature column reads as null) for one or many runs. Rows of a run are its
    steps ``0 .. n-1``; they are sorted by ``(run_id, step)`` if they are not already grouped.
    ``points``: ``[run_id: str, step: int]``; the decision at step ``s`` sees rows ``step < s``.
    ``budgets``: ``[run_id, budget]`` frame or dict (a missing or non-positive budget gives NaN
    for budget-relative features).

    Returns ``run_id, step, <fs.names ... Float64>, n_missing: Int32`` where ``n_missing`` counts the
    features that are NaN (not computable: too few rows, missing or non-finite inputs).
    """
    fs = get_feature_set(feature_set)
    vals, names = derive_arrays(steps, points, budgets, fs)
    if isinstance(points, pl.LazyFrame):
        points = points.collect()
    base = points.select(pl.col("run_id").cast(pl.String), pl.col("step"))
    feats = pl.DataFrame([pl.Series(n, vals[:, j]) for j, n in enumerate(names)])
    miss = pl.Series(N_MISSING, np.isnan(vals).sum(axis=1).astype(np.int32), dtype=pl.Int32)
    return pl.concat([base, feats], how="horizontal").with_columns(miss)
