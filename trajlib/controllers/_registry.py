"""Controller kinds by name: ``get_controller_kind("gbt")``."""

from __future__ import annotations

from typing import TypeVar

from trajlib.controllers._base import Controller
from trajlib.errors import ConfigError, UnknownNameError

__all__ = ["register_controller_kind", "get_controller_kind", "controller_kinds"]

_REGISTRY: dict[str, type[Controller]] = {}
C = TypeVar("C", bound=type[Controller])


def register_controller_kind(cls: C) -> C:
    """Class decorator: make ``cls`` available as ``get_controller_kind(cls.kind)``.

    The kind name is what checkpoints record; loading resolves it through this registry only, so
    a checkpoint can never name arbitrary code.
    """
    if not (isinstance(cls, type) and issubclass(cls, Controller)):
        raise ConfigError("controller kind", "a Controller subclass", cls)
    if not cls.kind or not isinstance(cls.kind, str):
        raise ConfigError(f"{cls.__name__}.kind", "a non-empty string", cls.kind)
    _REGISTRY[cls.kind] = cls
    return cls


def get_controller_kind(name: str) -> type[Controller]:
    """The controller class registered as ``name`` (``"gbt"``, ``"mlp"``, ``"gru"``...)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("controller kind", name, list(_REGISTRY)) from None


def controller_kinds() -> list[str]:
    """Registered kind names, sorted."""
    return sorted(_REGISTRY)
