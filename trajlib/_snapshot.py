"""Exact snapshots of a live training run and the replay of its next batches.

Shared by the :class:`~trajlib.collect.Recorder` (branches: every action from one state, on the same
batches) and the deployed scheduler's lookahead (:class:`~trajlib.deploy.Lookahead`: the top
candidate actions from one state, on the same batches), so it lives left of both.

:func:`take_snapshot` copies what a user's ``train_step`` changes: the model's parameters and
buffers (BatchNorm running statistics included) and train / eval flags, the optimizer's state and
the hyperparameters of its param groups, a ``torch.amp.GradScaler``'s state and the global RNGs
(torch CPU and CUDA, NumPy's and Python's, so dropout draws the same numbers again);
:func:`restore_snapshot` writes them back in place (the same tensors, so references the loop holds
stay valid). :func:`replay_batches` buffers the batches that follow a decision point once, hands
them to the branches, then yields them to the main loop.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch

__all__ = [
    "branch_loss",
    "replay_batches",
    "restore_snapshot",
    "restore_weights",
    "take_snapshot",
    "take_weights",
]


def take_snapshot(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: Any | None = None
) -> dict[str, Any]:
    """Everything a training step changes, copied (see the module's docstring)."""
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "opt_state": _copy_opt_state(optimizer),
        "groups": [
            {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
            for g in optimizer.param_groups
        ],
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "rng_np": np.random.get_state(),
        "rng_py": random.getstate(),
        "scaler": None if scaler is None else copy.deepcopy(scaler.state_dict()),
    }


def restore_snapshot(
    snap: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any | None = None,
) -> None:
    """Write ``snap`` (from :func:`take_snapshot` on the same objects) back, in place."""
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(snap["model"][k])
    for m, training in zip(model.modules(), snap["training"]):
        m.training = training
    _restore_opt_state(optimizer, snap["opt_state"])
    for g, vals in zip(optimizer.param_groups, snap["groups"]):
        for k, v in vals.items():
            if torch.is_tensor(g.get(k)) and torch.is_tensor(v):
                g[k].copy_(v)
            else:
                g[k] = copy.deepcopy(v)
    torch.set_rng_state(snap["rng_cpu"])
    if snap["rng_cuda"] is not None:
        torch.cuda.set_rng_state_all(snap["rng_cuda"])
    np.random.set_state(snap["rng_np"])
    random.setstate(snap["rng_py"])
    if scaler is not None and snap["scaler"] is not None:
        scaler.load_state_dict(copy.deepcopy(snap["scaler"]))


def take_weights(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module | None = None
) -> dict[str, Any]:
    """The optimizer's parameters and state (and ``model``'s buffers, BatchNorm running statistics
    included, when given): what :func:`restore_weights` writes back to undo the steps since.
    Unlike :func:`take_snapshot`, no RNG, train/eval flags or hyperparameters: the run goes on
    from the restored weights with its own schedule and random draws. Parameters are kept with
    the tensor they belong to, so a param group added later (``add_param_group``) is left as it
    is by the restore instead of shifting every copy onto the wrong tensor."""
    return {
        "params": [(p, p.detach().clone()) for g in optimizer.param_groups for p in g["params"]],
        "buffers": None
        if model is None
        else {k: b.detach().clone() for k, b in model.named_buffers()},
        "opt_state": _copy_opt_state(optimizer),
    }


def restore_weights(
    saved: dict[str, Any], optimizer: torch.optim.Optimizer, model: torch.nn.Module | None = None
) -> None:
    """Write :func:`take_weights`'s copy back, in place: the parameters it copied that the
    optimizer still has, and their optimizer state. Parameters added since keep their values and
    state."""
    now = {id(p) for g in optimizer.param_groups for p in g["params"]}
    copied = {id(p) for p, _ in saved["params"]}
    with torch.no_grad():
        for p, v in saved["params"]:
            if id(p) in now:
                p.copy_(v)
        if model is not None and saved["buffers"] is not None:
            for k, b in model.named_buffers():
                if k in saved["buffers"]:
                    b.copy_(saved["buffers"][k])
    _restore_opt_state(optimizer, saved["opt_state"], only=copied)


def _copy_opt_state(optimizer: torch.optim.Optimizer) -> dict[Any, dict[str, Any]]:
    return {
        p: {k: v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v) for k, v in s.items()}
        for p, s in optimizer.state.items()
    }


def _restore_opt_state(
    optimizer: torch.optim.Optimizer,
    saved: dict[Any, dict[str, Any]],
    only: set[int] | None = None,
) -> None:
    """Write the copied optimizer state back; with ``only`` (ids of parameters), the state of
    other parameters is left alone."""
    for p in list(optimizer.state.keys()):
        if p not in saved and (only is None or id(p) in only):
            del optimizer.state[p]
    for p, s in saved.items():
        cur = optimizer.state[p]
        for k in list(cur.keys()):
            if k not in s:
                del cur[k]
        for k, v in s.items():
            if torch.is_tensor(v) and torch.is_tensor(cur.get(k)) and cur[k].shape == v.shape:
                cur[k].copy_(v)
            else:
                cur[k] = v.clone() if torch.is_tensor(v) else copy.deepcopy(v)


def replay_batches(
    source: Iterable[Any], wanted: Callable[[], int], run: Callable[[list[Any]], None]
) -> Iterator[Any]:
    """Yield the batches of ``source`` (one pass); when ``wanted()`` asks for ``n > 0`` batches
    (a decision point is due), buffer up to ``n`` of the batches that follow, call
    ``run(buffer)`` once (the branches, then the decision: ``run`` clears what ``wanted`` reads
    and handles its own errors), then yield the buffered batches to the main loop.

    When ``source`` ends with a decision due and nothing buffered, the generator returns with the
    decision still due (the caller decides what that means: the Recorder takes it on the next
    call's batches)."""
    it = iter(source)
    buffer: list[Any] = []
    while True:
        need = wanted()
        if need > 0:
            while len(buffer) < need:
                try:
                    buffer.append(next(it))
                except StopIteration:
                    break
            if not buffer:
                return
            run(buffer)
        if buffer:
            yield buffer.pop(0)
            continue
        try:
            batch = next(it)
        except StopIteration:
            return
        yield batch


def branch_loss(loss: Any) -> float:
    """A branch step's loss as a float (a tensor's mean; NaN when it is not a number)."""
    try:
        return float(loss.detach().float().mean()) if torch.is_tensor(loss) else float(loss)
    except (TypeError, ValueError):
        return math.nan
