"""collect -> fit -> collect again with the controller (trajlib iterate)."""

from __future__ import annotations

import json

import pytest

from trajlib.cli import main
from trajlib.store import open_store

RECIPE = """
name = "iter"
[collect]
tasks = ["digits-mlp"]
runs_per_task = 2
budget = 100
every = 25
val_every = 25
[branch]
horizon = 25
cooldown = 5
[executor]
workers = 1
"""


@pytest.mark.slow
def test_iterate_collects_with_the_controller_and_refits_each_round(tmp_path, capsys):
    recipe = tmp_path / "iter.toml"
    recipe.write_text(RECIPE)
    code = main(
        [
            "iterate",
            str(recipe),
            "--rounds",
            "2",
            "--store",
            str(tmp_path / "s"),
            "--out",
            str(tmp_path / "o"),
            "--tasks",
            "teacher-student",
            "--seeds",
            "1",
            "--budget",
            "60",
            "--quiet",
        ]
    )
    assert code == 0
    runs = open_store(tmp_path / "s").runs().collect()
    assert runs.height == 4  # two rounds x two runs, distinct run ids
    behaviours = sorted(json.loads(e)["behaviour"]["kind"] for e in runs["entry"])
    assert behaviours == ["controller", "controller", "random-walk", "random-walk"]
    assert (tmp_path / "o" / "round-0" / "manifest.json").is_file()
    assert (tmp_path / "o" / "round-1" / "manifest.json").is_file()
    table = (tmp_path / "o" / "iterate.md").read_text()
    assert table.count("\n") == 4  # header, rule, one row per round


def test_iterate_refuses_a_held_out_task_that_the_recipe_collects(tmp_path, capsys):
    recipe = tmp_path / "iter.toml"
    recipe.write_text(RECIPE)
    code = main(
        [
            "iterate",
            str(recipe),
            "--store",
            str(tmp_path / "s"),
            "--out",
            str(tmp_path / "o"),
            "--tasks",
            "digits-mlp",
        ]
    )
    assert code == 2
    assert "--tasks" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
