"""Deploy benchmark: wall time of a training loop driven by a controller / the same loop with a
constant LR (``LambdaLR``).

Prints human-readable lines, then one JSON object on the last line. One thread everywhere.

    python tests/benchmarks/bench_deploy.py [--checkpoint PATH] [--steps 1500] [--reps 7] [--device cuda]

The loop is task ``mnist1d-mlp`` (MLP 40-100-100-10, batch 128, SGD with momentum 0.9; ``--hidden N``
widens it to 40-N-N-10 to show how the overhead scales with the work per step; ``--task`` runs
another built-in task's model instead), on the CPU
or, with ``--device cuda``, on a GPU.
Both loops draw the same batches and validate every 100 steps; the controller loop also calls
``observe`` / ``observe_validation`` / ``step`` of a :class:`ControllerScheduler`. Repetitions
are interleaved (baseline, controller, probe-only, in rotating order) and the reported
``deploy_overhead`` is the median over repetitions of controller time / baseline time of the same
repetition. ``probe_overhead`` is the same ratio for a loop with only the optimizer hooks
(:class:`StepProbe`, statistics taken each step and never read), which separates the cost of the
hooks from the cost of features and decisions (that loop steps no scheduler at all, so it saves
the baseline's ``LambdaLR.step``, ~7 us). ``deploy_overhead_of_min`` is the fastest controller
repetition over the fastest baseline one; ``breakdown_us_per_step`` comes from one more,
instrumented controller loop (``perf_counter`` around each hook and scheduler call). The hooks use the native kernels where they load
(``native_kernels``; ``TRAJLIB_NATIVE=0`` measures the PyTorch probe). Without ``--checkpoint``
a GBT controller is fitted from a tiny store collected first (about a minute).
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
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from tests._tiny import TINY_RECIPE  # noqa: E402
from trajlib import _native  # noqa: E402
from trajlib.controllers import load_controller  # noqa: E402
from trajlib.deploy import ControllerScheduler, StepProbe  # noqa: E402
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


def run(
    mode: str,
    steps: int,
    loaded,
    data,
    seed: int = 0,
    device: str = "cpu",
    hidden: int | None = None,
    task_name: str = "mnist1d-mlp",
) -> tuple[float, dict]:
    """One training loop; returns (wall seconds, info)."""
    task = get_task(task_name)
    torch.manual_seed(seed)
    model = (task.make_model() if hidden is None else mlp(40, (hidden, hidden), 10)).to(device)
    if task.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(
            model.parameters(), lr=task.default_lr, weight_decay=task.weight_decay
        )
    else:
        opt = torch.optim.SGD(model.parameters(), lr=task.default_lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    n_tr, B = data.x_train.shape[0], task.batch_size
    idx = torch.randint(0, n_tr, (steps, B), generator=g).to(device)
    x_tr, y_tr = data.x_train, data.y_train
    x_val, y_val = data.x_val[:512], data.y_val[:512]
    ce = task.loss_value
    info: dict = {}
    parts: dict[str, float] | None = None
    if mode == "baseline":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    elif mode == "probe":
        probe = StepProbe(opt)
    else:
        sched = ControllerScheduler(opt, loaded, total_steps=steps)
        decide = sched._decide
        spent = [0.0]

        def timed() -> None:
            t0 = time.perf_counter()
            decide()
            spent[0] += time.perf_counter() - t0

        sched._decide = timed  # type: ignore[method-assign]
        if mode == "breakdown":  # time each piece inside the loop (perf_counter adds ~0.5 us each)
            parts = {"pre_hook": 0.0, "post_hook": 0.0, "observe": 0.0, "step": 0.0}
            probe_ = sched._probe

            def timing(name: str, fn):
                def wrapper(*args):
                    t0 = time.perf_counter()
                    out = fn(*args)
                    parts[name] += time.perf_counter() - t0
                    return out

                return wrapper

            probe_.remove()
            probe_._handles = [
                opt.register_step_pre_hook(timing("pre_hook", probe_._pre)),
                opt.register_step_post_hook(timing("post_hook", probe_._post)),
            ]
            sched.observe = timing("observe", sched.observe)  # type: ignore[method-assign]
            sched.step = timing("step", sched.step)  # type: ignore[method-assign]
            mode = "controller"
    t0 = time.perf_counter()
    for t in range(steps):
        b = idx[t]
        loss = ce(model(x_tr[b]), y_tr[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mode == "probe":
            probe.take()
            continue
        if mode == "controller":
            sched.observe(loss)
        if (t + 1) % VAL_EVERY == 0:
            with torch.no_grad():
                vl = ce(model(x_val), y_val)
            if mode == "controller":
                sched.observe_validation(vl)
        sched.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    if mode == "controller":
        info = {"decide_s": spent[0], "events": dict(sched.events)}
        if parts is not None:
            info["parts"] = parts
        sched.close()
    elif mode == "probe":
        probe.remove()
    return wall, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--reps", type=int, default=7)
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
    for mode in ("baseline", "controller", "probe"):  # warm-up
        run(mode, 200, loaded, data, device=a.device, hidden=a.hidden, task_name=a.task)
    times: dict[str, list[float]] = {"baseline": [], "controller": [], "probe": []}
    info: dict = {}
    order = ["baseline", "controller", "probe"]
    for rep in range(a.reps):
        for mode in order[rep % 3 :] + order[: rep % 3]:
            wall, i = run(
                mode,
                a.steps,
                loaded,
                data,
                seed=rep,
                device=a.device,
                hidden=a.hidden,
                task_name=a.task,
            )
            times[mode].append(wall)
            if i:
                info = i
        print(f"rep {rep}: " + "  ".join(f"{m} {times[m][-1]:.3f}s" for m in order), flush=True)
    # one more controller loop, instrumented, outside the ratios: where the time goes
    _, bd = run(
        "breakdown", a.steps, loaded, data, device=a.device, hidden=a.hidden, task_name=a.task
    )
    parts = {k: v / a.steps * 1e6 for k, v in bd["parts"].items()}
    parts["step_without_decisions"] = parts.pop("step") - bd["decide_s"] / a.steps * 1e6
    parts["decisions"] = bd["decide_s"] / a.steps * 1e6
    ratio = [c / b for c, b in zip(times["controller"], times["baseline"])]
    pratio = [p / b for p, b in zip(times["probe"], times["baseline"])]
    base_us = statistics.median(times["baseline"]) / a.steps * 1e6
    ctrl_us = statistics.median(times["controller"]) / a.steps * 1e6
    probe_us = statistics.median(times["probe"]) / a.steps * 1e6
    decisions = max(1, info["events"]["decisions"] + info["events"]["held_nonfinite"])
    out = {
        "deploy_overhead": round(statistics.median(ratio), 4),
        "probe_overhead": round(statistics.median(pratio), 4),
        # fastest controller loop / fastest baseline loop: less sensitive to a busy machine
        "deploy_overhead_of_min": round(min(times["controller"]) / min(times["baseline"]), 4),
        "native_kernels": _native.lib() is not None,  # TRAJLIB_NATIVE=0: the PyTorch probe
        "overhead_ratios": [round(r, 4) for r in ratio],
        "baseline_step_us": round(base_us, 1),
        "controller_step_us": round(ctrl_us, 1),
        "probe_step_us": round(probe_us, 1),
        "decide_ms_per_decision": round(info["decide_s"] / decisions * 1e3, 3),
        "decide_us_per_step": round(info["decide_s"] / a.steps * 1e6, 1),
        "events": info["events"],
        # one extra instrumented controller loop (not in the ratios), us per step: the probe's
        # hooks, the scheduler's observe / step (without decisions) and the decisions
        "breakdown_us_per_step": {k: round(v, 1) for k, v in parts.items()},
        "task": a.task,
        "hidden": a.hidden or 100,
        "device": a.device,
        "steps": a.steps,
        "reps": a.reps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(
        f"overhead {out['deploy_overhead']:.3f}x (hooks alone {out['probe_overhead']:.3f}x); "
        f"baseline {base_us:.0f} us/step, controller {ctrl_us:.0f} us/step"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
