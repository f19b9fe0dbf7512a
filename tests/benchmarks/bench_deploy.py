"""Deploy benchmark: wall time of a training loop driven by a controller / the same loop without it.

Prints human-readable lines, then one JSON object on the last line. One thread everywhere.

    python tests/benchmarks/bench_deploy.py [--checkpoint PATH] [--steps 3000] [--reps 5] [--device cuda]
        [--tree-walk numpy]

The loop is task ``mnist1d-mlp`` (MLP 40-100-100-10, batch 128, SGD with momentum 0.9; ``--hidden N``
widens it to 40-N-N-10 to show how the overhead scales with the work per step; ``--task`` runs
another built-in task's model instead), on the CPU or, with ``--device cuda``, on a GPU. Every loop
draws the same batches and validates every 100 steps. The baseline loop is that and nothing else;
the controller loops are the same loop plus ``observe`` / ``observe_validation`` / ``step`` of a
:class:`ControllerScheduler` — the controller is the only difference.

Loops (each where it can run): ``baseline`` (the task's fixed LR); ``same-lrs/controller`` and
``same-lrs/controller-s4`` — the baseline loop run at the LRs the controller loop (every step /
stride 4, default backend) chose, step by step, set by hand (recorded from an untimed controller
run with the same seed; ``same_lrs_exact`` says the timed controller loop took the same actions);
``controller/<backend>`` — the scheduler with its
probe on a measurement backend (``native``: the C kernels, CPU float32; ``torch``: the reference
backend), statistics every step; ``controller-s4/<backend>`` — the same scheduler whose probe
measures with stride 4 (``stats_every=4``: the probe is replaced right after the scheduler is built,
because no controller is fitted on a strided feature set yet: the shipped controller then decides
on features of strided statistics — the decision path costs what it costs, the decisions are not
meant to be good); ``probe/<backend>`` — the optimizer hooks alone (:class:`StepProbe`, every
step, ``take()`` each step, nothing else); ``kernels`` (native kernels loaded, CPU) — hooks that
only read the gradients' addresses and call the two native kernels (``tl_pre`` on the real
gradient and weights, ``tl_update``), the floor of measuring every step that way.

How it is timed: this machine's speed drifts by 10-20 % over seconds, more than the overhead
being measured, so whole loops timed one after the other disagree by that much. Instead, each
repetition builds every loop (same seed) and runs them **interleaved in blocks** of ``--block``
steps (default 50, one decision interval) in rotating order, so every block of one loop is timed
within a short time of a block of the others. Each ``*_overhead`` is that loop's total time / the
baseline's total time in the same run (all blocks of all repetitions), with a 95 % bootstrap
interval over block rounds. ``deploy_overhead`` / ``deploy_overhead_s4`` are the controller loops'
time over their ``same-lrs`` loop's: what the controller costs, the LRs it chose being equal
(``*_vs_fixed_lr``: over the fixed-LR baseline instead). The two differ because a step's own cost
depends on the LRs: on x86 CPUs some LR paths produce subnormal floats, whose arithmetic is slow
(``same_lrs_over_fixed_lr``; with ``torch.set_flush_denormal(True)`` it is ~1.0). A guard rollback
restores the weights, which the ``same-lrs`` loop does not: its weights follow the controller's
until the first rollback. Both are those of the backend the scheduler picks by itself (native where the kernels load and the parameters are CPU float32,
else torch); ``by_backend`` has every backend's. ``breakdown_us_per_step`` comes from one more,
instrumented controller loop (default backend; ``perf_counter`` around each hook and scheduler
call). Without ``--checkpoint`` a GBT controller is fitted from a tiny store collected first
(about a minute).
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
from trajlib.controllers import load_controller  # noqa: E402
from trajlib.controllers._treewalk import Forests, native_status  # noqa: E402
from trajlib.deploy import ControllerScheduler  # noqa: E402
from trajlib.deploy._probe import StepProbe  # noqa: E402
from trajlib.measure import _native  # noqa: E402
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
    can be run a block of steps at a time. ``mode``: ``baseline``, ``kernels``, ``breakdown``, or
    ``controller/<backend>``, ``controller-s4/<backend>``, ``probe/<backend>``."""

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
        self.sched: Any = None
        self.lrs: list[list[float]] | None = None  # "same-lrs": each step's LRs, set by hand
        self.record: list[list[float]] | None = None  # each step's LRs, when recording
        kind, _, backend = mode.partition("/")
        if kind in ("baseline", "same-lrs"):
            return
        if kind == "probe":
            self.probe = StepProbe(self.opt, backend=backend)
            return
        if kind == "kernels":
            self._kernels_only()
            return
        sched = ControllerScheduler(self.opt, loaded, total_steps=steps)
        if backend or kind == "controller-s4":
            # the same scheduler, its probe on this backend / with stride 4 (see the docstring)
            dots = sched._probe.dots
            sched._probe.remove()
            stride = 4 if kind == "controller-s4" else 1
            sched._probe = StepProbe(
                self.opt, dots=dots, stats_every=stride, backend=backend or "auto"
            )
        self.sched = sched
        decide = sched._decide

        def timed(*args: Any) -> None:
            t0 = time.perf_counter()
            decide(*args)
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
        """The floor of the native backend: optimizer hooks that read the gradients' addresses
        (they change every step: ``zero_grad`` frees the gradients) and call its two kernels
        (``tl_pre`` on the real gradient and weights before the step, ``tl_update`` after it),
        every other address fixed once; no checks, no missing-gradient handling, no output
        rows."""
        lib = _native.lib()
        params = list(self.model.parameters())
        if lib is None or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
            raise SystemExit("the kernels-only loop needs the native kernels and CPU float32")
        bufs = [torch.zeros(p.numel()) for p in params for _ in range(3)]  # kept g, theta, u
        n = _native.ptrs([p.numel() for p in params])
        w = _native.ptrs([p.data_ptr() for p in params])
        g = _native.ptrs([0] * len(params))
        kept = [_native.ptrs([b.data_ptr() for b in bufs[i::3]]) for i in range(3)]
        out = torch.zeros(5, len(params))
        self._keep = (bufs, n, w, g, kept, out)  # alive as long as the loop
        L, o = len(params), out.data_ptr()
        n_, w_, g_, kg, kw, ku = (a.ctypes.data for a in (n, w, g, *kept))  # once, not per step
        pre, upd = lib.tl_pre, lib.tl_update

        def pre_hook(*_: Any) -> None:
            g[:] = [p.grad.data_ptr() for p in params]  # type: ignore[union-attr]
            pre(L, n_, w_, g_, kw, kg, 1, o)

        self.opt.register_step_pre_hook(pre_hook)
        self.opt.register_step_post_hook(lambda *_: upd(L, n_, w_, kw, ku, 1, o))

    def run(self, n: int) -> float:
        """``n`` more steps; returns their wall time in seconds."""
        model, opt, sched, probe, idx, ce = (
            self.model, self.opt, self.sched, self.probe, self.idx, self.loss_fn
        )  # fmt: skip
        d = self.data
        x_tr, y_tr, x_val, y_val = d.x_train, d.y_train, d.x_val[:512], d.y_val[:512]
        ctrl = sched is not None
        lrs, record, groups = self.lrs, self.record, opt.param_groups
        t0 = time.perf_counter()
        for t in range(self.t, self.t + n):
            if lrs is not None:  # the LRs a controller loop ran with, without the controller
                for g, lr in zip(groups, lrs[t]):
                    g["lr"] = lr
            elif record is not None:
                record.append([g["lr"] for g in groups])
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
            if ctrl:
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
    ap.add_argument(
        "--tree-walk",
        choices=("auto", "numpy"),
        default="auto",
        help="numpy: tree controllers walk their forests in numpy even where the native walk "
        "(forest_walk.c) loads: the native walk's figure is the decision cost of auto over numpy",
    )
    a = ap.parse_args()
    if a.tree_walk == "numpy":
        Forests._native_call = lambda self: None  # type: ignore[method-assign]
    if a.hidden is not None and a.task != "mnist1d-mlp":
        ap.error(f"--hidden widens mnist1d-mlp's MLP; got --task {a.task}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = a.checkpoint or fit_checkpoint(Path(tmp))
        loaded = load_controller(ckpt)
    data = get_task(a.task).make_data().to(a.device)
    kw = dict(device=a.device, hidden=a.hidden, task_name=a.task)
    native = _native.lib() is not None and a.device == "cpu"
    backends = ["native", "torch"] if native else ["torch"]
    default = backends[0]  # what the scheduler picks by itself here
    order = ["baseline", "same-lrs/controller", "same-lrs/controller-s4"]
    for kind in ("controller", "controller-s4", "probe"):
        order += [f"{kind}/{b}" for b in backends]
    if native:
        order.append("kernels")
    for mode in order:  # warm-up
        Loop(mode, 200, loaded, data, **kw).run(200)
    blocks: dict[str, list[float]] = {m: [] for m in order}
    used: dict[str, str | None] = {}
    events: dict = {}
    decide_s, decisions = 0.0, 0
    same_lrs_exact = True
    for rep in range(a.reps):
        # each controller loop's LRs, step by step, from an untimed run with the same seed
        taken: dict[str, list] = {}
        lrs: dict[str, list[list[float]]] = {}
        for kind in ("controller", "controller-s4"):
            rec = Loop(f"{kind}/{default}", a.steps, loaded, data, seed=rep, **kw)
            rec.record = lrs[kind] = []
            rec.run(a.steps)
            taken[kind] = list(rec.sched.actions_taken)
            rec.sched.close()
        loops = {m: Loop(m, a.steps, loaded, data, seed=rep, **kw) for m in order}
        for kind in ("controller", "controller-s4"):
            loops[f"same-lrs/{kind}"].lrs = lrs[kind]
        first = {m: len(blocks[m]) for m in order}
        done, k = 0, 0
        while done < a.steps:
            n = min(a.block, a.steps - done)
            for m in order[k % len(order) :] + order[: k % len(order)]:
                blocks[m].append(loops[m].run(n))
            done, k = done + n, k + 1
        tot = {m: sum(blocks[m][first[m] :]) for m in order}
        for m, lp in loops.items():  # the backend each loop's probe really used
            probe = lp.probe if lp.probe is not None else getattr(lp.sched, "_probe", None)
            if probe is not None:
                used[m] = probe.backend_name
        for kind in ("controller", "controller-s4"):  # the timed loop took the same actions
            same_lrs_exact &= loops[f"{kind}/{default}"].sched.actions_taken == taken[kind]
        ctrl = loops[f"controller/{default}"]
        events = dict(ctrl.sched.events)
        if events["errors"]:  # a figure without the decisions it should include is no figure
            raise SystemExit(f"bench_deploy: the controller loop counted errors: {events}")
        decide_s += ctrl.decide_s
        decisions += events["decisions"] + events["held_nonfinite"]
        for lp in loops.values():
            if lp.sched is not None:
                lp.sched.close()
        print(
            f"rep {rep}: / baseline: "
            + ", ".join(f"{m} {tot[m] / tot['baseline']:.4f}" for m in order[1:])
            + f" (baseline {tot['baseline'] / a.steps * 1e6:.0f} us/step)",
            flush=True,
        )
    mismatch = {m: b for m, b in used.items() if "/" in m and m.split("/")[1] != b}
    if mismatch:
        raise SystemExit(f"loops measured on another backend than named: {mismatch}")
    # one more controller loop, instrumented, outside the ratios: where the time goes
    bd = Loop("breakdown", a.steps, loaded, data, **kw)
    bd.run(a.steps)
    assert bd.parts is not None
    parts = {k: v / a.steps * 1e6 for k, v in bd.parts.items()}
    parts["step_without_decisions"] = parts.pop("step") - bd.decide_s / a.steps * 1e6
    parts["decisions"] = bd.decide_s / a.steps * 1e6
    total = {m: sum(blocks[m]) for m in order}
    n_steps = a.steps * a.reps

    def ratio(m: str, den: str = "baseline") -> dict[str, Any]:
        lo, hi = bootstrap_ratio_ci(blocks[m], blocks[den])
        return {
            "overhead": round(total[m] / total[den], 4),
            "ci95": [round(lo, 4), round(hi, 4)],
            "us_per_step": round((total[m] - total[den]) / n_steps * 1e6, 1),
        }

    by_backend = {
        b: {
            # the controller's cost: over the same loop run at the LRs the controller chose
            "deploy_overhead": ratio(f"controller/{b}", "same-lrs/controller"),
            "deploy_overhead_s4": ratio(f"controller-s4/{b}", "same-lrs/controller-s4"),
            # and over the loop at its fixed LR (adds what the controller's LRs cost the steps)
            "deploy_overhead_vs_fixed_lr": ratio(f"controller/{b}"),
            "deploy_overhead_s4_vs_fixed_lr": ratio(f"controller-s4/{b}"),
            "probe_overhead": ratio(f"probe/{b}"),
        }
        for b in backends
    }
    d = by_backend[default]
    base_us = total["baseline"] / n_steps * 1e6
    out = {
        "deploy_overhead": d["deploy_overhead"]["overhead"],
        "deploy_overhead_ci95": d["deploy_overhead"]["ci95"],
        "deploy_overhead_s4": d["deploy_overhead_s4"]["overhead"],
        "deploy_overhead_s4_ci95": d["deploy_overhead_s4"]["ci95"],
        "deploy_overhead_vs_fixed_lr": d["deploy_overhead_vs_fixed_lr"]["overhead"],
        "deploy_overhead_s4_vs_fixed_lr": d["deploy_overhead_s4_vs_fixed_lr"]["overhead"],
        # the steps' own cost at the controller's LRs (e.g. subnormal floats on x86)
        "same_lrs_over_fixed_lr": ratio("same-lrs/controller")["overhead"],
        "same_lrs_s4_over_fixed_lr": ratio("same-lrs/controller-s4")["overhead"],
        "same_lrs_exact": same_lrs_exact,
        "probe_overhead": d["probe_overhead"]["overhead"],
        "default_backend": default,
        "by_backend": by_backend,
        # the floor of the native backend: reading the gradients' addresses and its two kernels
        "kernels_overhead": ratio("kernels") if "kernels" in total else None,
        "native_kernels": _native.lib() is not None,  # TRAJLIB_NATIVE=0: torch only
        "baseline_step_us": round(base_us, 1),
        "decide_ms_per_decision": round(decide_s / max(1, decisions) * 1e3, 3),
        "tree_walk": "numpy" if a.tree_walk == "numpy" else native_status(),
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
    for b, r in by_backend.items():
        print(
            f"{b:6s}: controller {r['deploy_overhead']['overhead']:.3f}x "
            f"(95% CI {r['deploy_overhead']['ci95'][0]:.3f}-{r['deploy_overhead']['ci95'][1]:.3f})"
            f", stride 4 {r['deploy_overhead_s4']['overhead']:.3f}x "
            f"({r['deploy_overhead_s4']['ci95'][0]:.3f}-{r['deploy_overhead_s4']['ci95'][1]:.3f})"
            f", hooks alone {r['probe_overhead']['overhead']:.3f}x; over the fixed-LR loop "
            f"{r['deploy_overhead_vs_fixed_lr']['overhead']:.3f}x, stride 4 "
            f"{r['deploy_overhead_s4_vs_fixed_lr']['overhead']:.3f}x"
        )
    print(
        f"same LRs without the controller / fixed LR: {out['same_lrs_over_fixed_lr']:.3f}x, "
        f"stride 4 {out['same_lrs_s4_over_fixed_lr']:.3f}x"
    )
    print(f"baseline {base_us:.0f} us/step")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
