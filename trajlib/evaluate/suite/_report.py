"""The suite's numbers and report: paired comparisons, per-family summaries, targets, plots.

Pairs: each controller run (family, start, seed, with / without validation) against cosine from the
same start on the same seed (same initial weights and batches), against the tuned cosine of that
family and seed (the grid point with the lowest final validation loss, scored on test) and against
schedule-free from the same start. A ratio is controller score / reference score (test loss, lower
is better; a diverged or crashed run scores the penalty, see ``_loop``). A win is a strictly lower
score than cosine's. Medians carry 95 % percentile-bootstrap CIs over the pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trajlib.errors import ConfigError
from trajlib.evaluate.suite._runner import STARTS

__all__ = [
    "START_BANDS",
    "TARGETS",
    "bootstrap_median",
    "by_tuned_start",
    "pairs",
    "rerender_suite_report",
    "summary",
    "targets",
    "write_suite_report",
]

TARGETS = {
    "crashes": 0,
    "worst_family_median_ratio_cosine": 1.10,
    "win_rate": 0.70,
    "median_ratio_tuned": 1.05,
}


def bootstrap_median(
    x: Sequence[float | None], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Median and percentile-bootstrap CI of the median over the finite values of ``x`` (None and
    NaN left out)."""
    a = np.asarray([v for v in x if v is not None and math.isfinite(v)], dtype=float)
    if len(a) == 0:
        return math.nan, math.nan, math.nan
    if len(a) == 1:
        return float(a[0]), float(a[0]), float(a[0])
    rng = np.random.default_rng(seed)
    meds = np.median(a[rng.integers(0, len(a), size=(n_boot, len(a)))], axis=1)
    lo, hi = np.quantile(meds, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(np.median(a)), float(lo), float(hi)


def _grid_edges_md(results: pl.DataFrame, grid: Sequence[float]) -> str:
    """How often the tuned LR is the grid's lowest or highest point (then the grid, not the
    search, bounds "tuned")."""
    t = tuned_cosine(results)
    if not t.height:
        return ""
    lo = sum(math.isclose(v, min(grid)) for v in t["tuned_start"])
    hi = sum(math.isclose(v, max(grid)) for v in t["tuned_start"])
    return f"; chosen at the grid's lowest point in {lo} and its highest in {hi} of {t.height}"


def tuned_cosine(results: pl.DataFrame) -> pl.DataFrame:
    """Per (family, seed): the grid cosine run chosen on final validation loss (diverged runs
    excluded; where all diverged, the lowest score) and its score and LR factor."""
    cos = results.filter(pl.col("method") == "cosine")
    rows = []
    for (fam, seed), g in cos.group_by(["family", "seed"], maintain_order=True):
        ok = g.filter((pl.col("status") == "ok") & pl.col("final_val_loss").is_finite())
        pick = ok.sort("final_val_loss").head(1) if ok.height else g.sort("score").head(1)
        rows.append(
            {
                "family": fam,
                "seed": seed,
                "tuned_score": float(pick["score"][0]),
                "tuned_start": float(pick["start"][0]),
                "grid_runs": g.height,
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "family": pl.Utf8,
            "seed": pl.Int64,
            "tuned_score": pl.Float64,
            "tuned_start": pl.Float64,
            "grid_runs": pl.Int64,
        },
    )


def pairs(results: pl.DataFrame) -> pl.DataFrame:
    """One row per controller run with its references' scores, ratios and the win flag."""
    ctrl = results.filter(pl.col("method") == "controller")
    ref_cols = ["family", "start", "seed"]
    cos = results.filter(pl.col("method") == "cosine").select(
        *ref_cols, pl.col("score").alias("cosine_score"), pl.col("status").alias("cosine_status")
    )
    sf = results.filter(pl.col("method") == "schedule-free").select(
        *ref_cols, pl.col("score").alias("sf_score")
    )
    out = (
        ctrl.join(cos, on=ref_cols, how="left")
        .join(sf, on=ref_cols, how="left")
        .join(tuned_cosine(results), on=["family", "seed"], how="left")
    )
    return out.with_columns(
        (pl.col("score") / pl.col("cosine_score")).alias("ratio_cosine"),
        (pl.col("score") / pl.col("tuned_score")).alias("ratio_tuned"),
        (pl.col("sf_score") / pl.col("cosine_score")).alias("sf_ratio_cosine"),
        (pl.col("score") < pl.col("cosine_score")).alias("win"),
        (pl.col("score") == pl.col("cosine_score")).alias("tie"),
        (pl.col("status") != "ok").alias("crash"),
    )


def _summ(p: pl.DataFrame, family: str, with_val: bool) -> dict[str, Any]:
    rc = bootstrap_median(p["ratio_cosine"].to_list())
    rt = bootstrap_median(p["ratio_tuned"].to_list())
    sf = bootstrap_median(p["sf_ratio_cosine"].drop_nulls().to_list())
    wins = p["win"].fill_null(False)
    return {
        "family": family,
        "with_val": with_val,
        "runs": p.height,
        "win_rate": float(wins.mean()) if p.height else math.nan,  # type: ignore[arg-type]
        "ties": int(p["tie"].fill_null(False).sum()),
        "median_ratio_cosine": rc[0],
        "ratio_cosine_lo": rc[1],
        "ratio_cosine_hi": rc[2],
        "median_ratio_tuned": rt[0],
        "ratio_tuned_lo": rt[1],
        "ratio_tuned_hi": rt[2],
        "worst_ratio_cosine": float(p["ratio_cosine"].max()) if p.height else math.nan,  # type: ignore[arg-type]
        "crashes": int(p["crash"].sum()),
        "controller_errors": int(p["controller_errors"].sum()),
        "sf_median_ratio_cosine": sf[0],
    }


def summary(pr: pl.DataFrame) -> pl.DataFrame:
    """Per validation mode: one row per family, then ``ALL`` (every pair pooled)."""
    rows = []
    for wv in (True, False):
        pm = pr.filter(pl.col("with_val") == wv)
        if not pm.height:
            continue
        for fam in dict.fromkeys(pm["family"].to_list()):
            rows.append(_summ(pm.filter(pl.col("family") == fam), fam, wv))
        rows.append(_summ(pm, "ALL", wv))
    return pl.DataFrame(rows)


#: Bands of a run's start LR over its tuned cosine's LR (both multiples of the family's default):
#: (label, lower bound inclusive, upper bound exclusive). The grid's points are a factor 10^(1/3)
#: = 2.15 apart, so "near" is the tuned point and its two neighbours.
START_BANDS: tuple[tuple[str, float, float], ...] = (
    ("far below the tuned LR (< 1/3 of it)", 0.0, 1 / 3),
    ("near the tuned LR (1/3 to 3 times it)", 1 / 3, 3.0),
    ("far above the tuned LR (> 3 times it)", 3.0, math.inf),
)


def by_tuned_start(pr: pl.DataFrame) -> pl.DataFrame:
    """Per validation mode and :data:`START_BANDS` band of start LR / tuned LR: the controller's
    runs, win rate, ties, median ratio to cosine with its 95 % CI, the share of runs more than
    1.10x cosine and the worst ratio. A loop whose LR is already well chosen is the "near" band:
    there the controller can gain little and must not harm; the "far below" band is where
    raising pays. Bands without runs are left out."""
    rel = pr.with_columns((pl.col("start") / pl.col("tuned_start")).alias("start_over_tuned"))
    rows = []
    for wv in (True, False):
        pm = rel.filter(pl.col("with_val") == wv)
        for band, lo, hi in START_BANDS:
            p = pm.filter((pl.col("start_over_tuned") >= lo) & (pl.col("start_over_tuned") < hi))
            if not p.height:
                continue
            rc = bootstrap_median(p["ratio_cosine"].to_list())
            r = p["ratio_cosine"].drop_nulls()
            rows.append(
                {
                    "with_val": wv,
                    "band": band,
                    "runs": p.height,
                    "win_rate": float(p["win"].fill_null(False).mean()),  # type: ignore[arg-type]
                    "ties": int(p["tie"].fill_null(False).sum()),
                    "median_ratio_cosine": rc[0],
                    "ratio_cosine_lo": rc[1],
                    "ratio_cosine_hi": rc[2],
                    "share_over_1_10": float((r > 1.10).mean()) if r.len() else math.nan,  # type: ignore[arg-type]
                    "worst_ratio_cosine": float(r.max()) if r.len() else math.nan,  # type: ignore[arg-type]
                }
            )
    return pl.DataFrame(rows)


def _by_start_md(b: pl.DataFrame) -> str:
    head = (
        "| validation | start LR / tuned LR | runs | win rate vs cosine "
        "| median ratio to cosine [95% CI] | runs > 1.10× cosine | worst |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {'with' if r['with_val'] else 'without'} | {r['band']} | {r['runs']} "
        f"| {_f(r['win_rate'], '.0%')} ({r['ties']} ties) | {_f(r['median_ratio_cosine'])} "
        f"[{_f(r['ratio_cosine_lo'])}, {_f(r['ratio_cosine_hi'])}] "
        f"| {_f(r['share_over_1_10'], '.0%')} | {_f(r['worst_ratio_cosine'])} |"
        for r in b.iter_rows(named=True)
    ]
    return head + "\n".join(lines) + "\n"


def targets(summ: pl.DataFrame) -> list[dict[str, Any]]:
    """Per validation mode: each target's measured value and whether it is met."""
    out = []
    for wv in (True, False):
        s = summ.filter(pl.col("with_val") == wv)
        if not s.height:
            continue
        fams = s.filter(pl.col("family") != "ALL")
        tot = s.filter(pl.col("family") == "ALL").row(0, named=True)
        worst = float(fams["median_ratio_cosine"].max())  # type: ignore[arg-type]
        vals = {
            "crashes": (tot["crashes"], tot["crashes"] <= TARGETS["crashes"]),
            "worst_family_median_ratio_cosine": (
                worst,
                worst <= TARGETS["worst_family_median_ratio_cosine"],
            ),
            "win_rate": (tot["win_rate"], tot["win_rate"] >= TARGETS["win_rate"]),
            "median_ratio_tuned": (
                tot["median_ratio_tuned"],
                tot["median_ratio_tuned"] <= TARGETS["median_ratio_tuned"],
            ),
        }
        out.append(
            {
                "with_val": wv,
                **{k: v[0] for k, v in vals.items()},
                "met": {k: bool(v[1]) for k, v in vals.items()},
                "all_met": all(v[1] for v in vals.values()),
            }
        )
    return out


def _f(v: float, spec: str = ".3f") -> str:
    return format(v, spec) if isinstance(v, int | float) and math.isfinite(v) else "—"


def _table_md(s: pl.DataFrame) -> str:
    head = (
        "| family | runs | win rate vs cosine | median ratio to cosine [95% CI] "
        "| median ratio to tuned cosine [95% CI] | worst ratio to cosine | crashes "
        "| schedule-free / cosine (median) |\n|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in s.iter_rows(named=True):
        name = f"**{r['family']}**" if r["family"] == "ALL" else r["family"]
        lines.append(
            f"| {name} | {r['runs']} | {_f(r['win_rate'], '.0%')} ({r['ties']} ties) "
            f"| {_f(r['median_ratio_cosine'])} [{_f(r['ratio_cosine_lo'])}, "
            f"{_f(r['ratio_cosine_hi'])}] | {_f(r['median_ratio_tuned'])} "
            f"[{_f(r['ratio_tuned_lo'])}, {_f(r['ratio_tuned_hi'])}] "
            f"| {_f(r['worst_ratio_cosine'])} | {r['crashes']} "
            f"| {_f(r['sf_median_ratio_cosine'])} |"
        )
    return head + "\n".join(lines) + "\n"


def _targets_md(t: dict[str, Any]) -> str:
    m = t["met"]

    def mark(k: str) -> str:
        return "met" if m[k] else "**missed**"

    return (
        f"Targets met? **{'yes' if t['all_met'] else 'no'}** — crashes {t['crashes']} "
        f"(target 0: {mark('crashes')}); worst family median ratio to cosine "
        f"{_f(t['worst_family_median_ratio_cosine'])} (≤ 1.10: "
        f"{mark('worst_family_median_ratio_cosine')}); win rate {_f(t['win_rate'], '.0%')} "
        f"(≥ 70 %: {mark('win_rate')}); median ratio to tuned cosine "
        f"{_f(t['median_ratio_tuned'])} (≤ 1.05: {mark('median_ratio_tuned')}).\n"
    )


_COLORS = {
    "controller (val)": "tab:red",
    "controller (no val)": "tab:orange",
    "cosine": "tab:blue",
    "schedule-free": "tab:green",
}


def plot_families(results: pl.DataFrame, path: Path) -> None:
    """One panel per family: final test loss (median over seeds, 95 % bootstrap CI bars) by start
    for the controller with / without validation, cosine and schedule-free; tuned cosine as a
    horizontal line with its CI band."""
    import matplotlib.pyplot as plt

    fams = list(dict.fromkeys(results["family"].to_list()))
    ncol = min(4, len(fams))
    nrow = math.ceil(len(fams) / ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(max(4.2 * ncol, 9.0), 3.4 * nrow + 0.6), squeeze=False
    )
    tuned = tuned_cosine(results)
    labels = list(STARTS)
    series = {
        "controller (val)": (pl.col("method") == "controller") & pl.col("with_val"),
        "controller (no val)": (pl.col("method") == "controller") & ~pl.col("with_val"),
        "cosine": pl.col("method") == "cosine",
        "schedule-free": pl.col("method") == "schedule-free",
    }
    for i, fam in enumerate(fams):
        ax = axes[i // ncol][i % ncol]
        fr = results.filter(pl.col("family") == fam)
        for k, (name, cond) in enumerate(series.items()):
            sub = fr.filter(cond)
            xs, ys, lo, hi = [], [], [], []
            for j, lab in enumerate(labels):
                vals = sub.filter(pl.col("start_label") == lab)["score"].to_list()
                m, a, b = bootstrap_median(vals)
                if math.isfinite(m):
                    xs.append(j + (k - 1.5) * 0.1)
                    ys.append(m)
                    lo.append(m - a)
                    hi.append(b - m)
            if xs:
                ax.errorbar(
                    xs, ys, yerr=[lo, hi], fmt="o-", color=_COLORS[name], label=name,
                    capsize=3, ms=4, lw=1.2,
                )  # fmt: skip
        tv = tuned.filter(pl.col("family") == fam)["tuned_score"].to_list()
        m, a, b = bootstrap_median(tv)
        if math.isfinite(m):
            ax.axhline(m, color="black", ls="--", lw=1, label="tuned cosine (8-LR grid)")
            ax.axhspan(a, b, color="gray", alpha=0.2)
        ax.set_xticks(range(len(labels)), [f"start {lab}" for lab in labels])
        ax.set_yscale("log")
        ax.set_title(fam, fontsize=10)
        ax.set_ylabel("test loss (median, 95% CI)", fontsize=8)
        ax.tick_params(labelsize=8)
    for j in range(len(fams), nrow * ncol):
        axes[j // ncol][j % ncol].axis("off")
    handles, labs = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labs, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.6 / (3.4 * nrow + 0.6) + 0.03, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_heatmap(pr: pl.DataFrame, path: Path) -> None:
    """Family x start heat map of the controller's median ratio to cosine, one panel per
    validation mode (log colour scale centred on 1: blue better, red worse)."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    fams = list(dict.fromkeys(pr["family"].to_list()))
    modes = [wv for wv in (True, False) if pr.filter(pl.col("with_val") == wv).height]
    labels = list(STARTS)
    fig, axes = plt.subplots(
        1,
        len(modes),
        figsize=(2.8 * len(modes) + 3.0, 0.42 * len(fams) + 1.8),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    norm = LogNorm(vmin=1 / 3, vmax=3)
    im = None
    for ax, wv in zip(axes[0], modes):
        mat = np.full((len(fams), len(labels)), np.nan)
        for i, fam in enumerate(fams):
            for j, lab in enumerate(labels):
                v = pr.filter(
                    (pl.col("family") == fam)
                    & (pl.col("start_label") == lab)
                    & (pl.col("with_val") == wv)
                )["ratio_cosine"].to_list()
                mat[i, j] = bootstrap_median(v)[0]
        im = ax.imshow(np.clip(mat, 1 / 3, 3), cmap="RdBu_r", norm=norm, aspect="auto")
        for i in range(len(fams)):
            for j in range(len(labels)):
                if math.isfinite(mat[i, j]):
                    ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(labels)), [f"start {lab}" for lab in labels], fontsize=8)
        ax.set_yticks(range(len(fams)), fams, fontsize=8)
        ax.tick_params(labelleft=ax is axes[0][0])
        ax.set_title(f"{'with' if wv else 'without'} validation", fontsize=10)
    if im is not None:
        ticks = [1 / 3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]
        cb = fig.colorbar(im, ax=axes[0].tolist(), ticks=ticks, shrink=0.9)
        cb.ax.minorticks_off()
        cb.ax.set_yticklabels([f"{t:.2g}" for t in ticks], fontsize=8)
        cb.set_label("ratio (<1: controller better)", fontsize=8)
    fig.suptitle("controller / cosine at the same start, median over seeds", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _report_md(
    results: pl.DataFrame,
    pr: pl.DataFrame,
    summ: pl.DataFrame,
    tg: list[dict[str, Any]],
    bands: pl.DataFrame,
    header: str,
    families_md: str,
) -> str:
    """``report.md``'s text: the header line, how the figures are made, each validation mode's
    table and targets, the start bands, the baselines that failed, the families, the plots."""
    from trajlib.evaluate.suite._loop import PENALTY
    from trajlib.evaluate.suite._runner import GRID

    md = [
        "# Held-out suite\n\n",
        header + "\n\n",
        "Score: test loss at the end of the budget (diverged or crashed runs: "
        f"{PENALTY:g} × the untrained model's test loss). Ratio = controller / reference on the "
        "same seed (same initial weights and batches); win = strictly lower than cosine from the "
        f"same start. Tuned cosine: the best of {len(GRID)} cosine runs at default × "
        + ", ".join(f"{g:.3g}" for g in GRID)
        + " chosen on final validation loss, scored on test (one per family and seed, shared by "
        "the three starts)"
        + _grid_edges_md(results, GRID)
        + ". Medians with 95 % percentile-bootstrap CIs over the runs; ALL pools "
        "every run. Crashes: controller runs that raised or ended non-finite.\n\n",
    ]
    for t in tg:
        wv = t["with_val"]
        md.append(f"## {'With' if wv else 'Without'} validation reports\n\n")
        md.append(_table_md(summ.filter(pl.col("with_val") == wv)))
        md.append("\n" + _targets_md(t) + "\n")
    if bands.height:
        md.append(
            "## By how far the start is from the tuned LR\n\n"
            "Each run's start LR over its family and seed's tuned cosine LR. Far below: a loop "
            "started with too low an LR, where raising pays. Near: a loop whose LR is already "
            "about right, where the controller can gain little and must not harm.\n\n"
            + _by_start_md(bands)
            + "\n"
        )
    base_div = results.filter((pl.col("method") != "controller") & (pl.col("status") != "ok"))
    if base_div.height:
        md.append(
            f"Baseline runs that diverged or crashed (scored with the penalty): {base_div.height} "
            "("
            + ", ".join(
                f"{r['family']} {r['method']} x{r['start']:g} seed {r['seed']}"
                for r in base_div.head(12).iter_rows(named=True)
            )
            + (", …" if base_div.height > 12 else "")
            + ").\n\n"
        )
    errs = results.filter(pl.col("status") == "crashed")
    if errs.height:
        md.append("Crash messages: " + "; ".join(sorted(set(errs["error"].to_list()))[:5]) + "\n\n")
    if families_md:
        md.append("## Families\n\n" + families_md + "\n")
    md.append("## Plots\n\n![families](families.png)\n\n")
    if pr.height:
        md.append("![heat map](heatmap.png)\n")
    return "".join(md)


def write_suite_report(
    results: pl.DataFrame,
    out: str | Path,
    *,
    checkpoint: str = "",
    ckpt_hash: str = "",
    code_hash: str = "",
    seeds: Sequence[int] = (),
    families_md: str = "",
    wall_s: float | None = None,
    header: str | None = None,
) -> Path:
    """``report.md``, ``summary.csv``, ``pairs.csv``, ``by_start.csv``, ``results.parquet``,
    ``families.png``, ``heatmap.png`` in ``out``. The header names what the figures depend on:
    the checkpoint's and the controller code's content hashes (``code_hash``), torch and the
    machine (runs are not bit-identical across CPUs); ``header`` replaces that line (a report
    re-rendered from its results keeps the run's, :func:`rerender_suite_report`)."""
    import platform

    import matplotlib
    import torch

    matplotlib.use("Agg")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pr = pairs(results)
    summ = summary(pr)
    tg = targets(summ) if summ.height else []
    results.write_parquet(out / "results.parquet")
    pr.drop("warning", "error", "checkpoint").write_csv(out / "pairs.csv")
    summ.write_csv(out / "summary.csv")
    bands = by_tuned_start(pr) if pr.height else pl.DataFrame()
    if bands.height:
        bands.write_csv(out / "by_start.csv")
    plot_families(results, out / "families.png")
    if pr.height:
        plot_heatmap(pr, out / "heatmap.png")
    if header is None:
        header = (
            f"Controller: `{checkpoint}` (content hash `{ckpt_hash}`"
            + (f"; controller code `{code_hash}`" if code_hash else "")
            + f"); seeds: {', '.join(map(str, seeds))}; starts: default LR ÷10, ×1, ×10"
            + (f"; wall time {wall_s:.0f} s" if wall_s is not None else "")
            + f"; torch {torch.__version__} on {platform.machine()} ({platform.system()})."
        )
    text = _report_md(results, pr, summ, tg, bands, header, families_md)
    (out / "report.md").write_text(text)
    return out / "report.md"


def rerender_suite_report(out: str | Path) -> Path:
    """Write ``out``'s report again from its ``results.parquet``, running nothing: the tables,
    CSVs and plots of this trajlib's report code over the same runs, with the table of the
    families they ran. The header line (controller, content hashes, seeds, wall time, torch) is
    kept from the existing ``report.md``: it describes the runs, not the rendering."""
    from trajlib.evaluate.suite._families import families_markdown

    out = Path(out)
    src = out / "results.parquet"
    if not src.is_file():
        raise ConfigError("out", "a suite report directory with results.parquet", str(out))
    results = pl.read_parquet(src)
    families_md = families_markdown(list(dict.fromkeys(results["family"].to_list())))
    old = out / "report.md"
    header = None
    if old.is_file():
        header = next(
            (ln for ln in old.read_text().splitlines() if ln.startswith("Controller: ")), None
        )
    if header is None:
        ctrl = results.filter(pl.col("method") == "controller")
        ck = ctrl["checkpoint"][0] if "checkpoint" in ctrl.columns and ctrl.height else ""
        seeds = sorted(set(results["seed"].to_list()))
        header = (
            f"Controller: `{ck}`; seeds: {', '.join(map(str, seeds))}; re-rendered from "
            "results.parquet (no record of the run's hashes or wall time)."
        )
    return write_suite_report(results, out, families_md=families_md, header=header)
