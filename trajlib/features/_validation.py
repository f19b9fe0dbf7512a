"""Which features derive from validation, and the "validation present" indicator.

A training loop may never report validation (``observe_validation`` is optional). The features
that read ``val_loss`` / ``val_acc`` are then NaN, offline and online alike. A validation-optional
controller reads one more input, ``val_present``: 1 when any validation-derived feature of the row
is finite, else 0. It is a function of the feature row itself, so the offline table and the online
engine agree on it by construction, and no feature set (nor its hash) changes.
"""

from __future__ import annotations

import numpy as np

from trajlib import schema as S
from trajlib.features._set import FeatureSet, get_feature_set

__all__ = [
    "VALIDATION_COLUMNS",
    "VALIDATION_INDICATOR",
    "validation_feature_indices",
    "validation_feature_names",
    "validation_present",
]

#: Step-table columns that only a validation pass fills.
VALIDATION_COLUMNS = (S.VAL_LOSS, S.VAL_ACC)
#: Name of the indicator input of a validation-optional controller.
VALIDATION_INDICATOR = "val_present"


def validation_feature_names(feature_set: str | FeatureSet = "default") -> list[str]:
    """Names of the features of ``feature_set`` that read a validation column, in set order."""
    fs = get_feature_set(feature_set)
    return [
        f.name
        for f in fs.features
        if any(getattr(p, "col", None) in VALIDATION_COLUMNS for p in f.requires())
    ]


def validation_feature_indices(feature_set: str | FeatureSet = "default") -> list[int]:
    """Column indices (in ``feature_set.names``) of its validation-derived features."""
    fs = get_feature_set(feature_set)
    val = set(validation_feature_names(fs))
    return [i for i, n in enumerate(fs.names) if n in val]


def validation_present(X: np.ndarray, columns: list[int] | tuple[int, ...]) -> np.ndarray:
    """``[n]`` float64: 1.0 where any of ``columns`` of ``X`` (``[n, f]`` or ``[f]``) is finite.

    With no validation-derived columns the indicator is 0 everywhere.
    """
    Xa = np.asarray(X, dtype=np.float64)
    two_d = Xa.reshape(1, -1) if Xa.ndim == 1 else Xa
    cols = list(columns)
    if not cols:
        return np.zeros(two_d.shape[0])
    return np.asarray(np.isfinite(two_d[:, cols]).any(axis=1), dtype=np.float64)
