"""Run methods over tasks x seeds, aggregate with bootstrap confidence intervals, write a report."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from trajlib.errors import ConfigError
from trajlib.evaluate._harness import Method, Trace, train_task
from trajlib.evaluate._protocol import STATIC_BASELINES, TARGET_METHOD
from trajlib.evaluate._strategies import Strategy
from trajlib.tasks import get_task

__all__ = [
    "EvalResult",
    "run_evaluation",
    "bootstrap_ci",
    "summarize",
    "to_markdown",
    "write_report",
]


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
    """Traces of every (task, method, seed) and the summary table (one row per task and method)."""

    traces: list[Trace]
    table: pl.DataFrame  # one row per (task, method); columns: see summarize()
    baseline: str

    def markdown(self) -> str:
        return to_markdown(self.table)


def _fmt(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _targets(
    trs: list[Trace], target_method: str, fallback: Sequence[str]
) -> tuple[dict[int, float], dict[int, str]]:
    """Per seed: the target validation loss and which method set it."""
    target: dict[int, float] = {}
    source: dict[int, str] = {}
    for s in sorted({t.seed for t in trs}):
        tuned = [t for t in trs if t.seed == s and t.method == target_method]
        if tuned and math.isfinite(tuned[0].final_val_loss):
            target[s], source[s] = tuned[0].final_val_loss, target_method
            continue
        base = [
            (t.final_val_loss, t.method)
            for t in trs
            if t.seed == s and t.method in fallback and math.isfinite(t.final_val_loss)
        ]
        target[s], source[s] = min(base) if base else (math.nan, "")
    return target, source


def summarize(
    traces: list[Trace],
    baseline_methods: Sequence[str] = STATIC_BASELINES,
    *,
    target_method: str = TARGET_METHOD,
    overhead_reference: str = "constant",
) -> pl.DataFrame:
    """One row per task and method (order of first appearance).

    Columns: ``seeds``; ``final_val_loss`` (+ ``_lo``/``_hi``: 95 % bootstrap CI over seeds),
    ``final_val_acc``; ``test_loss`` (+ CI), ``test_acc``; ``steps_to_target`` (median over seeds
    reaching it) and ``reached_target`` (fraction), where the per-seed target is the final val loss
    of ``target_method``, else the best of ``baseline_methods`` on that seed (``target_source``);
    ``val_auc`` (+ CI): mean log val loss over the budget (:meth:`Trace.val_auc`);
    ``divergence_rate``; ``wall_time_s`` (mean; all runs of a strategy); ``wall_overhead``: mean
    over seeds of wall / wall of ``overhead_reference`` on the same seed, minus 1;
    ``compute_runs`` / ``compute_steps``: compute charged (runs of the budget, steps).
    Diverged runs have NaN losses and are left out of the loss means (counted in the rate).
    """
    rows = []
    by_task: dict[str, list[Trace]] = {}
    for tr in traces:
        by_task.setdefault(tr.task, []).append(tr)
    for task, trs in by_task.items():
        target, source = _targets(trs, target_method, baseline_methods)
        ref_wall = {t.seed: t.wall_time_s for t in trs if t.method == overhead_reference}
        methods = list(dict.fromkeys(t.method for t in trs))
        for m in methods:
            mt = [t for t in trs if t.method == m]
            fv = bootstrap_ci([t.final_val_loss for t in mt])
            tl = bootstrap_ci([t.test_loss for t in mt])
            auc = bootstrap_ci([t.val_auc() for t in mt])
            st = [t.steps_to(target[t.seed]) for t in mt]
            reached = [math.isfinite(v) for v in st]
            over = [
                t.wall_time_s / ref_wall[t.seed] - 1.0
                for t in mt
                if t.seed in ref_wall and ref_wall[t.seed] > 0
            ]
            rows.append(
                {
                    "task": task,
                    "method": m,
                    "seeds": len(mt),
                    "final_val_loss": fv[0],
                    "final_val_loss_lo": fv[1],
                    "final_val_loss_hi": fv[2],
                    "final_val_acc": bootstrap_ci([t.final_val_acc for t in mt])[0],
                    "test_loss": tl[0],
                    "test_loss_lo": tl[1],
                    "test_loss_hi": tl[2],
                    "test_acc": bootstrap_ci([t.test_acc for t in mt])[0],
                    "steps_to_target": float(np.nanmedian(st)) if any(reached) else math.nan,
                    "reached_target": sum(reached) / len(mt),
                    "target_source": ", ".join(sorted({source[t.seed] for t in mt} - {""})),
                    "val_auc": auc[0],
                    "val_auc_lo": auc[1],
                    "val_auc_hi": auc[2],
                    "divergence_rate": sum(t.diverged for t in mt) / len(mt),
                    "wall_time_s": float(np.mean([t.wall_time_s for t in mt])),
                    "wall_overhead": float(np.mean(over)) if over else math.nan,
                    "compute_runs": float(np.mean([t.cost for t in mt])),
                    "compute_steps": float(np.mean([t.cost_steps for t in mt])),
                }
            )
    return pl.DataFrame(rows)


def _num(v: float, spec: str) -> str:
    return format(v, spec) if math.isfinite(v) else "—"


def to_markdown(table: pl.DataFrame) -> str:
    """The summary table as markdown: one row per (task, method)."""
    head = (
        "| task | method | final val loss [95% CI] | val acc | test loss [95% CI] | test acc "
        "| steps to target (median) | reached | val AUC (log) | diverged | wall s | overhead "
        "| compute runs (steps) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in table.iter_rows(named=True):
        lines.append(
            f"| {r['task']} | {r['method']} "
            f"| {_fmt(r['final_val_loss'], r['final_val_loss_lo'], r['final_val_loss_hi'])} "
            f"| {_num(r['final_val_acc'], '.3f')} "
            f"| {_fmt(r['test_loss'], r['test_loss_lo'], r['test_loss_hi'])} "
            f"| {_num(r['test_acc'], '.3f')} | {_num(r['steps_to_target'], '.0f')} "
            f"| {r['reached_target']:.0%} | {_num(r['val_auc'], '.3f')} "
            f"| {r['divergence_rate']:.0%} | {r['wall_time_s']:.2f} "
            f"| {_num(r['wall_overhead'], '+.0%')} "
            f"| {r['compute_runs']:.3g} ({r['compute_steps']:,.0f}) |"
        )
    return head + "\n".join(lines) + "\n"


def run_evaluation(
    methods: Sequence[Method | Strategy],
    tasks: Sequence[str],
    seeds: Sequence[int],
    *,
    baseline_methods: Sequence[str] = STATIC_BASELINES,
    target_method: str = TARGET_METHOD,
    budget: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> EvalResult:
    """Train every method (a :class:`Method`, one run, or a :class:`Strategy`, several) on every
    task and seed; returns traces and the summary table (see :func:`summarize`).

    Strategies are closed (e.g. their Ray cluster shut down) at the end, even on error.
    """
    from tqdm.auto import tqdm

    for m in methods:
        if not isinstance(m, Method | Strategy):
            raise ConfigError(
                "methods", "Method or Strategy objects (see standard_methods())", type(m).__name__
            )
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ConfigError("methods", "methods with distinct names", names)
    jobs = [(t, m, s) for t in tasks for s in seeds for m in methods]
    traces = []
    try:
        for task_name, method, seed in tqdm(
            jobs, desc="evaluate", unit="run", disable=not progress
        ):
            task = get_task(task_name)
            if isinstance(method, Strategy):
                traces.append(method.run(task, seed, budget=budget, device=device))
            else:
                traces.append(train_task(task, method, seed, budget=budget, device=device))
    finally:
        for m in methods:
            if isinstance(m, Strategy):
                m.close()
    table = summarize(traces, baseline_methods, target_method=target_method)
    return EvalResult(traces, table, target_method)


def _plot_steps_to_target(result: EvalResult, path: Path) -> None:
    import matplotlib.pyplot as plt

    tab = result.table
    tasks = list(dict.fromkeys(tab["task"].to_list()))
    fig, axes = plt.subplots(
        1,
        len(tasks),
        figsize=(5.5 * len(tasks), 0.35 * tab.height / max(len(tasks), 1) + 2),
        squeeze=False,
    )
    for ax, task in zip(axes[0], tasks):
        sub = tab.filter(pl.col("task") == task)
        vals = [v if math.isfinite(v) else 0.0 for v in sub["steps_to_target"].to_list()]
        reached = sub["reached_target"].to_list()
        y = np.arange(sub.height)
        ax.barh(y, vals, color=["tab:blue" if r > 0 else "lightgray" for r in reached])
        ax.set_yticks(
            y, [f"{m} ({r:.0%})" for m, r in zip(sub["method"].to_list(), reached)], fontsize=8
        )
        ax.invert_yaxis()
        ax.set(title=f"{task}: steps to target", xlabel="median step (% of seeds reaching)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    styles = {m: ("-", "--", ":")[(i // 10) % 3] for i, m in enumerate(methods)}
    pngs = []
    for task in tasks:
        fig, axes = plt.subplots(1, 2, figsize=(14, 4.6))
        for m in methods:
            trs = [t for t in result.traces if t.task == task and t.method == m]
            for i, tr in enumerate(trs):
                axes[0].plot(
                    tr.val_steps,
                    tr.val_loss,
                    color=colors[m],
                    ls=styles[m],
                    alpha=0.35 if i else 0.9,
                    label=m if i == 0 else None,
                    lw=1.2,
                )
                axes[1].plot(
                    np.arange(len(tr.lr)),
                    tr.lr,
                    color=colors[m],
                    ls=styles[m],
                    alpha=0.35 if i else 0.9,
                    label=m if i == 0 else None,
                    lw=1.0,
                )
        axes[0].set(
            title=f"{task}: validation loss", xlabel="step", ylabel="val loss", yscale="log"
        )
        axes[1].set(title=f"{task}: learning rate", xlabel="step", ylabel="lr", yscale="log")
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        p = out / f"{task}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        pngs.append(p.name)
    bars = out / "steps_to_target.png"
    _plot_steps_to_target(result, bars)
    pngs.append(bars.name)
    md = [f"# {title}\n\n", preamble, "\n", result.markdown(), "\n"]
    md.append(
        "Scores: **test** split at the budget (loss, accuracy); every choice a baseline makes uses "
        "the **validation** split. Steps to target: first validation step at which the validation "
        f"loss reaches, on the same seed, the final validation loss of `{result.baseline}` (or, "
        "where it was not run, the best static baseline; see `target_source` in summary.csv). "
        "Val AUC: mean log validation loss over the budget (lower is faster and better). Overhead: "
        "wall time relative to `constant` on the same seed (all runs of a search). Compute: runs "
        "of the budget charged (steps). CIs: 95 % percentile bootstrap over seeds; diverged runs "
        "are left out of loss means and counted under *diverged*.\n\n"
    )
    for png in pngs:
        md.append(f"![{png}]({png})\n")
    (out / "report.md").write_text("".join(md))
    result.table.write_csv(out / "summary.csv")  # every column of summarize()
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
                    "test_acc": t.test_acc,
                    "diverged": t.diverged,
                    "wall_time_s": t.wall_time_s,
                    "cost": t.cost,
                    "info": t.info,
                }
                for t in result.traces
            ]
        )
    )
    return out / "report.md"
