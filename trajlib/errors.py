"""One exception hierarchy for the whole library.

Every user-facing error is a :class:`TrajlibError`; leaves also subclass the builtin that fits, so
``except ValueError`` keeps working. Messages name the field, what was expected and what was got.
"""

from __future__ import annotations

__all__ = [
    "TrajlibError",
    "ConfigError",
    "UnknownNameError",
    "StoreError",
    "StoreVersionError",
    "CheckpointError",
    "NotFittedError",
    "FeatureSetMismatchError",
]


class TrajlibError(Exception):
    """Base class of every error trajlib raises on purpose."""


class ConfigError(TrajlibError, ValueError):
    """A recipe, argument or option has a wrong value.

    ``field`` names the offending key (dotted path), so CLIs can point at it.
    """

    def __init__(self, field: str, expected: str, got: object, hint: str = "") -> None:
        self.field = field
        self.expected = expected
        self.got = got
        msg = f"`{field}` must be {expected}; got {got!r}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class UnknownNameError(TrajlibError, KeyError):
    """A name (task, feature set, controller kind, label strategy...) is not registered."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, known
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(sorted(known)) or '(none)'}")

    def __str__(self) -> str:  # KeyError quotes its message; we don't want that
        return str(self.args[0])


class StoreError(TrajlibError, OSError):
    """A store is missing, malformed, or an operation on it cannot proceed."""


class StoreVersionError(StoreError):
    """A store was written with a schema version this trajlib cannot read."""


class CheckpointError(TrajlibError, ValueError):
    """A controller checkpoint is missing, tampered with, truncated or incompatible."""


class NotFittedError(TrajlibError, RuntimeError):
    """A controller was used before ``fit``."""


class FeatureSetMismatchError(CheckpointError):
    """Features offered to a controller differ from the feature set it was trained on."""
