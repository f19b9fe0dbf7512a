"""The collector's per-step record: the same five per-layer sums for K stacked members.

The collection engine (:mod:`trajlib.collect`) trains K members at once on flat parameter vectors
``[K, P]`` whose layers start at multiples of ``align`` (the gaps stay zero). Its optimizer writes
each step's gradient, weights and *negative* update (d = theta_t - theta_{t+1}) into two rotating
``[3, K, P]`` buffers (steps t and t - 1), so nothing needs copying: the record of step t is the
five sums :data:`~trajlib.measure.RAW_LAYER_SUMS` per (member, layer), ``[5, K, L]``, written into
row t of a device-side record (``|d|^2 = |u|^2`` and ``d . d_prev = u . u_prev``). Three ways, one
result (tested against a direct computation):

* ``native`` (CPU float32, the kernels load): one pass per (member, layer) segment (``tl_record``),
  which also copies the members' losses into their record row;
* ``small`` (``K * P`` up to 256 K elements): two products into one ``[5, K, P]`` buffer, one block
  sum and one small product with the block -> layer membership matrix (fewest operations);
* ``large``: block norms of the three rows, the two products with the previous step, block sums,
  the membership product (less memory traffic than the product buffer).

All operands are views or addresses made once; nothing is read on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from trajlib.measure import _native

__all__ = ["PopulationSums"]

#: Largest K * P recorded with one product buffer (fewer ops); above it, norms and two products.
_SMALL_LIMIT = 1 << 18


class PopulationSums:
    """Writes row t of ``sums`` (``[n, 5, K, L]``) and of ``losses`` (``[n, K]``) per step.

    Args:
        store: ``[2, 3, K, P]``: buffer ``t % 2`` holds step t's (gradient, weights, -update), the
            other step t - 1's.
        offsets, numels: each layer's start and length in the flat vector (starts multiples of
            ``align``).
        align: the layers' alignment (elements).
        sums, losses: the record (float32, on ``store``'s device).
    """

    def __init__(
        self,
        store: torch.Tensor,
        offsets: Sequence[int],
        numels: Sequence[int],
        align: int,
        sums: torch.Tensor,
        losses: torch.Tensor,
    ) -> None:
        _, _, K, P = store.shape
        L = len(offsets)
        dev = store.device
        self.K, self.L = K, L
        self._sums, self._losses = sums, losses
        self._rows = sums.view(sums.shape[0], 5 * K, L)
        lib = _native.lib() if dev.type == "cpu" and store.dtype == torch.float32 else None
        self._lib = lib
        self.mode = "native" if lib is not None else "small" if K * P <= _SMALL_LIMIT else "large"
        nb = P // align
        m = torch.zeros(nb, L, dtype=store.dtype, device=dev)  # block b belongs to layer l
        ends = [*offsets[1:], P]
        for layer, (o, e) in enumerate(zip(offsets, ends)):
            m[o // align : e // align, layer] = 1.0
        self._prod = torch.empty(
            {"native": 0, "small": 5, "large": 2}[self.mode], K, P, device=dev, dtype=store.dtype
        )
        self._blocks = torch.empty(5 * K, nb, device=dev, dtype=store.dtype)
        self._args: list[tuple[Any, ...]] = []
        for par in (0, 1):
            cur, prev = store[par], store[1 - par]
            if lib is not None:
                # one pass per (member, layer) segment: addresses made once per buffer parity
                seg = [
                    [
                        buf.data_ptr() + 4 * (row * K * P + k * P + off)
                        for k in range(K)
                        for off in offsets
                    ]
                    for buf, row in ((cur, 0), (cur, 1), (cur, 2), (prev, 0), (prev, 2))
                ]
                arrs = [_native.ptrs(x) for x in seg]
                n = _native.ptrs(list(numels) * K)
                keep = (arrs, n)  # the arrays must outlive the calls
                self._args.append((keep, K * L, n.ctypes.data, *(a.ctypes.data for a in arrs)))
            elif self.mode == "small":
                p = self._prod
                self._args.append(
                    (cur, p[:3], cur[0::2], prev[0::2], p[3:], p.view(5 * K, -1, align), m)
                )
            else:
                p = self._prod
                self._args.append(
                    (
                        cur.view(3 * K, -1, align),
                        self._blocks[: 3 * K],
                        cur[0::2],
                        prev[0::2],
                        p,
                        p.view(2 * K, -1, align),
                        self._blocks[3 * K :],
                        m,
                    )
                )
        self._sums_base, self._loss_base = sums.data_ptr(), losses.data_ptr()

    def record(self, t: int, loss: torch.Tensor) -> None:
        """Row t of the record: step t's sums (from buffer ``t % 2`` and the other one) and the
        members' losses ``[K]``. No host synchronisation."""
        blocks = self._blocks
        if self._lib is not None:
            _, S, n, g, w, d, gp, dp = self._args[t % 2]
            K = self.K
            rows = self._sums_base + 4 * t * 5 * S  # sums[t], contiguous [5, K, L]
            if loss.dtype is torch.float32 and loss.is_contiguous():  # the loss copied too
                dst = self._loss_base + 4 * t * K  # losses[t]
                self._lib.tl_record(S, n, g, w, d, gp, dp, rows, K, loss.data_ptr(), dst)
                return
            self._lib.tl_record(S, n, g, w, d, gp, dp, rows, 0, None, None)
        elif self.mode == "small":  # small populations: fewer ops beat less memory traffic
            cur, p3, cur02, prev02, p2, prod_blocks, mb = self._args[t % 2]
            torch.mul(cur, cur, out=p3)
            torch.mul(cur02, prev02, out=p2)
            torch.sum(prod_blocks, dim=-1, out=blocks)
            torch.mm(blocks, mb, out=self._rows[t])
        else:
            cur_blocks, b3, cur02, prev02, p, p_blocks, b2, mb = self._args[t % 2]
            torch.linalg.vector_norm(cur_blocks, dim=-1, out=b3)
            b3.square_()
            torch.mul(cur02, prev02, out=p)  # [2, K, P]
            torch.sum(p_blocks, dim=-1, out=b2)
            torch.mm(blocks, mb, out=self._rows[t])
        self._losses[t] = loss
