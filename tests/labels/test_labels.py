"""Label strategies on hand-made branches with known answers."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from trajlib import schema as S
from trajlib.errors import ConfigError, UnknownNameError
from trajlib.labels import (
    AnnealedLabels,
    LabelStrategy,
    LongHorizonLabels,
    get_label_strategy,
    label_strategies,
    make_labels,
    register_label_strategy,
)

KEEP = 2


def branches(rows: list[dict], horizon: int = 100, cooldown: int = 20) -> pl.DataFrame:
    """A BRANCH_SCHEMA frame; each row dict gives run_id, step, action and any outcome."""
    full = []
    for r in rows:
        d = {
            S.RUN_ID: r.get("run_id", "r0"),
            S.STEP: r.get("step", 50),
            S.ACTION: r["action"],
            S.HORIZON: horizon,
            S.COOLDOWN: r.get("cooldown", cooldown),
            S.BRANCH_TRAIN_LOSS: r.get("train_loss", 1.0),
            S.BRANCH_VAL_LOSS_HALF: r.get("half"),
            S.BRANCH_VAL_LOSS: r.get("val"),
            S.BRANCH_VAL_LOSS_COOLED: r.get("cooled"),
            S.BRANCH_VAL_ACC: None,
            S.BRANCH_DIVERGED: r.get("diverged", False),
        }
        full.append(d)
    return pl.DataFrame(full, schema=S.BRANCH_SCHEMA)


def five(val: list[float | None], **extra: list) -> list[dict]:
    rows = []
    for a, v in enumerate(val):
        row = {"action": a, "val": v}
        for k, vals in extra.items():
            row[k] = vals[a]
        rows.append(row)
    return rows


def test_registry_names() -> None:
    assert label_strategies() == ["annealed", "end", "final", "greedy", "long", "outcome"]
    with pytest.raises(UnknownNameError, match="known: annealed, end, final, greedy, long"):
        get_label_strategy("nope")


def test_greedy_known_answer() -> None:
    b = branches(five([1.0, 0.9, 1.0, 0.8, 1.2]))
    lab = make_labels(b, "greedy", KEEP)
    assert lab.columns == [
        S.RUN_ID,
        S.STEP,
        "best_action",
        *[f"adv_{i}" for i in range(5)],
        "n_valid",
    ]
    assert lab["best_action"].dtype == pl.Int16
    row = lab.row(0, named=True)
    assert row["best_action"] == 3
    assert row["adv_2"] == 0.0
    assert math.isclose(row["adv_3"], math.log(1.0) - math.log(0.8), rel_tol=1e-6)
    assert math.isclose(row["adv_4"], -math.log(1.2), rel_tol=1e-6)
    assert row["n_valid"] == 5


def test_ties_prefer_keep() -> None:
    # action 3 better than keep by 0.05 % (< tie_tol = 0.1 %): keep wins
    b = branches(five([1.0, 1.0, 1.0, 0.9995, 1.0]))
    assert make_labels(b, "greedy", KEEP)["best_action"][0] == KEEP
    # with a tighter tolerance the small improvement wins
    strat = get_label_strategy("greedy", tie_tol=1e-5)
    assert make_labels(b, strat, KEEP)["best_action"][0] == 3


def test_diverged_branch_penalized() -> None:
    b = branches(five([1.0, 0.9, 1.0, 0.95, 0.5], diverged=[False, False, False, False, True]))
    row = make_labels(b, "greedy", KEEP).row(0, named=True)
    assert row["best_action"] == 1  # the diverged branch's low loss is ignored
    assert row["adv_4"] == -1.0  # worst finite is keep itself (adv 0) -> 0 - penalty
    assert row["n_valid"] == 5
    # non-finite outcome counts as diverged, penalty below the worst finite branch
    b = branches(five([1.0, 2.0, 1.0, 0.95, float("nan")]))
    row = make_labels(b, get_label_strategy("greedy", diverged_penalty=5.0), KEEP).row(
        0, named=True
    )
    assert math.isclose(row["adv_4"], -math.log(2.0) - 5.0, rel_tol=1e-6)
    assert all(math.isfinite(row[f"adv_{i}"]) for i in range(5))


def test_keep_diverged_makes_finite_branches_better() -> None:
    b = branches(five([1.0, 0.9, None, 2.0, 3.0], diverged=[False, False, True, False, True]))
    row = make_labels(b, "greedy", KEEP).row(0, named=True)
    assert row["adv_2"] == 0.0 and row["adv_4"] == 0.0
    assert row["adv_3"] == pytest.approx(1.0)  # keep = worst finite (log 2) + 1
    assert row["adv_1"] > row["adv_0"] > row["adv_3"] > 0
    assert row["best_action"] == 1


def test_missing_branches_are_unknown_and_no_keep_row_dropped() -> None:
    rows = five([1.0, None, 1.0, 0.9, 1.1])
    rows = [r for r in rows if r["action"] != 4]
    rows += [{"run_id": "r0", "step": 100, "action": 0, "val": 1.0}]  # no keep branch
    lab = make_labels(branches(rows), "greedy", KEEP, n_actions=5)
    assert lab.height == 1
    row = lab.row(0, named=True)
    assert math.isnan(row["adv_1"]) and math.isnan(row["adv_4"])
    assert row["n_valid"] == 3


def test_annealed_uses_cooled_and_refuses_no_cooldown() -> None:
    b = branches(five([1.0, 0.9, 1.0, 0.8, 0.7], cooled=[0.7, 0.8, 0.75, 0.76, 0.9]))
    row = make_labels(b, "annealed", KEEP).row(0, named=True)
    assert row["best_action"] == 0  # greedy would say 4
    assert math.isclose(row["adv_0"], math.log(0.75) - math.log(0.7), rel_tol=1e-5)
    with pytest.raises(ConfigError, match=r"cooldown.*'annealed'.*5 of 5.*greedy"):
        make_labels(branches(five([1.0] * 5), cooldown=0), "annealed", KEEP)


def test_long_combines_horizons() -> None:
    half = [1.2, 1.1, 1.3, 1.0, 1.0]
    val = [1.0, 0.95, 1.0, 0.9, 0.85]
    cooled = [0.8, 0.85, 0.82, 0.8, 0.83]
    b = branches(five(val, half=half, cooled=cooled))
    lab = make_labels(b, LongHorizonLabels(discount=0.5, cooled_weight=1.0), KEEP)

    def lo(i: int) -> float:
        return (0.5 * math.log(half[i]) + math.log(val[i]) + math.log(cooled[i])) / 2.5

    for i in range(5):
        assert math.isclose(lab[f"adv_{i}"][0], lo(KEEP) - lo(i), abs_tol=1e-6)
    # discount 0 and no cool-down reduce to greedy
    b0 = branches(five(val, half=half, cooled=cooled), cooldown=0)
    g = make_labels(b0, "greedy", KEEP)
    long0 = make_labels(b0, LongHorizonLabels(discount=0.0), KEEP)
    assert np.allclose(g.select("^adv_.*$").to_numpy(), long0.select("^adv_.*$").to_numpy())


def test_runs_join_task_and_sorted_keys() -> None:
    rows = [dict(r, run_id="b", step=100) for r in five([1.0, 0.9, 1.0, 0.8, 1.2])]
    rows += [dict(r, run_id="a", step=50) for r in five([1.0, 0.9, 1.0, 0.8, 1.2])]
    rows += [dict(r, run_id="b", step=50) for r in five([1.0, 0.9, 1.0, 0.8, 1.2])]
    runs = pl.DataFrame({S.RUN_ID: ["a", "b"], S.TASK: ["t1", "t2"]})
    lab = make_labels(branches(rows), "greedy", KEEP, runs=runs)
    assert lab.select(S.RUN_ID, S.STEP, S.TASK).rows() == [
        ("a", 50, "t1"),
        ("b", 50, "t2"),
        ("b", 100, "t2"),
    ]


def test_bad_input_errors() -> None:
    b = branches(five([1.0] * 5))
    with pytest.raises(ConfigError, match="keep_index"):
        make_labels(b, "greedy", 7)
    with pytest.raises(ConfigError, match=r"missing \['val_loss'\]"):
        make_labels(b.drop(S.BRANCH_VAL_LOSS), "greedy", KEEP)
    with pytest.raises(ConfigError, match="one row per"):
        make_labels(pl.concat([b, b]), "greedy", KEEP)
    with pytest.raises(ConfigError, match=r"branches.action"):
        make_labels(b, "greedy", KEEP, n_actions=3)
    with pytest.raises(ConfigError, match="discount"):
        LongHorizonLabels(discount=2.0)


def test_user_strategy_with_one_subclass() -> None:
    @register_label_strategy
    class TrainLoss(LabelStrategy):
        name = "train_loss_test"
        required_columns = (S.RUN_ID, S.STEP, S.ACTION, S.BRANCH_TRAIN_LOSS, S.BRANCH_DIVERGED)

        def log_outcome(self) -> pl.Expr:
            return pl.col(S.BRANCH_TRAIN_LOSS).cast(pl.Float64).log()

    b = branches(five([1.0] * 5, train_loss=[0.5, 1.0, 1.0, 1.0, 1.0]))
    assert make_labels(b, "train_loss_test", KEEP)["best_action"][0] == 0
    assert AnnealedLabels().to_dict() == {
        "name": "annealed",
        "params": {"tie_tol": 1e-3, "diverged_penalty": 1.0},
    }


# ------------------------------------------------------------------------------ properties
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_outcome = st.one_of(
    st.none(),  # not branched / not measured
    st.floats(0.01, 100.0),
    st.just(float("nan")),
    st.just(float("inf")),
)


@settings(max_examples=60, deadline=None)
@given(
    outcomes=st.lists(st.lists(_outcome, min_size=5, max_size=5), min_size=1, max_size=6),
    diverged=st.lists(st.booleans(), min_size=30, max_size=30),
    tol=st.sampled_from([0.0, 1e-3, 0.05]),
)
def test_label_invariants(
    outcomes: list[list[float | None]], diverged: list[bool], tol: float
) -> None:
    rows = []
    for k, vals in enumerate(outcomes):
        for a, v in enumerate(vals):
            if v is None and a != KEEP and diverged[(5 * k + a) % 30]:
                continue  # action not branched at all
            rows.append(
                {
                    "step": 50 * (k + 1),
                    "action": a,
                    "val": v,
                    "diverged": diverged[(7 * k + a) % 30],
                }
            )
    b = branches(rows)
    lab = make_labels(b, get_label_strategy("greedy", tie_tol=tol), KEEP, n_actions=5)
    adv = lab.select(f"adv_{i}" for i in range(5)).to_numpy()
    assert lab.height <= len(outcomes)
    if lab.height == 0:
        return
    assert np.all(adv[:, KEEP] == 0.0)  # keep is the reference
    assert not np.isinf(adv).any()  # penalties stay finite
    filled = np.where(np.isnan(adv), -np.inf, adv)
    best = lab["best_action"].to_numpy()
    chosen = filled[np.arange(len(best)), best]
    assert np.all(chosen >= filled.max(1) - tol - 1e-12)  # best is within tol of the max
    assert np.all((best == KEEP) | (chosen > tol))  # moving away from keep needs > tol gain
    assert np.array_equal(lab["n_valid"].to_numpy(), (~np.isnan(adv)).sum(1))
