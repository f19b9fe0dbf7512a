"""The reference backend: per-layer sums with a few whole-model torch operations, on any device.

All of a step lives in one flat float32 buffer ``[3, size]`` (rows: g, theta, u), every layer
starting on a block boundary (128 elements; 1024 above 4 M elements), with a view per layer made
once per layout. A step is:

* before the update, one multi-tensor copy (``torch._foreach_copy_``) of the gradients and weights
  into their views (a missing gradient: its view zeroed);
* after it, one multi-tensor copy of the new weights into row u and one subtraction
  (u = theta_new - theta); then the block norms of the three rows
  (``[3, nb]``), the block dot products of g and u with the previous step's (``[2, nb]``), and one
  small product of those ``[5, nb]`` block sums with a 0/1 block -> layer membership matrix
  (a float64 cumulative sum differenced at the layers' last blocks when that matrix would be
  large).

With ``dots`` there are two such buffers; each step swaps which one is current, so the previous
step's g and u stay where they were written. No result is read on the host: :meth:`post` returns a
``[5, L]`` tensor on the parameters' device, and nothing here synchronises with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["TorchSums"]

#: Largest blocks * L for which the dense block-membership matrix is used (float32: 16 MiB).
_MEMBERSHIP_LIMIT = 1 << 22
_BLOCK, _BLOCK_LARGE = 128, 1024  # elements per block (models up to / above 4 M elements)


def block_layout(numels: Sequence[int]) -> tuple[int, list[int], list[int]]:
    """``(block, blocks per layer, offset of each layer)`` of the flat buffer for these layers."""
    block = _BLOCK if sum(numels) <= (1 << 22) else _BLOCK_LARGE
    nblocks = [-(-k // block) for k in numels]
    offsets = [0]
    for nb in nblocks[:-1]:
        offsets.append(offsets[-1] + nb * block)
    return block, nblocks, offsets


class TorchSums:
    """:class:`~trajlib.measure.LayerSums` with torch operations (any device, any float dtype).

    Args:
        params: the layers (parameter tensors), in order.
        dots: keep the previous step for the dot products g . g_prev and u . u_prev (else those
            rows are NaN and one buffer is enough).
    """

    name = "torch"

    def __init__(self, params: Sequence[torch.Tensor], *, dots: bool = True) -> None:
        if not params:
            raise ValueError("TorchSums needs at least one parameter")
        self.dots = bool(dots)
        self.device = params[0].device
        self.n_layers = L = len(params)
        self._shapes = [p.shape for p in params]
        self._numels = numels = [p.numel() for p in params]
        block, nblocks, self._offsets = block_layout(numels)
        size, nb = sum(nblocks) * block, sum(nblocks)
        dev = self.device
        self._store = torch.zeros(2 if self.dots else 1, 3, size, dtype=torch.float32, device=dev)
        self._ci = 0
        self._has_prev = False
        # per slot: views of rows g and theta per layer, of row u per layer, rows theta and u,
        # all rows as blocks [3, nb, B], rows g and u as blocks [2, nb, B]
        self._slots = []
        for buf in self._store:
            gw = self._layer_views(buf[0]) + self._layer_views(buf[1])
            u = self._layer_views(buf[2])
            blocks = buf.view(3, nb, block)
            self._slots.append((gw, u, buf[1], buf[2], blocks, blocks[0::2]))
        self._blk = torch.empty(5, nb, dtype=torch.float32, device=dev)
        self._nan2 = torch.full((2, L), math.nan, dtype=torch.float32, device=dev)
        layer_of_block = torch.repeat_interleave(torch.arange(L), torch.tensor(nblocks))
        self._membership: torch.Tensor | None = None
        if nb * L <= _MEMBERSHIP_LIMIT:
            m = torch.zeros(nb, L, dtype=torch.float32)
            m[torch.arange(nb), layer_of_block] = 1.0
            self._membership = m.to(dev)
        else:
            self._ends = (torch.tensor(nblocks).cumsum(0) - 1).to(dev)

    def _layer_views(self, row: torch.Tensor) -> list[torch.Tensor]:
        return [
            row[o : o + k].view(s) for o, k, s in zip(self._offsets, self._numels, self._shapes)
        ]

    # ------------------------------------------------------------------ the contract
    def usable(self, params: Sequence[torch.Tensor]) -> bool:
        """Whether the parameters are still on this backend's device (copies read them anywhere
        else they move; a device change rebuilds)."""
        return params[0].device == self.device

    def pre(
        self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None] | None
    ) -> None:
        """Keep this step's weights and (unless ``grads`` is None: see :meth:`grads`) gradients."""
        if self.dots:
            self._ci ^= 1  # the current buffer becomes the previous one
        gw = self._slots[self._ci][0]
        if grads is None:
            torch._foreach_copy_(gw[self.n_layers :], list(params))
            return
        self._copy_grads(gw, grads, list(params))

    def grads(self, grads: Sequence[torch.Tensor | None]) -> None:
        """Keep this step's gradients (after :meth:`pre` with ``grads=None``)."""
        self._copy_grads(self._slots[self._ci][0], grads, [])

    def _copy_grads(
        self,
        gw: list[torch.Tensor],
        grads: Sequence[torch.Tensor | None],
        params: list[torch.Tensor],
    ) -> None:
        n = self.n_layers
        dst: list[torch.Tensor] = []
        src: list[torch.Tensor] = []
        zero: list[torch.Tensor] = []
        for i, g in enumerate(grads):
            if g is None:
                zero.append(gw[i])
            else:
                dst.append(gw[i])
                src.append(g.to_dense() if g.is_sparse else g)
        if zero:
            torch._foreach_zero_(zero)
        if params:
            dst += gw[n:]
            src += params
        torch._foreach_copy_(dst, src)

    def post(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """The update u = theta_new - theta, kept; the step's ``[5, L]`` sums (a new tensor)."""
        _, u, w_row, u_row, blocks3, gu = self._slots[self._ci]
        torch._foreach_copy_(u, list(params))
        u_row.sub_(w_row)
        has_prev, self._has_prev = self._has_prev, self.dots
        blk3 = self._blk[:3]
        torch.linalg.vector_norm(blocks3, dim=-1, out=blk3)
        blk3.square_()
        if not has_prev:
            return torch.cat([self._per_layer(blk3), self._nan2])
        prev_gu = self._slots[self._ci ^ 1][5]
        torch.linalg.vecdot(gu, prev_gu, dim=-1, out=self._blk[3:])
        return self._per_layer(self._blk)

    def _per_layer(self, blocks: torch.Tensor) -> torch.Tensor:
        """Block sums ``[r, nb]`` -> per-layer sums ``[r, L]`` (a new tensor)."""
        if self._membership is not None:
            return blocks @ self._membership
        cs = blocks.double().cumsum(1).index_select(1, self._ends)  # float64: no cancellation
        return torch.diff(cs, dim=1, prepend=torch.zeros_like(cs[:, :1])).float()

    def forget(self) -> None:
        """No previous step: the next step's dot products are NaN."""
        self._has_prev = False

    def previous(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The kept step's gradient and update, flat float32 ``[sum(numels)]`` (None if none)."""
        if not self._has_prev:
            return None
        gw, u = self._slots[self._ci][:2]
        flat = [torch.cat([v.reshape(-1) for v in vs]) for vs in (gw[: self.n_layers], u)]
        return flat[0], flat[1]

    def restore(self, grad: torch.Tensor, update: torch.Tensor) -> None:
        """Make ``(grad, update)`` (as :meth:`previous` returns them) the previous step."""
        if not self.dots:
            return
        # the next pre() swaps buffers, so the restored step goes into the current one
        gw, u = self._slots[self._ci][:2]
        for views, flat in ((gw[: self.n_layers], grad), (u, update)):
            parts = torch.split(flat.to(self.device, torch.float32), self._numels)
            torch._foreach_copy_(views, [p.view(v.shape) for p, v in zip(parts, views)])
        self._has_prev = True
