"""A best-LR probe: a real collection of runs that only follow their cosine base, read back into
each task's best start LR; a recipe centres its start LRs on that table."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import polars as pl
import pytest

from trajlib.cli import main
from trajlib.collect import best_lr_table, collect, parse_recipe, read_best_lr_table
from trajlib.errors import ConfigError
from trajlib.store import create_store, open_store
from trajlib.tasks import get_task

TASK = "gen2-0"  # a generated task: no best_lr of its own
PROBE = {
    "collect": {"tasks": [TASK], "runs_per_task": 4, "budget": 40, "every": 20, "val_every": 20,
                "seed": 3},
    "space": {"mode": "residual", "base_schedule": "cosine", "lr_range": 30.0},
    "behaviour": {"kind": "keep", "p_move": 0.0, "epsilon": 0.0},
    "branch": {"enabled": False},
    "executor": {"workers": 1},
}  # fmt: skip


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe") / "store"
    create_store(root)
    rep = collect(parse_recipe(PROBE), functools.partial(open_store, root), progress=False)
    assert rep.committed == 4
    return root


def test_the_table_names_the_start_lr_of_the_lowest_validation_loss(probe: Path) -> None:
    runs = open_store(probe).runs().collect()
    lr0 = [json.loads(e)["lr0"] for e in runs["entry"].to_list()]
    ok = [(v, lr) for v, lr, s in zip(runs["final_val_loss"], lr0, runs["status"])
          if s == "complete" and v is not None and math.isfinite(v)]  # fmt: skip
    assert len(set(lr0)) == 4 and ok
    t = best_lr_table(open_store(probe))
    assert t["task"].to_list() == [TASK]
    row = t.row(0, named=True)
    assert row["best_lr"] == min(ok)[1]
    assert row["default_lr"] == get_task(TASK).default_lr
    assert row["best_over_default"] == pytest.approx(row["best_lr"] / row["default_lr"])
    assert (row["runs"], row["complete"]) == (4, len(ok))


def test_a_store_whose_lr_moved_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "moved"
    create_store(root)
    moving = {**PROBE, "collect": {**PROBE["collect"], "runs_per_task": 1},
              "behaviour": {"kind": "random-walk", "p_move": 1.0}}  # fmt: skip
    collect(parse_recipe(moving), functools.partial(open_store, root), progress=False)
    with pytest.raises(ConfigError) as e:
        best_lr_table(open_store(root))
    assert e.value.field == "behaviour" and "random-walk" in str(e.value)


def test_cli_writes_the_table_a_recipe_centres_on(
    probe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "best.csv"
    assert main(["store", "best-lr", str(probe), "--out", str(csv)]) == 0
    assert "1 tasks; best start LR / default LR: median" in capsys.readouterr().out
    best = read_best_lr_table(csv)[TASK]
    assert best == pytest.approx(best_lr_table(open_store(probe))["best_lr"][0], rel=1e-5)
    recipe = {"collect": {"tasks": [TASK], "runs_per_task": 3, "best_lr_table": str(csv)},
              "space": {"lr_center": "best", "lr_shift": 2.0, "lr_range": 1.0}}  # fmt: skip
    assert [r.lr0 for r in parse_recipe(recipe).run_configs()] == [pytest.approx(2 * best)] * 3
    spread = {**recipe, "space": {"lr_center": "best", "lr_range": 4.0}}
    assert all(best / 4 <= r.lr0 <= best * 4 for r in parse_recipe(spread).run_configs())
    # without the table the same recipe centres on the task's default LR
    plain = {"collect": {"tasks": [TASK], "runs_per_task": 1}, "space": recipe["space"]}
    assert parse_recipe(plain).run_configs()[0].lr0 == pytest.approx(2 * get_task(TASK).default_lr)
    # a task the table lacks: named when the runs are planned
    other = {**recipe, "collect": {**recipe["collect"], "tasks": [TASK, "gen2-1"]}}
    with pytest.raises(ConfigError, match="gen2-1") as e:
        parse_recipe(other).run_configs()
    assert e.value.field == "collect.best_lr_table"


@pytest.mark.parametrize(
    "text, space, field",
    [
        ("task,best_lr\ngen2-0,0.01\n", {"lr_center": "default"}, "space.lr_center"),
        ("task,best_lr\ngen2-0,-1\n", {"lr_center": "best"}, "collect.best_lr_table"),
        ("task,lr\ngen2-0,0.01\n", {"lr_center": "best"}, "collect.best_lr_table"),
        (
            "task,best_lr\ngen2-0,0.01\ngen2-0,0.02\n",
            {"lr_center": "best"},
            "collect.best_lr_table",
        ),
        (None, {"lr_center": "best"}, "collect.best_lr_table"),
    ],
)
def test_a_bad_table_is_refused_when_the_recipe_is_read(
    tmp_path: Path, text: str | None, space: dict[str, str], field: str
) -> None:
    csv = tmp_path / "t.csv"
    if text is not None:
        csv.write_text(text)
    with pytest.raises(ConfigError) as e:
        parse_recipe({"collect": {"tasks": [TASK], "best_lr_table": str(csv)}, "space": space})
    assert e.value.field == field


def test_the_table_frame_has_its_columns(probe: Path) -> None:
    t = best_lr_table(open_store(probe))
    assert isinstance(t, pl.DataFrame) and t.columns == [
        "task", "best_lr", "default_lr", "best_over_default", "runs", "complete",
    ]  # fmt: skip
