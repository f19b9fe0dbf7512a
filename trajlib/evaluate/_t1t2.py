"""Online T1–T2 hypergradients for the L2 penalty and the input-noise std (Luketina et al. 2016).

Training (T1) minimises ``L(f(x + sigma * eps; theta), y) + lambda / 2 * ||theta||^2``. Every
``every`` steps the elementary step ``theta' = theta - eta * g(theta; lambda, sigma)`` is used to
differentiate the validation loss (T2) through one step::

    dC2(theta') / dh = -eta * v . d g / d h,      v = grad C2(theta')  (a validation batch)

for ``h`` in ``(log lambda, log sigma)``, computed exactly with double backward through the training
gradient. For SGD ``eta`` is the LR; for Adam(W) ``eta`` is the LR times Adam's current diagonal
preconditioner ``1 / (sqrt(v_hat) + eps)`` (momentum ignored — the paper's approximation too). The
log-hyperparameters take an Adam step of size ``hyper_lr`` (scale-free, so one setting fits tasks).
Input noise applies only to floating-point inputs (not to token ids).

The LR follows cosine from the task's default. Wall-time overhead is measured against the *same*
loop without the hypergradient steps (same regularisation at the initial values): Luketina et al.
report about +12 %; ``Trace.info['t1t2_overhead']`` holds ours.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch.func import functional_call

from trajlib.errors import ConfigError
from trajlib.evaluate._harness import Trace, TrainRun
from trajlib.evaluate._strategies import Strategy
from trajlib.tasks import Task

__all__ = ["T1T2"]


class T1T2(Strategy):
    """Cosine LR plus online T1–T2 tuning of L2 and input noise; one run (charged 1 + val passes)."""

    def __init__(
        self,
        *,
        l2_init: float = 1e-4,
        noise_init: float = 0.05,
        hyper_lr: float = 0.05,
        every: int = 5,
        tune_l2: bool = True,
        tune_noise: bool = True,
        measure_overhead: bool = True,
        name: str = "T1-T2 (L2, noise)",
    ) -> None:
        if not (l2_init > 0 and noise_init > 0):
            raise ConfigError(
                "l2_init/noise_init",
                "positive initial values (tuned in log space)",
                (l2_init, noise_init),
            )
        if not isinstance(every, int) or every < 1:
            raise ConfigError("every", "a positive integer number of steps", every)
        if not hyper_lr > 0:
            raise ConfigError("hyper_lr", "> 0", hyper_lr)
        self.l2_init, self.noise_init, self.hyper_lr, self.every = (
            l2_init,
            noise_init,
            hyper_lr,
            every,
        )
        self.tune_l2, self.tune_noise = tune_l2, tune_noise
        self.measure_overhead = measure_overhead
        self.name = name

    def run(
        self, task: Task, seed: int, *, budget: int | None = None, device: str = "cpu"
    ) -> Trace:
        data = task.make_data().to(device)
        trace, wall, n_hyper = self._loop(task, seed, budget, device, data, hyper=True)
        if self.measure_overhead:
            _, ref_wall, _ = self._loop(task, seed, budget, device, data, hyper=False)
            trace.info["t1t2_overhead"] = wall / ref_wall - 1.0
            trace.info["t1t2_reference_wall_s"] = ref_wall
        # each hyper step: one validation-batch forward/backward + one double backward ~ 2 steps
        trace.cost = 1.0 + 2.0 * n_hyper / trace.budget
        return trace

    def _loop(
        self, task: Task, seed: int, budget: int | None, device: str, data: Any, *, hyper: bool
    ) -> tuple[Trace, float, int]:
        run = TrainRun(task, seed, task.default_lr, budget=budget, device=device, data=data)
        T = run.budget
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(run.optimizer, T_max=T)
        log_l2 = torch.tensor(math.log(self.l2_init), requires_grad=True)
        log_noise = torch.tensor(math.log(self.noise_init), requires_grad=True)
        hopt = torch.optim.Adam([log_l2, log_noise], lr=self.hyper_lr)
        noisy = data.x_train.is_floating_point()
        names = [n for n, _ in run.model.named_parameters()]
        params = [p for _, p in run.model.named_parameters()]
        adam = isinstance(run.optimizer, torch.optim.Adam | torch.optim.AdamW)
        gen = torch.Generator(device=device).manual_seed(seed + 7)
        vgen = torch.Generator().manual_seed(seed + 11)
        n_val = data.x_val.shape[0]
        hist_l2, hist_noise, n_hyper = [], [], 0
        t0 = time.perf_counter()
        while not run.done:
            t = run.step
            x, y = run.batch(t)
            eps = torch.randn(x.shape, generator=gen, device=device) if noisy else x
            do_hyper = hyper and t % self.every == 0
            run.model.train()
            if do_hyper:
                l2, sig = log_l2.exp(), log_noise.exp()
                w = {n: p.detach().clone().requires_grad_(True) for n, p in zip(names, params)}
                xin = x + sig * eps if noisy else x  # eps is unused when not noisy
                loss = task.loss_value(functional_call(run.model, w, (xin,)), y)
                total = loss + 0.5 * l2 * sum((p**2).sum() for p in w.values())
                grads = torch.autograd.grad(total, list(w.values()), create_graph=True)
                for p, g in zip(params, grads):
                    p.grad = g.detach().clone()
            else:
                with torch.no_grad():
                    l2, sig = log_l2.exp(), log_noise.exp()
                xin = x + sig * eps if noisy else x
                loss = task.loss_value(run.model(xin), y)
                total = loss + 0.5 * l2 * sum((p**2).sum() for p in params)
                run.optimizer.zero_grad(set_to_none=True)
                total.backward()
            run.optimizer.step()
            run.lr[t] = run.optimizer.param_groups[0]["lr"]
            run.record_loss(loss)
            if run.diverged:
                break
            if do_hyper:
                idx = torch.randint(0, n_val, (task.batch_size,), generator=vgen).to(device)
                vloss = task.loss_value(run.model(data.x_val[idx]), data.y_val[idx])
                v = torch.autograd.grad(vloss, params)
                eta = float(run.optimizer.param_groups[0]["lr"])
                dot = torch.zeros(())
                for p, g, vi in zip(params, grads, v):
                    scale = vi
                    if adam:
                        st = run.optimizer.state[p]
                        b2 = run.optimizer.param_groups[0]["betas"][1]
                        vhat = st["exp_avg_sq"] / (1 - b2 ** float(st["step"]))
                        scale = vi / (vhat.sqrt() + run.optimizer.param_groups[0]["eps"])
                    dot = dot + (g * scale).sum()
                hg = torch.autograd.grad(-eta * dot, [log_l2, log_noise], allow_unused=True)
                hopt.zero_grad(set_to_none=True)
                log_l2.grad = hg[0] if (hg[0] is not None and self.tune_l2) else torch.zeros(())
                log_noise.grad = (
                    hg[1] if (hg[1] is not None and self.tune_noise and noisy) else torch.zeros(())
                )
                if torch.isfinite(log_l2.grad) and torch.isfinite(log_noise.grad):
                    hopt.step()
                with torch.no_grad():  # keep the hyperparameters in a sane range
                    log_l2.clamp_(math.log(1e-8), math.log(1.0))
                    log_noise.clamp_(math.log(1e-4), math.log(2.0))
                n_hyper += 1
                del grads
            if run.due_validation:
                run.validate()
                hist_l2.append(float(log_l2.detach().exp()))
                hist_noise.append(float(log_noise.detach().exp()))
            sched.step()
        wall = time.perf_counter() - t0
        info = {
            "l2": hist_l2,
            "noise": hist_noise if noisy else [],
            "final_l2": float(log_l2.detach().exp()),
            "final_noise": float(log_noise.detach().exp()) if noisy else math.nan,
            "hyper_steps": n_hyper,
        }
        return run.to_trace(self.name, wall_time_s=wall, info=info), wall, n_hyper
