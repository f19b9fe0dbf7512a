"""The tiny but real collection recipe behind the test fixtures and the deploy benchmark."""

from __future__ import annotations

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
