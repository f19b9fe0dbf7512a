"""``end`` labels: the loss at the end of the run, from branches that reach the budget."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests._tiny import TINY_RECIPE, collect_tiny
from trajlib import schema as S
from trajlib.controllers import load_controller
from trajlib.errors import ConfigError
from trajlib.labels import EndLabels, get_label_strategy, make_labels
from trajlib.spec import RunConfig
from trajlib.store import open_store

KEEP = 2


def _rows(step: int, horizon: int, vals: list[float], run: str = "r0") -> list[dict]:
    return [
        {
            S.RUN_ID: run,
            S.STEP: step,
            S.ACTION: a,
            S.HORIZON: horizon,
            S.COOLDOWN: 0,
            S.BRANCH_TRAIN_LOSS: 1.0,
            S.BRANCH_VAL_LOSS_HALF: None,
            S.BRANCH_VAL_LOSS: v,
            S.BRANCH_VAL_LOSS_COOLED: None,
            S.BRANCH_VAL_ACC: None,
            S.BRANCH_DIVERGED: False,
        }
        for a, v in enumerate(vals)
    ]


def test_only_branches_that_reach_the_budget_are_measured() -> None:
    rows = _rows(50, 150, [1.0, 0.9, 1.0, 0.8, 1.2])  # reaches 200: labelled
    rows += _rows(100, 50, [0.5, 0.5, 1.0, 0.5, 0.5])  # stops at 150: no label at all
    full = _rows(150, 50, [1.0, 0.7, 1.0, 0.9, 0.6])
    full[4][S.HORIZON] = 30  # this one action stops short: unknown
    rows += full
    rows += _rows(25, 75, [1.0, 1.0, 1.0, 0.5, 1.0], run="r1")  # budget 100: reaches
    b = pl.DataFrame(rows, schema=S.BRANCH_SCHEMA)
    runs = pl.DataFrame({S.RUN_ID: ["r0", "r1"], S.TASK: ["t", "u"], S.BUDGET: [200, 100]})
    lab = make_labels(b, "end", KEEP, runs=runs, steps=pl.LazyFrame())
    assert lab.select(S.RUN_ID, S.STEP).rows() == [("r0", 50), ("r0", 150), ("r1", 25)]
    first, last, other = lab.rows(named=True)
    assert first["best_action"] == 3
    assert math.isclose(first["adv_3"], -math.log(0.8), rel_tol=1e-6)
    assert first["n_valid"] == 5
    assert last["best_action"] == 1 and math.isnan(last["adv_4"]) and last["n_valid"] == 4
    assert other["best_action"] == 3 and other[S.TASK] == "u"
    # where every branch reaches the end, the numbers are greedy's
    greedy = make_labels(pl.DataFrame(rows[:5], schema=S.BRANCH_SCHEMA), "greedy", KEEP)
    cols = [f"adv_{i}" for i in range(5)]
    assert np.array_equal(greedy.select(cols).to_numpy()[0], np.array([first[c] for c in cols]))


def test_it_needs_every_run_s_budget() -> None:
    b = pl.DataFrame(_rows(50, 150, [1.0] * 5), schema=S.BRANCH_SCHEMA)
    strat = get_label_strategy("end")
    assert isinstance(strat, EndLabels) and strat.needs_branches
    with pytest.raises(ConfigError, match="steps/runs"):
        make_labels(b, strat, KEEP)
    with pytest.raises(ConfigError, match="'end'"):
        strat.log_outcome()
    with pytest.raises(ConfigError, match=r"runs.*budget"):
        make_labels(b, strat, KEEP, runs=pl.DataFrame({S.RUN_ID: ["r0"]}), steps=pl.LazyFrame())
    other = pl.DataFrame({S.RUN_ID: ["x"], S.TASK: ["t"], S.BUDGET: [200]})
    with pytest.raises(ConfigError, match=r"1 runs missing, e.g. 'r0'"):
        make_labels(b, strat, KEEP, runs=other, steps=pl.LazyFrame())


@pytest.fixture(scope="module")
def to_the_end(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real collection whose branches run to the end of each run (horizon > budget, no
    cool-down), every decision point branched."""
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["collect"].update(tasks=["teacher-student"], runs_per_task=3, budget=100)
    recipe["branch"] = {"horizon": 10_000, "cooldown": 0}
    return collect_tiny(tmp_path_factory.mktemp("end") / "store", recipe)


def test_a_branch_to_the_end_is_the_run_s_own_end(to_the_end: Path) -> None:
    """At the last decision point the branch of the action the run took *is* the rest of the
    run: its validation loss is the run's final one."""
    st = open_store(to_the_end)
    runs, branches = st.runs().collect(), st.branches().collect()
    decisions = st.decisions().collect()
    assert (branches[S.STEP] + branches[S.HORIZON] == 100).all()
    lab = make_labels(branches, "end", KEEP, runs=runs, steps=st.steps())
    n_points = branches.select(S.RUN_ID, S.STEP).unique().height
    assert lab.height == n_points  # every decision point labelled
    last = decisions.sort(S.STEP).group_by(S.RUN_ID).last()
    took = branches.join(
        last.select(S.RUN_ID, S.STEP, S.ACTION), on=[S.RUN_ID, S.STEP, S.ACTION], how="inner"
    ).join(runs.select(S.RUN_ID, S.FINAL_VAL_LOSS), on=S.RUN_ID)
    assert took.height == runs.height
    assert np.allclose(took[S.BRANCH_VAL_LOSS], took[S.FINAL_VAL_LOSS], rtol=1e-4)


def test_fit_store_on_end_labels(to_the_end: Path, tmp_path: Path) -> None:
    from trajlib.controllers import fit_store

    path, _ = fit_store(
        to_the_end, kind="gbt", labels="end", out=tmp_path / "c", params={"n_estimators": 10}
    )
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["label_strategy"] == "end"
    ctrl = load_controller(path)
    runs = open_store(to_the_end).runs().collect()
    space = RunConfig.from_dict(json.loads(runs[S.ENTRY][0])).decision.action_space
    assert len(ctrl.spec.action_space) == len(space)
