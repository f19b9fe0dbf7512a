"""Tasks: every built-in trains at its default LR, the suite spans families, user tasks load as
module:function, unknown names are errors that list the known ones."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from trajlib.collect._engine import Population
from trajlib.errors import ConfigError, UnknownNameError
from trajlib.tasks import Task, get_task, list_tasks


@pytest.mark.parametrize("name", list_tasks())
def test_every_builtin_task_trains_at_its_default_lr(name):
    task = get_task(name)
    data = task.make_data()
    pop = Population(task, data, [0], {"lr": [task.default_lr]}, capacity=100)
    v0 = pop.evaluate("val")[0].item()
    lr = torch.tensor([task.default_lr])
    for _ in range(100):
        pop.step(lr)
    loss = pop.columns()["loss"][:, 0]
    assert np.isfinite(loss).all()
    assert loss[-10:].mean() < 0.95 * loss[:10].mean(), (loss[:10].mean(), loss[-10:].mean())
    assert pop.evaluate("val")[0].item() < v0


def test_suite_has_six_tasks_in_four_families_and_best_lrs_both_sides():
    # built-ins only: other test modules register small tasks of their own
    tasks = [get_task(n) for n in list_tasks()]
    tasks = [t for t in tasks if t.make_data.__module__ == "trajlib.tasks._builtin"]
    assert len(tasks) >= 6 and len({t.family for t in tasks}) >= 4
    ratios = [t.default_lr / t.best_lr for t in tasks if t.best_lr]
    assert len(ratios) == len(tasks)
    assert any(r >= 3 for r in ratios) and any(r <= 1 / 3 for r in ratios)


def test_user_task_as_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(
        textwrap.dedent(
            """
            import torch
            from trajlib.tasks import Task, TaskData

            def tiny():
                g = torch.Generator().manual_seed(0)
                x = torch.randn(300, 5, generator=g)
                y = (x[:, :1] * 2.0).clone()
                d = TaskData(x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:])
                return Task("tiny", "user", lambda: torch.nn.Linear(5, 1), lambda: d,
                            loss="mse", default_lr=0.05, budget=50, batch_size=20)

            def not_a_task():
                return 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    task = get_task("my_tasks:tiny")
    assert isinstance(task, Task) and task.name == "tiny"
    pop = Population(task, task.make_data(), [0, 1], {"lr": [0.05, 0.1]}, capacity=50)
    for _ in range(50):
        pop.step(torch.tensor([0.05, 0.1]))
    loss = pop.columns()["loss"]
    assert (loss[-5:].mean(0) < loss[:5].mean(0)).all()
    with pytest.raises(ConfigError, match="Task"):
        get_task("my_tasks:not_a_task")
    with pytest.raises(ConfigError):
        get_task("my_tasks:missing")
    with pytest.raises(ConfigError):
        get_task("no_such_module_xyz:f")
    sys.modules.pop("my_tasks", None)


def test_unknown_task_lists_known_ones():
    with pytest.raises(UnknownNameError, match="mnist1d-mlp"):
        get_task("mnist2d-mlp")
