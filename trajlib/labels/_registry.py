"""Label strategies by name: ``get_label_strategy("greedy")``."""

from __future__ import annotations

from typing import Any, TypeVar

from trajlib.errors import ConfigError, UnknownNameError
from trajlib.labels._annealed import AnnealedLabels
from trajlib.labels._base import LabelStrategy
from trajlib.labels._end import EndLabels
from trajlib.labels._final import FinalLabels
from trajlib.labels._greedy import GreedyLabels
from trajlib.labels._long import LongHorizonLabels
from trajlib.labels._outcome import OutcomeLabels

__all__ = ["register_label_strategy", "get_label_strategy", "label_strategies"]

_REGISTRY: dict[str, type[LabelStrategy]] = {}

T = TypeVar("T", bound=type[LabelStrategy])


def register_label_strategy(cls: T) -> T:
    """Class decorator: make ``cls`` available as ``get_label_strategy(cls.name)``."""
    if not (isinstance(cls, type) and issubclass(cls, LabelStrategy)):
        raise ConfigError("label strategy", "a LabelStrategy subclass", cls)
    if not cls.name:
        raise ConfigError(f"{cls.__name__}.name", "a non-empty string", cls.name)
    _REGISTRY[cls.name] = cls
    return cls


def get_label_strategy(name: str, **params: Any) -> LabelStrategy:
    """A new strategy instance by name, e.g. ``get_label_strategy("long", discount=0.3)``."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("label strategy", name, list(_REGISTRY)) from None
    return cls(**params)


def label_strategies() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


for _cls in (
    GreedyLabels,
    AnnealedLabels,
    LongHorizonLabels,
    FinalLabels,
    EndLabels,
    OutcomeLabels,
):
    register_label_strategy(_cls)
