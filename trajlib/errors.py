"""One exception hierarchy for the whole library.

Every user-facing error is a :class:`TrajlibError`; leaves also subclass the builtin that fits, so
``except ValueError`` keeps working. Messages name the field, what was expected and what was got.

Every error survives pickling (a process-pool or Ray worker's error reaches the caller as itself,
with its message and fields): :meth:`TrajlibError.__reduce__` rebuilds it without calling
``__init__``, from its ``args`` and attributes; an attribute that cannot be pickled travels as its
``repr``.
"""

from __future__ import annotations

import pickle
from typing import Any

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

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's default reduce calls ``cls(*args)``, which fails for leaves whose
        # ``__init__`` takes fields (ConfigError, UnknownNameError): rebuild from state instead.
        state = _picklable(self.__dict__)
        if isinstance(self, OSError):  # OSError keeps these outside __dict__ and args
            for key in ("filename", "filename2"):
                if getattr(self, key) is not None:
                    state[key] = getattr(self, key)
        return (_rebuild, (type(self), self.args, state))


def _picklable(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every value that cannot be pickled replaced by its ``repr``."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        try:
            pickle.dumps(value)
        except Exception:  # any failure to pickle: keep a readable stand-in
            value = repr(value)
        out[key] = value
    return out


def _rebuild(cls: type[TrajlibError], args: tuple[Any, ...], state: dict[str, Any]) -> TrajlibError:
    """Inverse of :meth:`TrajlibError.__reduce__`."""
    err = cls.__new__(cls, *args)
    err.args = args
    for key, value in state.items():
        setattr(err, key, value)
    return err


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
