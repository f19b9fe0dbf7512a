"""Hyperparameters of a torch optimizer's param groups, read and set by name.

Shared by everything that moves a user's optimizer (the Recorder in :mod:`trajlib.collect`, the
deployed :class:`~trajlib.deploy.ControllerScheduler`): ``momentum`` is SGD / RMSprop's
``momentum`` or an Adam-style optimizer's ``betas[0]``; ``weight_decay`` is the group's
``weight_decay``. A hyperparameter is *movable* in a group when the optimizer has it and the user
has switched it on (a finite value > 0): momentum 0 stays 0, weight decay 0 stays 0. The group
that stands for the whole optimizer in the records and features is the first with an LR > 0
(:func:`lr_group`): a group at LR 0 is frozen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import torch

__all__ = ["MOVABLE", "hp_get", "hp_movable", "hp_set", "lr_group"]

#: Hyperparameters besides the learning rate that can be read and set here.
MOVABLE = ("momentum", "weight_decay")


def hp_get(group: Mapping[str, Any], name: str) -> float | None:
    """Momentum (SGD/RMSprop ``momentum`` / Adam-style ``betas[0]``) or ``weight_decay`` of a
    group; None where the optimizer has no such hyperparameter."""
    if name == "momentum":
        if "betas" in group:
            return float(group["betas"][0])
        return float(group["momentum"]) if "momentum" in group else None
    if name == "weight_decay":
        return float(group["weight_decay"]) if "weight_decay" in group else None
    return None


def hp_movable(group: Mapping[str, Any], name: str) -> bool:
    """Whether ``name`` may be moved in this group: the optimizer has it and the user has it
    switched on (a value > 0). Momentum 0 stays 0 (an RMSprop that never made a momentum
    buffer, a plain SGD), as does weight decay 0."""
    v = hp_get(group, name)
    return v is not None and math.isfinite(v) and v > 0.0


def hp_set(group: MutableMapping[str, Any], name: str, value: float) -> None:
    """Set ``name`` in this group (``betas[0]`` for Adam-style momentum, a tensor in place)."""
    if name == "momentum":
        if "betas" in group:
            b = group["betas"]
            if isinstance(b, torch.Tensor):
                b[0] = value
            else:
                group["betas"] = (value, *tuple(b)[1:])
        elif "momentum" in group:
            group["momentum"] = value
    elif name == "weight_decay":
        group["weight_decay"] = value


def lr_group(lrs: Iterable[Any]) -> int | None:
    """The index of the first of these param groups' LRs that is a finite number > 0 (the group
    whose LR, momentum and weight decay stand for the optimizer: one at LR 0 is frozen, and its
    log LR is undefined); None when there is none."""
    for i, lr in enumerate(lrs):
        try:
            value = float(lr)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and value > 0:
            return i
    return None
