"""The generated task distribution: deterministic, broad, every family trains; recipes use it."""

from __future__ import annotations

import collections
import functools
import hashlib

import pytest
import torch

from trajlib.collect import collect, parse_recipe
from trajlib.errors import ConfigError
from trajlib.store import create_store, open_store
from trajlib.tasks import (
    GENERATED_FAMILIES,
    generated_task,
    generated_tasks,
    get_task,
    is_generated,
)


def _signature(n: int, version: int = 1) -> str:
    parts = []
    for i in range(n):
        t = generated_task(i, version)
        parts.append(
            f"{t.name}|{t.family}|{t.optimizer}|{t.default_lr}|{t.budget}|{t.batch_size}|"
            f"{t.momentum}|{t.weight_decay}|{t.loss}|{t.description}"
        )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def test_distribution_is_pinned() -> None:
    # collectors/generated.toml's store was collected from exactly these 130 tasks: a change to the
    # generator must be deliberate (a new index range or a new recipe), never silent.
    assert _signature(130) == "b7eaea97f2cd1ef8f2d14bc60e038ce898e60bccff47823053a469aacf00934f"
    # collectors/generated-v5.toml's store: the second generator's first 130 tasks
    assert _signature(130, 2) == "4dc42eced8ec320d8b1727fef46f288e4ec627e1b9d0fb8bcaf46de74918ac52"
    # collectors/generated-v6.toml's store: the third generator's first 120 tasks
    assert _signature(120, 3) == "dd2c7822c8b19844ec9cb3183a829ee359e0d7036c16ed6a5810cab1c8b980b9"


def test_second_version_widens_the_optimizers() -> None:
    tasks = generated_tasks(130, version=2)
    assert [t.name for t in tasks[:2]] == ["gen2-0", "gen2-1"]
    assert get_task("gen2-7").summary() == generated_task(7, 2).summary()
    assert is_generated("gen2-7") and not is_generated("gen1-7") and not is_generated("gen0-7")
    opts = {t.optimizer for t in tasks}
    assert opts == {"sgd", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "nadam"}
    assert {t.momentum for t in tasks if t.optimizer == "adagrad"} == {0.0}
    assert 0.0 in {t.momentum for t in tasks if t.optimizer == "sgd"}  # plain SGD
    assert 0.0 in {t.momentum for t in tasks if t.optimizer == "rmsprop"}  # torch's default
    assert {t.family for t in tasks} == set(GENERATED_FAMILIES)
    # the same index in the two versions: the same family weights, another draw
    assert generated_task(3, 2).name != generated_task(3).name


def test_third_version_runs_longer() -> None:
    v2, v3 = generated_tasks(130, version=2), generated_tasks(130, version=3)
    assert [t.name for t in v3[:2]] == ["gen3-0", "gen3-1"] and is_generated("gen3-5")
    assert get_task("gen3-5").summary() == generated_task(5, 3).summary()
    # the same optimizers and families as version 2, budgets of 400 .. 5,000 steps
    assert {t.optimizer for t in v3} == {t.optimizer for t in v2}
    assert {t.family for t in v3} == set(GENERATED_FAMILIES)
    slow = ("gru/", "transformer/", "cnn2d/")
    fast = [t.budget for t in v3 if not t.family.startswith(slow)]
    assert 400 <= min(fast) and max(fast) <= 5000 and max(fast) > 3000
    assert max(t.budget for t in v3 if t.family.startswith(slow)) <= 2500
    assert max(t.budget for t in v2) <= 1500


def test_unknown_version_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="generated version"):
        generated_task(0, 4)
    with pytest.raises(ConfigError, match="generated version"):
        generated_tasks(2, version=0)


def test_names_resolve_and_are_deterministic() -> None:
    t = get_task("gen-7")
    assert is_generated("gen-7") and not is_generated("digits-mlp") and not is_generated("gen-x")
    assert t is get_task("gen-7") and t.name == "gen-7"
    assert t.summary() == generated_task(7).summary()


