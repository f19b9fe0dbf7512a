"""The controller contract shared by every kind (scikit-learn style).

A controller scores the actions of an :class:`~trajlib.space.ActionSpace` by index: it regresses
each action's *advantage over keep* (``adv_<a>`` from :func:`trajlib.labels.make_labels`) from the
features of a decision point and picks the action with the highest predicted advantage. It knows
nothing about which hyperparameters an action moves, so one code path serves LR-only and
multi-hyperparameter action spaces.

Subclass :class:`Controller`, implement ``_fit``, ``_predict_values``, ``_payload`` and
``_from_payload`` (and ``_decide_values`` / ``initial_state`` for a fast or stateful single-row
path), then decorate it with :func:`trajlib.controllers.register_controller_kind`.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from trajlib.errors import CheckpointError, ConfigError, FeatureSetMismatchError, NotFittedError

__all__ = ["Controller", "ControllerState", "load_part", "part_payload"]

ControllerState = Any  # None for stateless kinds; a numpy hidden state for recurrent ones


class Controller(BaseEstimator, abc.ABC):
    """Base class: ``fit(X, targets, groups) -> self``, ``predict_values``, ``decide``.

    Learned state ends in ``_``: ``n_features_in_`` and ``n_actions_`` are set by every ``fit``.
    """

    kind: ClassVar[str] = ""
    #: True when ``decide`` carries a state between calls (rows must come in step order per run).
    stateful: ClassVar[bool] = False

    # ------------------------------------------------------------------ public API
    def fit(
        self,
        X: np.ndarray,
        targets: np.ndarray,
        groups: np.ndarray | None = None,
        order: np.ndarray | None = None,
    ) -> Controller:
        """Learn per-action advantages.

        Parameters
        ----------
        X: ``[n, f]`` features (float; NaN allowed).
        targets: ``[n, A]`` advantages of each action over keep; NaN = unknown (masked out).
        groups: ``[n]`` run ids. Recurrent kinds build one sequence per group; stateless kinds
            ignore it. ``None`` means a single run.
        order: ``[n]`` sort key (the decision step) within each group; ``None`` means the rows are
            already in step order.
        """
        Xa = self._check_X(X, fitting=True)
        T = np.asarray(targets, dtype=np.float64)
        if T.ndim != 2 or T.shape[0] != Xa.shape[0]:
            raise ConfigError("targets", f"a 2-D array with {Xa.shape[0]} rows", T.shape)
        if T.shape[1] < 1:
            raise ConfigError("targets", "at least one action column", T.shape)
        if np.isinf(T).any():
            raise ConfigError("targets", "finite advantages or NaN (unknown)", "infinite values")
        if np.isnan(T).all():
            raise ConfigError("targets", "at least one known (non-NaN) advantage", "all NaN")
        g = self._check_1d(groups, "groups", Xa.shape[0])
        o = self._check_1d(order, "order", Xa.shape[0])
        self._fit(Xa, T, g, o)
        self.n_features_in_ = Xa.shape[1]
        self.n_actions_ = T.shape[1]
        return self

    def predict_values(
        self,
        X: np.ndarray,
        groups: np.ndarray | None = None,
        order: np.ndarray | None = None,
    ) -> np.ndarray:
        """``[n, A]`` predicted advantage of each action over keep (float64).

        ``groups``/``order`` matter only to recurrent kinds (one sequence per group, in ``order``).
        """
        self._check_fitted()
        Xa = self._check_X(X)
        g = self._check_1d(groups, "groups", Xa.shape[0])
        o = self._check_1d(order, "order", Xa.shape[0])
        return self._predict_values(Xa, g, o)

    def predict_spread(
        self,
        X: np.ndarray,
        groups: np.ndarray | None = None,
        order: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``([n, A] mean, [n, A] spread)`` of the predicted advantages; the spread is the
        members' standard deviation for an ensemble, 0 for a single model."""
        self._check_fitted()
        Xa = self._check_X(X)
        g = self._check_1d(groups, "groups", Xa.shape[0])
        o = self._check_1d(order, "order", Xa.shape[0])
        return self._predict_spread(Xa, g, o)

    def predict(self, X: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """``[n]`` chosen action index per row (argmax of :meth:`predict_values`)."""
        return self.predict_values(X, groups).argmax(axis=1)

    def initial_state(self) -> ControllerState:
        """State to pass to the first :meth:`decide` of a run (``None`` for stateless kinds)."""
        return None

    def decide(self, x: np.ndarray, state: ControllerState = None) -> tuple[int, ControllerState]:
        """Fast single-row path: ``x`` ``[f]`` -> (action index, next state)."""
        values, state = self.decide_values(x, state)
        return int(values.argmax()), state

    def decide_values(
        self, x: np.ndarray, state: ControllerState = None
    ) -> tuple[np.ndarray, ControllerState]:
        """Single-row predicted advantages ``[A]`` and the next state."""
        return self._decide_values(self._check_row(x), state)

    def decide_spread(
        self, x: np.ndarray, state: ControllerState = None, *, only: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, ControllerState]:
        """Single-row ``([A] mean, [A] spread, next state)`` (spread 0 for a single model).

        ``only``: the actions the caller reads (e.g. those a do-no-harm rule may take, and keep).
        A controller may then skip the others, whose mean is NaN; the actions listed get exactly
        the values they get without ``only``.
        """
        if only is None:
            return self._decide_spread(self._check_row(x), state)
        return self._decide_spread_only(self._check_row(x), state, tuple(int(a) for a in only))

    def _check_row(self, x: np.ndarray) -> np.ndarray:
        """``x`` as a float64 row of this controller's feature count."""
        self._check_fitted()
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.shape[0] != self.n_features_in_:
            raise FeatureSetMismatchError(
                f"decide got {x.shape[0]} features; this controller was fitted on "
                f"{self.n_features_in_}"
            )
        return x

    # ------------------------------------------------------------------ for subclasses
    @abc.abstractmethod
    def _fit(
        self, X: np.ndarray, T: np.ndarray, groups: np.ndarray | None, order: np.ndarray | None
    ) -> None:
        """Learn from ``X`` [n, f] and per-action targets ``T`` [n, A] (NaN = unknown)."""

    @abc.abstractmethod
    def _predict_values(
        self, X: np.ndarray, groups: np.ndarray | None, order: np.ndarray | None
    ) -> np.ndarray:
        """Predicted advantages [n, A]."""

    def _decide_values(
        self, x: np.ndarray, state: ControllerState
    ) -> tuple[np.ndarray, ControllerState]:
        return self._predict_values(x[None, :], None, None)[0], state

    def _predict_spread(
        self, X: np.ndarray, groups: np.ndarray | None, order: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        values = self._predict_values(X, groups, order)
        return values, np.zeros_like(values)

    def _decide_spread(
        self, x: np.ndarray, state: ControllerState
    ) -> tuple[np.ndarray, np.ndarray, ControllerState]:
        values, state = self._decide_values(x, state)
        v = np.asarray(values, dtype=np.float64)
        return v, np.zeros_like(v), state

    def _decide_spread_only(
        self, x: np.ndarray, state: ControllerState, only: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray, ControllerState]:
        """:meth:`decide_spread` where only ``only`` is read (default: every action computed)."""
        return self._decide_spread(x, state)

    @abc.abstractmethod
    def _payload(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        """Learned state as ``({filename: bytes}, json-able dict)``; never pickle."""

    @classmethod
    @abc.abstractmethod
    def _from_payload(
        cls, params: Mapping[str, Any], files: Mapping[str, bytes], state: Mapping[str, Any]
    ) -> Controller:
        """Rebuild a fitted controller from :meth:`_payload`'s output (files already verified)."""

    # ------------------------------------------------------------------ helpers
    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(X, targets, groups) first"
            )

    def _check_X(self, X: np.ndarray, fitting: bool = False) -> np.ndarray:
        try:
            Xa = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ConfigError("X", "a numeric 2-D array", type(X).__name__) from e
        if Xa.ndim != 2:
            raise ConfigError("X", "a 2-D array [n_rows, n_features]", Xa.shape)
        if fitting and Xa.shape[0] < 2:
            raise ConfigError("X", "at least 2 rows to fit", Xa.shape)
        if not fitting and Xa.shape[1] != self.n_features_in_:
            raise FeatureSetMismatchError(
                f"X has {Xa.shape[1]} feature columns; this controller was fitted on "
                f"{self.n_features_in_}"
            )
        return Xa

    @staticmethod
    def _check_1d(a: np.ndarray | None, name: str, n: int) -> np.ndarray | None:
        if a is None:
            return None
        arr = np.asarray(a)
        if arr.shape != (n,):
            raise ConfigError(name, f"a 1-D array of {n} values", arr.shape)
        return arr


def sequences(n: int, groups: np.ndarray | None, order: np.ndarray | None) -> list[np.ndarray]:
    """Row indices of each sequence: one per group (first-appearance order), sorted by ``order``.

    Stable, so rows that are already in step order keep it when ``order`` is ``None``.
    """
    if groups is None:
        idx = np.arange(n)
        return [idx[np.argsort(order, kind="stable")] if order is not None else idx]
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    seq_rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")[inverse]
    keys = (seq_rank,) if order is None else (np.asarray(order), seq_rank)
    perm = np.lexsort(keys)
    bounds = np.flatnonzero(np.diff(seq_rank[perm])) + 1
    return np.split(perm, bounds)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Set torch's intra-op threads for the block, then restore them."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def part_payload(part: Controller, prefix: str) -> tuple[dict[str, bytes], dict[str, Any]]:
    """A controller stored inside another (an ensemble's member, a vetoed checkpoint's part): its
    payload files renamed ``<prefix><name>`` and its entry for the outer ``model_state.json``
    (``params``, ``state``, ``files``)."""
    files, state = part._payload()
    entry = {"params": part.get_params(deep=False), "state": state, "files": sorted(files)}
    return {f"{prefix}{n}": data for n, data in files.items()}, entry


def load_part(
    cls: type[Controller],
    entry: Mapping[str, Any],
    files: Mapping[str, bytes],
    prefix: str,
    what: str,
) -> Controller:
    """Rebuild a controller of kind ``cls`` saved by :func:`part_payload`; :class:`CheckpointError`
    naming ``what`` (e.g. "member 0") for a malformed entry, a missing file or params that do not
    fit the kind."""
    try:
        names = [str(n) for n in entry["files"]]
        params = dict(entry["params"])
        state = entry["state"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"model_state.json: malformed {what} ({e!r})") from e
    missing = [f"{prefix}{n}" for n in names if f"{prefix}{n}" not in files]
    if missing:
        raise CheckpointError(f"{missing[0]}: payload file missing from the manifest")
    try:
        return cls._from_payload(params, {n: files[f"{prefix}{n}"] for n in names}, state)
    except TypeError as e:
        raise CheckpointError(f"{what}: params do not fit kind {cls.kind!r}") from e
