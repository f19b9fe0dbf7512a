"""A numpy evaluator for LightGBM regression forests: one row in, one sum per forest out.

LightGBM's own ``Booster.predict`` costs ~25-40 us per call for a single row (and several
forests need several calls); the per-decision budget is 100 us. This module flattens the dumped
trees of every forest into one node table and evaluates a row with a handful of vectorised numpy
operations: every split is tested at once, then all trees are walked together by pointer
chasing (leaves point to themselves), so the cost is ~4 array operations over the split nodes plus
one gather per tree level.

The split rule reproduces LightGBM's ``NumericalDecision``: NaN becomes 0 unless the node's
``missing_type`` is ``NaN``; a *missing* value (NaN for ``NaN`` nodes, |x| <= 1e-35 for ``Zero``
nodes) goes to ``default_left``; otherwise ``x <= threshold`` goes left.

That walk touches every split node of every forest (a v7 decision: two ensembles of 2,500 trees
and 35,000 splits, ~0.5 ms each, ~0.8 ms with a NaN feature, most of a decision's cost). Where a
C compiler is, ``forest_walk.c`` walks each tree from its root to its leaf instead (the nodes on
the path only; compiled and cached on first use like the measurement kernels,
:func:`trajlib.measure._native.load_source`; ``TRAJLIB_NATIVE=0`` turns it off). Both paths give
the same sums bit for bit (tested); only the speed differs (``tests/benchmarks/bench_deploy.py``).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trajlib.errors import CheckpointError
from trajlib.measure import _native

__all__ = ["Forests"]

_K_ZERO = 1e-35
_MISSING = {"None": 0, "Zero": 1, "NaN": 2}
# _MISS_TABLE[missing_type * 3 + value_state] -> value is "missing" at that node,
# value_state: 0 normal, 1 zero, 2 NaN.
_MISS_TABLE = np.array([False, False, False, False, True, True, False, False, True])
_SOURCE = Path(__file__).with_name("forest_walk.c")
_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURE = {"tl_forest_walk": (_I, _I, _P, _P, _P, _P, _P, _I, _P)}
# forest_walk.c's tl_node: one split node in 24 bytes (the C struct's layout: align=True)
_NODE = np.dtype(
    [
        ("thr", "f8"),
        ("feat", "i4"),
        ("left", "i4"),
        ("right", "i4"),
        ("mtype", "u1"),
        ("default_left", "u1"),
    ],
    align=True,
)


_STATUS = "not loaded"


@functools.cache
def _walker() -> Any:
    """The native ``tl_forest_walk`` (compiled and cached on first use), or None."""
    global _STATUS
    so, _STATUS = _native.load_source(_SOURCE, "forest_walk", _SIGNATURE)
    return None if so is None else so.tl_forest_walk


def native_status() -> str:
    """Whether the native tree walk is used: the file loaded, or why none was."""
    _walker()
    return _STATUS


class Forests:
    """Several LightGBM regression forests (one per output) flattened into node arrays.

    Parameters
    ----------
    dumps:
        One ``Booster.dump_model()`` dict per output.
    n_outputs:
        Number of outputs (forests).

    ``predict_one(x)`` returns ``[n_outputs]`` float64 sums of leaf values for the row ``x``.
    """

    def __init__(self, dumps: Sequence[Mapping[str, Any]]) -> None:
        # Layout: split nodes take ids [0, n_split), leaves [n_split, n_split + n_leaf). Only the
        # split nodes are evaluated per row; leaves point to themselves, so walking more levels
        # than a tree is deep changes nothing.
        splits: list[tuple[int, float, bool, int]] = []  # feature, threshold, default_left, mtype
        Ref = tuple[str, int]  # ("s", split index) or ("l", leaf index)
        children: list[tuple[Ref, Ref]] = []
        leaf_value: list[float] = []
        roots: list[Ref] = []
        owner: list[int] = []
        max_depth = 0

        def add(node: Mapping[str, Any], depth: int) -> Ref:
            nonlocal max_depth
            if "split_feature" not in node:
                leaf_value.append(float(node.get("leaf_value", 0.0)))
                max_depth = max(max_depth, depth)
                return ("l", len(leaf_value) - 1)
            if node.get("decision_type", "<=") != "<=":
                raise CheckpointError(
                    f"unsupported LightGBM split {node.get('decision_type')!r}; expected numerical "
                    "'<=' splits (categorical features are not supported)"
                )
            i = len(splits)
            splits.append(
                (
                    int(node["split_feature"]),
                    float(node["threshold"]),
                    bool(node.get("default_left", True)),
                    _MISSING.get(str(node.get("missing_type", "None")), 0),
                )
            )
            children.append((("l", -1), ("l", -1)))  # placeholder until the subtrees are added
            children[i] = (add(node["left_child"], depth + 1), add(node["right_child"], depth + 1))
            return ("s", i)

        for k, dump in enumerate(dumps):
            for tree in dump.get("tree_info", []):
                roots.append(add(tree["tree_structure"], 0))
                owner.append(k)
        n_split = len(splits)

        def gid(ref: Ref) -> int:
            return ref[1] if ref[0] == "s" else n_split + ref[1]

        self.n_outputs = len(dumps)
        self.n_split = n_split
        self.feat = np.array([s[0] for s in splits], dtype=np.intp)
        self.thr = np.array([s[1] for s in splits], dtype=np.float64)
        self.default_left = np.array([s[2] for s in splits], dtype=bool)
        self.mtype3 = np.array([s[3] for s in splits], dtype=np.intp) * 3
        self.left = np.array([gid(c[0]) for c in children], dtype=np.intp)
        self.right = np.array([gid(c[1]) for c in children], dtype=np.intp)
        self.leaf_self = np.arange(n_split, n_split + len(leaf_value), dtype=np.intp)
        self.value = np.concatenate([np.zeros(n_split), np.asarray(leaf_value, dtype=np.float64)])
        self.roots = np.array([gid(r) for r in roots], dtype=np.intp)
        self.owner = np.asarray(owner, dtype=np.intp)
        self.max_depth = max_depth
        self.n_trees = len(roots)

    @classmethod
    def concat(cls, parts: Sequence[Forests]) -> Forests:
        """One node table holding every forest of ``parts`` (outputs in order: part 0's first),
        so one :meth:`predict_one` evaluates all of them. Each output sums the same leaves in the
        same order as its part would: the results are bit for bit those of the parts."""
        if not parts:
            return cls([])
        out = cls.__new__(cls)
        n_split = sum(f.n_split for f in parts)
        split_off = np.cumsum([0] + [f.n_split for f in parts])[:-1]
        leaf_off = np.cumsum([0] + [f.leaf_self.size for f in parts])[:-1] + n_split
        out_off = np.cumsum([0] + [f.n_outputs for f in parts])[:-1]

        def remap(ids: np.ndarray, f: Forests, k: int) -> np.ndarray:
            return np.where(
                ids < f.n_split, ids + split_off[k], ids - f.n_split + leaf_off[k]
            ).astype(np.intp)

        out.n_outputs = int(sum(f.n_outputs for f in parts))
        out.n_split = int(n_split)
        out.feat = np.concatenate([f.feat for f in parts]).astype(np.intp)
        out.thr = np.concatenate([f.thr for f in parts])
        out.default_left = np.concatenate([f.default_left for f in parts])
        out.mtype3 = np.concatenate([f.mtype3 for f in parts]).astype(np.intp)
        out.left = np.concatenate([remap(f.left, f, k) for k, f in enumerate(parts)])
        out.right = np.concatenate([remap(f.right, f, k) for k, f in enumerate(parts)])
        n_leaf = sum(f.leaf_self.size for f in parts)
        out.leaf_self = np.arange(n_split, n_split + n_leaf, dtype=np.intp)
        out.value = np.concatenate([np.zeros(n_split)] + [f.value[f.n_split :] for f in parts])
        out.roots = np.concatenate([remap(f.roots, f, k) for k, f in enumerate(parts)])
        out.owner = np.concatenate([f.owner + out_off[k] for k, f in enumerate(parts)])
        out.owner = out.owner.astype(np.intp)
        out.max_depth = max((f.max_depth for f in parts), default=0)
        out.n_trees = int(sum(f.n_trees for f in parts))
        return out

    def predict_one(self, x: np.ndarray) -> np.ndarray:
        """``[n_outputs]`` raw scores for one row ``x`` of shape ``[n_features]`` (float64)."""
        call = self._native_call()
        x = np.ascontiguousarray(x, dtype=np.float64)
        if call is None or x.ndim != 1 or x.shape[0] < self._width:
            return self.predict_one_numpy(x)  # (a row too short raises there, never reads past it)
        fn, args = call
        out = np.empty(self.n_outputs, dtype=np.float64)
        fn(*args, x.ctypes.data, self.n_outputs, out.ctypes.data)
        return out

    def __getstate__(self) -> dict[str, Any]:
        # copies and pickles leave out the native call: its arguments are the addresses of this
        # object's node tables (a copy makes its own on first use)
        state = self.__dict__.copy()
        state.pop("_call", None)
        state.pop("_keep", None)
        return state

    def _native_call(self) -> tuple[Any, tuple[int, ...]] | None:
        """The native walk and its fixed arguments (the node tables' addresses), made once."""
        try:
            return self._call
        except AttributeError:
            pass
        fn = _walker()
        call = None
        if fn is not None and self.n_trees:
            node = np.zeros(self.n_split, dtype=_NODE)
            node["thr"], node["feat"] = self.thr, self.feat
            node["left"], node["right"] = self.left, self.right
            node["mtype"], node["default_left"] = self.mtype3 // 3, self.default_left
            keep = (
                self.roots.astype(np.int64),
                self.owner.astype(np.int64),
                node,
                np.ascontiguousarray(self.value, dtype=np.float64),
            )
            self._keep = keep  # the tables must outlive the calls
            self._width = int(self.feat.max()) + 1 if self.n_split else 0  # features C reads
            call = (fn, (self.n_trees, self.n_split, *(a.ctypes.data for a in keep)))
        self._call: tuple[Any, tuple[int, ...]] | None = call
        return call

    def predict_one_numpy(self, x: np.ndarray) -> np.ndarray:
        """:meth:`predict_one` by numpy alone (the path without a C compiler)."""
        nan = np.isnan(x)
        if nan.any() or (np.abs(x) <= _K_ZERO).any():
            x0 = np.where(nan, 0.0, x)
            state = np.where(nan, 2, np.where(np.abs(x0) <= _K_ZERO, 1, 0))
            miss = _MISS_TABLE[self.mtype3 + state[self.feat]]
            go_left = np.where(miss, self.default_left, np.take(x0, self.feat) <= self.thr)
        else:
            go_left = np.take(x, self.feat) <= self.thr
        nxt = np.concatenate((np.where(go_left, self.left, self.right), self.leaf_self))
        cur = self.roots
        for _ in range(self.max_depth):
            cur = nxt[cur]
        return np.bincount(self.owner, weights=self.value[cur], minlength=self.n_outputs)
