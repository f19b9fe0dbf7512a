"""``vetoed``: one controller proposes, a second one vetoes the moves it predicts harmful.

Two label strategies answer two different questions. A label measured at the *end of the run*
(``end``) says which move ends best, but a controller fitted on it moves wherever its training
data never showed the move hurting (on the generated tasks: it raises from starts already near
the best LR). A *short* label (``annealed``: 30 + 10 steps) says whether the move hurts soon,
which is what a do-no-harm rule should guard against. :class:`VetoedController` combines them:

- the **primary** scores the actions (its mean and spread, read by the checkpoint's do-no-harm
  rule as for any controller);
- the **veto** blocks action ``a`` (never keep) at a decision point when its own prediction is
  confidently harmful, ``veto_mean[a] + veto_z * veto_std[a] < 0``. A blocked action's mean
  becomes the most pessimistic of the advantages, ``min(primary[a], veto[a], veto[a] + veto_z *
  veto_std[a])``: negative, so neither the rule (it acts only on a bound above its margin >= 0)
  nor the plain argmax (keep scores 0) takes it. The spread stays the primary's.

``veto_z = 0`` blocks whatever the veto predicts worse than keep on average; a larger ``veto_z``
blocks only what it is surer of; a negative one lets a move through only when the veto is that
sure it does no harm (its lower bound ``veto_mean - |veto_z| * veto_std`` >= 0). Both parts read
the same feature set and score the same action space; they are stateless (``gbt`` / ``mlp`` /
their ``ensemble``).

It is composed, not fitted: :meth:`VetoedController.of` takes two fitted controllers, and
:func:`combine_checkpoints` (``trajlib combine``) two checkpoints. Checkpoint payload: each part's
files prefixed with ``p.`` and ``v.``, their kinds, params and states in ``model_state.json``;
never pickle.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from trajlib.controllers._base import Controller, ControllerState, load_part, part_payload
from trajlib.controllers._registry import get_controller_kind, register_controller_kind
from trajlib.errors import (
    CheckpointError,
    ConfigError,
    FeatureSetMismatchError,
    UnknownNameError,
)

__all__ = ["VetoedController", "combine_checkpoints"]

_PARTS = (("primary", "p."), ("veto", "v."))


def _check_z(z: Any) -> float:
    if isinstance(z, bool) or not isinstance(z, int | float) or not math.isfinite(z):
        raise ConfigError("veto_z", "a finite number", z)
    return float(z)


@register_controller_kind
class VetoedController(Controller):
    """A primary controller whose moves a second controller may veto (module docstring).

    Parameters
    ----------
    veto_z: block action ``a`` when ``veto_mean[a] + veto_z * veto_std[a] < 0`` (any finite
        number: < 0 blocks what the veto is not sure is harmless).
    keep: index of the keep action (never blocked); set by :meth:`of`.
    """

    kind = "vetoed"
    #: built from fitted parts (:meth:`of`), not by ``fit`` on one target table
    composed: ClassVar[bool] = True

    def __init__(self, veto_z: float = 0.0, keep: int = 0) -> None:
        self.veto_z = veto_z
        self.keep = keep

    @classmethod
    def of(
        cls, primary: Controller, veto: Controller, *, keep: int, veto_z: float = 0.0
    ) -> VetoedController:
        """Compose two fitted controllers of the same feature and action widths."""
        z = _check_z(veto_z)
        for name, part in (("primary", primary), ("veto", veto)):
            if not isinstance(part, Controller):
                raise ConfigError(name, "a fitted trajlib Controller", type(part).__name__)
            part._check_fitted()
            if part.initial_state() is not None:  # None: a stateless kind
                raise ConfigError(
                    name, "a stateless controller (gbt, mlp, their ensemble)", part.kind
                )
        if veto.n_features_in_ != primary.n_features_in_:
            raise FeatureSetMismatchError(
                f"the veto reads {veto.n_features_in_} features, the primary "
                f"{primary.n_features_in_}"
            )
        if veto.n_actions_ != primary.n_actions_:
            raise ConfigError(
                "veto",
                f"a controller of {primary.n_actions_} actions (the primary's)",
                veto.n_actions_,
            )
        if not isinstance(keep, int) or not 0 <= keep < primary.n_actions_:
            raise ConfigError("keep", f"an action index in [0, {primary.n_actions_ - 1}]", keep)
        ctl = cls(veto_z=z, keep=keep)
        ctl.primary_, ctl.veto_ = primary, veto
        ctl.n_features_in_ = primary.n_features_in_
        ctl.n_actions_ = primary.n_actions_
        return ctl

    # ------------------------------------------------------------------ the veto
    def _blocked(self, vm: np.ndarray, vs: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            b = vm + float(self.veto_z) * vs < 0  # NaN (not scored): not blocked
        b[..., int(self.keep)] = False
        return b

    def _combine(
        self, pm: np.ndarray, ps: np.ndarray, vm: np.ndarray, vs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        pm, vm = np.asarray(pm, dtype=np.float64), np.asarray(vm, dtype=np.float64)
        vs = np.asarray(vs, dtype=np.float64)
        blocked = self._blocked(vm, vs)
        with np.errstate(invalid="ignore"):  # the veto's bound (vm itself at z = 0) is < 0
            worst = np.minimum(np.minimum(pm, vm), vm + float(self.veto_z) * vs)
        return np.where(blocked, worst, pm), np.asarray(ps, dtype=np.float64)

    def blocked(self, X: np.ndarray) -> np.ndarray:
        """``[n, A]`` bool: the actions the veto blocks at each row of features ``X``."""
        vm, vs = self.veto_.predict_spread(self._check_X(X))
        return self._blocked(np.asarray(vm, dtype=np.float64), np.asarray(vs, dtype=np.float64))

    # ------------------------------------------------------------------ Controller
    def _fit(
        self, X: np.ndarray, T: np.ndarray, groups: np.ndarray | None, order: np.ndarray | None
    ) -> None:
        raise ConfigError(
            "fit",
            "two controllers fitted on their own labels",
            "one target table",
            hint="fit the primary and the veto separately, then VetoedController.of(primary, "
            "veto, keep=...) or `trajlib combine PRIMARY VETO --out DIR`",
        )

    def _predict_spread(
        self, X: np.ndarray, groups: np.ndarray | None, order: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        pm, ps = self.primary_.predict_spread(X)
        vm, vs = self.veto_.predict_spread(X)
        return self._combine(pm, ps, vm, vs)

    def _predict_values(
        self, X: np.ndarray, groups: np.ndarray | None, order: np.ndarray | None
    ) -> np.ndarray:
        return self._predict_spread(X, groups, order)[0]

    def _decide_spread(
        self, x: np.ndarray, state: ControllerState
    ) -> tuple[np.ndarray, np.ndarray, ControllerState]:
        return self._decide_spread_only(x, state, None)

    def _decide_spread_only(
        self, x: np.ndarray, state: ControllerState, only: tuple[int, ...] | None
    ) -> tuple[np.ndarray, np.ndarray, ControllerState]:
        pm, ps, _ = self.primary_.decide_spread(x, only=only)
        vm, vs, _ = self.veto_.decide_spread(x, only=only)
        mean, std = self._combine(pm, ps, vm, vs)
        return mean, std, None

    def _decide_values(
        self, x: np.ndarray, state: ControllerState
    ) -> tuple[np.ndarray, ControllerState]:
        mean, _, _ = self._decide_spread(x, state)
        return mean, None

    # ------------------------------------------------------------------ checkpoint payload
    def _payload(self) -> tuple[dict[str, bytes], dict[str, Any]]:
        files: dict[str, bytes] = {}
        state: dict[str, Any] = {
            "n_features_in": int(self.n_features_in_),
            "n_actions": int(self.n_actions_),
        }
        for name, prefix in _PARTS:
            part: Controller = getattr(self, f"{name}_")
            f_k, entry = part_payload(part, prefix)
            files.update(f_k)
            state[name] = {"kind": part.kind, **entry}
        return files, state

    @classmethod
    def _from_payload(
        cls, params: Mapping[str, Any], files: Mapping[str, bytes], state: Mapping[str, Any]
    ) -> VetoedController:
        try:
            z, keep = _check_z(params.get("veto_z", 0.0)), int(params.get("keep", 0))
        except ConfigError as e:
            raise CheckpointError(f"manifest params: {e}") from e
        parts: dict[str, Controller] = {}
        for name, prefix in _PARTS:
            try:
                d = state[name]
                kind = str(d["kind"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"model_state.json: malformed {name} part ({e!r})") from e
            if kind == cls.kind:
                raise CheckpointError(f"model_state.json: the {name} part is itself {kind!r}")
            try:
                parts[name] = load_part(get_controller_kind(kind), d, files, prefix, f"{name} part")
            except (ConfigError, UnknownNameError) as e:  # an unknown kind, params refused
                raise CheckpointError(f"the {name} part ({kind!r}): {e}") from e
        try:
            return cls.of(parts["primary"], parts["veto"], keep=keep, veto_z=z)
        except ConfigError as e:
            raise CheckpointError(f"model_state.json: {e}") from e


def combine_checkpoints(
    primary: str | os.PathLike[str],
    veto: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    veto_z: float = 0.0,
    overwrite: bool = False,
) -> Path:
    """Write a ``vetoed`` checkpoint to ``out``: ``primary``'s decisions (its decision spec and
    do-no-harm rule) with ``veto``'s veto. Both must read the same feature set (by hash) and
    decide the same actions over the same hyperparameter space, at the same interval and in the
    same mode; :class:`ConfigError` names the first field that differs."""
    from trajlib.controllers._checkpoint import load_controller, save_controller

    p, v = load_controller(primary), load_controller(veto)
    if p.feature_set_hash != v.feature_set_hash:
        raise FeatureSetMismatchError(
            f"{veto}: feature set {v.feature_set_name!r} hash {v.feature_set_hash}; the primary "
            f"reads {p.feature_set_name!r} hash {p.feature_set_hash}"
        )
    for field, a, b in (
        ("action_space", p.manifest["action_space"], v.manifest["action_space"]),
        ("hp_space", p.manifest["hp_space"], v.manifest["hp_space"]),
        ("every", p.every, v.every),
        ("mode", p.mode, v.mode),
        ("base_schedule", p.base_schedule, v.base_schedule),
    ):
        if a != b:
            raise ConfigError(f"veto {field}", f"the primary's ({a!r})", b)
    ctl = VetoedController.of(
        p.controller, v.controller, keep=p.action_space.keep_index, veto_z=veto_z
    )
    td_p, td_v = dict(p.manifest.get("training_data") or {}), v.manifest.get("training_data") or {}
    # a feature the scheduler may see missing: missing in either part's training rows
    nan_p, nan_v = td_p.get("feature_nan_fraction") or {}, td_v.get("feature_nan_fraction") or {}
    td_p["feature_nan_fraction"] = {
        k: max(float(nan_p.get(k, 1.0)), float(nan_v.get(k, 1.0))) for k in p.feature_names
    }
    td_p["veto"] = {k: val for k, val in td_v.items() if k != "feature_nan_fraction"}
    return save_controller(
        ctl,
        out,
        spec=p.spec,
        label_strategy={
            "primary": p.manifest.get("label_strategy"),
            "veto": v.manifest.get("label_strategy"),
            "veto_z": float(veto_z),
        },
        training_data=td_p,
        offline_metrics={
            f"primary_{k}": val for k, val in (p.manifest.get("offline_metrics") or {}).items()
        },
        overwrite=overwrite,
        decision_rule=p.decision_rule,
    )
