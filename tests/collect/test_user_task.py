"""User tasks (``module:function``) collected end to end through the real CLI in a subprocess, with a
real process pool: readable run ids, and a run that crashes is recorded as failed while the
collection goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest
import torch

from trajlib import schema as S
from trajlib.spec import task_id_part
from trajlib.store import open_store
from trajlib.tasks import list_tasks

USER_TASKS = """
import torch
from torch import nn

from trajlib.tasks import Task, TaskData


def _data() -> TaskData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TaskData(x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:])


def make_task() -> Task:
    return Task(
        name="mypkg-good", family="user", make_model=lambda: nn.Sequential(
            nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2)),
        make_data=_data, default_lr=0.1, budget=20, batch_size=16, val_every=10,
    )


# A model whose forward raises for some seeds: a per-run buffer says which (vmap cannot run the
# check, so the population trains its members one at a time).
class Exploding(nn.Module):

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("doomed", (torch.rand(()) < 0.5).float())
        self.lin = nn.Linear(8, 2)

    def forward(self, x):
        if float(self.doomed) > 0.5:
            raise RuntimeError("user model exploded in forward")
        return self.lin(x)


def make_broken() -> Task:
    return Task(
        name="mypkg-broken", family="user", make_model=Exploding, make_data=_data,
        default_lr=0.1, budget=20, batch_size=16, val_every=10,
    )
"""

RECIPE = """
name = "user-task"
[collect]
tasks = ["mypkg.tasks:make_task", "mypkg.tasks:make_broken"]
runs_per_task = 4
population = 2
budget = 20
every = 10
val_every = 10
[branch]
enabled = true
horizon = 5
cooldown = 0
[executor]
kind = "local"
workers = 2
"""


def test_builtin_task_names_are_their_own_id_part():
    assert all(task_id_part(t) == t for t in list_tasks())
    assert task_id_part("mypkg.tasks:make_task") == "mypkg.tasks-make_task"
    assert task_id_part("_priv:f") == "t_priv-f"


def _doomed(recipe: Path, src: Path) -> dict[str, bool]:
    """Run id -> whether that run's model raises (its seed's ``doomed`` buffer), worked out here
    in the test process from the recipe and the user module."""
    sys.path.insert(0, str(src))
    try:
        from trajlib.collect._recipe import load_recipe
        from trajlib.tasks import get_task

        out = {}
        for config in load_recipe(recipe).run_configs():
            if config.task.endswith("make_broken"):
                torch.manual_seed(config.seed)
                out[config.run_id] = bool(get_task(config.task).make_model().doomed > 0.5)
        return out
    finally:
        sys.path.remove(str(src))
        for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
            del sys.modules[name]


@pytest.mark.slow
def test_user_task_collects_from_the_cli_and_a_crash_is_a_failed_run(tmp_path: Path):
    """Two user tasks, 4 runs each in populations of 2, on a process pool of 2 workers. Some runs
    of ``make_broken`` raise in forward: exactly those fail (their population-mates are trained
    again alone and commit), and the collection goes on."""
    src = tmp_path / "src"
    (src / "mypkg").mkdir(parents=True)
    (src / "mypkg" / "__init__.py").write_text("")
    (src / "mypkg" / "tasks.py").write_text(textwrap.dedent(USER_TASKS))
    recipe = tmp_path / "user.toml"
    recipe.write_text(RECIPE)
    doomed = _doomed(recipe, src)
    assert sorted(doomed.values()) == [False, False, True, True]  # a real mix of both
    store = tmp_path / "store"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(Path(__file__).resolve().parents[2])])
    proc = subprocess.run(
        [sys.executable, "-m", "trajlib", "collect", str(recipe), "--store", str(store), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "BrokenProcessPool" not in proc.stderr
    assert "collected 6 runs" in proc.stdout and "2 failed) of 8" in proc.stdout, proc.stdout
    s = open_store(str(store))
    runs = s.runs().collect().sort(S.RUN_ID)
    assert len(runs) == 8
    good_id, broken_id = (
        task_id_part(f"mypkg.tasks:{f}") + "-" for f in ("make_task", "make_broken")
    )
    assert good_id == "mypkg.tasks-make_task-"
    status = dict(zip(runs[S.RUN_ID], runs[S.STATUS]))
    assert sum(k.startswith(good_id) for k in status) == 4
    assert {v for k, v in status.items() if k.startswith(good_id)} == {S.STATUS_COMPLETE}
    assert set(doomed) == {k for k in status if k.startswith(broken_id)}
    for run_id, bad in doomed.items():
        assert status[run_id] == (S.STATUS_FAILED if bad else S.STATUS_COMPLETE), run_id
    failed = runs.filter(runs[S.STATUS] == S.STATUS_FAILED)
    assert all("user model exploded in forward" in e for e in failed[S.ERROR])
    # a doomed run's population-mate was trained again alone; its row says why and how
    mates = runs.filter(
        pl.col(S.RUN_ID).str.starts_with(broken_id) & (pl.col(S.STATUS) == S.STATUS_COMPLETE)
    )
    metas = [json.loads(e) for e in mates[S.ENTRY]]
    assert all(m["engine"] == "loop" and "vmap cannot run" in m["engine_reason"] for m in metas)
    assert any(
        "population of 2 raised RuntimeError" in m.get("population_error", "") for m in metas
    )
    assert s.validate() == []
    good = runs.filter(runs[S.STATUS] == S.STATUS_COMPLETE)[S.RUN_ID].to_list()
    steps = s.steps(run_ids=good).collect()
    assert steps.group_by(S.RUN_ID).len()["len"].to_list() == [20] * 6


def test_bad_user_task_is_one_line_exit_2(tmp_path: Path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(
        RECIPE.replace(
            '["mypkg.tasks:make_task", "mypkg.tasks:make_broken"]', '["mypkg_missing_xyz:make"]'
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run(
        [sys.executable, "-m", "trajlib", "collect", str(recipe), "--store", str(tmp_path / "s")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "collect.tasks" in lines[0] and "mypkg_missing_xyz" in lines[0]
