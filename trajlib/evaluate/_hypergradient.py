"""Hypergradient descent on the learning rate (Baydin et al. 2018), with LR bounds.

For ``theta_t = theta_{t-1} - lr * u_t`` (``u_t`` the optimizer's update direction: the gradient for
plain SGD, the momentum buffer for SGD+momentum, ``m_hat / (sqrt(v_hat) + eps)`` (+ decoupled
weight decay) for AdamW), the derivative of the next loss with respect to the LR is
``d f(theta_t) / d lr = -g_{t+1} . u_t``. Gradient descent on the LR with hyper-LR ``beta`` gives
the additive rule ``lr <- lr + beta * g_{t+1} . u_t`` — SGD-HD exactly when ``u = g``, and the
SGDN-HD / Adam-HD variants otherwise.

``u_t`` is measured, not re-derived: a copy of the parameters before ``optimizer.step()`` and
``u_t = (theta_before - theta_after) / lr`` after it, exact for any optimizer whose update is linear
in the LR (SGD with momentum and weight decay, Adam, AdamW). It costs one parameter copy per step,
like the paper's one extra gradient copy. The LR is clamped to ``[lr_min, lr_max]`` with
``lr_min > 0``, so it can never go negative (users of the original code asked for exactly that).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trajlib.errors import ConfigError

__all__ = ["HypergradientLR"]


class HypergradientLR:
    """Scheduler-like object adapting every param group's LR by hypergradient descent.

    Works through optimizer step hooks, so call order is the usual one: ``optimizer.step()`` then
    ``scheduler.step()`` (which does nothing). ``close()`` removes the hooks.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, beta: float, lr_min: float, lr_max: float
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError("optimizer", "a torch.optim.Optimizer", type(optimizer).__name__)
        if not (math.isfinite(beta) and beta >= 0):
            raise ConfigError("beta", "a finite hyper-learning-rate >= 0", beta)
        if not (0 < lr_min <= lr_max and math.isfinite(lr_max)):
            raise ConfigError(
                "lr_min/lr_max", "bounds with 0 < lr_min <= lr_max < inf", (lr_min, lr_max)
            )
        self.optimizer = optimizer
        self.beta = float(beta)
        self.lr_min, self.lr_max = float(lr_min), float(lr_max)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self._prev_dir: list[torch.Tensor] | None = None
        self._before: list[torch.Tensor] | None = None
        self.last_hypergrad = math.nan
        self.clamped = 0
        self._handles = [
            optimizer.register_step_pre_hook(self._pre),
            optimizer.register_step_post_hook(self._post),
        ]
        for g in optimizer.param_groups:
            g["lr"] = min(max(float(g["lr"]), self.lr_min), self.lr_max)

    @torch.no_grad()
    def _pre(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._prev_dir is not None:
            h = sum(
                float(torch.dot(p.grad.reshape(-1), u.reshape(-1)))
                for p, u in zip(self.params, self._prev_dir)
                if p.grad is not None
            )
            self.last_hypergrad = h
            if math.isfinite(h):
                for g in opt.param_groups:
                    new = float(g["lr"]) + self.beta * h
                    clipped = min(max(new, self.lr_min), self.lr_max)
                    self.clamped += clipped != new
                    g["lr"] = clipped
        self._before = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def _post(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._before is None:
            return
        lr = float(opt.param_groups[0]["lr"])
        self._prev_dir = [(b - p.detach()) / lr for b, p in zip(self._before, self.params)]
        self._before = None

    def step(self) -> None:
        """Nothing: the LR is updated in the optimizer's step pre-hook."""

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def info(self) -> dict[str, Any]:
        """Diagnostics for the trace: how often the bounds were hit."""
        return {"hypergradient_clamped": int(self.clamped)}

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.get_last_lr(), "clamped": self.clamped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for g, lr in zip(self.optimizer.param_groups, state["lr"]):
            g["lr"] = float(lr)
        self.clamped = int(state["clamped"])

    def close(self) -> None:
        """Remove the optimizer hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []
