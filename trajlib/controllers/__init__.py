"""Controllers: models that score the actions of an action space from decision-point features.

Kinds (``get_controller_kind(name)``): ``gbt`` (LightGBM, one regressor per action), ``mlp``
(small torch MLP), ``gru`` (torch GRU over a run's decision points), ``ensemble`` (K members of
another kind, a ``val_present`` input, validation withheld from a share of runs, and the spread
that the do-no-harm :class:`HarmRule` reads), ``vetoed`` (one controller proposes, a second one
fitted on another label blocks the moves it predicts harmful; :func:`combine_checkpoints`). All follow scikit-learn's
estimator contract: ``fit(X, targets, groups) -> self``, ``predict_values(X) -> [n, A]``, and a
fast single-row ``decide(x, state) -> (action, state)``. Add a kind by subclassing
:class:`Controller` and decorating it with :func:`register_controller_kind`.

:func:`fit_store` fits a kind on a store's decision table and writes a checkpoint. Checkpoints
(:func:`save_controller`, :func:`load_controller`, :func:`verify_checkpoint`) are folders of JSON,
safetensors and LightGBM text, with sha256 of every file; never pickle. The engine underneath
(the training table, offline metrics, the collection policy) lives in the private modules.
"""

from trajlib.controllers._base import Controller, ControllerState
from trajlib.controllers._checkpoint import (
    LoadedController,
    load_controller,
    resolve_checkpoint,
    save_controller,
    shipped_controllers,
    verify_checkpoint,
)
from trajlib.controllers._ensemble import EnsembleController
from trajlib.controllers._from_store import fit_store
from trajlib.controllers._gbt import GBTController
from trajlib.controllers._gru import GRUController
from trajlib.controllers._harm import HarmRule
from trajlib.controllers._mlp import MLPController
from trajlib.controllers._registry import (
    controller_kinds,
    get_controller_kind,
    register_controller_kind,
)
from trajlib.controllers._vetoed import VetoedController, combine_checkpoints

__all__ = [
    "Controller",
    "ControllerState",
    "EnsembleController",
    "GBTController",
    "GRUController",
    "HarmRule",
    "LoadedController",
    "MLPController",
    "VetoedController",
    "combine_checkpoints",
    "controller_kinds",
    "fit_store",
    "get_controller_kind",
    "load_controller",
    "resolve_checkpoint",
    "register_controller_kind",
    "save_controller",
    "shipped_controllers",
    "verify_checkpoint",
]
