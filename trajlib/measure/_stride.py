"""The statistics stride: which steps are measured when a feature set declares ``stats_every``.

One definition for the deployed probe (which measures only these steps) and the offline features
(which read the statistics of only these rows of a dense record), so both see the same numbers.

With ``every = k``, step ``s`` is measured when ``s % k == 0``; when the cosines are read
(``dots``), also when ``s % k == k - 1``: a cosine is with the previous *performed* step, so the
step before a measured one must be measured too (its own cosine is then undefined, unless the step
before it was measured as well: every step for ``k <= 2``). ``k = 1`` measures every step.
"""

from __future__ import annotations

import numpy as np

__all__ = ["is_measured", "stride_masks"]


def is_measured(step: int, every: int, dots: bool) -> bool:
    """Whether step ``step`` (0-based) is measured with stride ``every``."""
    if every == 1:
        return True
    r = step % every
    return r == 0 or (dots and r == every - 1)


def stride_masks(step: np.ndarray, every: int, dots: bool) -> tuple[np.ndarray, np.ndarray]:
    """Bool masks over ``step`` (0-based step numbers): measured rows, and rows whose cosines
    are defined (measured, and so was the step before)."""
    step = np.asarray(step, dtype=np.int64)
    if every == 1:
        ones = np.ones(step.shape, dtype=bool)
        return ones, ones
    r = step % every
    measured = (r == 0) | (dots & (r == every - 1))
    before = (step - 1) % every
    prev_measured = (before == 0) | (dots & (before == every - 1))
    return measured, measured & prev_measured
