"""The training engine: K runs of one task trained together with ``torch.func``.

All parameters of a member live in one flat vector, so the population state is a ``[K, P]`` tensor.
Gradients come from ``vmap(grad(loss))``; the optimizers (SGD with momentum, AdamW) are written on
the stacked tensors with per-member hyperparameters ``[K]``. A single run is a population of one, so
there is one code path. Instrumentation is batched: the per-layer squared norms of gradient, weight,
update and the consecutive-step dot products come from one matrix product with a 0/1 ``[P, L]``
layer-membership matrix, and every statistic of a step is written into a device-side record buffer
(no host transfer per step; the buffer is read once per chunk).

Batches are a deterministic function of (member seed, step), so a branch forked from a member at
step ``s`` sees exactly the batches the member would have seen (common random numbers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from trajlib.tasks import Task, TaskData

__all__ = ["FlatSpec", "Population", "REC_COLUMNS"]

# Columns of the per-step record buffer [step, K, len(REC_COLUMNS)] (names as in trajlib.schema).
REC_COLUMNS = (
    "loss",
    "lr",
    "momentum",
    "weight_decay",
    "l2",
    "input_noise",
    "grad_norm",
    "weight_norm",
    "update_norm",
    "grad_cos",
    "update_cos",
    "upd_ratio_mean",
    "upd_ratio_max",
    "upd_ratio_min",
    "upd_ratio_median",
    "step_time_s",
    "finite",
    "val_loss",
    "val_acc",
)
_C = {name: i for i, name in enumerate(REC_COLUMNS)}
_EPS = 1e-30


@dataclass(frozen=True)
class FlatSpec:
    """Where each parameter tensor lives in the flat vector; layers = parameter tensors."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]
    numels: tuple[int, ...]

    @property
    def n_params(self) -> int:
        return self.offsets[-1] + self.numels[-1]

    @property
    def n_layers(self) -> int:
        return len(self.names)

    @classmethod
    def from_module(cls, module: nn.Module) -> FlatSpec:
        names, shapes, offsets, numels, off = [], [], [], [], 0
        for name, p in module.named_parameters():
            names.append(name)
            shapes.append(p.shape)
            offsets.append(off)
            numels.append(p.numel())
            off += p.numel()
        return cls(tuple(names), tuple(shapes), tuple(offsets), tuple(numels))

    def flatten(self, module: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()])

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Name -> view into ``flat`` (last dim P) with the parameter's shape."""
        return {
            n: flat[..., o : o + k].view(*flat.shape[:-1], *s)
            for n, s, o, k in zip(self.names, self.shapes, self.offsets, self.numels)
        }

    def membership(self, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """0/1 matrix [P, L]: entry (i, l) is 1 when flat index i belongs to layer l."""
        m = torch.zeros(self.n_params, self.n_layers, dtype=dtype, device=device)
        for layer, (o, k) in enumerate(zip(self.offsets, self.numels)):
            m[o : o + k, layer] = 1.0
        return m


def _loss_value(task: Task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task.loss == "mse":
        return ((out - y) ** 2).mean()
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


class Population:
    """K members of one task, trained in lock step.

    Args:
        task: the task; ``data`` its splits already on ``device``.
        seeds: one seed per member (initialisation and data order).
        hps: initial hyperparameters, each a float tensor [K]: ``lr``, ``momentum``,
            ``weight_decay``, ``l2``, ``input_noise``.
        record: keep the per-step record (``False`` gives the bare training loop, for benchmarks
            and branches).
    """

    def __init__(
        self,
        task: Task,
        data: TaskData,
        seeds: list[int],
        hps: dict[str, torch.Tensor],
        *,
        device: str | torch.device = "cpu",
        record: bool = True,
        record_layers: bool = True,
        capacity: int | None = None,
        noise_seed: int = 0,
    ) -> None:
        self.task, self.data, self.device = task, data, torch.device(device)
        self.seeds = list(seeds)
        self.K = len(self.seeds)
        torch.manual_seed(self.seeds[0])
        self.module = task.make_model().to(self.device)
        self.spec = FlatSpec.from_module(self.module)
        flats = []
        for s in self.seeds:
            torch.manual_seed(s)
            flats.append(self.spec.flatten(task.make_model().to(self.device)))
        self.theta = torch.stack(flats)  # [K, P]
        self.hp = {k: v.to(self.device, torch.float32).clone() for k, v in hps.items()}
        for k in ("lr", "momentum", "weight_decay", "l2", "input_noise"):
            self.hp.setdefault(k, torch.zeros(self.K, device=self.device))
        self.t = 0
        self.adam_steps = torch.zeros(self.K, device=self.device)
        self.m1 = torch.zeros_like(self.theta)  # momentum buffer (SGD) / first moment (AdamW)
        self.m2 = torch.zeros_like(self.theta) if task.optimizer == "adamw" else None
        self.g_prev: torch.Tensor | None = None
        self.u_prev: torch.Tensor | None = None
        self.record, self.record_layers = record, record_layers
        self.capacity = capacity or task.budget
        self.M = self.spec.membership(self.device)
        self.noise_seed = noise_seed
        n_cols = len(REC_COLUMNS)
        self.rec = (
            torch.full((self.capacity, self.K, n_cols), float("nan"), device=self.device)
            if record
            else None
        )
        self.layer_rec = (
            torch.full(
                (self.capacity, self.K, self.spec.n_layers, 3), float("nan"), device=self.device
            )
            if record and record_layers
            else None
        )
        self._perm_epoch = -1
        self._perms: torch.Tensor | None = None
        self._nan = torch.full((self.K,), float("nan"), device=self.device)
        self._sq: torch.Tensor | None = None
        self._prev_norms: tuple[torch.Tensor, torch.Tensor] | None = None
        self.step_times: list[float] = []  # host wall time of each recorded step
        self._build_fns()

    # ------------------------------------------------------------------ functional pieces
    def _build_fns(self) -> None:
        task, module, spec = self.task, self.module, self.spec

        def out_fn(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return functional_call(module, spec.views(flat), (x,))

        def eval_fn(flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
            out = out_fn(flat, x)
            loss = _loss_value(task, out, y)
            if task.is_classification:
                acc = (out.argmax(-1) == y).float().mean()
            else:
                acc = torch.full((), float("nan"), device=out.device)
            return loss, acc

        self._out = out_fn
        self._vloss = vmap(lambda f, x, y: _loss_value(task, out_fn(f, x), y))
        self._veval = vmap(eval_fn, in_dims=(0, None, None))

    def _grad(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member gradients [K, P] and data losses [K]. Members are independent, so the
        gradient of the summed loss w.r.t. the stacked parameters is every member's own gradient
        (one batched forward with vmap, one backward; faster here than vmap(grad))."""
        theta = self.theta.detach().requires_grad_(True)
        with torch.enable_grad():
            if self.K == 1:
                loss = _loss_value(self.task, self._out(theta[0], x[0]), y[0]).reshape(1)
            else:
                loss = self._vloss(theta, x, y)
            total = loss.sum()
            l2 = self.hp["l2"]
            if bool((l2 != 0).any()):
                total = total + 0.5 * (l2 * (theta * theta).sum(-1)).sum()
            total.backward()
        assert theta.grad is not None
        return theta.grad, loss.detach()

    def _batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, B = self.data.x_train.shape[0], self.task.batch_size
        per_epoch = max(n // B, 1)
        epoch, pos = divmod(t, per_epoch)
        if epoch != self._perm_epoch:
            perms = []
            for s in self.seeds:
                g = torch.Generator().manual_seed(int(s) * 1_000_003 + epoch)
                perms.append(torch.randperm(n, generator=g))
            self._perms = torch.stack(perms).to(self.device)
            self._perm_epoch = epoch
        assert self._perms is not None
        idx = self._perms[:, pos * B : pos * B + B]  # [K, B]
        x, y = self.data.x_train[idx], self.data.y_train[idx]
        if x.is_floating_point() and bool((self.hp["input_noise"] > 0).any()):
            g = torch.Generator(device=self.device).manual_seed(self.noise_seed * 1_000_003 + t)
            noise = torch.randn(x.shape, generator=g, device=self.device)
            x = x + self.hp["input_noise"].view(-1, *([1] * (x.dim() - 1))) * noise
        return x, y

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def step(self, lr: torch.Tensor) -> None:
        """One optimizer step of every member with learning rates ``lr`` [K]."""
        t0 = time.perf_counter()
        t = self.t
        self.hp["lr"] = lr
        x, y = self._batch(t)
        g, loss = self._grad(x, y)
        theta = self.theta
        lr_c, mom, wd = lr[:, None], self.hp["momentum"][:, None], self.hp["weight_decay"][:, None]
        if self.task.optimizer == "sgd":
            d = g + wd * theta
            if t == 0:
                self.m1.copy_(d)
            else:
                self.m1.mul_(mom).add_(d)
            new = theta - lr_c * self.m1
        else:  # adamw, decoupled weight decay; beta1 = momentum, beta2 = 0.999
            self.adam_steps += 1
            b2 = 0.999
            self.m1.mul_(mom).add_((1 - mom) * g)
            assert self.m2 is not None
            self.m2.mul_(b2).addcmul_(g, g, value=1 - b2)
            bc1 = 1 - mom ** self.adam_steps[:, None]
            bc2 = 1 - b2 ** self.adam_steps[:, None]
            new = theta * (1 - lr_c * wd) - lr_c * (self.m1 / bc1) / ((self.m2 / bc2).sqrt() + 1e-8)
        if self.record and self.rec is not None and t < self.capacity:
            self._record(t, loss, g, theta, new, lr)
            self.theta = new
            self.step_times.append(time.perf_counter() - t0)
        else:
            self.theta = new
            self._last_loss = loss
        self.t = t + 1

    def _record(
        self,
        t: int,
        loss: torch.Tensor,
        g: torch.Tensor,
        theta: torch.Tensor,
        new: torch.Tensor,
        lr: torch.Tensor,
    ) -> None:
        u = new - theta
        buf = self._sq
        if buf is None or buf.shape[1] != self.K:
            buf = self._sq = torch.empty(5, self.K, self.spec.n_params, device=self.device)
        torch.mul(g, g, out=buf[0])
        torch.mul(theta, theta, out=buf[1])
        torch.mul(u, u, out=buf[2])
        first = self.g_prev is None or self._prev_norms is None
        if not first:
            torch.mul(g, self.g_prev, out=buf[3])
            torch.mul(u, self.u_prev, out=buf[4])
        rows = 3 if first else 5
        per_layer = (buf[:rows].view(rows * self.K, -1) @ self.M).view(
            rows, self.K, -1
        )  # [r, K, L]
        tot = per_layer.sum(-1)  # [r, K]
        gn, wn, un = tot[0].sqrt(), tot[1].sqrt(), tot[2].sqrt()
        if first:
            gcos, ucos = self._nan, self._nan
        else:
            pg, pu = self._prev_norms
            gcos = tot[3] / (gn * pg).clamp_min(_EPS)
            ucos = tot[4] / (un * pu).clamp_min(_EPS)
        self._prev_norms = (gn, un)
        ratio = per_layer[2].sqrt() / per_layer[1].sqrt().clamp_min(_EPS)  # [K, L]
        finite = (torch.isfinite(loss) & torch.isfinite(gn)).float()
        hp = self.hp
        nan = self._nan
        self.rec[t] = torch.stack(
            [
                loss,
                lr,
                hp["momentum"],
                hp["weight_decay"],
                hp["l2"],
                hp["input_noise"],
                gn,
                wn,
                un,
                gcos,
                ucos,
                ratio.mean(-1),
                ratio.amax(-1),
                ratio.amin(-1),
                ratio.median(-1).values,
                nan,
                finite,
                nan,
                nan,
            ],
            dim=1,
        )
        if self.layer_rec is not None:
            self.layer_rec[t] = per_layer[:3].sqrt().permute(1, 2, 0)  # [K, L, 3]
        self.g_prev, self.u_prev = g, u

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and accuracy [K] of every member on ``val`` or ``test`` (accuracy NaN for regression)."""
        x, y = (
            (self.data.x_val, self.data.y_val)
            if split == "val"
            else (self.data.x_test, self.data.y_test)
        )
        return self._veval(self.theta, x, y)

    def record_validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluate on val and store it in the row of the last completed step."""
        vl, va = self.evaluate("val")
        if self.rec is not None and 0 < self.t <= self.capacity:
            self.rec[self.t - 1, :, _C["val_loss"]] = vl
            self.rec[self.t - 1, :, _C["val_acc"]] = va
        return vl, va

    def last_losses(self) -> torch.Tensor:
        """Training losses [K] of the last step."""
        if self.record and self.rec is not None and 0 < self.t <= self.capacity:
            return self.rec[self.t - 1, :, _C["loss"]]
        return self._last_loss

    # ------------------------------------------------------------------ branching
    def fork(self, repeats: int, *, record: bool = False) -> Population:
        """A new population of K * repeats members: member k's state copied ``repeats`` times
        (order k0, k0, ..., k1, k1, ...). Same seeds, so the same future batches."""
        child = Population.__new__(Population)
        child.task, child.data, child.device = self.task, self.data, self.device
        child.seeds = [s for s in self.seeds for _ in range(repeats)]
        child.K = self.K * repeats
        child.module, child.spec, child.M = self.module, self.spec, self.M
        rep = lambda z: z.repeat_interleave(repeats, dim=0)  # noqa: E731
        child.theta = rep(self.theta)
        child.hp = {k: rep(v) for k, v in self.hp.items()}
        child.t = self.t
        child.adam_steps = rep(self.adam_steps)
        child.m1 = rep(self.m1)
        child.m2 = rep(self.m2) if self.m2 is not None else None
        child.g_prev = rep(self.g_prev) if self.g_prev is not None else None
        child.u_prev = rep(self.u_prev) if self.u_prev is not None else None
        child.record, child.record_layers, child.capacity = record, False, self.capacity
        child.rec, child.layer_rec = None, None
        child._nan = torch.full((child.K,), float("nan"), device=self.device)
        child.noise_seed = self.noise_seed
        child._perm_epoch, child._perms = -1, None
        child._out, child._vloss, child._veval = self._out, self._vloss, self._veval
        child.step_times = []
        child._sq = None
        child._prev_norms = None
        return child
