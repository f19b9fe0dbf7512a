"""Fixtures of the deploy tests: real checkpoints of every kind, fitted on the shared tiny store."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def checkpoints(tiny_store: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """``checkpoints(kind)``: a checkpoint folder of ``gbt``, ``mlp`` or ``gru`` (fitted once)."""
    from trajlib.controllers import fit_store

    made: dict[str, Path] = {"gbt": tiny_checkpoint}
    params = {"mlp": {"epochs": 5, "hidden": 16}, "gru": {"epochs": 5, "hidden": 8}}

    def get(kind: str) -> Path:
        if kind not in made:
            out = tmp_path_factory.mktemp("ckpt") / kind
            made[kind], _ = fit_store(
                tiny_store, kind=kind, labels="greedy", out=out, params=params[kind]
            )
        return made[kind]

    return get
