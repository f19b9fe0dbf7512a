"""Deploy benchmark: wall time of a training loop driven by a controller / the same loop with a
constant LR (``LambdaLR``).

Prints human-readable lines, then one JSON object on the last line. One thread everywhere.

    python tests/benchmarks/bench_deploy.py [--checkpoint PATH] [--steps 3000] [--reps 5] [--device cuda]

The loop is task ``mnist1d-mlp`` (MLP 40-100-100-10, batch 128, SGD with momentum 0.9; ``--hidden N``
widens it to 40-N-N-10 to show how the overhead scales with the work per step; ``--task`` runs
another built-in task's model instead), on the CPU
or, with ``--device cuda``, on a GPU.
Both loops draw the same batches and validate every 100 steps; the controller loop also calls
``observe`` / ``observe_validation`` / ``step`` of a :class:`ControllerScheduler`.

How it is timed: this machine's speed drifts by 10-20 % over seconds, more than the overhead
being measured, so whole loops timed one after the other disagree by that much. Instead, each
repetition builds the loops (baseline, controller, probe-only, kernels-only; same seed) and runs
them **interleaved in blocks** of ``--block`` steps (default 50, one decision interval) in rotating
order, so every block of one loop is timed within a few tens of milliseconds of a block of the
others. ``deploy_overhead`` is the controller loop's total time / the baseline loop's total time
(all blocks of all repetitions: a ratio of wall times of whole loops), with a 95 % bootstrap
interval over block rounds; ``overhead_by_rep`` gives the same ratio per repetition.
``probe_overhead`` is the same ratio for a loop with only the optimizer hooks
(:class:`StepProbe`, statistics taken each step and never read; it steps the same ``LambdaLR``
as the baseline), which separates the cost of the hooks from the cost of the scheduler's
bookkeeping, features and decisions; ``kernels_overhead`` (CPU, native kernels) is the same
ratio for a loop whose hooks only call the probe's two C kernels with addresses fixed once: the
floor of measuring every step this way. ``breakdown_us_per_step`` comes from one more,
instrumented controller loop (``perf_counter`` around each hook and scheduler call). The hooks
use the native kernels (``native_kernels``) and the C hooks (``native_hooks``) where they load;
``TRAJLIB_NATIVE=0`` measures the PyTorch probe. Without ``--checkpoint`` a GBT controller is
fitted from a tiny store collected first (about a minute).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

# run as a script (``python tests/benchmarks/bench_deploy.py``): the checkout's root on the path,
# for the tiny recipe the test fixtures share (``tests/_tiny.py``)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from tests._tiny import TINY_RECIPE  # noqa: E402
from trajlib import _native  # noqa: E402
from trajlib.controllers import load_controller  # noqa: E402
from trajlib.deploy import ControllerScheduler  # noqa: E402
from trajlib.deploy._probe import StepProbe  # noqa: E402
from trajlib.tasks import get_task  # noqa: E402
from trajlib.tasks._builtin import mlp  # noqa: E402

VAL_EVERY = 100


def fit_checkpoint(root: Path) -> Path:
    from trajlib.collect import collect, parse_recipe
    from trajlib.controllers import fit_store
    from trajlib.store import create_store, open_store

    store = root / "store"
    create_store(store)
    collect(
        parse_recipe(TINY_RECIPE), functools.partial(open_store, store), workers=1, progress=False
    )
    torch.set_num_threads(1)
    path, _ = fit_store(
        store, kind="gbt", labels="greedy", out=root / "gbt", params={"n_estimators": 30}
    )
    return path


class Loop:
    """One training loop (model, optimizer, batches and, by ``mode``, a scheduler or probe) that
    can be run a block of steps at a time."""

    def __init__(
        self,
        mode: str,
        steps: int,
        loaded,
        data,
        seed: int = 0,
        device: str = "cpu",
        hidden: int | None = None,
        task_name: str = "mnist1d-mlp",
    ) -> None:
        task = get_task(task_name)
        torch.manual_seed(seed)
        self.model = (task.make_model() if hidden is None else mlp(40, (hidden, hidden), 10)).to(
            device
        )
        if task.optimizer == "adamw":
            self.opt: torch.optim.Optimizer = torch.optim.AdamW(
                self.model.parameters(), lr=task.default_lr, weight_decay=task.weight_decay
            )
        else:
            self.opt = torch.optim.SGD(self.model.parameters(), lr=task.default_lr, momentum=0.9)
        g = torch.Generator().manual_seed(seed)
        self.idx = torch.randint(0, data.x_train.shape[0], (steps, task.batch_size), generator=g)
        self.idx = self.idx.to(device)
        self.data, self.loss_fn, self.device = data, task.loss_value, device
        self.mode, self.t = mode, 0
        self.parts: dict[str, float] | None = None
        self.decide_s = 0.0
        self.probe: StepProbe | None = None
        if mode in ("baseline", "probe", "kernels"):
            self.sched: Any = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0)
            if mode == "probe":
                self.probe = StepProbe(self.opt)
            if mode == "kernels":
                self._kernels_only()
            return
        sched = ControllerScheduler(self.opt, loaded, total_steps=steps)
        self.sched = sched
        decide = sched._decide

        def timed() -> None:
            t0 = time.perf_counter()
            decide()
            self.decide_s += time.perf_counter() - t0

        sched._decide = timed  # type: ignore[method-assign]
        if mode == "breakdown":  # time each piece inside the loop (perf_counter adds ~0.5 us each)
            parts = self.parts = {"pre_hook": 0.0, "post_hook": 0.0, "observe": 0.0, "step": 0.0}

            def timing(name: str, fn):
                def wrapper(*args):
                    t0 = time.perf_counter()
                    out = fn(*args)
                    parts[name] += time.perf_counter() - t0
                    return out

                return wrapper

            probe_ = sched._probe
            pre, post = probe_._pre, probe_._post
            probe_.remove()
            probe_._handles = [
                self.opt.register_step_pre_hook(timing("pre_hook", pre)),
                self.opt.register_step_post_hook(timing("post_hook", post)),
            ]
            sched.observe = timing("observe", sched.observe)  # type: ignore[method-assign]
            sched.step = timing("step", sched.step)  # type: ignore[method-assign]

    def _kernels_only(self) -> None:
        """The floor of the native probe: optimizer hooks that only call its two kernels
        (``tl_pre`` before the step, ``tl_update`` after it) with addresses fixed once, no Python
        around them. The weights stand in for the gradient (the same bytes to read; the real
        gradient's address changes every step and reading it is the probe's work)."""
        lib = _native.lib()
        params = list(self.model.parameters())
        if lib is None or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
            raise SystemExit("the kernels-only loop needs the native kernels and CPU float32")
        bufs = [torch.zeros(p.numel()) for p in params for _ in range(3)]  # kept g, theta, u
        n = _native.ptrs([p.numel() for p in params])
        w = _native.ptrs([p.data_ptr() for p in params])
        kept = [_native.ptrs([b.data_ptr() for b in bufs[i::3]]) for i in range(3)]
        out = torch.zeros(5, len(params))
        self._keep = (bufs, n, w, kept, out)  # alive as long as the loop
        L, o = len(params), out.data_ptr()
        n_, g_, w_, kg, kw, ku = (a.ctypes.data for a in (n, w, w, *kept))  # once, not per step
        pre, upd = lib.tl_pre, lib.tl_update
        self.opt.register_step_pre_hook(lambda *_: pre(L, n_, w_, g_, kw, kg, 1, o))
        self.opt.register_step_post_hook(lambda *_: upd(L, n_, w_, kw, ku, 1, o))

    def run(self, n: int) -> float:
        """``n`` more steps; returns their wall time in seconds."""
        model, opt, sched, probe, idx, ce = (
            self.model, self.opt, self.sched, self.probe, self.idx, self.loss_fn
        )  # fmt: skip
        d = self.data
        x_tr, y_tr, x_val, y_val = d.x_train, d.y_train, d.x_val[:512], d.y_val[:512]
        ctrl = self.mode in ("controller", "breakdown")
        t0 = time.perf_counter()
        for t in range(self.t, self.t + n):
            b = idx[t]
            loss = ce(model(x_tr[b]), y_tr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if probe is not None:
                probe.take()
            if ctrl:
                sched.observe(loss)
            if (t + 1) % VAL_EVERY == 0:
                with torch.no_grad():
                    vl = ce(model(x_val), y_val)
                if ctrl:
                    sched.observe_validation(vl)
            sched.step()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.t += n
        return time.perf_counter() - t0


def bootstrap_ratio_ci(
    num: list[float], den: list[float], n: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of sum(num) / sum(den), resampling paired blocks."""
    rng = random.Random(seed)
    k = len(num)
    ratios = []
    for _ in range(n):
        pick = [rng.randrange(k) for _ in range(k)]
        ratios.append(sum(num[i] for i in pick) / sum(den[i] for i in pick))
    ratios.sort()
    return ratios[int(0.025 * n)], ratios[int(0.975 * n) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=3000, help="steps per loop and repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument(
        "--block", type=int, default=50, help="steps per timed block (the loops alternate)"
    )
    ap.add_argument("--device", default="cpu", help="cpu | cuda (model, data and batches there)")
    ap.add_argument(
        "--task",
        default="mnist1d-mlp",
        help="the training loop's task (its model, loss, batch size and optimizer: SGD with "
        "momentum, or AdamW for the AdamW tasks)",
    )
    ap.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="hidden width of the MLP (default: the task's 100): how the overhead scales with "
        "the work per step",
    )
    a = ap.parse_args()
    if a.hidden is not None and a.task != "mnist1d-mlp":
        ap.error(f"--hidden widens mnist1d-mlp's MLP; got --task {a.task}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = a.checkpoint or fit_checkpoint(Path(tmp))
        loaded = load_controller(ckpt)
    data = get_task(a.task).make_data().to(a.device)
    kw = dict(device=a.device, hidden=a.hidden, task_name=a.task)
    order = ["baseline", "controller", "probe"]
    if _native.lib() is not None and a.device == "cpu":
        order.append("kernels")
    for mode in order:  # warm-up
        Loop(mode, 200, loaded, data, **kw).run(200)
    blocks: dict[str, list[float]] = {m: [] for m in order}
    by_rep: list[float] = []
    events: dict = {}
    decide_s, decisions = 0.0, 0
    for rep in range(a.reps):
        loops = {m: Loop(m, a.steps, loaded, data, seed=rep, **kw) for m in order}
        first = {m: len(blocks[m]) for m in order}
        done, k = 0, 0
        while done < a.steps:
            n = min(a.block, a.steps - done)
            for m in order[k % len(order) :] + order[: k % len(order)]:
                blocks[m].append(loops[m].run(n))
            done, k = done + n, k + 1
        tot = {m: sum(blocks[m][first[m] :]) for m in order}
        by_rep.append(tot["controller"] / tot["baseline"])
        ctrl = loops["controller"]
        events = dict(ctrl.sched.events)
        decide_s += ctrl.decide_s
        decisions += events["decisions"] + events["held_nonfinite"]
        ctrl.sched.close()
        print(
            f"rep {rep}: / baseline: "
            + ", ".join(f"{m} {tot[m] / tot['baseline']:.4f}" for m in order[1:])
            + f" (baseline {tot['baseline'] / a.steps * 1e6:.0f} us/step)",
            flush=True,
        )
    # one more controller loop, instrumented, outside the ratios: where the time goes
    bd = Loop("breakdown", a.steps, loaded, data, **kw)
    bd.run(a.steps)
    assert bd.parts is not None
    parts = {k: v / a.steps * 1e6 for k, v in bd.parts.items()}
    parts["step_without_decisions"] = parts.pop("step") - bd.decide_s / a.steps * 1e6
    parts["decisions"] = bd.decide_s / a.steps * 1e6
    total = {m: sum(blocks[m]) for m in order}
    n_steps = a.steps * a.reps
    lo, hi = bootstrap_ratio_ci(blocks["controller"], blocks["baseline"])
    plo, phi = bootstrap_ratio_ci(blocks["probe"], blocks["baseline"])
    base_us, ctrl_us, probe_us = (total[m] / n_steps * 1e6 for m in order[:3])
    out = {
        "deploy_overhead": round(total["controller"] / total["baseline"], 4),
        "deploy_overhead_ci95": [round(lo, 4), round(hi, 4)],
        "probe_overhead": round(total["probe"] / total["baseline"], 4),
        "probe_overhead_ci95": [round(plo, 4), round(phi, 4)],
        # the floor of the native probe: its two kernels alone, fixed addresses, no Python
        "kernels_overhead": round(total["kernels"] / total["baseline"], 4)
        if "kernels" in total
        else None,
        "overhead_by_rep": [round(r, 4) for r in by_rep],
        "overhead_us_per_step": round(ctrl_us - base_us, 1),
        "native_kernels": _native.lib() is not None,  # TRAJLIB_NATIVE=0: the PyTorch probe
        "native_hooks": _native.hooks() is not None,  # no Python headers: the Python hooks
        "baseline_step_us": round(base_us, 1),
        "controller_step_us": round(ctrl_us, 1),
        "probe_step_us": round(probe_us, 1),
        "decide_ms_per_decision": round(decide_s / max(1, decisions) * 1e3, 3),
        "decide_us_per_step": round(decide_s / n_steps * 1e6, 1),
        "events": events,
        # one extra instrumented controller loop (not in the ratios), us per step: the probe's
        # hooks, the scheduler's observe / step (without decisions) and the decisions
        "breakdown_us_per_step": {k: round(v, 1) for k, v in parts.items()},
        "task": a.task,
        "hidden": a.hidden or 100,
        "device": a.device,
        "steps": a.steps,
        "reps": a.reps,
        "block": a.block,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(
        f"overhead {out['deploy_overhead']:.3f}x (95% CI {lo:.3f}-{hi:.3f}; hooks alone "
        f"{out['probe_overhead']:.3f}x); baseline {base_us:.0f} us/step, controller "
        f"{ctrl_us:.0f} us/step"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
