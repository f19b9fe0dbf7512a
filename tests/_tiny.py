"""The tiny but real collection recipe behind the test fixtures and the deploy benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_RECIPE: dict[str, Any] = {
    "name": "tiny",
    "collect": {
        "tasks": ["digits-mlp", "teacher-student"],
        "runs_per_task": 3,
        "budget": 200,
        "every": 25,
        "val_every": 25,
    },
    "branch": {"horizon": 25, "cooldown": 5},
    "executor": {"workers": 1},
}


def collect_tiny(path: Path, recipe: dict[str, Any] | None = None) -> Path:
    """Collect ``recipe`` (default :data:`TINY_RECIPE`) into a new store at ``path``, on one worker,
    leaving torch's thread count as it was. Returns ``path``."""
    import functools

    import torch

    from trajlib.collect import collect, parse_recipe
    from trajlib.store import create_store, open_store

    create_store(path)
    threads = torch.get_num_threads()
    collect(
        parse_recipe(recipe or TINY_RECIPE),
        functools.partial(open_store, path),
        workers=1,
        progress=False,
    )
    torch.set_num_threads(threads)
    return path
