"""The ``portable`` feature set: the default set without the consecutive-update cosine, the same
numbers for every feature it keeps, offline and online."""

from __future__ import annotations

import numpy as np
import polars as pl

from tests.features._gen import TrajSpec, make_rows, to_frame
from trajlib.features import OnlineFeatures, derive, get_feature_set, list_feature_sets
from trajlib.features._set import PORTABLE_DROPS


def test_portable_is_the_default_set_without_the_update_cosine() -> None:
    default, portable = get_feature_set("default"), get_feature_set("portable")
    assert "portable" in list_feature_sets()
    assert PORTABLE_DROPS == ("update_cos_ema_50",)
    assert portable.names == [n for n in default.names if n not in PORTABLE_DROPS]
    assert portable.hash != default.hash and len(portable) == len(default) - 1


def test_portable_features_equal_the_defaults_offline_and_online() -> None:
    runs = {f"r{i}": make_rows(TrajSpec(300, i, bad_rate=0.01, val_every=25)) for i in range(3)}
    pts = [(rid, s) for rid in runs for s in range(25, 301, 25)]
    points = pl.DataFrame({"run_id": [p[0] for p in pts], "step": [p[1] for p in pts]})
    budgets = {r: 300 for r in runs}
    full = derive(to_frame(runs), points, budgets)
    port = derive(to_frame(runs), points, budgets, feature_set="portable")
    names = get_feature_set("portable").names
    for n in names:
        a, b = full[n].to_numpy(), port[n].to_numpy()
        assert ((a == b) | (np.isnan(a) & np.isnan(b))).all(), n
    # online, step by step: the same values as the default engine's, minus the dropped column
    keep = [i for i, n in enumerate(get_feature_set("default").names) if n in names]
    on_full = OnlineFeatures("default", budget=300)
    on_port = OnlineFeatures("portable", budget=300)
    for row in runs["r1"]:
        on_full.update(row)
        on_port.update(row)
        if on_full.steps_seen % 25 == 0:
            np.testing.assert_array_equal(on_port.values(), on_full.values()[keep])
