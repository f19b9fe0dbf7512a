"""Run methods over tasks x seeds, aggregate with bootstrap confidence intervals, write a report."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from trajlib.evaluate._harness import Method, Trace, train_task
from trajlib.tasks import get_task

__all__ = ["EvalResult", "run_evaluation", "bootstrap_ci", "write_report"]


def bootstrap_ci(
    x: Sequence[float], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap CI of the mean over the finite values of ``x``."""
    a = np.asarray([v for v in x if math.isfinite(v)], dtype=float)
    if len(a) == 0:
        return math.nan, math.nan, math.nan
    if len(a) == 1:
        return float(a[0]), float(a[0]), float(a[0])
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(a.mean()), float(lo), float(hi)


@dataclass
class EvalResult:
    traces: list[Trace]
    table: pl.DataFrame  # one row per (task, method)
    baseline: str

    def markdown(self) -> str:
        return to_markdown(self.table)


def _fmt(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def summarize(traces: list[Trace], baseline_methods: Sequence[str]) -> pl.DataFrame:
    """Per task and method: final val loss / acc, test loss, steps to the best baseline's final
    val loss (per seed), divergence rate, wall time and compute charged."""
    rows = []
    by_task: dict[str, list[Trace]] = {}
    for tr in traces:
        by_task.setdefault(tr.task, []).append(tr)
    for task, trs in by_task.items():
        seeds = sorted({t.seed for t in trs})
        target: dict[int, float] = {}
        for s in seeds:
            base = [t.final_val_loss for t in trs if t.seed == s and t.method in baseline_methods]
            base = [b for b in base if math.isfinite(b)]
            target[s] = min(base) if base else math.nan
        methods = list(dict.fromkeys(t.method for t in trs))
        for m in methods:
            mt = [t for t in trs if t.method == m]
            fv = [t.final_val_loss for t in mt]
            fa = [t.final_val_acc for t in mt]
            tl = [t.test_loss for t in mt]
            st = [t.steps_to(target[t.seed]) for t in mt]
            reached = [math.isfinite(v) for v in st]
            fv_m = bootstrap_ci(fv)
            rows.append(
                {
                    "task": task,
                    "method": m,
                    "seeds": len(mt),
                    "final_val_loss": fv_m[0],
                    "final_val_loss_lo": fv_m[1],
                    "final_val_loss_hi": fv_m[2],
                    "final_val_acc": bootstrap_ci(fa)[0],
                    "test_loss": bootstrap_ci(tl)[0],
                    "steps_to_target": float(np.nanmedian(st)) if any(reached) else math.nan,
                    "reached_target": sum(reached) / len(mt),
                    "divergence_rate": sum(t.diverged for t in mt) / len(mt),
                    "wall_time_s": float(np.mean([t.wall_time_s for t in mt])),
                    "compute_runs": float(np.mean([t.cost for t in mt])),
                }
            )
    return pl.DataFrame(rows)


def to_markdown(table: pl.DataFrame) -> str:
    head = (
        "| task | method | final val loss (mean [95% CI]) | val acc | test loss | steps to target "
        "(median) | reached | diverged | wall s | compute (runs) |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in table.iter_rows(named=True):
        acc = f"{r['final_val_acc']:.3f}" if math.isfinite(r["final_val_acc"]) else "—"
        stt = f"{r['steps_to_target']:.0f}" if math.isfinite(r["steps_to_target"]) else "—"
        lines.append(
            f"| {r['task']} | {r['method']} | {_fmt(r['final_val_loss'], r['final_val_loss_lo'], r['final_val_loss_hi'])} "
            f"| {acc} | {r['test_loss']:.3f} | {stt} | {r['reached_target']:.0%} | {r['divergence_rate']:.0%} "
            f"| {r['wall_time_s']:.2f} | {r['compute_runs']:g} |"
        )
    return head + "\n".join(lines) + "\n"


def run_evaluation(
    methods: Sequence[Method],
    tasks: Sequence[str],
    seeds: Sequence[int],
    *,
    baseline_methods: Sequence[str] = ("constant", "cosine"),
    budget: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> EvalResult:
    """Train every method on every task and seed; returns traces and the summary table."""
    from tqdm.auto import tqdm

    jobs = [(t, m, s) for t in tasks for s in seeds for m in methods]
    traces = []
    for task_name, method, seed in tqdm(jobs, desc="evaluate", unit="run", disable=not progress):
        traces.append(train_task(get_task(task_name), method, seed, budget=budget, device=device))
    return EvalResult(traces, summarize(traces, baseline_methods), baseline_methods[0])


def write_report(
    result: EvalResult, out: str | Path, *, title: str = "trajlib evaluation", preamble: str = ""
) -> Path:
    """Write ``report.md``, ``summary.csv``, ``traces.json`` and PNG plots into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = list(dict.fromkeys(t.task for t in result.traces))
    methods = list(dict.fromkeys(t.method for t in result.traces))
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    pngs = []
    for task in tasks:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        for m in methods:
            trs = [t for t in result.traces if t.task == task and t.method == m]
            for i, tr in enumerate(trs):
                axes[0].plot(
                    tr.val_steps,
                    tr.val_loss,
                    color=colors[m],
                    alpha=0.35 if i else 0.9,
                    label=m if i == 0 else None,
                    lw=1.2,
                )
                axes[1].plot(
                    np.arange(len(tr.lr)),
                    tr.lr,
                    color=colors[m],
                    alpha=0.35 if i else 0.9,
                    label=m if i == 0 else None,
                    lw=1.0,
                )
        axes[0].set(
            title=f"{task}: validation loss", xlabel="step", ylabel="val loss", yscale="log"
        )
        axes[1].set(title=f"{task}: learning rate", xlabel="step", ylabel="lr", yscale="log")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        p = out / f"{task}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        pngs.append(p.name)
    md = [f"# {title}\n", preamble, "\n", result.markdown(), "\n"]
    md.append(
        f"Steps to target: first validation step reaching the best final validation loss of "
        f"{', '.join(repr(b) for b in ('constant', 'cosine'))} on the same seed. CIs: 95 % "
        f"percentile bootstrap over seeds.\n\n"
    )
    for p in pngs:
        md.append(f"![{p}]({p})\n")
    (out / "report.md").write_text("".join(md))
    result.table.write_csv(out / "summary.csv")
    (out / "traces.json").write_text(
        json.dumps(
            [
                {
                    "task": t.task,
                    "method": t.method,
                    "seed": t.seed,
                    "val_steps": t.val_steps.tolist(),
                    "val_loss": t.val_loss.tolist(),
                    "lr": t.lr[:: max(1, len(t.lr) // 200)].tolist(),
                    "test_loss": t.test_loss,
                    "diverged": t.diverged,
                    "wall_time_s": t.wall_time_s,
                    "info": t.info,
                }
                for t in result.traces
            ]
        )
    )
    return out / "report.md"
