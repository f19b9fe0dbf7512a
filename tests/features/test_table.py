"""decision_table (and the CLI command around it, when the store package is present)."""

from __future__ import annotations

import argparse
import math

import numpy as np
import polars as pl
from pytest import approx

from tests.features._gen import TrajSpec, close, make_rows, to_frame
from tests.features.reference import ATOL, reference
from trajlib.features import decision_table, get_feature_set

FS = get_feature_set("default")
RUN_ROWS = {"a": make_rows(TrajSpec(200, 1, val_every=50)), "b": make_rows(TrajSpec(150, 2))}
BUDGETS = {"a": 200, "b": 150}


def _store_frames() -> tuple[pl.DataFrame, ...]:
    runs_rows = RUN_ROWS
    steps = to_frame(runs_rows)
    runs = pl.DataFrame(
        {"run_id": ["a", "b"], "budget": [200, 150]},
        schema={"run_id": pl.String, "budget": pl.Int32},
    )
    dec = pl.DataFrame(
        {
            "run_id": ["b", "a", "a", "a", "b"],
            "step": [50, 50, 100, 150, 100],
            "action": [1, 0, 2, 4, 3],
            "propensity": [0.2] * 5,
            "n_actions": [5] * 5,
        },
        schema={
            "run_id": pl.String,
            "step": pl.Int32,
            "action": pl.Int16,
            "propensity": pl.Float32,
            "n_actions": pl.Int16,
        },
    )
    br_rows = [(r, s, a) for r, s in (("a", 50), ("a", 100), ("b", 50)) for a in range(5)]
    br = pl.DataFrame(
        {
            "run_id": [x[0] for x in br_rows],
            "step": [x[1] for x in br_rows],
            "action": [x[2] for x in br_rows],
            "horizon": [100] * len(br_rows),
            "cooldown": [0] * len(br_rows),
            "val_loss": [float(x[2]) + x[1] for x in br_rows],
            "diverged": [False] * len(br_rows),
        },
        schema_overrides={"step": pl.Int32, "action": pl.Int16, "val_loss": pl.Float32},
    )
    return runs, steps, dec, br


def test_decision_table_columns_and_values() -> None:
    runs, steps, dec, br = _store_frames()
    t = decision_table(runs.lazy(), steps.lazy(), dec.lazy(), br.lazy())
    assert t.height == dec.height
    assert t.columns[: 2 + len(FS)] == ["run_id", "step", *FS.names]
    assert {"n_missing", "action", "propensity", "n_actions", "horizon", "cooldown"} <= set(
        t.columns
    )
    assert [f"val_loss_a{i}" for i in range(5)] == [
        c for c in t.columns if c.startswith("val_loss_a")
    ]
    assert t.select("run_id", "step").rows() == [
        ("a", 50),
        ("a", 100),
        ("a", 150),
        ("b", 50),
        ("b", 100),
    ]
    row = t.row(1, named=True)
    assert row["action"] == 2 and row["val_loss_a3"] == 103.0
    assert t.row(2, named=True)["val_loss_a0"] is None  # a@150 not branched
    # features against the slow plain-Python reference (no code shared with derive), and every
    # row's behaviour columns against the decisions frame it came from
    actions = {(r, s): (a, p) for r, s, a, p, _ in dec.iter_rows()}
    for got in t.iter_rows(named=True):
        rid, s = got["run_id"], got["step"]
        want = reference(RUN_ROWS[rid], s, BUDGETS[rid])
        bad = [
            (n, got[n], want[n])
            for n in FS.names
            if not close(np.nan if got[n] is None else got[n], want[n], 1e-6, ATOL.get(n, 1e-9))
        ]
        assert not bad, f"{rid}@{s}: {bad}"
        assert got["n_missing"] == sum(math.isnan(want[n]) for n in FS.names)
        assert (got["action"], got["propensity"]) == (actions[(rid, s)][0], approx(0.2))


def test_decision_table_without_branches() -> None:
    runs, steps, dec, _ = _store_frames()
    t = decision_table(runs, steps, dec, None)
    assert t.height == dec.height and not any(c.startswith("val_loss_a") for c in t.columns)


def test_cli_parser_registers() -> None:
    from trajlib.cli._features_cmd import add_features_command, run_features_command

    parser = argparse.ArgumentParser()
    add_features_command(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["features", "data/x", "--set", "default", "--out", "t.parquet"])
    assert args.store == "data/x" and args.feature_set == "default" and args.out == "t.parquet"
    assert args.func is run_features_command


def test_cli_command_on_a_real_store(tiny_store, tmp_path, capsys) -> None:
    """``trajlib features STORE --out FILE`` on a collected store: one row per stored decision
    with its action and propensity, every branch's outcome in its action's column, features
    computed from the store's own step table."""
    import pytest

    from trajlib.cli import main
    from trajlib.store import open_store

    out = tmp_path / "sub" / "table.parquet"
    assert main(["features", str(tiny_store), "--out", str(out)]) == 0
    t = pl.read_parquet(out)
    assert f"wrote {t.height} decision rows" in capsys.readouterr().err
    st = open_store(tiny_store)
    dec = st.decisions().collect().sort("run_id", "step")
    assert t.height == dec.height > 0
    assert t.select("run_id", "step").rows() == dec.select("run_id", "step").rows()
    assert t["action"].to_list() == dec["action"].to_list()
    assert t["propensity"].to_list() == dec["propensity"].to_list()
    row_of = {key: i for i, key in enumerate(t.select("run_id", "step").rows())}
    br = st.branches().collect()
    assert br.height > 0
    for b in br.iter_rows(named=True):
        got = t[f"val_loss_a{b['action']}"][row_of[(b["run_id"], b["step"])]]
        assert got == pytest.approx(b["val_loss"], nan_ok=True), b
    # known answers from the store's steps: progress = step / budget; momentum in force at s - 1
    budget = dict(st.runs().select("run_id", "budget").collect().rows())
    steps = st.steps().collect()
    mom = {(r, s): m for r, s, m in steps.select("run_id", "step", "momentum").rows()}
    for r, s, prog, m in t.select("run_id", "step", "progress", "momentum").rows():
        assert prog == pytest.approx(s / budget[r])
        assert m == pytest.approx(mom[(r, s - 1)], rel=1e-6)
    assert t.select(FS.names).to_numpy().shape == (dec.height, len(FS))
