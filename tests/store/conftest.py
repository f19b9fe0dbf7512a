"""Fixtures for store tests: a fresh store in tmp_path and a realistic run factory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _store_fixtures import make_run  # noqa: E402

from trajlib.store import Store, create_store  # noqa: E402

HERE = Path(__file__).parent


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return create_store(tmp_path / "store")


@pytest.fixture
def run_factory():
    return make_run
