"""The online engine's own contract: buffering, odd cells, state formats, no generated code."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from tests.features._gen import TrajSpec, make_rows
from trajlib.errors import ConfigError
from trajlib.features import OnlineFeatures, _online


def test_rows_past_the_buffer_limit_give_the_same_values() -> None:
    """More rows than the buffer holds, with no values() in between: folded early, same bits."""
    rows = make_rows(TrajSpec(2 * _online._MAX_BUFFER + 7, 3, bad_rate=0.02, val_every=50))
    lazy, eager = OnlineFeatures(budget=len(rows)), OnlineFeatures(budget=len(rows))
    for i, r in enumerate(rows):
        lazy.update(r)
        eager.update(r)
        if i % 97 == 0:
            eager.values()
    assert lazy._n_rows < _online._MAX_BUFFER  # bounded
    np.testing.assert_array_equal(lazy.values(), eager.values())
    assert lazy.state_dict() == eager.state_dict()


def test_a_cell_that_is_not_a_number_counts_as_null() -> None:
    rows = make_rows(TrajSpec(60, 4))
    odd = [dict(r) for r in rows]
    null = [dict(r) for r in rows]
    odd[10]["grad_norm"], null[10]["grad_norm"] = "not a number", None
    odd[20]["loss"], null[20]["loss"] = object(), None
    a, b = OnlineFeatures(budget=60), OnlineFeatures(budget=60)
    for r, q in zip(odd, null, strict=True):
        a.update(r)
        b.update(q)
    np.testing.assert_array_equal(a.values(), b.values())
    cols = {c: [r.get(c) for r in odd] for c in a.feature_set.columns}
    many = OnlineFeatures(budget=60)
    many.update_many(cols, len(odd))
    np.testing.assert_array_equal(many.values(), b.values())


def test_amend_after_update_many_changes_the_last_row() -> None:
    rows = make_rows(TrajSpec(30, 5))
    a, b = OnlineFeatures(budget=30), OnlineFeatures(budget=30)
    for r in rows[:-1]:
        a.update(r)
    a.update(dict(rows[-1], val_loss=None))
    a.amend("val_loss", 0.75)
    cols = {c: [r.get(c) for r in rows] for c in b.feature_set.columns}
    cols["val_loss"] = [None] * len(rows)
    b.update_many(cols, len(rows))
    b.amend("val_loss", 0.75)
    np.testing.assert_array_equal(a.values(), b.values())
    assert np.isfinite(a.values_dict()["val_age"])
    with pytest.raises(ConfigError):
        a.amend("val_loss", 1.0)  # after values(): too late


def test_a_state_dict_of_another_format_is_refused() -> None:
    on = OnlineFeatures(budget=10)
    on.update({"loss": 1.0})
    d = on.state_dict()
    with pytest.raises(ConfigError, match="format"):
        OnlineFeatures(budget=10).load_state_dict(dict(d, format=1))
    with pytest.raises(ConfigError, match="state"):
        OnlineFeatures(budget=10).load_state_dict(dict(d, state=d["state"][:-1]))


def test_the_engine_is_plain_code() -> None:
    """No generated source: nothing compiled or exec-ed at run time."""
    src = inspect.getsource(_online)
    assert "exec(" not in src and "compile(" not in src


def test_rows_are_read_with_get_so_a_defaultdict_invents_nothing() -> None:
    from collections import defaultdict

    rows = make_rows(TrajSpec(40, 6))
    a, b = OnlineFeatures(budget=40), OnlineFeatures(budget=40)
    for r in rows:
        plain = {k: v for k, v in r.items() if k != "val_loss"}
        a.update(plain)
        b.update(defaultdict(float, plain))  # val_loss missing: null, not 0.0
    np.testing.assert_array_equal(a.values(), b.values())
    assert np.isnan(b.values_dict()["val_gap"])
