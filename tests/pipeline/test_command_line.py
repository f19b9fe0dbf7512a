"""The command line: exit codes and one-line errors for user mistakes, real work for real input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trajlib.cli import main


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().err.strip()


def test_unknown_task_in_recipe_is_a_one_line_error_naming_the_field(tmp_path, capsys):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('[collect]\ntasks = ["no-such-task"]\n')
    assert main(["collect", str(recipe), "--store", str(tmp_path / "s")]) == 2
    err = _err(capsys)
    assert "collect.tasks" in err and "no-such-task" in err and "\n" not in err
    assert not (tmp_path / "s").exists(), "nothing is written for a bad recipe"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('[collect]\ntasks = ["digits-mlp"]\nbogus = 1\n', "collect.bogus"),
        ('[collect]\ntasks = ["digits-mlp"]\nevery = 0\n', "collect.every"),
        ('[collect]\ntasks = ["digits-mlp"]\n[space]\nlr_min = 5.0\n', "space.lr_min"),
        ('[collect]\ntasks = ["digits-mlp"]\n[actions]\nlr = [0.5, 2.0]\n', "actions.lr"),
        ('[collect]\ntasks = "digits-mlp"\n', "collect.tasks"),
        ("[collect\n", "RECIPE"),
    ],
)
def test_malformed_recipes_name_the_offending_key(tmp_path, capsys, body, field):
    recipe = tmp_path / "r.toml"
    recipe.write_text(body)
    assert main(["collect", str(recipe), "--store", str(tmp_path / "s")]) == 2
    assert field in _err(capsys)


def test_missing_recipe_file_and_missing_store(tmp_path, capsys):
    assert main(["collect", str(tmp_path / "nope.toml"), "--store", str(tmp_path / "s")]) == 2
    assert "nope.toml" in _err(capsys)
    assert main(["store", "info", str(tmp_path / "missing")]) == 2
    assert "missing" in _err(capsys)
    assert main(["fit", str(tmp_path / "missing"), "--out", str(tmp_path / "m")]) == 2


def test_usage_errors_exit_2_without_traceback(capsys):
    assert main(["evaluate", "x", "--tasks", "digits-mlp", "--seeds", "0", "--report", "r"]) == 2
    assert "positive integer" in _err(capsys)
    assert main(["no-such-command"]) == 2


def test_unknown_controller_kind_and_label_strategy(tiny_store, tmp_path, capsys):
    assert main(["fit", str(tiny_store), "--kind", "nope", "--out", str(tmp_path / "m")]) == 2
    assert "nope" in _err(capsys)
    assert main(["fit", str(tiny_store), "--labels", "nope", "--out", str(tmp_path / "m")]) == 2
    assert "nope" in _err(capsys)


def test_tampered_checkpoint_is_refused_by_evaluate(tiny_checkpoint, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_checkpoint, bad)
    payload = next(p for p in bad.iterdir() if p.name.startswith("model_"))
    payload.write_text(payload.read_text().replace("Tree=0", "Tree=9", 1))
    code = main(
        [
            "evaluate",
            str(bad),
            "--tasks",
            "digits-mlp",
            "--seeds",
            "1",
            "--report",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    assert code == 2
    assert payload.name in _err(capsys)


def test_store_info_on_a_collected_store(tiny_store, capsys):
    assert main(["store", "info", str(tiny_store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["runs"] == 6
    assert main(["store", "validate", str(tiny_store)]) == 0


def test_fit_then_model_verify_then_evaluate_writes_a_report(tiny_store, tmp_path, capsys):
    ckpt = tmp_path / "model"
    assert main(["fit", str(tiny_store), "--kind", "gbt", "--out", str(ckpt)]) == 0
    assert (ckpt / "manifest.json").is_file()
    assert main(["model", "verify", str(ckpt)]) == 0
    report = tmp_path / "report"
    code = main(
        [
            "evaluate",
            str(ckpt),
            "--tasks",
            "synth-classification",
            "--seeds",
            "2",
            "--budget",
            "150",
            "--report",
            str(report),
            "--quiet",
        ]
    )
    assert code == 0
    md = (report / "report.md").read_text()
    for method in ("constant", "cosine", "trajlib:model"):
        assert f"| {method} |" in md
    assert Path(report / "synth-classification.png").stat().st_size > 1000


def test_collect_then_compact_keeps_every_row_and_validates(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[collect]\ntasks = ["digits-mlp"]\nruns_per_task = 2\nbudget = 50\nevery = 25\n'
        "val_every = 25\n[branch]\nhorizon = 10\ncooldown = 0\n[executor]\nworkers = 1\n"
    )
    store = tmp_path / "s"
    assert main(["collect", str(recipe), "--store", str(store), "--quiet", "--compact"]) == 0
    assert "collected 2 runs" in capsys.readouterr().out
    assert list((store / "steps").glob("part-*.parquet"))
    assert main(["store", "validate", str(store)]) == 0
    from trajlib.store import open_store

    assert open_store(store).steps().collect().height == 100


def test_collect_with_a_controller_behaviour_uses_the_checkpoint(tiny_checkpoint, tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    body = (
        '[collect]\ntasks = ["digits-mlp", "teacher-student"]\nruns_per_task = 3\nbudget = 200\nevery = 25\n'
        "val_every = 25\n[branch]\nenabled = false\n[executor]\nworkers = 1\n"
        '[behaviour]\nkind = "controller"\nepsilon = 0.0\ncheckpoint = "CKPT"\n'
    )
    recipe.write_text(body.replace("CKPT", str(tiny_checkpoint)))
    store = tmp_path / "s"
    assert main(["collect", str(recipe), "--store", str(store), "--quiet"]) == 0
    from trajlib.store import open_store

    st = open_store(store)
    dec = st.decisions().collect().sort("run_id", "step")
    assert (
        dec.height >= 36 and dec["propensity"].to_list() == [1.0] * dec.height
    )  # epsilon 0: all mass on one action
    # ... and that action is the checkpoint's own decision on the features of the stored run
    import numpy as np

    from trajlib.controllers import load_controller
    from trajlib.features import decision_table

    lc = load_controller(tiny_checkpoint)
    table = decision_table(st.runs(), st.steps(), st.decisions(), None, lc.feature_set_name)
    values = lc.controller.predict_values(table.select(lc.feature_names).to_numpy())
    want = [
        int(np.argmax(v)) if np.all(np.isfinite(v)) else lc.action_space.keep_index for v in values
    ]
    assert table.select("run_id", "step").rows() == dec.select("run_id", "step").rows()
    assert dec["action"].to_list() == want
    assert len(set(want)) > 1, want  # a policy that always picks one action would not pass
    recipe.write_text(body.replace("CKPT", str(tmp_path / "nope")))
    assert main(["collect", str(recipe), "--store", str(tmp_path / "s2"), "--quiet"]) == 2
    assert "behaviour.checkpoint" in capsys.readouterr().err


def test_doctor_reports_versions_and_whether_the_native_kernels_are_used(capsys):
    from trajlib.measure import _native

    assert main(["doctor", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["versions"]["torch"] and rep["versions"]["trajlib"]
    assert rep["native_kernels"] is (_native.lib() is not None)
    assert rep["native_status"] == _native.status()
    assert "native_hooks" not in rep  # the probe's C hooks are gone: Python hooks only
    assert rep["native_tree_walk"].startswith("loaded ") is (_native.lib() is not None)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "native kernels" in out and "tree walk" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["store", "compact"],  # a sub-sub-command without its argument
        ["model", "info"],
        ["export", "tensorboard", "only-one-arg"],
        ["store", "gc", "d", "--bogus"],
    ],
)
def test_nested_usage_errors_exit_2_with_one_line(capsys, argv):
    assert main(argv) == 2
    err = _err(capsys)
    assert err.startswith("trajlib: error: ") and "\n" not in err


def test_pipeline_keyword_errors_name_the_flag(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[collect]\ntasks = ["digits-mlp"]\n')
    out = ["--store", str(tmp_path / "s"), "--out", str(tmp_path / "o")]
    assert main(["iterate", str(recipe), *out, "--epsilon", "1.5"]) == 2
    assert "`--epsilon` must be a probability in [0, 1]; got 1.5" in _err(capsys)
    assert (
        main(
            ["demo", "--recipe", str(recipe), "--out", str(tmp_path / "d"), "--tasks", "digits-mlp"]
        )
        == 2
    )
    assert "`--tasks` must be tasks the recipe does not collect from" in _err(capsys)
    assert list(tmp_path.iterdir()) == [recipe]
