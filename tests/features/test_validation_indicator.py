"""The ``val_present`` indicator: offline == online, 0 before any validation, 1 after."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.features._gen import TrajSpec, make_rows, to_frame
from trajlib.features import (
    OnlineFeatures,
    derive,
    get_feature_set,
    validation_feature_indices,
    validation_feature_names,
    validation_present,
)

FS = get_feature_set("default")
COLS = validation_feature_indices(FS)


def test_validation_features_are_the_ones_reading_validation() -> None:
    assert validation_feature_names(FS) == ["val_gap", "val_trend", "val_age"]
    assert [FS.names[i] for i in COLS] == validation_feature_names(FS)
    assert validation_present(np.ones((3, 4)), []).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("val_every", [0, 7, 50])
@pytest.mark.parametrize("bad_rate", [0.0, 0.05])
def test_indicator_offline_equals_online(val_every: int, bad_rate: float) -> None:
    n, every = 160, 10
    runs = {
        f"r{i}": make_rows(TrajSpec(n, seed=i, val_every=val_every, bad_rate=bad_rate))
        for i in range(3)
    }
    steps = list(range(every, n + 1, every))
    points = pl.DataFrame({"run_id": [r for r in runs for _ in steps], "step": steps * len(runs)})
    off = derive(to_frame(runs), points, {r: n for r in runs})
    ind_off = validation_present(off.select(FS.names).to_numpy(), COLS)
    ind_on = []
    for rows in runs.values():
        on = OnlineFeatures(FS, budget=n)
        for s in steps:
            while on.steps_seen < s:
                on.update(rows[on.steps_seen])
            ind_on.append(validation_present(on.values(), COLS)[0])
    np.testing.assert_array_equal(ind_off, np.array(ind_on))
    # a validation at row t is on theta_{t+1}: present at decision s iff some t + 1 <= s
    want = [1.0 if val_every and s >= val_every else 0.0 for s in steps] * len(runs)
    np.testing.assert_array_equal(ind_off, want)
