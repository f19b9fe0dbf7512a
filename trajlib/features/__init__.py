"""Scale-free features of training trajectories, offline (polars/numpy) and online (streaming).

A :class:`Feature` is a small named class with parameters; a :class:`FeatureSet` is a named,
versioned list of them with a stable hash (controller checkpoints record it). :func:`derive` computes
a set at decision points of stored runs; :class:`OnlineFeatures` computes the same numbers one
training step at a time. :func:`decision_table` joins features, actions and branch outcomes.

>>> fs = get_feature_set("default")
>>> len(fs) >= 25
True
"""

from trajlib.features._feature import Feature
from trajlib.features._library import (
    CosEma,
    GradNormChange,
    GradNormCv,
    GradNormEmaRatio,
    LastValue,
    LogLrMult,
    LogLrRelInit,
    LogUpdRatio,
    LossChange,
    LossChangeStart,
    LossEmaRatio,
    LossSlope,
    LossSpikeFrac,
    LossVolatility,
    LrMultAge,
    NonfiniteFrac,
    Progress,
    UpdRatioSpread,
    ValAge,
    ValGap,
    ValTrend,
    WeightNormGrowth,
    default_features,
)
from trajlib.features._offline import derive
from trajlib.features._online import OnlineFeatures
from trajlib.features._set import (
    FeatureSet,
    get_feature_set,
    list_feature_sets,
    register_feature_set,
)
from trajlib.features._table import decision_table
from trajlib.features._validation import (
    VALIDATION_COLUMNS,
    VALIDATION_INDICATOR,
    validation_feature_indices,
    validation_feature_names,
    validation_present,
)

__all__ = [
    "Feature",
    "FeatureSet",
    "get_feature_set",
    "register_feature_set",
    "list_feature_sets",
    "derive",
    "OnlineFeatures",
    "decision_table",
    "default_features",
    "VALIDATION_COLUMNS",
    "VALIDATION_INDICATOR",
    "validation_feature_indices",
    "validation_feature_names",
    "validation_present",
    # the feature classes (build your own sets from them)
    "Progress",
    "LossEmaRatio",
    "LossSlope",
    "LossVolatility",
    "LossChange",
    "LossChangeStart",
    "LossSpikeFrac",
    "NonfiniteFrac",
    "LogLrRelInit",
    "LrMultAge",
    "LogLrMult",
    "LastValue",
    "GradNormEmaRatio",
    "GradNormChange",
    "GradNormCv",
    "CosEma",
    "LogUpdRatio",
    "UpdRatioSpread",
    "WeightNormGrowth",
    "ValGap",
    "ValTrend",
    "ValAge",
]
