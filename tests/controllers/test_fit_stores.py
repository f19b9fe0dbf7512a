"""Fitting on several stores: their runs pooled as one data set, with one clear error when they
cannot be pooled."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests._tiny import TINY_RECIPE, collect_tiny
from trajlib.controllers import fit_store
from trajlib.controllers._from_store import training_table
from trajlib.errors import ConfigError


def _collect(path: Path, actions: dict | None = None, **collect: object) -> Path:
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["collect"].update(collect)
    if actions is not None:
        recipe["actions"] = actions
    return collect_tiny(path, recipe)


@pytest.fixture(scope="module")
def second_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another collection of the tiny recipe: one task, 2 runs, another seed."""
    return _collect(
        tmp_path_factory.mktemp("second") / "store",
        tasks=["digits-mlp"],
        runs_per_task=2,
        seed=7,
    )


def test_two_stores_pool_their_rows(tiny_store: Path, second_store: Path, tmp_path: Path) -> None:
    t1, l1, _ = training_table(tiny_store, "portable", "annealed")
    t2, l2, _ = training_table(second_store, "portable", "annealed")
    both, lab, spec = training_table([tiny_store, second_store], "portable", "annealed")
    assert both.height == t1.height + t2.height
    assert lab.height == l1.height + l2.height
    assert set(both["run_id"].unique()) == set(t1["run_id"].unique()) | set(t2["run_id"].unique())
    assert spec.every == 25

    out = tmp_path / "ckpt"
    proc = subprocess.run(
        [sys.executable, "-m", "trajlib", "fit", str(tiny_store), str(second_store),
         "--set", "portable", "--labels", "annealed", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    td = json.loads((out / "manifest.json").read_text())["training_data"]
    assert td["store"] == [str(tiny_store), str(second_store)]
    assert td["n_runs"] == 6 + 2
    assert td["n_rows"] == both.height


def test_a_run_in_two_stores_is_refused(tiny_store: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="stores with distinct runs"):
        fit_store([tiny_store, tiny_store], out=tmp_path / "c", params={"n_estimators": 5})


def test_stores_with_other_actions_are_refused(
    tiny_store: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    path = _collect(
        tmp_path_factory.mktemp("other") / "store",
        actions={"lr": [0.5, 1.0, 2.0, 4.0]},
        tasks=["teacher-student"],
        runs_per_task=1,
        seed=9,
        budget=100,
    )
    with pytest.raises(ConfigError, match="actions"):
        fit_store([tiny_store, path], out=tmp_path / "c", params={"n_estimators": 5})


def test_no_store_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one store"):
        fit_store([], out=tmp_path / "c")
