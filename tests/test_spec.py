"""The decision contract: DecisionSpec and RunConfig round-trip through their JSON forms, run ids
are those of the collections made before the contract existed, and bad values are one-line
ConfigErrors naming the field."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from trajlib.collect import parse_recipe
from trajlib.controllers import load_controller
from trajlib.errors import ConfigError
from trajlib.space import HyperParam, HyperparameterSpace, lr_action_space
from trajlib.spec import (
    DEFAULT_LR_MULTIPLIERS,
    DecisionSpec,
    FeatureSetRef,
    RunConfig,
    SpaceConfig,
)

ROOT = Path(__file__).resolve().parents[1]
LR = HyperparameterSpace((HyperParam("lr", 1e-3, 1e2, "log"),))
FS = FeatureSetRef(name="default", version="3", hash="ab12", names=("a", "b"))
WALK = {
    "collect": {"tasks": ["digits-mlp"], "runs_per_task": 2, "every": 20},
    "space": {"layer_lr_range": 2.0, "layer_lr_walk": 0.5, "momentum_range": 3.0},
    "actions": {"lr": [0.5, 1, 2], "momentum": [-0.7, 0, 0.7]},
    "behaviour": {"kind": ["keep", "cosine"]},
}


@pytest.mark.parametrize("feature_set", [None, FS])
def test_decision_spec_round_trips_through_json(feature_set):
    spec = DecisionSpec(
        action_space=lr_action_space((0.5, 1.0, 2.0)),
        hp_space=LR,
        every=25,
        mode="residual",
        base_schedule="cosine",
        feature_set=feature_set,
    )
    back = DecisionSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec
    assert ("feature_set" in spec.to_dict()) == (feature_set is not None)


def test_decision_spec_defaults_are_the_default_lr_grid():
    spec = DecisionSpec(hp_space=LR)
    assert spec.action_space == lr_action_space(DEFAULT_LR_MULTIPLIERS)
    assert spec.action_space.labels == ["lr x0.5", "lr x0.7", "lr x1", "lr x1.4", "lr x2"]
    assert (spec.every, spec.mode, spec.base_schedule) == (50, "free", "constant")


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"every": 0}, "every", "`every` must be a positive integer; got 0"),
        ({"every": True}, "every", "`every` must be a positive integer; got True"),
        ({"mode": "both"}, "mode", "`mode` must be one of ('free', 'residual'); got 'both'"),
        ({"base_schedule": "linear"}, "base_schedule", "`base_schedule` must be one of"),
        ({"hp_space": [("lr", 1, 2)]}, "hp_space", "`hp_space` must be a HyperparameterSpace"),
        ({"action_space": (0.5, 1.0)}, "action_space", "`action_space` must be an ActionSpace"),
    ],
)
def test_decision_spec_bad_field_is_a_one_line_config_error(change, field, message):
    with pytest.raises(ConfigError) as e:
        DecisionSpec(**{"hp_space": LR, **change})
    assert e.value.field == field
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_actions_need_bounds_for_what_they_move():
    moves_momentum = parse_recipe(WALK).action_space
    with pytest.raises(ConfigError, match=r"`hp_space` must be bounds .*\['momentum'\]"):
        DecisionSpec(action_space=moves_momentum, hp_space=LR)


def test_feature_set_ref_rejects_duplicate_names_and_an_empty_hash():
    with pytest.raises(ConfigError, match="feature_names"):
        FeatureSetRef(name="x", version="1", hash="ab", names=("a", "a"))
    with pytest.raises(ConfigError, match="feature_set_hash"):
        FeatureSetRef(name="x", version="1", hash="", names=("a",))


@pytest.mark.parametrize("data", [{"collect": {"tasks": ["digits-mlp"], "runs_per_task": 2}}, WALK])
def test_run_config_round_trips_and_keeps_its_id(data):
    for config in parse_recipe(data, name="rt").run_configs():
        d = json.loads(json.dumps(config.to_dict()))
        back = RunConfig.from_dict(d)
        assert back == config
        assert back.run_id == config.run_id
        # what the runner adds after the run is not part of the config
        assert RunConfig.from_dict({**d, "layer_lr": [1.0], "layer_lr_path": []}) == config


def test_run_ids_are_those_of_collections_made_before_the_typed_contract():
    """Golden ids computed with the dict-entry code (main at 876f245): the contract must not
    orphan committed runs of existing recipes."""
    plain = {"collect": {"tasks": ["digits-mlp", "teacher-student"], "runs_per_task": 2}}
    assert [c.run_id for c in parse_recipe(plain, name="ids").run_configs()] == [
        "digits-mlp-0000-b638979f68",
        "digits-mlp-0001-ccabf0d758",
        "teacher-student-0000-e00b5ade69",
        "teacher-student-0001-b718f0a3f6",
    ]
    assert [c.run_id for c in parse_recipe(WALK, name="ids").run_configs()] == [
        "digits-mlp-0000-5fefe1ec25",
        "digits-mlp-0001-65847fa011",
    ]


def test_every_field_of_a_run_config_enters_its_id():
    config = parse_recipe(WALK, name="ids").run_configs()[0]
    changed = [
        replace(config, seed=config.seed + 1),
        replace(config, lr0=config.lr0 * 2),
        replace(config, budget=config.budget + 1),
        replace(config, val_every=config.val_every + 1),
        replace(config, recipe="other"),
        replace(config, start=replace(config.start, layer_lr_seed=1)),
        replace(config, behaviour=replace(config.behaviour, p_move=0.5)),
        replace(config, branch=replace(config.branch, horizon=7)),
        replace(config, decision=replace(config.decision, every=7)),
        replace(config, space=replace(config.space, lr_range=3.0)),
    ]
    ids = {c.run_id for c in changed}
    assert len(ids) == len(changed) and config.run_id not in ids


def test_fields_added_later_enter_the_json_only_when_set():
    assert "layer_lr_walk" not in SpaceConfig().to_dict()
    assert SpaceConfig(layer_lr_walk=0.5).to_dict()["layer_lr_walk"] == 0.5


def test_run_config_checks_its_decision_against_its_space():
    config = parse_recipe(WALK, name="x").run_configs()[0]
    with pytest.raises(ConfigError) as e:
        replace(config, decision=replace(config.decision, mode="residual"))
    assert e.value.field == "decision"
    with pytest.raises(ConfigError, match="`budget` must be a positive integer; got 0"):
        replace(config, budget=0)


def test_run_config_reads_entries_without_hp_space_or_action_space():
    """Entries of the first collections had only ``actions`` and ``space.lr_min/lr_max``."""
    entry = {
        "recipe": "old",
        "task": "digits-mlp",
        "index": 0,
        "seed": 3,
        "lr0": 0.1,
        "budget": 100,
        "every": 20,
        "val_every": 20,
        "behaviour": {"kind": "random-walk", "p_move": 0.6, "params": {}, "seed": 3},
        "space": {"lr_min": 0.01, "lr_max": 10.0, "mode": "free", "base_schedule": "constant"},
        "actions": [0.5, 1.0, 2.0],
        "branch": {"enabled": True, "horizon": 20, "cooldown": 0},
    }
    config = RunConfig.from_dict(entry)
    assert config.decision.action_space == lr_action_space((0.5, 1.0, 2.0))
    assert config.decision.hp_space.names == ["lr"]
    assert (config.decision.hp_space["lr"].low, config.decision.hp_space["lr"].high) == (
        0.01,
        10.0,
    )
    assert config.start.momentum is None  # the task's own


def test_shipped_checkpoint_loads_with_its_spec():
    path = ROOT / "models" / "trajlib-lr-v1" / "checkpoint"
    if not path.exists():
        pytest.skip("no shipped checkpoint in this checkout")
    loaded = load_controller(path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert loaded.spec == DecisionSpec.from_dict(manifest)
    assert loaded.spec.to_dict() == {
        k: manifest[k]
        for k in ("action_space", "hp_space", "every", "mode", "base_schedule", "feature_set")
    }
    assert loaded.every == manifest["every"] and loaded.mode == manifest["mode"]
    assert loaded.feature_names == manifest["feature_set"]["names"]
    assert loaded.feature_set_hash == manifest["feature_set"]["hash"]
    with pytest.raises(AttributeError):  # read-only views of the spec
        loaded.every = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        loaded.spec = replace(loaded.spec, every=1)  # type: ignore[misc]


@pytest.mark.parametrize(
    "name, n, digest",
    [
        ("quickstart", 24, "36209bd903f948f2"),
        ("full", 80, "a7735269f85f831e"),
        ("full-residual", 80, "c47e2fedd9b21736"),
    ],
)
def test_shipped_recipes_keep_their_run_ids(name, n, digest):
    """sha256 of every run id of the shipped recipes, as computed before the typed contract: a
    store collected then resumes now instead of collecting everything again."""
    import hashlib

    from trajlib.collect import load_recipe

    path = ROOT / "collectors" / f"{name}.toml"
    if not path.exists():
        pytest.skip(f"{name}.toml not in this checkout")
    ids = [c.run_id for c in load_recipe(path).run_configs()]
    assert len(ids) == n
    assert hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16] == digest


def test_shipped_checkpoint_saved_again_has_the_same_manifest(tmp_path):
    """load -> save through the DecisionSpec writes the manifest it was read from (same keys in
    the same order, same payload hashes): the checkpoint format did not change."""
    from trajlib.controllers import save_controller

    path = ROOT / "models" / "trajlib-lr-v1" / "checkpoint"
    if not path.exists():
        pytest.skip("no shipped checkpoint in this checkout")
    before = json.loads((path / "manifest.json").read_text())
    loaded = load_controller(path)
    again = save_controller(
        loaded.controller,
        tmp_path / "again",
        spec=loaded.spec,
        label_strategy=before["label_strategy"],
        training_data=before["training_data"],
        offline_metrics=before["offline_metrics"],
    )
    after = json.loads((again / "manifest.json").read_text())
    before.pop("trajlib_version"), after.pop("trajlib_version")
    assert list(after) == list(before)
    assert after == before
