"""The task split is data: disjoint families covering every built-in; leaks are refused."""

from __future__ import annotations

import pytest

from trajlib.errors import ConfigError
from trajlib.evaluate import HELD_OUT_TASKS, quick_methods, standard_methods, standard_strategies
from trajlib.evaluate._protocol import (
    HELD_OUT_FAMILIES,
    STATIC_BASELINES,
    TARGET_METHOD,
    TRAINING_FAMILIES,
    TRAINING_TASKS,
    check_held_out,
    split_of,
)
from trajlib.tasks import get_task, list_tasks


def test_families_are_disjoint_and_cover_the_builtins() -> None:
    assert not set(TRAINING_FAMILIES) & set(HELD_OUT_FAMILIES)
    assert not set(TRAINING_TASKS) & set(HELD_OUT_TASKS)
    builtins = {
        t for t in list_tasks() if get_task(t).make_data.__module__ == "trajlib.tasks._builtin"
    }
    assert set(TRAINING_TASKS) | set(HELD_OUT_TASKS) == builtins
    for fams in (TRAINING_FAMILIES, HELD_OUT_FAMILIES):
        for fam, tasks in fams.items():
            assert all(get_task(t).family == fam for t in tasks)
    assert split_of("char-lm") == "held-out" and split_of("digits-mlp") == "training"
    assert split_of("my.module:task") == "unassigned"


def test_check_held_out_refuses_a_family_leak() -> None:
    check_held_out(["synth-classification", "char-lm"], ["mnist1d-mlp", "digits-mlp"])
    with pytest.raises(ConfigError, match="mnist1d-cnn"):
        check_held_out(["mnist1d-cnn"], ["mnist1d-mlp"])


def test_standard_lists() -> None:
    names = [m.name for m in standard_methods()]
    assert len(names) == len(set(names)) == 13
    assert TARGET_METHOD in names and all(b in names for b in STATIC_BASELINES)
    for want in ("schedule-free", "hypergradient", "optuna", "successive halving", "T1-T2", "PBT"):
        assert any(want in n for n in names), want
    assert len(standard_strategies(pbt=False)) == 4
    quick = [m.name for m in quick_methods()]
    assert TARGET_METHOD in quick and not any("PBT" in n for n in quick)
