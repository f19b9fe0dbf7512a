"""Optimizer step hooks that measure what the features need, in a user's own training loop.

The probe registers a pre- and a post-hook on the optimizer, so it sees every real ``step()`` —
whoever calls ``zero_grad``, with gradient accumulation, and with ``torch.amp.GradScaler`` (a step
the scaler skips never reaches the hooks and is recorded as not finite). Statistics stay on the
device as one small tensor per step; they are read on the host only when the scheduler needs them
(at decision points), so there is no host synchronisation per step.

Definitions match the collector's (trajlib.schema): layers are parameter tensors; weight norms are
of theta_t (before the update); the update is u_t = theta_{t+1} - theta_t.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["StepProbe", "PROBE_COLUMNS"]

PROBE_COLUMNS = (
    "grad_norm",
    "weight_norm",
    "update_norm",
    "grad_cos",
    "update_cos",
    "upd_ratio_mean",
    "upd_ratio_max",
    "upd_ratio_min",
    "upd_ratio_median",
    "finite",
)
_EPS = 1e-30


class StepProbe:
    """Measures gradient / weight / update statistics of every optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._params: list[torch.Tensor] = []
        self._snap: list[torch.Tensor] | None = None
        self._g_prev: list[torch.Tensor] | None = None
        self._u_prev: list[torch.Tensor] | None = None
        self._pending: torch.Tensor | None = None  # stats of the last step, [len(PROBE_COLUMNS)]
        self._pre_grads: list[torch.Tensor] = []
        self._pre_stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        self.steps_seen = 0
        self._handles = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def _collect(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    @torch.no_grad()
    def _pre(self, opt: Any, args: Any, kwargs: Any) -> None:
        params = self._collect()
        if not params:
            self._pre_stats = None
            return
        grads = [p.grad for p in params]
        if (
            self._snap is None
            or len(self._snap) != len(params)
            or any(s.shape != p.shape for s, p in zip(self._snap, params))
        ):
            self._snap = [p.detach().clone() for p in params]
            self._g_prev = self._u_prev = None
        else:
            torch._foreach_copy_(self._snap, [p.detach() for p in params])
        gn = torch.stack(torch._foreach_norm(grads))  # [L]
        wn = torch.stack(torch._foreach_norm(self._snap))
        gdot = None
        if self._g_prev is not None and len(self._g_prev) == len(grads):
            gdot = torch.stack([(a * b).sum() for a, b in zip(grads, self._g_prev)])
        self._g_prev = [g.detach().clone() for g in grads]
        self._params = params
        self._pre_stats = (gn, wn, gdot)

    @torch.no_grad()
    def _post(self, opt: Any, args: Any, kwargs: Any) -> None:
        if self._pre_stats is None or self._snap is None:
            return
        gn_l, wn_l, gdot = self._pre_stats
        u = torch._foreach_sub([p.detach() for p in self._params], self._snap)
        un_l = torch.stack(torch._foreach_norm(u))
        gn2, wn2, un2 = (gn_l * gn_l).sum(), (wn_l * wn_l).sum(), (un_l * un_l).sum()
        gn, wn, un = gn2.sqrt(), wn2.sqrt(), un2.sqrt()
        nan = torch.full((), float("nan"), device=gn.device)
        if gdot is not None and self._prev_norms is not None:
            gcos = gdot.sum() / (gn * self._prev_norms[0]).clamp_min(_EPS)
        else:
            gcos = nan
        if (
            self._u_prev is not None
            and len(self._u_prev) == len(u)
            and self._prev_norms is not None
        ):
            udot = torch.stack([(a * b).sum() for a, b in zip(u, self._u_prev)]).sum()
            ucos = udot / (un * self._prev_norms[1]).clamp_min(_EPS)
        else:
            ucos = nan
        self._prev_norms = (gn, un)
        self._u_prev = u
        ratio = un_l / wn_l.clamp_min(_EPS)
        finite = torch.isfinite(gn).float()
        self._pending = torch.stack(
            [
                gn,
                wn,
                un,
                gcos,
                ucos,
                ratio.mean(),
                ratio.max(),
                ratio.min(),
                ratio.median(),
                finite,
            ]
        ).float()
        self.steps_seen += 1

    _prev_norms: tuple[torch.Tensor, torch.Tensor] | None = None

    def take(self) -> torch.Tensor | None:
        """The statistics of the optimizer step since the last ``take`` (None if it was skipped)."""
        out, self._pending = self._pending, None
        return out

    def reset(self) -> None:
        """Forget the previous step (after a resume, the first cosines are undefined)."""
        self._snap = self._g_prev = self._u_prev = None
        self._prev_norms = None
        self._pending = None
