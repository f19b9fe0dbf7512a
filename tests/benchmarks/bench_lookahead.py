"""Lookahead benchmark: final loss with vs without deploy-time lookahead, and its compute.

Two small loops written the way a user writes them (not trajlib tasks):

* ``mlp-regression``: MLP 16-64-64-1 on a fixed random smooth target, SGD with momentum 0.9;
* ``cnn-bn``: a 2-conv CNN with BatchNorm and dropout on scikit-learn's bundled ``digits`` (8×8),
  AdamW.

Each runs ``--steps`` steps from its default LR under the shipped controller (validation every 50
steps, as the controller was trained), once plainly and once per lookahead setting, per seed, and
with torch's ``CosineAnnealingLR`` alone for reference. The
final loss is the held-out test loss at the end (a split neither training nor validation sees).
One thread. Prints one line per run and a JSON summary on the last line::

    python tests/benchmarks/bench_lookahead.py [--seeds 3] [--steps 400] [--checkpoint PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trajlib.deploy import ControllerScheduler, Lookahead

ROOT = Path(__file__).resolve().parents[2]
Loop = tuple[nn.Module, torch.optim.Optimizer, Callable[[Any], torch.Tensor], Any, Any, Any]


def mlp_regression(seed: int, steps: int) -> Loop:
    g = torch.Generator().manual_seed(100)  # the task is fixed; the seed moves init and batches
    w = torch.randn(16, 4, generator=g) / 4
    x = torch.randn(6000, 16, generator=g)
    y = (torch.sin(x @ w) @ torch.ones(4, 1) + 0.1 * torch.randn(6000, 1, generator=g)).float()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train, val, test = (x[:4000], y[:4000]), (x[4000:5000], y[4000:5000]), (x[5000:], y[5000:])
    loss_fn = nn.functional.mse_loss
    return _loop(model, opt, loss_fn, train, val, test, seed, steps, batch=64)


def cnn_bn(seed: int, steps: int) -> Loop:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(100))
    x, y = x[perm], y[perm]
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, 10),
    )  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    train, val, test = (x[:1200], y[:1200]), (x[1200:1500], y[1200:1500]), (x[1500:], y[1500:])
    return _loop(model, opt, nn.functional.cross_entropy, train, val, test, seed, steps, batch=32)


def _loop(model, opt, loss_fn, train, val, test, seed, steps, batch):  # type: ignore[no-untyped-def]
    def train_step(b: Any) -> torch.Tensor:
        xb, yb = b
        loss = loss_fn(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    def evaluate(split: Any) -> float:
        model.eval()
        with torch.no_grad():
            out = float(loss_fn(model(split[0]), split[1]))
        model.train()
        return out

    gen = torch.Generator().manual_seed(1000 + seed)
    n = len(train[0])
    idx = [torch.randint(0, n, (batch,), generator=gen) for _ in range(steps)]
    batches = [(train[0][i], train[1][i]) for i in idx]
    return model, opt, train_step, batches, lambda: evaluate(val), lambda: evaluate(test)


LOOPS = {"mlp-regression": mlp_regression, "cnn-bn": cnn_bn}


def run(
    loop: str, seed: int, steps: int, ckpt: str, look: dict[str, Any] | str | None
) -> dict[str, Any]:
    model, opt, train_step, batches, val, test = LOOPS[loop](seed, steps)
    t0 = time.perf_counter()
    if look == "cosine":  # the reference: torch's cosine schedule, no controller
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        for b in batches:
            train_step(b)
            cos.step()
        return {"test_loss": test(), "compute_ratio": 1.0, "seconds": 0.0, "changed": 0}
    la = Lookahead(train_step, model, **look) if isinstance(look, dict) else None
    sched = ControllerScheduler(opt, ckpt, total_steps=steps, lookahead=la)
    for t, b in enumerate(sched.batches(batches)):
        sched.observe(train_step(b))
        if (t + 1) % 50 == 0:
            sched.observe_validation(val())
        sched.step()
    return {
        "test_loss": test(),
        "compute_ratio": sched.compute_ratio,
        "seconds": time.perf_counter() - t0,
        "events": dict(sched.events),
        "changed": sum(d.chosen != d.controller_choice for d in la.decisions) if la else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--checkpoint", default=str(ROOT / "models/trajlib-lr-v1/checkpoint"))
    ap.add_argument("--loops", default=",".join(LOOPS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    settings: dict[str, dict[str, Any] | str | None] = {
        "cosine": "cosine",
        "plain": None,
        "lookahead-k1-h10": {"top_k": 1, "horizon": 10},
        "lookahead-k2-h20": {"top_k": 2, "horizon": 20},
        "lookahead-k2-h20-c10": {"top_k": 2, "horizon": 20, "cooldown": 10},
    }
    summary: dict[str, Any] = {}
    for loop in args.loops.split(","):
        for name, look in settings.items():
            res = [run(loop, s, args.steps, args.checkpoint, look) for s in range(args.seeds)]
            for s, r in enumerate(res):
                print(
                    f"{loop:15s} {name:22s} seed {s}: test loss {r['test_loss']:.4f} "
                    f"compute x{r['compute_ratio']:.2f} changed {r['changed']} ({r['seconds']:.1f} s)"
                )
            summary[f"{loop}/{name}"] = {
                "test_loss": [r["test_loss"] for r in res],
                "mean": statistics.fmean(r["test_loss"] for r in res),
                "compute_ratio": statistics.fmean(r["compute_ratio"] for r in res),
            }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
