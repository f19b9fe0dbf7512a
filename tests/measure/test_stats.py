"""step_stats (the one definition of the step statistics) against a plain per-step loop: norms,
cosines with the previous step, update-ratio aggregates (lower median), NaN propagation, layers
left out by ``present``, batch dimensions, tensors and arrays alike."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.measure._require import require_native
from trajlib.measure import STEP_STATS, _native, step_stats


@pytest.fixture(autouse=True, params=["native", "numpy"])
def impl(request, monkeypatch):
    """Every test runs on both implementations: the native kernel (float32 input, a compiler
    present) and the NumPy reference."""
    if request.param == "native":
        require_native()
    else:
        monkeypatch.setattr(_native, "lib", lambda: None)
    return request.param


def _reference(sums: np.ndarray, prev, present) -> list[list[float]]:
    """sums [n, 5, L] (no batch dims) -> rows of STEP_STATS, one step at a time."""
    rows, pg, pu = [], prev[0], prev[1]
    for i, s in enumerate(sums.astype(np.float64)):
        gn, wn, un = (math.sqrt(s[k].sum()) for k in range(3))
        gcos = s[3].sum() / max(gn * pg, 1e-30)
        ucos = s[4].sum() / max(un * pu, 1e-30)
        keep = [j for j in range(s.shape[1]) if present is None or present[i][j]]
        r = [math.sqrt(s[2][j]) / max(math.sqrt(s[1][j]), 1e-30) for j in keep]
        if not r or any(math.isnan(v) for v in r):
            agg = [math.nan] * 4
        else:
            srt = sorted(r)
            agg = [sum(r) / len(r), srt[-1], srt[0], srt[(len(r) - 1) // 2]]
        rows.append([gn, wn, un, gcos, ucos, *agg])
        pg, pu = gn, un
    return rows


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("with_present", [False, True])
def test_step_stats_equal_a_plain_loop(seed, with_present):
    rng = np.random.default_rng(seed)
    n, L = 7, int(rng.integers(1, 6))
    sums = rng.random((n, 5, L)).astype(np.float32)
    sums[:, 3:] -= 0.5  # dot products may be negative
    if seed % 2:
        sums[2, 1, 0] = np.nan  # a non-finite weight row
        sums[4, 2, -1] = np.inf
    present = rng.random((n, L)) > 0.3 if with_present else None
    prev = [1.3, 0.7] if seed % 3 else [math.nan, math.nan]
    got, last = step_stats(torch.from_numpy(sums), torch.tensor(prev, dtype=torch.float64), present)
    assert got.shape == (n, len(STEP_STATS))
    np.testing.assert_allclose(got, _reference(sums, prev, present), rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(last, [got[-1, 0], got[-1, 2]])


def test_batch_dimensions_are_independent_members():
    rng = np.random.default_rng(0)
    sums = rng.random((5, 5, 3, 4)).astype(np.float32)  # [n, 5, K, L]
    prev = rng.random((2, 3))
    got, _ = step_stats(sums, prev)
    assert got.shape == (5, 3, len(STEP_STATS))
    for k in range(3):
        one, _ = step_stats(sums[:, :, k], prev[:, k])
        np.testing.assert_allclose(got[:, k], one)
    # with a layer mask and no previous step
    present = rng.random((5, 4)) > 0.4
    got, _ = step_stats(sums, None, present)
    for k in range(3):
        one, _ = step_stats(sums[:, :, k], None, present)
        np.testing.assert_allclose(got[:, k], one, equal_nan=True)


def test_no_steps_give_empty_rows_and_keep_the_previous_norms():
    got, last = step_stats(np.zeros((0, 5, 2)), np.array([1.0, 2.0]))
    assert got.shape == (0, len(STEP_STATS))
    assert last.tolist() == [1.0, 2.0]
