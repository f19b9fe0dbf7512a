"""Optimizer step hooks that measure what the features need, in a user's own training loop.

The probe registers a pre- and a post-hook on the optimizer, so it sees every real ``step()`` —
whoever calls ``zero_grad``, with gradient accumulation (the statistics are of the accumulated
gradient), with ``torch.amp.GradScaler`` (a step the scaler skips never reaches the hooks; the
scheduler records it as not finite), and with ``step(closure)`` as Lightning calls it (the closure
is wrapped so the gradient is read after the closure has computed it).

Cost. On CPU float32 parameters (the usual CPU case), when the native kernels load
(:mod:`trajlib._native`), a step costs two one-pass C calls: before it, over each layer's gradient
and weights (squared norms, the dot product with the previous gradient, keeping copies of both),
and after it, over the new weights (the update, its squared norm and its dot product with the
previous update) — plus reading each gradient's address. Otherwise (a GPU, other dtypes, no
compiler) the probe does a handful of whole-model operations on flat float32 buffers: one ``_foreach_copy_`` of gradients and weights into a ``[3, P]``
buffer (rows: g, theta, u) before the step, one of the new weights after it and a subtraction;
then, by model size:

* small models (flat size up to 64 K elements, the fused path): two multiplications into a
  product buffer (g, theta, u squared; g with the previous g, u with the previous u), one block
  sum (128-element blocks) and a small product of the ``[5, blocks]`` sums with a 0/1
  block -> layer membership matrix (every layer starts on a block boundary). Fewest operations,
  and the product buffer stays in cache;
* larger models (the lean path): read-only block norms of g, theta and u, and one dot product
  per param group for g·g_prev and u·u_prev (about 40% fewer bytes moved than the fused path,
  which matters once the buffers spill out of cache); with more than 8 param groups, the dot
  products are taken per block instead.

All operands are views made once per layout. Rows of the per-layer tensor are the squared norms
of g, theta and u per layer, and the dot products g·g_prev and u·u_prev: per layer on the fused
and per-block paths, per param group (in the group's first layer, 0 in the others) on the lean
path; the statistics only use their sums over the whole model or a group. Nothing is read on the
host: the per-layer tensors are reduced to the step-table statistics (:func:`summarise`) in one
batch when the scheduler needs them, at decision points.

Definitions match the collector's (``trajlib.schema`` and ``trajlib/collect/_engine.py``): layers
are parameter tensors; weight norms are of theta_t (before the update); the update is
u_t = theta_{t+1} - theta_t; cosines are with the previous *performed* step.

Parameters without a gradient at a step count as a zero gradient in the norms and are left out of
that step's per-layer update ratios (their per-layer ``present`` flag is 0).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

from trajlib import _native
from trajlib.stepstats import RAW_LAYER_SUMS, STEP_STATS, step_stats

__all__ = ["StepProbe", "PROBE_COLUMNS", "summarise"]

PROBE_COLUMNS = (*STEP_STATS, "finite")
#: Rows of the per-layer tensor of one step, ``[len(LAYER_ROWS), L]``.
LAYER_ROWS = RAW_LAYER_SUMS
_EPS = 1e-30
#: Largest blocks * L for which the dense block-membership matrix is used (float32: 16 MiB).
_MEMBERSHIP_LIMIT = 1 << 22
#: Largest flat size (elements) for the fused small-model path: its product buffer ([5, size])
#: must stay in cache; above it, the lean path (read-only block norms and one dot product per
#: param group) moves about 40% fewer bytes per step.
_FUSED_LIMIT = 1 << 16
#: Most param groups for which the dot products are taken per group (else per block).
_GROUP_DOTS_LIMIT = 8
_BLOCK, _BLOCK_LARGE = 128, 1024  # elements per block (models up to / above 4 M parameters)
_STATE_FORMAT = "trajlib-step-probe/1"
#: Steps whose native-path outputs share one allocation.
_OUT_CHUNK = 64


def _native_ok(p: torch.Tensor) -> bool:
    """Whether the native path can read this parameter (CPU, float32, contiguous, dense)."""
    return (
        p.device.type == "cpu"
        and p.dtype is torch.float32
        and p.is_contiguous()
        and not p.is_sparse
        and p.numel() > 0
    )


class StepProbe:
    """Measures gradient / weight / update statistics of every optimizer step.

    After each ``optimizer.step()``, :meth:`take` returns ``(layer_stats, present)``:
    ``layer_stats`` is a float32 tensor ``[5, L]`` on the parameters' device (rows
    :data:`LAYER_ROWS`; the two dot-product rows are NaN when there is no previous step, and on
    larger models hold per-param-group sums in each group's first layer) and
    ``present`` is ``None`` when every parameter had a gradient, else a bool tensor ``[L]``.
    Layers are the parameter tensors of ``optimizer.param_groups``, in order;
    :attr:`layer_groups` gives the param-group index of each layer.

    Args:
        optimizer: the optimizer to hook.
        dots: compute the consecutive-step dot products (grad/update cosines). ``False`` saves a
            buffer swap and a multiplication per step when the feature set reads no cosine.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, dots: bool = True) -> None:
        self.optimizer = optimizer
        self.dots = bool(dots)
        self.steps_seen = 0  # optimizer steps measured
        self.errors = 0  # exceptions caught inside the hooks (the step itself is never affected)
        self.layout_version = 0  # bumped whenever the parameter layout changes
        self.layer_groups: list[int] = []
        self._group_lists: list[Any] = []
        self._params: list[torch.Tensor] = []
        self._has_prev = False
        self._armed = False
        self._missing: list[int] = []
        self._pending: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._native: Any = None  # the native kernels when the layout allows them (_rebuild)
        # what the C hooks read (_native.hooks()): None, or the native path's tables (_rebuild)
        self._fast: tuple[Any, ...] | None = None
        ext = _native.hooks() if _native.lib() is not None else None
        if ext is not None:  # the usual step in C; anything else calls _pre_py / _post_py
            self._pre: Any = functools.partial(ext.pre_hook, self)
            self._post: Any = functools.partial(ext.post_hook, self)
        else:
            self._pre, self._post = self._pre_py, self._post_py
        self._handles = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]

    def remove(self) -> None:
        """Remove the optimizer hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------ layout
    def _layout_changed(self) -> bool:
        groups = self.optimizer.param_groups
        gl = self._group_lists
        if len(groups) != len(gl):
            return True
        for g, lst in zip(groups, gl):
            if g["params"] is not lst[0] or len(lst[0]) != lst[1]:
                return True
        return False

    def _rebuild(self) -> None:
        groups = self.optimizer.param_groups
        self._group_lists = [(g["params"], len(g["params"])) for g in groups]
        params = [p for g in groups for p in g["params"]]
        self._params = params
        self.layer_groups = [gi for gi, g in enumerate(groups) for _ in g["params"]]
        self.layout_version += 1
        self._has_prev = False
        self._native = None
        self._fast = None
        if not params:
            return
        dev = params[0].device
        numels = [p.numel() for p in params]
        lib = _native.lib() if all(_native_ok(p) for p in params) else None
        self._native = lib
        self._membership: torch.Tensor | None = None
        self._group_spans: list[tuple[int, int, int]] | None = None
        self._fused = False
        P, L = sum(numels), len(params)
        # Each layer starts on a multiple of the block size, so per-layer sums are one contiguous
        # reduction over blocks ([r, P] -> [r, nb]) and a tiny product with a block -> layer
        # membership matrix ([nb, L]) - much cheaper than a loop over layers or a [P, L] matmul.
        block = _BLOCK if P <= (1 << 22) else _BLOCK_LARGE
        nblocks = [-(-k // block) for k in numels]
        self._numels, self._block = numels, block
        self._offsets = [0]
        for nb in nblocks[:-1]:
            self._offsets.append(self._offsets[-1] + nb * block)
        size = sum(nblocks) * block
        nb_total = sum(nblocks)
        # Both buffers live in one [2, 3, size] tensor (slot ``self._ci`` is the current one), so
        # the five products of a step are one broadcast multiplication of the current buffer with
        # the pair (squares and products with the previous step).
        slots = 2 if self.dots and lib is None else 1
        self._store = torch.zeros(slots, 3, size, dtype=torch.float32, device=dev)
        self._ci = 0
        self._cur = self._store[0]
        self._prev = self._store[1] if slots == 2 else None
        self._L = L
        if lib is not None:
            # Native path: one pass per layer before the step (|g|^2, g . g_prev, |theta|^2,
            # keeping g and theta) and one after it (u, |u|^2, u . u_prev, keeping u), in place
            # in one buffer (rows g, theta, u): no swap, no product buffer.
            base = self._store.data_ptr()
            row = [[base + 4 * (r * size + o) for o in self._offsets] for r in range(3)]
            arrs = [_native.ptrs(x) for x in row]
            n_arr, w_arr = _native.ptrs(numels), _native.ptrs([p.data_ptr() for p in params])
            g_arr = np.zeros(L, dtype=np.int64)
            self._nat_keep = (arrs, n_arr, w_arr, g_arr)  # the arrays must outlive the calls
            self._nat_w, self._nat_g = w_arr, g_arr
            # addresses: counts, weights, gradients, kept g, kept theta, kept u
            self._nat_addr = (
                n_arr.ctypes.data, w_arr.ctypes.data, g_arr.ctypes.data,
                *(a.ctypes.data for a in arrs),
            )  # fmt: skip
            self._nat_wptrs = [p.data_ptr() for p in params]
            self._nat_out: tuple[torch.Tensor, int] | None = None
            self._nat_views: tuple[torch.Tensor, ...] = ()
            self._nat_next, self._nat_base = _OUT_CHUNK, 0
            self._slots = []
            # for the C hooks (trajlib/_native/hooks.c, same order there): parameters, layers,
            # addresses of the counts, weights, gradients, kept g, kept theta, kept u; float32
            self._fast = (tuple(params), L, *self._nat_addr, torch.float32)
            return
        self._blk = torch.zeros(5, nb_total, dtype=torch.float32, device=dev)  # scratch
        self._blk3, self._blk2 = self._blk[:3], self._blk[3:]
        layer_of_block = torch.repeat_interleave(torch.arange(L), torch.tensor(nblocks))
        if sum(nblocks) * L <= _MEMBERSHIP_LIMIT:
            m = torch.zeros(sum(nblocks), L, dtype=torch.float32)
            m[torch.arange(sum(nblocks)), layer_of_block] = 1.0
            self._membership = m.to(dev)
        else:
            ends = torch.tensor(nblocks).cumsum(0) - 1
            self._ends = ends.to(dev)
        # Models with a dense membership matrix: the products into one [5, size] buffer (two
        # multiplications of views made once), one block sum, one small matmul.
        self._fused = self._membership is not None and size <= _FUSED_LIMIT
        # Lean path: the consecutive-step dot products as one torch.dot per param group (its
        # layers are contiguous in the buffer), stored in the group's first layer: the statistics
        # only use their sums over a group (or the whole model).
        if not self._fused and len(groups) <= _GROUP_DOTS_LIMIT:
            spans: dict[int, list[int]] = {}
            for layer, gi in enumerate(self.layer_groups):
                spans.setdefault(gi, []).append(layer)
            self._group_spans = [
                (self._offsets[ls[0]], self._offsets[ls[-1]] + nblocks[ls[-1]] * block, ls[0])
                for ls in spans.values()
            ]
        if self._fused:
            self._prod = torch.empty(5 if self.dots else 3, size, dtype=torch.float32, device=dev)
            self._prod_blocks = self._prod.view(self._prod.shape[0], nb_total, block)
        self._slots = [self._make_views(i) for i in range(self._store.shape[0])]
        self._nan2 = torch.full((2, L), math.nan, dtype=torch.float32, device=dev)

    def _make_views(self, slot: int) -> tuple[Any, ...]:
        """Views of buffer ``slot``, made once: (per-parameter views of rows g and theta, of row
        u, row theta, row u, all rows as blocks ``[3, nb, B]``, rows g and u as blocks, the
        operands of the fused path's multiplications or None)."""
        buf = self._store[slot]
        gw: list[torch.Tensor] = []
        u: list[torch.Tensor] = []
        for row, out in ((0, gw), (1, gw), (2, u)):
            for p, off, k in zip(self._params, self._offsets, self._numels):
                out.append(buf[row, off : off + k].view(p.shape))
        b = self._block
        prods: tuple[torch.Tensor, ...] | None = None
        if self._fused:
            if self.dots:
                prev = self._store[1 - slot]
                prods = (buf, self._prod[:3], buf[0::2], prev[0::2], self._prod[3:])
            else:
                prods = (buf, self._prod[:3])
        return gw, u, buf[1], buf[2], buf.view(3, -1, b), buf[0::2].view(2, -1, b), prods

    def _per_layer(self, blocks: torch.Tensor) -> torch.Tensor:
        """Block sums ``[r, nb]`` -> per-layer sums ``[r, L]``."""
        if self._membership is not None:
            return blocks @ self._membership
        cs = blocks.double().cumsum(1).index_select(1, self._ends)  # float64: no cancellation
        return torch.diff(cs, dim=1, prepend=torch.zeros_like(cs[:, :1])).float()

    # ------------------------------------------------------------------ hooks
    def _pre_py(self, opt: Any, args: Any, kwargs: Any) -> Any:
        """The pre-hook in Python (every case; the C hook hands over all but the usual step)."""
        self._armed = False
        native = self._native
        if native is not None and len(args) == 1 and not kwargs:
            # fast path: native kernels, step() without a closure (no tensor ops, so grad mode
            # does not matter)
            try:
                if not self._layout_changed() and self._native_check():
                    self._native_pre(native)
                    return None
            except Exception:  # noqa: BLE001 - instrumentation never breaks the step it watches
                self.errors += 1
                self._group_lists = []
                return None
        grad_mode = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)  # cheaper than torch.no_grad() per call
        try:
            if self._layout_changed():
                self._rebuild()
            params = self._params
            if not params:
                return None
            native = self._native
            if native is not None and not self._native_check():
                self._rebuild()  # the parameters moved or changed type: the PyTorch path
                native = self._native
            if self._prev is not None:  # the current buffer becomes the previous one
                self._cur, self._prev = self._prev, self._cur
                self._ci ^= 1
            # torch passes ``args`` including the optimizer itself: (self, closure?)
            closure = kwargs.get("closure") if kwargs else None
            if closure is None and len(args) > 1:
                closure = args[1]
            if closure is None:
                if native is not None:
                    self._native_pre(native)
                else:
                    self._capture(True)
                return None
            # The gradient is computed inside step() by the closure (Lightning, LBFGS): snapshot
            # the weights now and the gradient when the closure returns.
            if native is not None:
                self._native_weights(native)
            else:
                gw = self._slots[self._ci][0]
                torch._foreach_copy_(gw[len(params) :], params)

            def wrapped() -> Any:
                out = closure()
                mode = torch.is_grad_enabled()
                torch._C._set_grad_enabled(False)
                try:
                    if self._native is not None:
                        self._native_grads(self._native)
                    else:
                        self._capture(False)
                except Exception:  # noqa: BLE001
                    self.errors += 1
                    self._group_lists = []
                finally:
                    torch._C._set_grad_enabled(mode)
                return out

            if kwargs and "closure" in kwargs:
                return args, {**kwargs, "closure": wrapped}
            return (args[0], wrapped, *args[2:]), kwargs
        except Exception:  # noqa: BLE001 - instrumentation never breaks the step it watches
            self.errors += 1
            self._group_lists = []  # rebuild on the next step
        finally:
            torch._C._set_grad_enabled(grad_mode)
        return None

    def _native_check(self) -> bool:
        """Whether the parameters are where the native path's pointers say (checked per step:
        ``model.to(...)`` or ``p.data = ...`` moves them)."""
        params = self._params
        w = [p.data_ptr() for p in params]
        if w != self._nat_wptrs:
            if not all(_native_ok(p) for p in params):
                return False
            self._nat_wptrs = w
            self._nat_w[:] = w
        return True

    def _native_out(self) -> tuple[torch.Tensor, int]:
        """This step's ``[5, L]`` output and its address: rows of a chunk allocated every
        ``_OUT_CHUNK`` steps (a chunk lives while the scheduler holds any of its rows)."""
        i = self._nat_next
        if i == _OUT_CHUNK:
            chunk = torch.empty(_OUT_CHUNK, 5, self._L, dtype=torch.float32)
            self._nat_views, self._nat_base, i = chunk.unbind(0), chunk.data_ptr(), 0
        self._nat_next = i + 1
        out = (self._nat_views[i], self._nat_base + 20 * self._L * i)
        self._nat_out = out
        return out

    def _native_weights(self, lib: Any) -> None:
        """|theta|^2 per layer, and theta kept (native path, before a step with a closure)."""
        n, w, _, _, wbuf, _ = self._nat_addr
        lib.tl_weights(self._L, n, w, wbuf, self._native_out()[1])

    def _native_grad_ptrs(self) -> list[Any]:
        """The gradients' addresses into ``_nat_g`` (0 for a missing one); returns what must
        stay alive through the call."""
        grads: list[Any] = [p.grad for p in self._params]
        try:
            ptrs = [g.data_ptr() for g in grads if g.is_contiguous()]
        except Exception:  # noqa: BLE001 - None, sparse or exotic gradients: the loop below
            ptrs = []
        if len(ptrs) == len(grads):  # the usual case: every gradient there and contiguous
            self._nat_g[:] = ptrs
            self._missing = []
            return grads
        missing: list[int] = []
        for i, g in enumerate(grads):
            if g is None:
                missing.append(i)
                self._nat_g[i] = 0
                continue
            if g.is_sparse or not g.is_contiguous() or g.dtype is not torch.float32:
                grads[i] = g = g.to_dense().to(torch.float32).contiguous()  # an odd layout
            self._nat_g[i] = g.data_ptr()
        self._missing = missing
        return grads

    def _native_grads(self, lib: Any) -> None:
        """|g|^2 and g . g_prev per layer, and g kept (native path, after a closure)."""
        if self._nat_out is None:
            return
        keep = self._native_grad_ptrs()
        n, _, g, gbuf, _, _ = self._nat_addr
        lib.tl_grad(self._L, n, g, gbuf, int(self._has_prev), self._nat_out[1])
        del keep
        self._armed = True

    def _native_pre(self, lib: Any) -> None:
        """Weights and gradients in one pass (native path, a step without a closure)."""
        keep = self._native_grad_ptrs()
        n, w, g, gbuf, wbuf, _ = self._nat_addr
        lib.tl_pre(self._L, n, w, g, wbuf, gbuf, int(self._has_prev), self._native_out()[1])
        del keep
        self._armed = True

    def _capture(self, weights: bool) -> None:
        """Copy the gradients (and, with ``weights``, the weights) into the current buffer
        (called with grad mode off)."""
        params = self._params
        gw = self._slots[self._ci][0]
        n = len(params)
        grads: list[torch.Tensor] = [p.grad for p in params]  # type: ignore[misc]
        missing = [i for i, g in enumerate(grads) if g is None]
        if missing:
            torch._foreach_zero_([gw[i] for i in missing])
            keep = [i for i, g in enumerate(grads) if g is not None]
            dst = [gw[i] for i in keep] + (gw[n:] if weights else [])
            torch._foreach_copy_(dst, [grads[i] for i in keep] + (params if weights else []))
        elif weights:
            torch._foreach_copy_(gw, grads + params)
        else:
            torch._foreach_copy_(gw[:n], grads)
        self._missing = missing
        self._armed = True

    def _post_py(self, opt: Any, args: Any, kwargs: Any) -> None:
        """The post-hook in Python (every case; the C hook hands over all but the usual step)."""
        if not self._armed:
            return
        self._armed = False
        native = self._native
        if native is not None:  # no tensor ops: grad mode does not matter
            try:
                if self._nat_out is not None:
                    stats, out = self._nat_out
                    self._nat_out = None
                    n, w, _, _, wbuf, ubuf = self._nat_addr
                    native.tl_update(self._L, n, w, wbuf, ubuf, int(self._has_prev), out)
                    self._finish(stats)
            except Exception:  # noqa: BLE001
                self.errors += 1
                self._group_lists = []
            return
        grad_mode = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            _, u, w_row, u_row, blocks3, gu, prods = self._slots[self._ci]
            torch._foreach_copy_(u, self._params)
            u_row.sub_(w_row)
            membership = self._membership
            if prods is not None and membership is not None:
                # products, one block sum, one small matmul
                torch.mul(prods[0], prods[0], out=prods[1])
                if self._has_prev and len(prods) == 5:
                    torch.mul(prods[2], prods[3], out=prods[4])
                    torch.sum(self._prod_blocks, dim=-1, out=self._blk)
                    stats = torch.mm(self._blk, membership)
                else:
                    torch.sum(self._prod_blocks[:3], dim=-1, out=self._blk3)
                    stats = torch.cat([torch.mm(self._blk3, membership), self._nan2])
            else:
                # block sums of squares (norm then square: one pass, no product buffer)
                torch.linalg.vector_norm(blocks3, dim=-1, out=self._blk3)
                self._blk3.square_()
                has_prev = self._has_prev and self._prev is not None
                if self._group_spans is not None:
                    stats = torch.empty(5, self._L, dtype=torch.float32, device=self._blk.device)
                    stats[:3] = self._per_layer(self._blk3)
                    cur, prev = self._cur, self._prev
                    if has_prev and prev is not None:
                        stats[3:].zero_()
                        for a, b, first in self._group_spans:
                            torch.dot(cur[0, a:b], prev[0, a:b], out=stats[3, first])
                            torch.dot(cur[2, a:b], prev[2, a:b], out=stats[4, first])
                    else:
                        stats[3:] = math.nan
                elif has_prev:
                    prev_gu = self._slots[self._ci ^ 1][5]
                    torch.linalg.vecdot(gu, prev_gu, dim=-1, out=self._blk2)
                    stats = self._per_layer(self._blk)
                else:
                    stats = torch.cat([self._per_layer(self._blk3), self._nan2])
            self._finish(stats)
        except Exception:  # noqa: BLE001
            self.errors += 1
            self._group_lists = []
        finally:
            torch._C._set_grad_enabled(grad_mode)

    def _finish(self, stats: torch.Tensor) -> None:
        self._has_prev = self.dots
        present = None
        if self._missing:
            present = torch.ones(len(self._params), dtype=torch.bool)
            present[self._missing] = False
            present = present.to(stats.device, non_blocking=True)
        self._pending = (stats, present)
        self.steps_seen += 1

    # ------------------------------------------------------------------ reading
    def take(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Per-layer statistics of the optimizer step since the last ``take`` (None if none ran)."""
        out, self._pending = self._pending, None
        return out

    @property
    def device(self) -> torch.device:
        """Where the probe's buffers live (the parameters' device; the CPU before a first step)."""
        return self._cur.device if self._params else torch.device("cpu")

    @property
    def has_pending(self) -> bool:
        """Whether an optimizer step was measured and not yet taken."""
        return self._pending is not None

    def reset(self) -> None:
        """Forget the previous step (the next cosines are undefined)."""
        self._has_prev = False
        self._pending = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The previous step's gradient and update (flat float32 tensors) and plain counters.

        Tensors are saved as they are (``torch.save`` / ``torch.load(weights_only=True)`` read
        them); everything else is plain Python.
        """
        prev = None
        if self._has_prev and self.dots and self._params:
            # after a step, the buffer that holds that step is ``_cur``
            prev = {"grad": self._cur[0].clone(), "update": self._cur[2].clone()}
        pending = None
        if self._pending is not None:
            s, m = self._pending
            pending = {"stats": s.clone(), "present": None if m is None else m.clone()}
        return {
            "format": _STATE_FORMAT,
            "steps_seen": self.steps_seen,
            "errors": self.errors,
            "layer_numels": [p.numel() for p in self._params] if self._params else None,
            "prev": prev,
            "pending": pending,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`. When the optimizer's parameters differ in shape from the
        saved ones, the previous step is forgotten (the next cosines are NaN)."""
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            from trajlib.errors import ConfigError

            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ConfigError("state_dict.probe.format", repr(_STATE_FORMAT), got)
        self.steps_seen = int(state["steps_seen"])
        self.errors = int(state["errors"])
        self._rebuild()
        pending = state.get("pending")
        self._pending = None
        if pending is not None and self._params:
            dev = self._cur.device
            m = pending["present"]
            self._pending = (pending["stats"].to(dev), None if m is None else m.to(dev))
        prev = state.get("prev")
        numels = [p.numel() for p in self._params]
        if prev is None or not self._params or state.get("layer_numels") != numels:
            return
        if not self.dots:
            return
        # the next pre-hook swaps buffers (PyTorch path; the native path keeps one buffer), so
        # the saved step goes into ``_cur``
        self._cur[0].copy_(prev["grad"])
        self._cur[2].copy_(prev["update"])
        self._has_prev = True


def summarise(
    stats: torch.Tensor | np.ndarray,
    present: torch.Tensor | np.ndarray | None,
    prev_norms: torch.Tensor | np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Step-table statistics from per-layer statistics, for a run of consecutive steps.

    Args:
        stats: ``[n, 5, L]`` per-layer rows (:data:`LAYER_ROWS`) of ``n`` consecutive measured
            steps (of the layers that make up one unit: the whole model or one param group).
        present: ``None`` or bool ``[n, L]``: layers that had a gradient (others are left out of
            the update ratios).
        prev_norms: ``[2]`` global gradient and update norm of the step before the first one, or
            ``None``.

    Returns:
        ``([n, len(PROBE_COLUMNS)] float32, [2] norms of the last step)``, host arrays (one
        transfer of the small ``stats``; float32 like the step table the controllers learned on).
    """
    out, last = step_stats(stats, prev_norms, present)
    finite = np.isfinite(out[:, 0])
    return np.concatenate([out, finite[:, None]], 1).astype(np.float32), last
