"""The held-out suite: every family trains, failures are recorded, report numbers, cache reuse."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from torch.utils.data import DataLoader

from trajlib.cli import main
from trajlib.errors import ConfigError
from trajlib.evaluate import run_suite
from trajlib.evaluate.suite import (
    FAMILIES,
    FAMILY_SETS,
    FRESH_FAMILIES,
    GRID,
    OUTSIDE_FAMILIES,
    PENALTY,
    START_BANDS,
    STARTS,
    ResultCache,
    by_tuned_start,
    checkpoint_hash,
    controller_code_hash,
    get_family,
    plan_jobs,
    rerender_suite_report,
    run_one,
    select_families,
)

CKPT = Path(__file__).resolve().parents[2] / "models" / "trajlib-lr-v1" / "checkpoint"
V2 = CKPT.parents[1] / "trajlib-lr-v2" / "checkpoint"
TINY = ["embbag-topics", "glu-friedman"]  # the two fastest families
BUDGET = 110  # the v1 controller decides every 50 steps: two decisions


def test_at_least_ten_families_with_distinct_settings() -> None:
    assert len(FAMILIES) >= 10
    assert len({f.fingerprint() for f in FAMILIES.values()}) == len(FAMILIES)
    assert {f.optimizer.split("(")[0] for f in FAMILIES.values()} >= {
        "NAdam", "RAdam", "Adamax", "Adagrad", "SGD", "Adam"
    }  # fmt: skip
    # every start is a grid point (the cosine at the same start is a grid run), and the grid
    # reaches 4.6x above the highest start (short budgets favour high LRs)
    assert all(any(math.isclose(g, s) for g in GRID) for s in STARTS.values())
    assert 46 < GRID[-1] < 47 and GRID[0] == 0.1 and len(GRID) == 9
    with pytest.raises(ConfigError, match="family"):
        get_family("mlp")


def test_the_fresh_set_is_separate_and_selectable(capsys: pytest.CaptureFixture[str]) -> None:
    fresh = FRESH_FAMILIES
    assert len(fresh) >= 8 and not set(fresh) & set(FAMILIES)
    assert {f.group for f in fresh.values()} == {"fresh"}
    assert {f.group for f in FAMILIES.values()} == {"suite"}
    # optimizers the first set does not have, and a two-group optimizer
    assert {f.optimizer.split("(")[0] for f in fresh.values()} >= {"RMSprop", "ASGD", "Adadelta"}
    assert [f.name for f in select_families(None, "fresh")] == list(fresh)
    assert [f.name for f in select_families(None)] == list(FAMILIES)
    assert get_family("logreg-cancer") is fresh["logreg-cancer"]  # names of any set
    with pytest.raises(ConfigError, match="family_set"):
        select_families(None, "both")
    for family_set in FAMILY_SETS:  # the command line offers every set
        assert main(["suite", "unused", "--set", family_set, "--list"]) == 0
        capsys.readouterr()
    main(["suite", "unused", "--set", "fresh", "--list"])
    listed = capsys.readouterr().out
    assert all(n in listed for n in fresh) and "lstm-count" not in listed
    fam = get_family("lenet-bn-digits")
    opt = fam.make_optimizer(fam.model().parameters(), 1e-3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_the_outside_set_is_separate_and_selectable(capsys: pytest.CaptureFixture[str]) -> None:
    outside = OUTSIDE_FAMILIES
    assert len(outside) == 8
    assert not set(outside) & set(FAMILIES) and not set(outside) & set(FRESH_FAMILIES)
    assert {f.group for f in outside.values()} == {"outside"}
    assert "outside" in FAMILY_SETS
    assert [f.name for f in select_families(None, "outside")] == list(outside)
    assert get_family("lstm-adding") is outside["lstm-adding"]  # names of any set
    every = [*FAMILIES.values(), *FRESH_FAMILIES.values(), *outside.values()]
    assert len({f.fingerprint() for f in every}) == len(every)
    main(["suite", "unused", "--set", "outside", "--list"])
    listed = capsys.readouterr().out
    assert all(n in listed for n in outside)
    assert not any(n in listed for n in [*FAMILIES, *FRESH_FAMILIES])


def test_each_outside_family_takes_real_optimizer_steps() -> None:
    """Data, model and optimizer of every outside family: 5 real steps on its first training
    batches (the harness's train loader), a finite, non-negative loss that changes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, fam in OUTSIDE_FAMILIES.items():
            splits = fam.data()
            assert min(len(splits.train), len(splits.val), len(splits.test)) >= fam.batch_size
            kw = {"collate_fn": fam.collate} if fam.collate else {}
            loader = DataLoader(
                splits.train, batch_size=fam.batch_size, shuffle=True, drop_last=True,
                generator=torch.Generator().manual_seed(0), **kw,
            )  # fmt: skip
            torch.manual_seed(0)
            model = fam.model()
            model.train()
            opt = fam.make_optimizer(model.parameters(), fam.default_lr)
            batches = iter(loader)
            losses = []
            for _ in range(5):
                loss = fam.loss(model, next(batches))
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            assert all(math.isfinite(v) and v >= 0 for v in losses), (name, losses)
            assert len(set(losses)) > 1, (name, losses)
            model.eval()
            with torch.no_grad():  # eval mode too (BatchNorm's running statistics, no dropout)
                after = float(fam.loss(model, next(iter(loader))))
            assert math.isfinite(after) and after >= 0, (name, after)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", [*FAMILIES, *FRESH_FAMILIES, *OUTSIDE_FAMILIES])
def test_each_family_trains_a_few_steps(name: str) -> None:
    fam = get_family(name)
    row = run_one(fam, "cosine", 1.0, 0, budget=6)
    assert row["status"] == "ok", row["error"]
    assert row["steps_done"] == 6
    assert math.isfinite(row["test_loss"]) and math.isfinite(row["final_val_loss"])
    assert math.isfinite(row["init_test_loss"]) and row["init_test_loss"] > 0
    assert row["score"] == pytest.approx(min(row["test_loss"], PENALTY * row["init_test_loss"]))
    # the same seed gives the same run (initial weights, batches, dropout)
    assert run_one(fam, "cosine", 1.0, 0, budget=6)["test_loss"] == row["test_loss"]


def test_schedule_free_and_controller_run_on_a_family() -> None:
    fam = get_family("glu-friedman")
    sf = run_one(fam, "schedule-free", 1.0, 0, budget=20)
    assert sf["status"] == "ok" and math.isfinite(sf["test_loss"])
    ctl = run_one(fam, "controller", 1.0, 0, with_val=True, checkpoint=CKPT, budget=BUDGET)
    assert ctl["status"] == "ok", ctl["error"]
    assert ctl["decisions"] == 2 and ctl["controller_errors"] == 0


def test_crashes_and_divergence_are_recorded_not_raised(tmp_path: Path) -> None:
    fam = get_family("glu-friedman")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps({"format": "nonsense"}))
    row = run_one(fam, "controller", 1.0, 0, checkpoint=broken, budget=20)
    assert row["status"] == "crashed" and row["error"]
    assert row["score"] == pytest.approx(PENALTY * row["init_test_loss"])
    # plain SGD at 1e6 x its LR: the loss turns non-finite for good and the run takes the penalty
    div = run_one(fam, "cosine", 1e6, 0, budget=200)
    assert div["status"] == "diverged" and div["steps_done"] == 200
    assert math.isfinite(div["score"]) and div["score"] == pytest.approx(
        PENALTY * div["init_test_loss"]
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("suite")
    res = run_suite(
        CKPT, seeds=1, families=TINY, out=root / "report", cache=root / "cache",
        budget=BUDGET, progress=False,
    )  # fmt: skip
    return root, res


def test_report_numbers_match_the_result_table(tiny: tuple[Path, object]) -> None:
    root, res = tiny
    r = res.results  # type: ignore[attr-defined]
    per_seed = 2 * len(STARTS) + len(GRID) + len(STARTS)  # controller x2 modes, grid, sf
    assert r.height == len(TINY) * per_seed
    # the grid's highest LRs may diverge (scored with the penalty, never chosen); nothing else
    hot = (pl.col("method") == "cosine") & (pl.col("start") > max(STARTS.values()))
    assert (r.filter(~hot)["status"] == "ok").all()
    summ = res.summary  # type: ignore[attr-defined]
    for wv in (True, False):
        for fam in TINY:
            ctrl = r.filter((pl.col("method") == "controller") & (pl.col("family") == fam)
                            & (pl.col("with_val") == wv))  # fmt: skip
            wins, ratios, rt = [], [], []
            cos = r.filter((pl.col("method") == "cosine") & (pl.col("family") == fam))
            ok = cos.filter((pl.col("status") == "ok") & pl.col("final_val_loss").is_finite())
            tuned = ok.sort("final_val_loss")["score"][0]  # chosen on validation
            for c in ctrl.iter_rows(named=True):
                ref = cos.filter((pl.col("start") - c["start"]).abs() < 1e-9)["score"][0]
                wins.append(c["score"] < ref)
                ratios.append(c["score"] / ref)
                rt.append(c["score"] / tuned)
            row = summ.filter((pl.col("family") == fam) & (pl.col("with_val") == wv)).row(
                0, named=True
            )
            assert row["runs"] == len(STARTS)
            assert row["win_rate"] == pytest.approx(np.mean(wins))
            assert row["median_ratio_cosine"] == pytest.approx(np.median(ratios))
            assert row["median_ratio_tuned"] == pytest.approx(np.median(rt))
            assert row["worst_ratio_cosine"] == pytest.approx(max(ratios))
            assert row["ratio_cosine_lo"] <= row["median_ratio_cosine"] <= row["ratio_cosine_hi"]
            assert row["crashes"] == 0
    tg = res.targets  # type: ignore[attr-defined]
    assert [t["with_val"] for t in tg] == [True, False]
    all_val = summ.filter((pl.col("family") == "ALL") & pl.col("with_val")).row(0, named=True)
    assert tg[0]["win_rate"] == all_val["win_rate"]
    rep = root / "report"
    md = (rep / "report.md").read_text()
    assert md.count("Targets met?") == 2 and "glu-friedman" in md
    assert f"controller code `{controller_code_hash()}`" in md and "torch " in md
    for f in ("families.png", "heatmap.png", "summary.csv", "pairs.csv", "results.parquet",
              "by_start.csv"):  # fmt: skip
        assert (rep / f).stat().st_size > 0
    assert pl.read_csv(rep / "summary.csv").height == summ.height


def test_by_tuned_start_puts_each_run_in_one_band() -> None:
    """Bands by start LR / tuned LR: each run counted once, per validation mode, with its wins,
    ties, share over 1.10x cosine and worst ratio; an empty band is left out."""
    #        start, tuned, with_val, ratio to cosine
    rows = [(0.1, 1.0, False, 0.5), (0.1, 0.464159, False, 0.8), (1.0, 0.464159, False, 1.2),
            (1.0, 1.0, False, 1.0), (1.0, 2.154435, False, 0.9), (10.0, 2.154435, False, 1.05),
            (10.0, 1.0, True, 3.0)]  # fmt: skip
    pr = pl.DataFrame(
        {
            "start": [r[0] for r in rows],
            "tuned_start": [r[1] for r in rows],
            "with_val": [r[2] for r in rows],
            "ratio_cosine": [r[3] for r in rows],
            "win": [r[3] < 1 for r in rows],
            "tie": [r[3] == 1 for r in rows],
        }
    )
    b = by_tuned_start(pr)
    assert b["runs"].sum() == len(rows)
    assert b.select("with_val", "band").rows() == [
        (True, START_BANDS[2][0]),
        (False, START_BANDS[0][0]),
        (False, START_BANDS[1][0]),
        (False, START_BANDS[2][0]),
    ]
    below, near, above = (b.row(i, named=True) for i in (1, 2, 3))
    assert below["runs"] == 2 and below["win_rate"] == 1.0  # 0.1 / 0.464 = 0.215 < 1/3
    assert near["runs"] == 3 and near["win_rate"] == pytest.approx(1 / 3) and near["ties"] == 1
    assert near["share_over_1_10"] == pytest.approx(1 / 3) and near["worst_ratio_cosine"] == 1.2
    assert near["median_ratio_cosine"] == pytest.approx(1.0)  # 1 / 0.464 = 2.15 < 3: near
    assert above["runs"] == 1 and above["worst_ratio_cosine"] == 1.05  # 10 / 2.15 = 4.6 > 3
    assert b.row(0, named=True)["share_over_1_10"] == 1.0


def test_report_only_writes_the_report_again_from_its_results(
    tiny: tuple[Path, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--report-only`` runs nothing: the same report from ``results.parquet``, the run's
    header kept; the start bands' table is in it and in ``by_start.csv``."""
    root, _ = tiny
    rep = tmp_path / "rep"
    shutil.copytree(root / "report", rep)
    before = (rep / "report.md").read_text()
    (rep / "by_start.csv").unlink()
    (rep / "report.md").write_text(before.replace("## By how far", "## (removed)"))
    assert main(["suite", str(CKPT), "--out", str(rep), "--report-only", "--quiet"]) == 0
    assert (rep / "report.md").read_text() == before
    assert "## By how far the start is from the tuned LR" in before
    bands = pl.read_csv(rep / "by_start.csv")
    assert bands["runs"].sum() == 2 * len(TINY) * len(STARTS)
    assert not (rep / "cache").exists()  # nothing ran
    assert main(["suite", str(CKPT), "--out", str(tmp_path / "none"), "--report-only"]) == 2
    assert "results.parquet" in capsys.readouterr().err
    (rep / "report.md").unlink()  # no report to keep the header from: say what is not known
    md = rerender_suite_report(rep).read_text()
    assert f"Controller: `{CKPT}`; seeds: 0; re-rendered from results.parquet" in md


def test_cache_reuses_baselines_across_checkpoints(
    tiny: tuple[Path, object], tmp_path: Path
) -> None:
    root, first = tiny
    again = run_suite(
        CKPT, seeds=1, families=TINY, out=None, cache=root / "cache", budget=BUDGET,
        progress=False,
    )  # fmt: skip
    assert again.computed == 0
    assert again.results.sort("family", "method", "start", "with_val")["score"].to_list() == (
        first.results.sort("family", "method", "start", "with_val")["score"].to_list()  # type: ignore[attr-defined]
    )
    # another checkpoint (same payload, different manifest bytes): only its controller runs
    other = tmp_path / "ckpt"
    shutil.copytree(CKPT, other)
    m = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(m, indent=2))
    assert checkpoint_hash(other) != checkpoint_hash(CKPT)
    res = run_suite(
        other, seeds=1, families=TINY, out=None, cache=root / "cache", budget=BUDGET,
        with_val=False, progress=False,
    )  # fmt: skip
    assert res.computed == len(TINY) * len(STARTS)  # controller without validation only
    assert res.results.filter(pl.col("method") == "controller").height == len(TINY) * len(STARTS)
    jobs = plan_jobs(TINY, [0], checkpoint=other, modes=(False,), budget=BUDGET)
    assert {j.key() for j in jobs} <= ResultCache(root / "cache").keys()


def test_cli_runs_one_controller_mode(tiny: tuple[Path, object], tmp_path: Path) -> None:
    """``--val-only`` / ``--no-val-only``: the controller in one mode (the cached runs reused),
    the two flags not together."""
    root, _ = tiny
    base = ["suite", str(CKPT), "--families", ",".join(TINY), "--seeds", "1", "--quiet",
            "--budget", str(BUDGET), "--cache", str(root / "cache")]  # fmt: skip
    for flag, mode in (("--val-only", True), ("--no-val-only", False)):
        assert main([*base, flag, "--out", str(tmp_path / flag)]) == 0
        r = pl.read_parquet(tmp_path / flag / "results.parquet")
        assert r.filter(pl.col("method") == "controller")["with_val"].unique().to_list() == [mode]
    assert main([*base, "--val-only", "--no-val-only"]) == 2


def test_cli_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["suite", str(CKPT), "--list"]) == 0
    assert "encoder-max" in capsys.readouterr().out
    assert main(["suite", str(tmp_path / "missing")]) == 2
    assert main(["suite", str(CKPT), "--families", "nope", "--out", str(tmp_path)]) == 2
    assert "family" in capsys.readouterr().err


def test_controller_with_lookahead_charges_its_compute(tmp_path: Path) -> None:
    fam = get_family("vae-digits")
    plain = run_one(fam, "controller", 1.0, 0, with_val=True, checkpoint=CKPT, budget=120)
    la = run_one(
        fam, "controller", 1.0, 0, with_val=True, checkpoint=CKPT, budget=120, lookahead=(1, 5)
    )
    assert plain["status"] == la["status"] == "ok", (plain["error"], la["error"])
    assert plain["compute_ratio"] == 1.0
    assert la["compute_ratio"] > 1.0 and la["decisions"] == plain["decisions"] > 0
    # lookahead runs are cached apart from plain controller runs of the same checkpoint
    jobs = plan_jobs(["vae-digits"], [0], checkpoint=CKPT, lookahead=(1, 5), budget=120)
    hashes = {j.ckpt_hash for j in jobs if j.method == "controller"}
    code = "+code" + controller_code_hash()
    assert hashes == {
        checkpoint_hash(CKPT) + "+la1x5+guard0.5w2r0.25x2gs3pt4x4b3d16x0.05v3x0.1" + code
    }


def test_the_guard_setting_is_in_the_cache_key() -> None:
    """Runs with the scheduler's raise guard (the default), with it undoing raises without
    rollback, and without it are cached apart (each key ends with the controller code's hash)."""
    h, code = checkpoint_hash(CKPT), "+code" + controller_code_hash()

    def keys(**kw: object) -> set[str]:
        jobs = plan_jobs(["vae-digits"], [0], checkpoint=CKPT, budget=60, **kw)  # type: ignore[arg-type]
        return {j.ckpt_hash for j in jobs if j.method == "controller"}

    assert keys() == {h + "+guard0.5w2r0.25x2gs3pt4x4b3d16x0.05v3x0.1" + code}
    assert keys(guard=0.25, rollback=False) == {
        h + "+revert0.25w2r0.25x2gs3pt4x4b3d16x0.05v3x0.1" + code
    }
    assert keys(guard=None) == {h + code}
    row = run_one(get_family("vae-digits"), "controller", 1.0, 0, checkpoint=CKPT, budget=60)
    assert row["status"] == "ok" and row["guard_reverts"] >= 0 and row["guard_rescues"] == 0


def test_the_controller_code_is_in_the_cache_key(tmp_path: Path) -> None:
    """A change to the code a controller run executes changes its key (the runs are recomputed,
    not reused stale); a change elsewhere (the report, the CLI) does not."""
    import trajlib
    from trajlib.evaluate.suite._runner import code_hash

    root = tmp_path / "trajlib"
    shutil.copytree(
        Path(trajlib.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__")
    )
    before = code_hash(root)
    assert before == controller_code_hash()
    (root / "evaluate" / "suite" / "_report.py").write_text("# another report\n")
    (root / "cli" / "extra.py").write_text("x = 1\n")
    assert code_hash(root) == before
    sched = root / "deploy" / "_scheduler.py"
    sched.write_text(sched.read_text() + "\n# a change to the scheduler\n")
    assert code_hash(root) != before
    sched.unlink()
    assert code_hash(root) != before
    c = root / "measure" / "layer_sums.c"
    shutil.copytree(Path(trajlib.__file__).parent / "deploy", root / "deploy", dirs_exist_ok=True)
    assert code_hash(root) == before
    c.write_text(c.read_text().replace("#define CHUNK 256", "#define CHUNK 128"))
    assert code_hash(root) != before


def test_lookahead_settings_and_their_cache_keys() -> None:
    from trajlib.evaluate.suite import LookaheadSetting

    assert LookaheadSetting.of(None) is None
    assert LookaheadSetting.of((1, 10)).tag() == "la1x10"  # the key before cool-downs existed
    assert LookaheadSetting.of((2, 8, 4, "unsure")).tag() == "la2x8c4-unsure"
    for bad in ((0, 5), (1, 0), (1, 5, -1), (1,), ("1", 5), (1, 5, 0, "x"), (1, 5, 0, "u", 9)):
        with pytest.raises(ConfigError, match="lookahead"):
            LookaheadSetting.of(bad)
    jobs = plan_jobs(["vae-digits"], [0], checkpoint=V2, lookahead=(1, 8, 4, "unsure"), budget=60)
    assert {j.lookahead for j in jobs if j.method == "controller"} == {(1, 8, 4, "unsure", (), 0)}
    # a real run of the shipped v2 checkpoint that looks only where its rule is unsure, after a
    # scale search at its first decision (4 learning rates x 7 steps: its 30 % budget of 100)
    row = run_one(
        get_family("deepsets-spread"), "controller", 1.0, 0, checkpoint=V2, budget=100,
        lookahead=(1, 6, 2, "unsure", (0.25, 4.0, 16.0), 8),
    )  # fmt: skip
    assert row["status"] == "ok", row["error"]
    assert row["decisions"] > 0 and row["compute_ratio"] >= 1 + 4 * 7 / 100
    assert (
        LookaheadSetting.of((1, 6, 2, "unsure", (4, 0.25))).tag()
        == "la1x6c2-unsure-s4_0.25h6w4b0.3"
    )
