"""Offline ``derive`` == online ``OnlineFeatures`` at every decision point, on arbitrary runs."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.features._gen import TrajSpec, close, make_rows, to_frame
from trajlib.features import OnlineFeatures, derive, get_feature_set

FS = get_feature_set("default")

specs = st.builds(
    TrajSpec,
    n=st.one_of(st.integers(0, 6), st.integers(7, 120), st.sampled_from([200, 250, 400])),
    seed=st.integers(0, 2**31 - 1),
    bad_rate=st.sampled_from([0.0, 0.0, 0.02, 0.2, 0.9]),
    const_loss=st.booleans(),
    val_every=st.sampled_from([0, 1, 3, 10, 50]),
    lr_changes=st.integers(0, 4),
)


def online_at(rows: list[dict], budget: int, steps: list[int]) -> dict[int, np.ndarray]:
    on = OnlineFeatures(FS, budget=budget)
    out = {}
    for s in sorted(set(steps)):
        while on.steps_seen < min(s, len(rows)):
            on.update(rows[on.steps_seen])
        if s <= len(rows):
            out[s] = on.values()
    return out


def check_parity(
    runs: dict[str, list[dict]], points: pl.DataFrame, budgets: dict[str, int]
) -> None:
    off = derive(to_frame(runs), points, budgets)
    assert off.columns == ["run_id", "step", *FS.names, "n_missing"]
    assert off.height == points.height
    for rid, rows in runs.items():
        sel = off.filter(pl.col("run_id") == rid)
        steps = sel["step"].to_list()
        on = online_at(rows, budgets[rid], steps)
        for k, s in enumerate(steps):
            if s not in on:
                continue
            want = sel.row(k)[2:-1]
            got = on[s]
            bad = [
                (n, float(g), w)
                for n, g, w in zip(FS.names, got, want, strict=True)
                if not close(float(g), w, 1e-6, 1e-9)
            ]
            assert not bad, f"run {rid} step {s}: {bad}"
            assert sel.row(k)[-1] == int(np.isnan(got).sum())


@settings(settings.get_profile("features"), max_examples=80)
@given(specs, st.integers(1, 60), st.booleans())
def test_parity_single_run(spec: TrajSpec, every: int, regular: bool) -> None:
    rows = make_rows(spec)
    n = spec.n
    if regular:
        steps = list(range(0, n + 1, every))
    else:
        rng = np.random.default_rng(spec.seed + 1)
        steps = sorted(set(rng.integers(0, n + 1, 8).tolist()) | {0, n})
    points = pl.DataFrame({"run_id": ["r"] * len(steps), "step": steps})
    check_parity({"r": rows}, points, {"r": max(n, 1) + every})


@settings(settings.get_profile("features"), max_examples=30)
@given(st.lists(specs, min_size=1, max_size=3), st.sampled_from([5, 10, 25, 50]), st.booleans())
def test_parity_many_runs_regular_points(specs_: list[TrajSpec], every: int, equal: bool) -> None:
    """Regular decision points take the blocked path; mixed clean and dirty runs."""
    runs = {}
    for i, sp in enumerate(specs_):
        if equal:
            sp.n = 200
        runs[f"run{i}"] = make_rows(sp)
    pts = [(rid, s) for rid, rows in runs.items() for s in range(every, len(rows) + 1, every)]
    points = pl.DataFrame(
        {"run_id": [p[0] for p in pts], "step": [p[1] for p in pts]},
        schema={"run_id": pl.String, "step": pl.Int64},
    )
    check_parity(runs, points, {rid: 300 for rid in runs})


def test_blocked_path_matches_general_path() -> None:
    """A long regular run set: the blocked engine (K = 10) agrees with the per-row engine."""
    runs = {
        f"r{i}": make_rows(TrajSpec(400, i, bad_rate=0.01 * (i % 2), val_every=25))
        for i in range(4)
    }
    steps = to_frame(runs)
    pts = [(rid, s) for rid in runs for s in range(50, 401, 50)]
    points = pl.DataFrame({"run_id": [p[0] for p in pts], "step": [p[1] for p in pts]})
    fast = derive(steps, points, {r: 400 for r in runs})
    # one irregular point per run forces the per-row engine for everything
    extra = pl.DataFrame({"run_id": list(runs), "step": [7] * len(runs)})
    slow = derive(steps, pl.concat([points, extra]), {r: 400 for r in runs}).head(points.height)
    for name in FS.names:
        a, b = fast[name].to_numpy(), slow[name].to_numpy()
        ok = np.isclose(a, b, rtol=1e-9, atol=1e-12) | (np.isnan(a) & np.isnan(b))
        assert ok.all(), name


def test_unsorted_steps_are_sorted() -> None:
    runs = {"a": make_rows(TrajSpec(60, 1)), "b": make_rows(TrajSpec(40, 2))}
    frame = to_frame(runs)
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=3)
    points = pl.DataFrame({"run_id": ["a", "b", "a"], "step": [30, 40, 60]})
    a = derive(frame, points, {"a": 60, "b": 40})
    b = derive(shuffled.lazy(), points, {"a": 60, "b": 40})
    assert a.equals(b, null_equal=True) or all(
        np.allclose(a[c].to_numpy(), b[c].to_numpy(), equal_nan=True) for c in FS.names
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, None])
def test_all_bad_column_parity(value: float | None) -> None:
    rows = make_rows(TrajSpec(30, 5))
    for r in rows:
        r["grad_norm"] = value
        r["loss"] = value
    points = pl.DataFrame({"run_id": ["r"] * 3, "step": [0, 10, 30]})
    check_parity({"r": rows}, points, {"r": 30})


def test_steps_with_gaps_use_rows_before_s() -> None:
    """A table with missing steps: a decision at s sees the rows whose step < s."""
    from trajlib.features._prims import Steps

    rows = make_rows(TrajSpec(80, 11, val_every=5))
    keep = [r for r in rows if r["step"] % 7 != 3]  # drop some steps
    gapped = to_frame({"r": keep})
    compact = to_frame({"r": [dict(r, step=i) for i, r in enumerate(keep)]})
    s = 60
    n_before = sum(r["step"] < s for r in keep)
    a = derive(gapped, pl.DataFrame({"run_id": ["r"], "step": [s]}), {"r": 80})
    b = derive(compact, pl.DataFrame({"run_id": ["r"], "step": [n_before]}), {"r": 80})
    for f in FS:
        if Steps() in f.requires():
            continue  # progress / ages count steps, not rows
        x, y = a[f.name][0], b[f.name][0]
        assert close(x, y, 1e-12, 1e-12), f.name


@settings(settings.get_profile("features"), max_examples=40)
@given(specs, st.lists(st.integers(0, 60), min_size=1, max_size=8))
def test_update_many_equals_row_by_row_updates(spec: TrajSpec, chunks: list[int]) -> None:
    """Columns of n rows give bit-identical state and values to n single-row updates, in chunks
    of any size (0 included), missing keys as null."""
    rows = make_rows(spec)
    one, many = OnlineFeatures(FS, budget=500), OnlineFeatures(FS, budget=500)
    start = 0
    for size in chunks:
        chunk = rows[start : start + size]
        start += len(chunk)
        for r in chunk:
            one.update(r)
        cols = {c: [r.get(c) for r in chunk] for c in FS.columns} if chunk else {}
        many.update_many(cols, len(chunk))
        assert many.steps_seen == one.steps_seen
        np.testing.assert_array_equal(many.values(), one.values())
    assert many.state_dict() == one.state_dict()


def test_update_many_rejects_a_column_of_the_wrong_length() -> None:
    on = OnlineFeatures(FS, budget=10)
    with pytest.raises(Exception, match="loss"):
        on.update_many({"loss": [1.0, 2.0]}, 3)
    assert on.steps_seen == 0