def test_breadth_of_the_first_130() -> None:
    fams = collections.Counter(generated_task(i).family for i in range(130))
    assert set(fams) == set(GENERATED_FAMILIES) and len(fams) >= 10
    opts = {generated_task(i).optimizer for i in range(130)}
    assert opts == {"sgd", "nesterov", "adam", "adamw", "rmsprop"}
    budgets = [generated_task(i).budget for i in range(130)]
    assert min(budgets) >= 200 and max(budgets) >= 1000


@pytest.mark.parametrize("family", GENERATED_FAMILIES)
def test_every_family_trains(family: str) -> None:
    (task,) = generated_tasks(1, families=(family,))
    assert task.family == family
    data = task.make_data()
    assert min(len(data.x_train), len(data.x_val), len(data.x_test)) > 20
    torch.manual_seed(0)
    model = task.make_model()
    opt = task.make_optimizer(model.parameters(), task.default_lr)
    losses = []
    for _ in range(3):
        i = torch.randint(0, len(data.x_train), (task.batch_size,))
        loss = task.loss_value(model(data.x_train[i]), data.y_train[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))


def test_generated_tasks_checks_its_arguments() -> None:
    with pytest.raises(ConfigError, match="families"):
        generated_tasks(2, families=("not/a-family",))
    with pytest.raises(ConfigError, match="n"):
        generated_tasks(-1)


def _recipe(**collect_over: object) -> dict:
    return {
        "collect": {
            "generated": 1,
            "generated_families": ["linear/tabular"],
            "runs_per_task": 2,
            "budget": 200,
            "every": 25,
            "val_every": 25,
            "population": 2,
            **collect_over,
        },
        "space": {"mode": "residual", "base_schedule": "cosine"},
        "branch": {"horizon": 10, "cooldown": 0, "stride": 3},
        "executor": {"workers": 1},
    }


def test_recipe_generated_and_branch_stride(tmp_path) -> None:  # type: ignore[no-untyped-def]
    recipe = parse_recipe(_recipe())
    (name,) = {c.task for c in recipe.run_configs()}
    assert is_generated(name) and get_task(name).family == "linear/tabular"
    assert recipe.run_configs()[0].to_dict()["branch"]["stride"] == 3
    create_store(tmp_path / "s")
    rep = collect(recipe, functools.partial(open_store, tmp_path / "s"), progress=False)
    assert rep.committed == 2
    store = open_store(tmp_path / "s")
    decided = sorted(set(store.decisions().collect()["step"].to_list()))
    branched = sorted(set(store.branches().collect()["step"].to_list()))
    assert decided == list(range(25, 200, 25))
    assert branched == decided[::3]  # the 1st, 4th, 7th decision points


def test_recipe_second_generator_version() -> None:
    recipe = parse_recipe(_recipe(generated_version=2))
    (name,) = {c.task for c in recipe.run_configs()}
    assert name.startswith("gen2-") and get_task(name).family == "linear/tabular"


def test_stride_one_keeps_old_run_ids() -> None:
    raw = _recipe()
    raw["branch"] = {"horizon": 10, "cooldown": 0}
    plain = parse_recipe(raw).run_configs()[0]
    assert "stride" not in plain.to_dict()["branch"]
    raw["branch"]["stride"] = 1
    assert parse_recipe(raw).run_configs()[0].run_id == plain.run_id


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"generated": -1}, "collect.generated"),
        ({"generated_families": ["x/y"]}, "collect.generated_families"),
        ({"generated_version": 4}, "collect.generated_version"),
    ],
)
def test_recipe_rejects_bad_generated_keys(over: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_recipe(_recipe(**over))


def test_recipe_rejects_bad_stride() -> None:
    raw = _recipe()
    raw["branch"]["stride"] = 0
    with pytest.raises(ConfigError, match=r"branch\.stride"):
        parse_recipe(raw)


def test_the_command_line_offers_every_generator_version(capsys: pytest.CaptureFixture) -> None:
    from trajlib.cli import main
    from trajlib.tasks import GENERATED_VERSIONS

    for version, prefix in GENERATED_VERSIONS.items():
        assert main(["tasks", "--generated", "2", "--version", str(version)]) == 0
        assert capsys.readouterr().out.startswith(f"{prefix}0 ")
