"""Recipes are validated before anything runs; errors name the key; run ids are deterministic;
start values are drawn within their ranges around the task's value."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trajlib.collect import load_recipe, parse_recipe
from trajlib.errors import ConfigError
from trajlib.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"collect": {"tasks": ["digits-mlp"], "runs_per_task": 2}}


def _with(section: str, key: str, value):
    d = {k: dict(v) for k, v in GOOD.items()}
    d.setdefault(section, {})[key] = value
    return d


@pytest.mark.parametrize(
    "data, key",
    [
        (_with("collect", "tasks", ["no-such-task"]), "collect.tasks"),
        (_with("collect", "tasks", []), "collect.tasks"),
        (_with("collect", "runs_per_task", 0), "collect.runs_per_task"),
        (_with("collect", "population", -2), "collect.population"),
        (_with("collect", "budgett", 100), "collect.budgett"),
        (_with("collect", "device", "tpu"), "collect.device"),
        (_with("space", "lr_range", 0.5), "space.lr_range"),
        (_with("space", "lr_center", "median"), "space.lr_center"),
        (_with("space", "lr_shift", 0.0), "space.lr_shift"),
        (_with("space", "momentum_max", 1.0), "space.momentum_min/momentum_max"),
        (_with("space", "weight_decay_min", 0.0), "space.weight_decay_min/weight_decay_max"),
        (_with("space", "input_noise", 5.0), "space.input_noise"),
        (_with("space", "l2", 3.0), "space.l2"),
        (_with("space", "layer_lr_min", 2.0), "space.layer_lr_min/layer_lr_max"),
        (_with("space", "momentum_range", "wide"), "space.momentum_range"),
        (_with("space", "base_schedule", "cosine"), "space.base_schedule"),
        (_with("actions", "lr", [0.5, 2.0]), "actions.lr"),
        (_with("actions", "lr", [0.5, -1.0, 1.0]), "actions.lr"),
        (_with("actions", "momentum", [0.5, 1.0]), "actions.momentum"),
        (_with("actions", "weight_decay", [0.0, 1.0]), "actions.weight_decay"),
        (_with("actions", "combine", "sum"), "actions.combine"),
        (_with("actions", "beta2", [1.0]), "actions.beta2"),
        (_with("behaviour", "kind", "sawtooth"), "behaviour.kind"),
        (_with("behaviour", "kind", ["cosine", "zigzag"]), "behaviour.kind"),
        (_with("behaviour", "kind", "controller"), "behaviour.checkpoint"),
        (_with("behaviour", "epsilon", 1.5), "behaviour.epsilon"),
        (_with("branch", "horizon", 0), "branch.horizon"),
        (_with("executor", "kind", "slurm"), "executor.kind"),
        ({**GOOD, "colect": {}}, "colect"),
    ],
)
def test_bad_recipe_is_a_config_error_naming_the_key(data, key):
    with pytest.raises(ConfigError) as e:
        parse_recipe(data)
    assert e.value.field == key
    assert key.split("/")[0] in str(e.value)


@pytest.mark.parametrize("name", ["quickstart.toml", "full.toml"])
def test_shipped_recipes_parse(name):
    path = ROOT / "collectors" / name
    if not path.exists():
        pytest.skip(f"{name} not in this checkout")
    r = load_recipe(path)
    specs = r.run_configs()
    assert len(specs) == len(r.collect.tasks) * r.collect.runs_per_task
    assert len({s.run_id for s in specs}) == len(specs)


def test_full_recipe_has_a_why_comment_on_every_key():
    lines = (ROOT / "collectors" / "full.toml").read_text().splitlines()
    keys = [ln for ln in lines if "=" in ln and not ln.lstrip().startswith("#")]
    assert keys and all("#" in ln for ln in keys), [ln for ln in keys if "#" not in ln]


def test_run_ids_and_start_values_are_deterministic_and_within_ranges():
    data = {
        "collect": {"tasks": ["digits-mlp", "digits-cnn"], "runs_per_task": 16},
        "space": {
            "lr_center": "best",
            "lr_range": 30.0,
            "momentum_range": 3.0,
            "weight_decay_range": 10.0,
        },
    }
    a, b = parse_recipe(data).run_configs(), parse_recipe(data).run_configs()
    assert [s.run_id for s in a] == [s.run_id for s in b]
    for s in a:
        task = get_task(s.task)
        center = task.best_lr or task.default_lr
        assert abs(math.log(s.lr0 / center)) <= math.log(30.0) + 1e-9
        one_minus = 1 - s.start.momentum
        assert abs(math.log(one_minus / (1 - task.momentum))) <= math.log(3.0) + 1e-6
        assert s.start.weight_decay > 0
    lrs = [s.lr0 for s in a if s.task == "digits-mlp"]
    assert max(lrs) / min(lrs) > 10  # a wide range: too high and too low starts
    changed = parse_recipe({**data, "collect": {**data["collect"], "seed": 1}}).run_configs()
    assert not {s.run_id for s in changed} & {s.run_id for s in a}


def test_lr_shift_moves_the_start_lrs_centre_and_keeps_the_draws():
    """``lr_shift`` multiplies every start LR of the same draws (the same seed), so the starts
    sit in [shift / range, shift * range] x the centre; the default 1 leaves run ids as they were."""
    base = {"collect": {"tasks": ["digits-mlp"], "runs_per_task": 12}, "space": {"lr_range": 4.0}}
    shifted = {**base, "space": {"lr_range": 4.0, "lr_shift": 8.0}}
    a, b = parse_recipe(base).run_configs(), parse_recipe(shifted).run_configs()
    center = get_task("digits-mlp").default_lr
    for s, t in zip(a, b, strict=True):
        assert t.lr0 == pytest.approx(8.0 * s.lr0)
        assert 2.0 - 1e-9 <= t.lr0 / center <= 32.0 + 1e-9
    assert sum(t.lr0 > 4 * center for t in b) > len(b) // 4  # many start well above the centre
    assert {s.run_id for s in a} == {
        s.run_id
        for s in parse_recipe({**base, "space": {"lr_range": 4.0, "lr_shift": 1}}).run_configs()
    }
    assert not {s.run_id for s in a} & {t.run_id for t in b}


def test_old_recipes_keep_their_defaults():
    r = parse_recipe(GOOD)
    assert r.space.lr_center == "default" and r.space.momentum_range == 1.0
    assert r.action_space.labels == ["lr x0.5", "lr x0.7", "lr x1", "lr x1.4", "lr x2"]
    s = r.run_configs()[0]
    task = get_task("digits-mlp")
    assert s.start.momentum == task.momentum
    assert s.start.weight_decay == task.weight_decay


def test_action_space_union_and_product():
    base = {**GOOD, "actions": {"lr": [0.5, 1, 2], "momentum": [-0.7, 0, 0.7]}}
    union = parse_recipe(base).action_space
    assert len(union) == 5 and union[union.keep_index].moves == {}
    prod = parse_recipe({**base, "actions": {**base["actions"], "combine": "product"}})
    assert len(prod.action_space) == 9
    assert prod.action_space[prod.action_space.keep_index].moves == {}


@pytest.mark.parametrize(
    "data, key, expected, got",
    [
        (_with("space", "momentum_range", "wide"), "space.momentum_range", "a number", "wide"),
        (_with("space", "l2", True), "space.l2", "a number", True),
        (_with("collect", "runs_per_task", 2.5), "collect.runs_per_task", "an integer", 2.5),
        (_with("collect", "budget", "long"), "collect.budget", "an integer", "long"),
        (_with("collect", "tasks", "digits-mlp"), "collect.tasks", "a list of strings", None),
        (_with("branch", "enabled", "yes"), "branch.enabled", "true or false", "yes"),
        (_with("executor", "address", 3), "executor.address", "a string", 3),
        (_with("actions", "lr", [0.5, "x", 1.0]), "actions.lr", "a list of numbers", None),
        (_with("behaviour", "kind", 3), "behaviour.kind", "a string or a list of strings", 3),
        (_with("behaviour", "kind", []), "behaviour.kind", "a string or a non-empty list", []),
        ({"collect": {"runs_per_task": 2}}, "collect.tasks", "a non-empty list", None),
        (_with("space", "lr_rnage", 3.0), "space.lr_rnage", "one of the keys", "lr_rnage"),
    ],
)
def test_type_errors_are_one_line_and_say_field_expected_and_got(data, key, expected, got):
    with pytest.raises(ConfigError) as e:
        parse_recipe(data)
    assert e.value.field == key
    assert e.value.expected.startswith(expected)
    if got is not None:
        assert e.value.got == got
    assert str(e.value).startswith(f"`{key}` must be {expected}") and "\n" not in str(e.value)


def test_numbers_keep_their_float_type():
    """An integer where a number is expected is accepted as a float (run ids hash the JSON)."""
    r = parse_recipe({**GOOD, "space": {"lr_range": 10}, "actions": {"lr": [0.5, 1, 2]}})
    assert r.space.lr_range == 10.0 and isinstance(r.space.lr_range, float)
    assert r.actions == (0.5, 1.0, 2.0) and all(isinstance(m, float) for m in r.actions)
