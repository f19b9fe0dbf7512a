"""trajlib.pipeline from Python: the held-out check, the policy wiring, collect_into, demo, iterate."""

from __future__ import annotations

import json
import math

import pytest

from trajlib.collect import parse_recipe
from trajlib.controllers._policy import ControllerPolicy
from trajlib.errors import ConfigError, UnknownNameError
from trajlib.pipeline import (
    RoundResult,
    check_held_out,
    collect_into,
    controller_policy,
    demo,
    iterate,
    iterate_markdown,
)
from trajlib.store import open_store

SMALL = {
    "name": "small",
    "collect": {
        "tasks": ["digits-mlp"],
        "runs_per_task": 2,
        "budget": 50,
        "every": 25,
        "val_every": 25,
    },
    "branch": {"horizon": 10, "cooldown": 0},
    "executor": {"workers": 1},
}


def _recipe(budget: int = 50, **behaviour):
    """Two runs of digits-mlp; ``budget=100`` gives enough branched decisions to fit on."""
    data = json.loads(json.dumps(SMALL))
    data["collect"]["budget"] = budget
    data["branch"] = {"horizon": 25, "cooldown": 5} if budget >= 100 else SMALL["branch"]
    if behaviour:
        data["behaviour"] = behaviour
    return parse_recipe(data)


def test_check_held_out_refuses_collected_and_unknown_tasks():
    recipe = _recipe()
    check_held_out(recipe, ["teacher-student", "char-lm"])  # disjoint: fine
    with pytest.raises(ConfigError) as e:
        check_held_out(recipe, ["char-lm", "digits-mlp"])
    assert e.value.field == "tasks" and e.value.got == ["digits-mlp"]
    with pytest.raises(UnknownNameError, match="no-such-task"):
        check_held_out(recipe, ["no-such-task"])


def test_controller_policy_is_none_without_a_controller_behaviour():
    assert controller_policy(_recipe()) is None


def test_controller_policy_verifies_the_checkpoint_and_builds_the_policy(tiny_checkpoint, tmp_path):
    factory = controller_policy(_recipe(kind="controller", checkpoint=str(tiny_checkpoint)))
    assert factory is not None
    policy = factory()
    assert isinstance(policy, ControllerPolicy)
    with pytest.raises(ConfigError) as e:
        controller_policy(_recipe(kind="controller", checkpoint=str(tmp_path / "nope")))
    assert e.value.field == "behaviour.checkpoint"
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    payload = next(p for p in bad.iterdir() if p.name.startswith("model_"))
    payload.write_text(payload.read_text().replace("Tree=0", "Tree=9", 1))
    with pytest.raises(ConfigError, match=payload.name):
        controller_policy(_recipe(kind="controller", checkpoint=str(bad)))


def test_collect_into_creates_the_store_and_skips_committed_runs(tmp_path):
    store = tmp_path / "s"
    rep = collect_into(_recipe(), store, progress=False)
    assert (rep.committed, rep.skipped, rep.failed, rep.total) == (2, 0, 0, 2)
    assert open_store(store).steps().collect().height == 100
    again = collect_into(_recipe(), store, progress=False)
    assert (again.committed, again.skipped) == (0, 2)


def test_collect_into_takes_a_recipe_path_and_writes_nothing_for_a_bad_checkpoint(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(
        '[collect]\ntasks = ["digits-mlp"]\n[behaviour]\nkind = "controller"\n'
        f'checkpoint = "{tmp_path / "nope"}"\n'
    )
    with pytest.raises(ConfigError, match="behaviour.checkpoint"):
        collect_into(path, tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()


def test_iterate_and_demo_check_their_arguments_before_writing(tmp_path):
    with pytest.raises(ConfigError) as e:
        iterate(_recipe(), store=tmp_path / "s", out=tmp_path / "o", epsilon=1.5)
    assert e.value.field == "epsilon"
    with pytest.raises(ConfigError) as e:
        iterate(_recipe(), store=tmp_path / "s", out=tmp_path / "o", rounds=0)
    assert e.value.field == "rounds"
    with pytest.raises(ConfigError) as e:
        iterate(_recipe(), store=tmp_path / "s", out=tmp_path / "o", tasks=["digits-mlp"])
    assert e.value.field == "tasks"
    with pytest.raises(ConfigError) as e:
        demo(tmp_path / "d", recipe=_recipe(), tasks=["digits-mlp"])
    assert e.value.field == "tasks"
    assert list(tmp_path.iterdir()) == []


def test_iterate_markdown_has_one_row_per_round():
    rows = [
        RoundResult(r, tmp, 2 * (r + 1), 2, 0.1 * r, 0.2, 0.5, 1.25)
        for r, tmp in enumerate(["a", "b"])  # type: ignore[arg-type]
    ]
    md = iterate_markdown(rows).splitlines()
    assert len(md) == 4 and md[0].startswith("| round |")
    assert md[3] == "| 1 | 2 | 0.1000 | 0.2000 | 0.500 | 1.2500 |"


@pytest.mark.slow
def test_iterate_from_python_returns_one_result_per_round(tmp_path):
    lines: list[str] = []
    rounds = iterate(
        _recipe(100),
        store=tmp_path / "s",
        out=tmp_path / "o",
        rounds=2,
        tasks=["teacher-student"],
        seeds=1,
        budget=60,
        progress=False,
        log=lines.append,
    )
    assert [r.round for r in rounds] == [0, 1]
    assert [(r.runs, r.new_runs) for r in rounds] == [(2, 2), (2, 2)]  # distinct run ids
    for r in rounds:
        assert (r.checkpoint / "manifest.json").is_file()
        assert r.checkpoint == tmp_path / "o" / f"round-{r.round}"
        assert math.isfinite(r.held_out_final_val_loss)
    assert (tmp_path / "o" / "iterate.md").read_text() == iterate_markdown(rounds)
    assert sum(line.startswith("[round") for line in lines) == 4  # collect + score, per round
    entries = open_store(tmp_path / "s").runs().collect()["entry"]
    kinds = sorted(json.loads(e)["behaviour"]["kind"] for e in entries)
    assert kinds == ["controller", "controller", "random-walk", "random-walk"]


@pytest.mark.slow
def test_demo_from_python_collects_fits_and_reports(tmp_path):
    res = demo(
        tmp_path / "d",
        recipe=_recipe(100),
        tasks=["teacher-student"],
        seeds=1,
        workers=1,
        budget=60,
        progress=False,
    )
    assert res.store == tmp_path / "d" / "store" and res.collected.committed == 2
    assert (res.checkpoint / "manifest.json").is_file()
    assert res.report == tmp_path / "d" / "report" / "report.md" and res.report.is_file()
    methods = {t.method for t in res.evaluation.traces}
    assert {"constant", "cosine"} <= methods and len(methods) == 3
    assert "regret" in res.offline_metrics and res.wall_time_s > 0
