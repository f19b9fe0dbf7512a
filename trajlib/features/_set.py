"""Feature sets: a named, versioned, ordered list of features with a stable hash, and a registry."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

from trajlib.errors import ConfigError, UnknownNameError
from trajlib.features._feature import Feature
from trajlib.features._prims import Prim

__all__ = ["FeatureSet", "get_feature_set", "register_feature_set", "list_feature_sets"]


def _canon(v: Any) -> Any:
    """Parameters in canonical JSON form (ints and floats alike become floats: 10 == 10.0)."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, list | tuple):
        return [_canon(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _canon(x) for k, x in sorted(v.items())}
    return repr(v)


class FeatureSet:
    """A named, versioned, ordered list of :class:`Feature` objects.

    ``hash`` is the sha256 (hex) of a canonical JSON document holding the set's name and version and,
    per feature in order, its class name, name, per-feature version and parameters (and
    ``stats_every`` when it is not 1). It is the same in every process; controller checkpoints
    record it and refuse features from a different set.

    ``stats_every = k`` is the set's statistics stride: the gradient / weight / update statistics
    are taken only at the steps :func:`trajlib.measure.is_measured` names (every k-th step, and the
    step before it when the set reads a cosine) — online the deployed probe measures only those,
    offline :func:`~trajlib.features.derive` reads only those rows of a dense record; the loss and
    the hyperparameters are read every step.
    """

    def __init__(
        self, name: str, version: int, features: Sequence[Feature], *, stats_every: int = 1
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError("feature_set.name", "a non-empty string", name)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ConfigError("feature_set.version", "a positive integer", version)
        bad = [f for f in features if not isinstance(f, Feature)]
        if bad or not features:
            raise ConfigError(
                "feature_set.features", "a non-empty list of Feature objects", bad or []
            )
        names = [f.name for f in features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError("feature_set.features", "features with unique names", dup)
        if isinstance(stats_every, bool) or not isinstance(stats_every, int) or stats_every < 1:
            raise ConfigError("feature_set.stats_every", "a positive integer", stats_every)
        self._name = name
        self._version = version
        self._features = tuple(features)
        self._stats_every = stats_every
        self._hash = hashlib.sha256(self.spec_json().encode("utf-8")).hexdigest()

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int:
        return self._version

    @property
    def features(self) -> tuple[Feature, ...]:
        return self._features

    @property
    def names(self) -> list[str]:
        """Feature column names, in order."""
        return [f.name for f in self._features]

    @property
    def stats_every(self) -> int:
        """The statistics stride k (1: every step)."""
        return self._stats_every

    @property
    def reads_cosines(self) -> bool:
        """Whether a feature reads ``grad_cos`` or ``update_cos`` (the probe then keeps the
        previous step for the dot products)."""
        cols = {getattr(p, "col", None) for f in self._features for p in f.requires()}
        return bool(cols & {"grad_cos", "update_cos"})

    @property
    def hash(self) -> str:
        return self._hash

    @property
    def columns(self) -> list[str]:
        """Step-table columns read by any feature of the set."""
        cols: list[str] = []
        for f in self._features:
            for c in f.columns:
                if c not in cols:
                    cols.append(c)
        return cols

    def prims(self) -> list[Prim]:
        """Distinct primitives needed by the set, in first-use order."""
        out: list[Prim] = []
        seen: set[Prim] = set()
        for f in self._features:
            for p in f.requires():
                if p not in seen:
                    seen.add(p)
                    out.append(p)
        return out

    def spec(self) -> dict[str, Any]:
        """The document the hash is computed over (``stats_every`` only when it is not 1, so the
        hash of an every-step set is what it was before strides existed)."""
        doc: dict[str, Any] = {
            "name": self._name,
            "version": self._version,
            "features": [
                {
                    "class": type(f).__name__,
                    "name": f.name,
                    "version": int(type(f).version),
                    "params": _canon(f.params()),
                }
                for f in self._features
            ],
        }
        if self._stats_every != 1:
            doc["stats_every"] = self._stats_every
        return doc

    def spec_json(self) -> str:
        return json.dumps(self.spec(), sort_keys=True, separators=(",", ":"))

    def __len__(self) -> int:
        return len(self._features)

    def __iter__(self) -> Iterator[Feature]:
        return iter(self._features)

    def __repr__(self) -> str:
        k = f", stats_every={self._stats_every}" if self._stats_every != 1 else ""
        return (
            f"FeatureSet({self._name!r}, version={self._version}, n={len(self)}{k}, "
            f"hash={self._hash[:12]})"
        )


_REGISTRY: dict[str, FeatureSet] = {}
#: the default features the ``portable`` set leaves out
PORTABLE_DROPS = ("update_cos_ema_50",)


def register_feature_set(fs: FeatureSet, *, overwrite: bool = False) -> FeatureSet:
    """Register ``fs`` under ``fs.name`` (``overwrite=True`` to replace an existing one)."""
    if not isinstance(fs, FeatureSet):
        raise ConfigError("feature_set", "a FeatureSet", type(fs).__name__)
    if fs.name in _REGISTRY and not overwrite and _REGISTRY[fs.name].hash != fs.hash:
        raise ConfigError(
            "feature_set.name",
            "a name not registered yet",
            fs.name,
            "pass overwrite=True to replace it",
        )
    _REGISTRY[fs.name] = fs
    return fs


def get_feature_set(name: str | FeatureSet = "default") -> FeatureSet:
    """The registered feature set called ``name`` (a FeatureSet is returned unchanged)."""
    if isinstance(name, FeatureSet):
        return name
    _ensure_builtin()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownNameError("feature set", str(name), list(_REGISTRY)) from None


def list_feature_sets() -> list[str]:
    """Names of the registered feature sets, sorted."""
    _ensure_builtin()
    return sorted(_REGISTRY)


def _ensure_builtin() -> None:
    if "default" in _REGISTRY:
        return
    from trajlib.features._library import default_features

    _REGISTRY["default"] = FeatureSet("default", 1, default_features())
    # "portable": the default set without the consecutive-update cosine, whose level is set by
    # the optimizer's momentum (a plain SGD or Adagrad update turns direction far more than an
    # Adam one at the same LR), so a model fitted on some optimizers misreads it on others
    _REGISTRY["portable"] = FeatureSet(
        "portable", 1, [f for f in default_features() if f.name not in PORTABLE_DROPS]
    )
    # the default features with statistics every 4th step (no controller is fitted on it yet)
    _REGISTRY["default-s4"] = FeatureSet("default-s4", 1, default_features(), stats_every=4)
