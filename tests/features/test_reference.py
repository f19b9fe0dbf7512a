"""The fast offline engine against a slow plain-Python reference, feature by feature."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.features._gen import TrajSpec, close, make_rows, to_frame
from tests.features.reference import ATOL, reference
from trajlib.features import derive, get_feature_set

FS = get_feature_set("default")

specs = st.builds(
    TrajSpec,
    n=st.one_of(st.integers(0, 6), st.integers(7, 300)),
    seed=st.integers(0, 2**31 - 1),
    bad_rate=st.sampled_from([0.0, 0.05, 0.3]),
    const_loss=st.booleans(),
    val_every=st.sampled_from([0, 1, 7, 50]),
    lr_changes=st.integers(0, 3),
)


def test_reference_covers_default_set() -> None:
    rows = make_rows(TrajSpec(20, 0, val_every=5))
    assert list(reference(rows, 10, 20)) == FS.names


@settings(settings.get_profile("features"), max_examples=60)
@given(specs, st.lists(st.integers(0, 320), min_size=1, max_size=6), st.booleans())
def test_offline_matches_reference(spec: TrajSpec, steps: list[int], regular: bool) -> None:
    rows = make_rows(spec)
    if regular:
        steps = list(range(0, spec.n + 1, 10))
    points = pl.DataFrame({"run_id": ["r"] * len(steps), "step": steps})
    budget = max(spec.n, 1)
    off = derive(to_frame({"r": rows}), points, {"r": budget})
    for k, s in enumerate(steps):
        want = reference(rows, s, budget)
        got = dict(zip(FS.names, off.row(k)[2:-1], strict=True))
        bad = [
            (n, got[n], want[n])
            for n in FS.names
            if not close(got[n], want[n], 1e-6, ATOL.get(n, 1e-9))
        ]
        assert not bad, f"step {s}: {bad}"


def test_reference_known_values() -> None:
    """Hand-checked numbers on a tiny run (guards the reference itself)."""
    rows = [
        {"loss": 1.0, "lr": 0.1, "lr_mult": 1.0, "val_loss": None},
        {"loss": 2.0, "lr": 0.2, "lr_mult": 2.0, "val_loss": 3.0},
        {"loss": 4.0, "lr": 0.2, "lr_mult": 2.0, "val_loss": None},
    ]
    ref = reference(rows, 3, 10)
    assert ref["progress"] == 0.3
    assert np.isclose(ref["loss_slope_10"], 100 * np.log(2))
    assert np.isclose(ref["log_lr_rel_init"], np.log(2))
    assert np.isclose(ref["lr_mult_age"], (3 - 1) / 10)
    assert np.isclose(ref["val_age"], (3 - 2) / 10)
    assert np.isclose(ref["loss_change_start"], np.log(_ema([1, 2, 4], 10)))
    off = derive(
        pl.DataFrame(
            {"run_id": ["r"] * 3, "step": [0, 1, 2], **{k: [r[k] for r in rows] for k in rows[0]}},
            schema_overrides={"val_loss": pl.Float64},
        ),
        pl.DataFrame({"run_id": ["r"], "step": [3]}),
        {"r": 10},
    )
    for n in ("progress", "loss_slope_10", "log_lr_rel_init", "lr_mult_age", "val_age"):
        assert np.isclose(off[n][0], ref[n]), n


def _ema(xs: list[float], hl: float) -> float:
    b = 2 ** (-1 / hl)
    m = xs[0]
    for x in xs[1:]:
        m = (1 - b) * x + b * m
    return m
