"""See a data set: PNG figures of a trajectory store (``trajlib plot STORE --out DIR``).

:func:`plot_store` writes

- ``overview.png``: runs per task (stacked by family), run status per task, and the range of
  learning rates each task's runs covered (min-max over every step, the middle 80 % darker);
- per run ``run-<id>-curves.png``: training loss (raw and smoothed) and validation loss over steps
  above the hyperparameters in force (LR on a log axis; momentum and weight decay where they
  move), the decision points marked with the action taken;
- ``run-<id>-layers.png``: a layers x steps heat map of log10 update-to-weight ratio
  ``|u_l| / |theta_l|``;
- ``run-<id>-fan.png`` (runs with branches): the *branch fan*: from each decision point, a line to
  every action's validation loss after ``H`` steps, coloured by action, the behaviour's action
  drawn bold with a ring, over the main run's validation loss.

Runs default to the first run of each task; pass ``run_ids`` for others.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trajlib import schema as S
from trajlib.errors import ConfigError
from trajlib.store import open_store

__all__ = ["plot_store", "run_figure_names"]

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(run_id: str) -> str:
    return _SAFE.sub("_", run_id)


def run_figure_names(run_id: str, branches: bool = True) -> list[str]:
    """File names :func:`plot_store` writes for one run (``fan`` only for runs with branches)."""
    base = f"run-{_safe(run_id)}"
    names = [f"{base}-curves.png", f"{base}-layers.png"]
    return names + [f"{base}-fan.png"] if branches else names


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _family(task: str, entry: str | None) -> str:
    from trajlib.tasks import get_task, list_tasks

    if task in list_tasks():
        return get_task(task).family
    try:
        meta = (json.loads(entry) if entry else {}).get("task_meta") or {}
    except json.JSONDecodeError:
        meta = {}
    return str(meta.get("family") or "user")


def plot_store(
    store: Any,
    out: str | Path,
    run_ids: Sequence[str] | None = None,
    *,
    overview: bool = True,
    dpi: int = 110,
) -> list[Path]:
    """Write the PNG figures of ``store`` (a path, URL or open store) into ``out``.

    Returns the written paths: ``overview.png`` (when ``overview``) and, for every run in
    ``run_ids`` (default: the first committed run of each task), the files named by
    :func:`run_figure_names`. Unknown run ids raise :class:`~trajlib.errors.ConfigError`.
    """
    st = store if hasattr(store, "steps") else open_store(store)
    runs = st.runs().collect().sort(S.TASK, S.RUN_ID)
    if runs.height == 0:
        raise ConfigError("STORE", "a store with committed runs", str(getattr(st, "path", store)))
    if run_ids is None:
        chosen = runs.unique(S.TASK, keep="first", maintain_order=True)[S.RUN_ID].to_list()
    else:
        known = set(runs[S.RUN_ID].to_list())
        unknown = [r for r in run_ids if r not in known]
        if unknown:
            raise ConfigError(
                "--run", "ids of committed runs (see `trajlib store info`)", unknown[0]
            )
        chosen = list(dict.fromkeys(run_ids))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    written: list[Path] = []
    with plt.rc_context({"font.size": 10, "axes.grid": True, "grid.alpha": 0.3}):
        if overview:
            written.append(_overview(st, runs, out / "overview.png", dpi))
        for rid in chosen:
            written += _run_figures(
                st, runs.filter(pl.col(S.RUN_ID) == rid).row(0, named=True), out, dpi
            )
    return written


# ---------------------------------------------------------------------------- overview
def _overview(st: Any, runs: pl.DataFrame, path: Path, dpi: int) -> Path:
    plt = _plt()
    tasks = runs[S.TASK].unique(maintain_order=True).to_list()
    fams = [_family(t, e) for t, e in zip(runs[S.TASK], runs[S.ENTRY])]
    runs = runs.with_columns(pl.Series("_family", fams))
    lr = (
        st.steps(run_ids=runs[S.RUN_ID].to_list())
        .select(S.RUN_ID, S.LR)
        .join(runs.lazy().select(S.RUN_ID, S.TASK), on=S.RUN_ID)
        .filter(pl.col(S.LR) > 0)
        .group_by(S.TASK)
        .agg(
            pl.col(S.LR).min().alias("lo"),
            pl.col(S.LR).quantile(0.1).alias("q10"),
            pl.col(S.LR).quantile(0.9).alias("q90"),
            pl.col(S.LR).max().alias("hi"),
        )
        .collect()
    )
    from matplotlib.ticker import MaxNLocator

    h = max(4.2, 0.45 * len(tasks) + 2.4)
    fig, axes = plt.subplots(1, 3, figsize=(16, h), sharey=True)
    y = np.arange(len(tasks))
    cmap = plt.get_cmap("tab10")

    ax = axes[0]
    left = np.zeros(len(tasks))
    for i, fam in enumerate(sorted(set(fams))):
        n = np.array(
            [runs.filter((pl.col(S.TASK) == t) & (pl.col("_family") == fam)).height for t in tasks]
        )
        ax.barh(y, n, left=left, color=cmap(i % 10), label=fam)
        left += n
    for yi, total in zip(y, left):
        ax.text(total, yi, f" {int(total)}", va="center")
    ax.set_xlim(0, max(left.max() * 1.15, 1))
    ax.set_title(f"runs per task ({runs.height} runs), by family")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("runs")
    ax.legend(title="family", fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.16), ncol=3)

    ax = axes[1]
    colors = {
        S.STATUS_COMPLETE: "tab:green",
        S.STATUS_DIVERGED: "tab:orange",
        S.STATUS_FAILED: "tab:red",
    }
    statuses = sorted(set(runs[S.STATUS].to_list()), key=lambda s: (s not in colors, s))
    left = np.zeros(len(tasks))
    for s in statuses:
        n = np.array(
            [runs.filter((pl.col(S.TASK) == t) & (pl.col(S.STATUS) == s)).height for t in tasks]
        )
        ax.barh(y, n, left=left, color=colors.get(s, "tab:gray"), label=s)
        left += n
    ax.set_title("run status")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("runs")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.16), ncol=3)

    ax = axes[2]
    for yi, t in zip(y, tasks):
        row = lr.filter(pl.col(S.TASK) == t)
        if row.height == 0:
            continue
        r = row.row(0, named=True)
        ax.plot(
            [r["lo"], r["hi"]], [yi, yi], color="tab:blue", lw=3, alpha=0.35, solid_capstyle="butt"
        )
        ax.plot([r["q10"], r["q90"]], [yi, yi], color="tab:blue", lw=7, solid_capstyle="butt")
        ax.text(r["hi"], yi, f"  {r['lo']:.2g} – {r['hi']:.2g}", va="center", fontsize=8)
    ax.set_xscale("log")
    if lr.height:
        lo, hi = float(lr["lo"].min()), float(lr["hi"].max())
        ax.set_xlim(lo / 2, hi * 12)
    ax.set_title("learning rates covered (min–max; 10–90 % bold)")
    ax.set_xlabel("learning rate")
    axes[0].set_yticks(y, tasks)
    axes[0].invert_yaxis()
    fig.suptitle(f"store {getattr(st, 'path', '')}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- one run
def _action_labels(entry: str | None, n: int) -> list[str]:
    try:
        space = (json.loads(entry) if entry else {}).get("action_space") or []
        labels = [str(a.get("label") or json.dumps(a.get("moves"))) for a in space]
    except (json.JSONDecodeError, AttributeError):
        labels = []
    return labels if len(labels) >= n else [f"action {i}" for i in range(n)]


def _run_figures(st: Any, run: dict[str, Any], out: Path, dpi: int) -> list[Path]:
    rid = run[S.RUN_ID]
    steps = st.steps(run_ids=[rid]).collect().sort(S.STEP)
    dec = st.decisions(run_ids=[rid]).collect().sort(S.STEP)
    br = st.branches(run_ids=[rid]).collect().sort(S.STEP, S.ACTION)
    n_act = int(dec[S.N_ACTIONS].max() or 0) if dec.height else 0
    if br.height:
        n_act = max(n_act, int(br[S.ACTION].max()) + 1)  # type: ignore[arg-type]
    labels = _action_labels(run.get(S.ENTRY), n_act)
    title = f"{rid}  ·  {run[S.TASK]}  ·  {run[S.BEHAVIOUR]}  ·  {run[S.STATUS]}"
    names = run_figure_names(rid, branches=br.height > 0)
    paths = [out / n for n in names]
    _curves(steps, dec, labels, title, paths[0], dpi)
    _layers(st, rid, steps, title, paths[1], dpi)
    if br.height:
        _fan(steps, dec, br, labels, title, paths[2], dpi)
    return paths


def _action_colors(n: int) -> list[Any]:
    plt = _plt()
    cmap = plt.get_cmap("coolwarm")
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def _curves(
    steps: pl.DataFrame, dec: pl.DataFrame, labels: list[str], title: str, path: Path, dpi: int
) -> None:
    plt = _plt()
    x = steps[S.STEP].to_numpy()
    loss = steps[S.LOSS].cast(pl.Float64).to_numpy()
    moving = [
        c
        for c in (S.MOMENTUM, S.WEIGHT_DECAY)
        if c in steps.columns and steps[c].drop_nulls().n_unique() > 1
    ]
    fig, axes = plt.subplots(
        2 + len(moving),
        1,
        figsize=(12, 6.5 + 1.6 * len(moving)),
        sharex=True,
        gridspec_kw={"height_ratios": [2.2, 1.2] + [0.8] * len(moving)},
    )
    ax = axes[0]
    ax.plot(x, loss, color="tab:blue", alpha=0.25, lw=0.8, label="train loss (minibatch)")
    span = max(2, len(x) // 50)
    smooth = pl.Series(loss).ewm_mean(span=span, ignore_nulls=True).to_numpy()
    ax.plot(x, smooth, color="tab:blue", lw=1.8, label=f"train loss (EMA, span {span})")
    val = steps.select(S.STEP, S.VAL_LOSS).drop_nulls()
    if val.height:
        ax.plot(
            val[S.STEP],
            val[S.VAL_LOSS],
            "o-",
            color="tab:red",
            ms=3.5,
            lw=1.5,
            label="validation loss",
        )
    finite = loss[np.isfinite(loss)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 20:
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title, fontsize=10)

    ax = axes[1]
    ax.plot(
        x,
        steps[S.LR].to_numpy(),
        color="black",
        lw=1.4,
        label="learning rate in force",
        drawstyle="steps-post",
    )
    ax.set_yscale("log")
    ax.set_ylabel("learning rate")
    colors = _action_colors(len(labels))
    if dec.height:
        lr_at = dict(zip(steps[S.STEP].to_list(), steps[S.LR].to_list()))
        seen: set[int] = set()
        for t, a in zip(dec[S.STEP].to_list(), dec[S.ACTION].to_list()):
            ax.axvline(t, color="gray", lw=0.5, alpha=0.5)
            if t in lr_at and lr_at[t]:
                ax.plot(
                    [t],
                    [lr_at[t]],
                    "o",
                    color=colors[a],
                    mec="black",
                    ms=7,
                    label=f"decision: {labels[a]}" if a not in seen else None,
                )
                seen.add(a)
    ax.legend(fontsize=8, loc="best", ncol=2)
    for ax, c in zip(axes[2:], moving):
        ax.plot(x, steps[c].to_numpy(), color="tab:purple", lw=1.3)
        ax.set_ylabel(c.replace("_", " "))
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def _layers(st: Any, rid: str, steps: pl.DataFrame, title: str, path: Path, dpi: int) -> None:
    plt = _plt()
    arr, names, stats = st.layers(rid)
    fig, ax = plt.subplots(figsize=(12, max(3.0, 0.32 * len(names) + 1.8)))
    if arr.size and "update_norm" in stats and "weight_norm" in stats:
        u = arr[:, :, stats.index("update_norm")].astype(np.float64)
        w = arr[:, :, stats.index("weight_norm")].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.log10(u / w)
        ratio[~np.isfinite(ratio)] = np.nan
        finite = ratio[np.isfinite(ratio)]
        lo, hi = np.percentile(finite, [1, 99]) if finite.size else (-4.0, -1.0)
        im = ax.imshow(
            ratio.T,
            aspect="auto",
            interpolation="nearest",
            cmap="viridis",
            vmin=lo,
            vmax=hi,
            extent=(-0.5, ratio.shape[0] - 0.5, len(names) - 0.5, -0.5),
        )
        fig.colorbar(im, ax=ax, label="log10 |update| / |weight|", pad=0.01)
        ax.set_yticks(range(len(names)), names, fontsize=8 if len(names) < 30 else 6)
        ax.grid(False)
    else:
        ax.text(0.5, 0.5, "no per-layer statistics recorded", ha="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("layer")
    ax.set_title(f"update-to-weight ratio per layer  ·  {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def _fan(
    steps: pl.DataFrame,
    dec: pl.DataFrame,
    br: pl.DataFrame,
    labels: list[str],
    title: str,
    path: Path,
    dpi: int,
) -> None:
    plt = _plt()
    from matplotlib.lines import Line2D

    colors = _action_colors(len(labels))
    val = steps.select(S.STEP, S.VAL_LOSS).drop_nulls()
    loss = steps[S.LOSS].cast(pl.Float64)
    smooth = loss.ewm_mean(span=max(2, steps.height // 50), ignore_nulls=True).to_numpy()
    x = steps[S.STEP].to_numpy()
    taken = dict(zip(dec[S.STEP].to_list(), dec[S.ACTION].to_list()))

    def start_value(t: int) -> float:
        # the main run's validation loss just before the decision (else the smoothed train loss)
        v = val.filter(pl.col(S.STEP) < t)
        if v.height:
            return float(v[S.VAL_LOSS][-1])
        i = int(np.searchsorted(x, t))
        return float(smooth[min(i, len(smooth) - 1)])

    fig, ax = plt.subplots(figsize=(12, 5.5))
    if val.height:
        # a step's val_loss is measured on the weights after that step: draw it at step + 1, where
        # the fans (decision at t, outcome after H updates) start and end
        ax.plot(val[S.STEP] + 1, val[S.VAL_LOSS], "-", color="0.35", lw=1.5, zorder=1)
    all_y: list[float] = []
    for (t,), g in br.group_by(S.STEP, maintain_order=True):
        t = int(t)  # type: ignore[call-overload]
        y0 = start_value(t)
        for r in g.iter_rows(named=True):
            a, hz = int(r[S.ACTION]), int(r[S.HORIZON] or 0)
            y1 = r[S.BRANCH_VAL_LOSS]
            if y1 is None:
                continue
            bad = bool(r[S.BRANCH_DIVERGED]) or not math.isfinite(y1)
            is_taken = taken.get(t) == a
            if not bad:
                all_y += [y0, y1]
            ax.plot(
                [t, t + hz],
                [y0, y1 if not bad else y0],
                color=colors[a],
                lw=2.6 if is_taken else 1.1,
                alpha=1.0 if is_taken else 0.8,
                zorder=3,
            )
            ax.plot(
                [t + hz],
                [y1 if not bad else y0],
                "X" if bad else "o",
                color=colors[a],
                ms=9 if is_taken else 5,
                mec="black" if is_taken else colors[a],
                mew=1.6 if is_taken else 0.5,
                zorder=4,
            )
        ax.plot([t], [y0], "s", color="black", ms=4, zorder=5)
    if all_y:
        lo, hi = min(all_y), max(all_y)
        pad = 0.08 * (hi - lo or abs(hi) or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    handles = [
        Line2D([], [], color=c, lw=2, marker="o", label=lab) for c, lab in zip(colors, labels)
    ]
    handles += [
        Line2D(
            [],
            [],
            color="gray",
            lw=2.6,
            marker="o",
            mec="black",
            mew=1.6,
            ms=9,
            label="taken by the behaviour",
        ),
        Line2D([], [], color="0.35", lw=1.5, label="main run: validation loss"),
        Line2D([], [], color="gray", lw=0, marker="X", ms=8, label="diverged"),
    ]
    ax.legend(handles=handles, fontsize=8, loc="upper right", ncol=2)
    ax.set_xlabel("step (each fan: decision point -> every action's validation loss after H)")
    ax.set_ylabel("validation loss")
    ax.set_title(f"branch fan  ·  {title}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
