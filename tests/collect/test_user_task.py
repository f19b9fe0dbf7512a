"""User tasks (``module:function``) collected end to end through the real CLI in a subprocess, with a
real process pool: readable run ids, and a run that crashes is recorded as failed while the
collection goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 2)

    def forward(self, x):
        raise RuntimeError("user model exploded in forward")


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
runs_per_task = 2
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


@pytest.mark.slow
def test_user_task_collects_from_the_cli_and_a_crash_is_a_failed_run(tmp_path: Path):
    pkg = tmp_path / "src" / "mypkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text(textwrap.dedent(USER_TASKS))
    recipe = tmp_path / "user.toml"
    recipe.write_text(RECIPE)
    store = tmp_path / "store"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path / "src"), str(Path(__file__).resolve().parents[2])]
    )
    proc = subprocess.run(
        [sys.executable, "-m", "trajlib", "collect", str(recipe), "--store", str(store), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "BrokenProcessPool" not in proc.stderr
    assert "collected 2 runs" in proc.stdout and "2 failed" in proc.stdout
    s = open_store(str(store))
    runs = s.runs().collect().sort(S.RUN_ID)
    assert len(runs) == 4
    good_id, broken_id = (
        task_id_part(f"mypkg.tasks:{f}") + "-" for f in ("make_task", "make_broken")
    )
    assert good_id == "mypkg.tasks-make_task-"
    status = dict(zip(runs[S.RUN_ID], runs[S.STATUS]))
    assert sorted(status) == sorted(i for i in status if i.startswith((good_id, broken_id)))
    assert {v for k, v in status.items() if k.startswith(good_id)} == {S.STATUS_COMPLETE}
    assert {v for k, v in status.items() if k.startswith(broken_id)} == {S.STATUS_FAILED}
    failed = runs.filter(runs[S.STATUS] == S.STATUS_FAILED)
    assert all("user model exploded in forward" in e for e in failed[S.ERROR])
    assert s.validate() == []
    good = runs.filter(runs[S.STATUS] == S.STATUS_COMPLETE)[S.RUN_ID].to_list()
    steps = s.steps(run_ids=good).collect()
    assert steps.group_by(S.RUN_ID).len()["len"].to_list() == [20, 20]


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
