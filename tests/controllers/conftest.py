"""Fixtures of the controller tests: one synthetic table, one fitted controller per kind."""

from __future__ import annotations

import pytest
from ctl_synth import Synth, make_controller, make_synth, split_runs

from trajlib.controllers import Controller


@pytest.fixture(scope="session")
def synth() -> Synth:
    return make_synth()


_FITTED: dict[str, Controller] = {}


@pytest.fixture(scope="session")
def fitted(synth: Synth):
    """``fitted(kind)``: a controller fitted on the training runs (cached per session)."""

    def get(kind: str) -> Controller:
        if kind not in _FITTED:
            train, _ = split_runs(synth)
            _FITTED[kind] = make_controller(kind).fit(
                synth.X[train], synth.T[train], synth.runs[train], synth.steps[train]
            )
        return _FITTED[kind]

    return get
