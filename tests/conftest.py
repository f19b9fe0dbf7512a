"""Shared fixtures: a tiny but real collected store and a controller fitted on it (session-wide)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests._tiny import TINY_RECIPE, collect_tiny


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests share two cores with other work: one torch thread each (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real store: 2 tasks x 3 runs x 200 steps, decisions every 25, every action branched."""
    return collect_tiny(tmp_path_factory.mktemp("tiny") / "store")


@pytest.fixture(scope="session")
def unbranched_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real store recorded without branches: the tiny recipe, 2 runs per task, branching off."""
    import copy

    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["collect"]["runs_per_task"] = 2
    recipe["branch"] = {"enabled": False}
    return collect_tiny(tmp_path_factory.mktemp("unbranched") / "store", recipe)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real GBT controller checkpoint fitted on ``tiny_store`` (greedy labels)."""
    from trajlib.controllers import fit_store

    out = tmp_path_factory.mktemp("ckpt") / "gbt"
    path, _ = fit_store(
        tiny_store, kind="gbt", labels="greedy", out=out, params={"n_estimators": 30}
    )
    return path
