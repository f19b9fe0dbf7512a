"""``ensemble``: K members of a base kind, validation-optional inputs, a spread for do-no-harm.

The wrapper does three things around any registered base kind (``gbt``, ``mlp``, ``gru``):

- **Validation indicator.** With ``val_columns`` (the indices of the validation-derived features,
  :func:`trajlib.features.validation_feature_indices`) every member reads one more input,
  ``val_present`` (:func:`trajlib.features.validation_present`): 1 when any of those features is
  finite. It is computed from the feature row, so offline and online agree by construction.
- **Validation withheld.** ``val_withhold = F`` adds, for a share ``F`` of the training runs
  (chosen by a hash of the run id: deterministic, independent of row order), a second copy of the
  run's rows with every validation-derived feature NaN and the indicator 0. The copy is its own
  sequence (for ``gru``) and is resampled together with its run.
- **Ensemble.** ``n_members = K > 1`` fits K members on bootstrap resamples of the runs (grouped:
  a run's rows stay together; ``groups`` are the run ids), each with its own seed. Predictions are
  the members' mean; :meth:`predict_spread` / :meth:`decide_spread` also give their standard
  deviation, which the do-no-harm rule (:mod:`trajlib.controllers._harm`) reads.

Checkpoint payload: each member's files prefixed with ``m<k>.`` (``m0.model_1.txt`` is member 0's
LightGBM text model of action 1), their states in ``model_state.json``; never pickle.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from trajlib.controllers._base import Controller, ControllerState, load_part, part_payload
from trajlib.controllers._gbt import GBTController
from trajlib.controllers._registry import get_controller_kind, register_controller_kind
from trajlib.controllers._treewalk import Forests
from trajlib.errors import CheckpointError, ConfigError
from trajlib.features import validation_present

__all__ = ["EnsembleController", "withheld_share", "withhold_validation"]

_NOVAL = "|noval"


def withheld_share(run_id: Any, salt: int = 0) -> float:
    """A run's position in [0, 1) from a hash of its id: runs below ``F`` are withheld."""
    h = hashlib.sha256(f"{salt}:{run_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def withhold_validation(
    X: np.ndarray,
    groups: np.ndarray,
    val_columns: Sequence[int],
    share: float,
    salt: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``X`` plus, for the runs whose :func:`withheld_share` is below ``share``, a copy
    with ``val_columns`` set to NaN. Returns ``(index into X of every output row, masked[n_out])``:
    the output is ``X[index]`` with the validation columns of the ``masked`` rows set to NaN."""
    n = X.shape[0]
    idx = np.arange(n)
    if share <= 0 or not len(val_columns) or n == 0:
        return idx, np.zeros(n, dtype=bool)
    uniq, inverse = np.unique(groups.astype(str), return_inverse=True)
    chosen = np.array([withheld_share(g, salt) < share for g in uniq], dtype=bool)[inverse]
    extra = idx[chosen]
    return np.concatenate([idx, extra]), np.concatenate(
        [np.zeros(n, dtype=bool), np.ones(extra.size, dtype=bool)]
    )


@register_controller_kind
class EnsembleController(Controller):
    """K members of ``base``, with the ``val_present`` input and validation withheld from runs.

    Parameters
    ----------
    base: registered kind of each member (``gbt``, ``mlp``, ``gru``).
    base_params: constructor parameters of the base kind (``random_state`` is set per member:
        ``random_state + k``).
    n_members: K; 1 fits one member on every row (no bootstrap, zero spread).
    val_columns: indices of the validation-derived features; empty: no indicator input.
    val_withhold: share of runs whose rows are added again with validation masked, in [0, 1].
    random_state: seed of the bootstrap and of the members.
    """

    kind = "ensemble"

    def __init__(
        self,
        base: str = "gbt",
        base_params: Mapping[str, Any] | None = None,
        n_members: int = 1,
        val_columns: Sequence[int] = (),
        val_withhold: float = 0.0,
        random_state: int = 0,
    ) -> None:
        self.base = base
        self.base_params = base_params
        self.n_members = n_members
        self.val_columns = val_columns
        self.val_withhold = val_withhold
        self.random_state = random_state

    # ------------------------------------------------------------------ parameters
    def _check_params(self) -> type[Controller]:
        if self.base == self.kind:
            raise ConfigError("base", "a kind other than 'ensemble'", self.base)
        cls = get_controller_kind(str(self.base))
        k = self.n_members
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ConfigError("n_members", "a positive integer", k)
        f = self.val_withhold
        if isinstance(f, bool) or not isinstance(f, float | int) or not 0.0 <= f <= 1.0:
            raise ConfigError("val_withhold", "a share in [0, 1]", f)
        if f > 0 and not len(self._cols()):
            raise ConfigError(
                "val_columns", "the validation-derived feature indices when val_withhold > 0", []
            )
        return cls

    def _cols(self) -> list[int]:
        return [int(c) for c in (self.val_columns or ())]

    def _member_params(self, cls: type[Controller], k: int) -> dict[str, Any]:
        p = dict(self.base_params or {})
        if "random_state" in cls().get_params(deep=False):
            p["random_state"] = int(p.get("random_state", 0)) + int(self.random_state) + k
        return p

    @property
    def _stateful(self) -> bool:
        return bool(getattr(self, "members_", None)) and self.members_[0].stateful

    # ------------------------------------------------------------------ inputs
    def _augment(self, X: np.ndarray) -> np.ndarray:
        cols = self._cols()
        if not cols:
            return X
        return np.concatenate([X, validation_present(X, cols)[:, None]], axis=1)

    def _augment_one(self, x: np.ndarray) -> np.ndarray:
        """:meth:`_augment` of one row ``[f]`` (the same values, fewer NumPy calls)."""
        cols = self._cols()
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if not cols:
            return x
        vals = x.tolist()
        present = any(vals[c] - vals[c] == 0.0 for c in cols)  # finite
        z = np.empty(x.shape[0] + 1)
        z[:-1] = x
        z[-1] = 1.0 if present else 0.0
        return z

    # ------------------------------------------------------------------ fit / predict
    def _fit(
        self, X: np.ndarray, T: np.ndarray, groups: np.ndarray | None, order: np.ndarray | None
    ) -> None:
        cls = self._check_params()
        cols = self._cols()
        if any(not 0 <= c < X.shape[1] for c in cols):
            raise ConfigError("val_columns", f"indices in [0, {X.shape[1] - 1}]", cols)
        g = np.zeros(X.shape[0], dtype=object) if groups is None else np.asarray(groups)
        g = g.astype(str)
        idx, masked = withhold_validation(X, g, cols, float(self.val_withhold))
        Xw = X[idx].copy()
        if masked.any():
            Xw[np.ix_(masked, np.asarray(cols, dtype=np.intp))] = np.nan
        Xw = self._augment(Xw)
        Tw = T[idx]
        gw = np.where(masked, np.char.add(g[idx], _NOVAL), g[idx])
        ow = None if order is None else np.asarray(order)[idx]
        uniq, inverse = np.unique(g[idx], return_inverse=True)  # a copy goes with its run
        members: list[Controller] = []
        rng = np.random.default_rng(int(self.random_state))
        by_group = [np.flatnonzero(inverse == j) for j in range(uniq.size)]
        for k in range(int(self.n_members)):
            ctl = cls(**self._member_params(cls, k))
            if int(self.n_members) == 1:
                ctl.fit(Xw, Tw, gw, ow)
            else:
                draw = rng.integers(0, uniq.size, uniq.size)
                rows, seq = [], []
                for j, u in enumerate(draw):
                    rows.append(by_group[u])
                    seq.append(np.char.add(gw[by_group[u]], f"#b{j}"))
                r = np.concatenate(rows)
                Tr = Tw[r]
                if np.isnan(Tr).all():  # a degenerate resample: fall back to every row
                    r, sq = np.arange(Xw.shape[0]), gw
                else:
                    sq = np.concatenate(seq)
                ctl.fit(Xw[r], Tw[r], sq, None if ow is None else ow[r])
            members.append(ctl)
        self.members_ = members
        self.__dict__.pop("_merged_", None)  # the one-walk table of the old members

    def _predict_spread(
        self, X: np.ndarray, groups: np.ndarray | None, order: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        Z = self._augment(X)
        P = np.stack([m.predict_values(Z, groups, order) for m in self.members_])
        return _mean_std(P)

    def _predict_values(
        self, X: np.ndarray, groups: np.ndarray | None, order: np.ndarray | None
    ) -> np.ndarray:
        return self._predict_spread(X, groups, order)[0]

    def initial_state(self) -> ControllerState:
        self._check_fitted()
        if not self._stateful:
            return None
        return np.stack([np.asarray(m.initial_state()) for m in self.members_])

    def _merged_forests(self, only: tuple[int, ...] | None = None) -> _Merged | None:
        """For members that are all tree models: their forests as one node table (one walk per
        decision instead of one per member) and each member's (base values, modelled actions);
        None otherwise. ``only``: the forests of these actions alone (the others' base value is
        NaN). Built once per ``only``, on first use."""
        cache: dict[tuple[int, ...] | None, _Merged | None] = self.__dict__.setdefault(
            "_merged_", {}
        )
        if only in cache:
            return cache[only]
        merged = None
        if all(isinstance(m, GBTController) for m in self.members_):
            gbts = [m for m in self.members_ if isinstance(m, GBTController)]
            forests, parts = [], []
            for m in gbts:
                acts = np.array(
                    [a for a in m.model_actions_ if only is None or a in only], dtype=np.intp
                )
                base = m.base_values_.copy()
                base[np.setdiff1d(m.model_actions_, acts)] = np.nan  # not scored
                forests += [m.action_forests_[int(a)] for a in acts]
                parts.append((base.tolist(), acts.tolist()))  # plain: read once per decision
            merged = (Forests.concat(forests), parts)
        cache[only] = merged
        return merged

    def _decide_spread(
        self, x: np.ndarray, state: ControllerState
    ) -> tuple[np.ndarray, np.ndarray, ControllerState]:
        return self._decide_spread_only(x, state, None)

    def _decide_spread_only(
        self, x: np.ndarray, state: ControllerState, only: tuple[int, ...] | None
    ) -> tuple[np.ndarray, np.ndarray, ControllerState]:
        z = self._augment_one(x)
        merged = None if self._stateful else self._merged_forests(only)
        if merged is not None:  # the members' own decide_values, in one walk of all their trees
            forests, parts = merged
            sums = forests.predict_one(z).tolist()
            # each member's values in plain floats (a handful: NumPy's per-call cost dominates)
            rows, at = [], 0
            for base, acts in parts:
                v = list(base)
                for a in acts:
                    v[a] = sums[at]
                    at += 1
                rows.append(v)
            if len(rows) < 8:
                mean_l, std_l = _mean_std_rows(rows)
                return np.array(mean_l), np.array(std_l), None
            mean, std = _mean_std(np.array(rows))
            return mean, std, None
        outs, states = [], []
        for k, m in enumerate(self.members_):
            s_k = None if state is None else state[k]
            out, s = m.decide_values(z, s_k)
            outs.append(np.asarray(out, dtype=np.float64))
            states.append(s)
        mean, std = _mean_std(np.stack(outs))
        new_state = np.stack([np.asarray(s) for s in states]) if self._stateful else None
        return mean, std, new_state

    def _decide_values(
        self, x: np.ndarray, state: ControllerState
    ) -> tuple[np.ndarray, ControllerState]:
        mean, _, state = self._decide_spread(x, state)
        return mean, state

    # ------------------------------------------------------------------ checkpoint payload
    def _payload(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        files: dict[str, bytes] = {}
        members = []
        for k, m in enumerate(self.members_):
            f_k, entry = part_payload(m, f"m{k}.")
            files.update(f_k)
            members.append(entry)
        state = {
            "n_features_in": int(self.n_features_in_),
            "n_actions": int(self.n_actions_),
            "members": members,
        }
        return files, state

    @classmethod
    def _from_payload(
        cls, params: Mapping[str, Any], files: Mapping[str, bytes], state: Mapping[str, Any]
    ) -> EnsembleController:
        ctl = cls(**params)
        try:
            base = ctl._check_params()
        except ConfigError as e:
            raise CheckpointError(f"manifest params: {e}") from e
        try:
            members_state = list(state["members"])
            n_features = int(state["n_features_in"])
            n_actions = int(state["n_actions"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"model_state.json: malformed ensemble state ({e!r})") from e
        if len(members_state) != int(ctl.n_members):
            raise CheckpointError(
                f"model_state.json: {len(members_state)} members, params say {ctl.n_members}"
            )
        members: list[Controller] = []
        width = n_features + (1 if ctl._cols() else 0)
        for k, d in enumerate(members_state):
            m = load_part(base, d, files, f"m{k}.", f"member {k}")
            if m.n_features_in_ != width or m.n_actions_ != n_actions:
                raise CheckpointError(
                    f"member {k}: takes {m.n_features_in_} inputs / {m.n_actions_} actions, "
                    f"expected {width} / {n_actions}"
                )
            members.append(m)
        ctl.members_ = members
        ctl.n_features_in_ = n_features
        ctl.n_actions_ = n_actions
        return ctl


#: the members' forests as one node table and each member's (base values, modelled actions),
#: as plain lists
_Merged = tuple[Forests, list[tuple[list[float], list[int]]]]


def _mean_std_rows(rows: list[list[float]]) -> tuple[list[float], list[float]]:
    """:func:`_mean_std` of fewer than 8 rows of plain floats, bit for bit: NumPy sums fewer than
    8 values one after the other (``out = r0; out += r1; ...``; from 8 on, a single column is
    summed pairwise), then divides by the count; the std is ``sqrt(sum((r - mean) ** 2) / n)``
    summed in the same order."""
    n = len(rows)
    mean, std = [], []
    for col in zip(*rows, strict=True):
        if all(v - v == 0.0 for v in col):
            acc = col[0]
            for v in col[1:]:
                acc += v
            mu = acc / n
            d = col[0] - mu
            sq = d * d
            for v in col[1:]:
                d = v - mu
                sq += d * d
            mean.append(mu)
            std.append(math.sqrt(sq / n))
        else:  # an action a member never chose: -inf stays (NaN: NaN), spread 0
            mean.append(math.nan if any(v != v for v in col) else min(col))
            std.append(0.0)
    return mean, std


def _mean_std(P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) std over axis 0, with an action a member never chose (``-inf``)
    staying ``-inf`` in the mean and 0 in the std instead of NaN."""
    if np.isfinite(P).all():  # the usual case (every member scored every action)
        return P.mean(axis=0), P.std(axis=0)
    finite = np.isfinite(P).all(axis=0)
    safe = np.where(finite, P, 0.0)
    mean = np.where(finite, safe.mean(axis=0), P.min(axis=0))
    std = np.where(finite, safe.std(axis=0), 0.0)
    return mean, std
