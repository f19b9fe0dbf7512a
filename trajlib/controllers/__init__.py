"""Controllers: models that score the actions of an action space from decision-point features.

Kinds (``get_controller_kind(name)``): ``gbt`` (LightGBM, one regressor per action), ``mlp``
(small torch MLP), ``gru`` (torch GRU over a run's decision points). All follow scikit-learn's
estimator contract: ``fit(X, targets, groups) -> self``, ``predict_values(X) -> [n, A]``, and a
fast single-row ``decide(x, state) -> (action, state)``. Add a kind by subclassing
:class:`Controller` and decorating it with :func:`register_controller_kind`.

Checkpoints (:func:`save_controller`, :func:`load_controller`, :func:`verify_checkpoint`) are
folders of JSON, safetensors and LightGBM text, with sha256 of every file; never pickle.
"""

from trajlib.controllers._base import Controller, ControllerState
from trajlib.controllers._checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    LoadedController,
    load_controller,
    read_manifest,
    save_controller,
    verify_checkpoint,
)
from trajlib.controllers._fit import fit_from_table, infer_keep_index
from trajlib.controllers._from_store import fit_store, training_table
from trajlib.controllers._gbt import GBTController
from trajlib.controllers._gru import GRUController
from trajlib.controllers._metrics import offline_metrics
from trajlib.controllers._mlp import MLPController
from trajlib.controllers._policy import ControllerPolicy
from trajlib.controllers._registry import (
    controller_kinds,
    get_controller_kind,
    register_controller_kind,
)

__all__ = [
    "Controller",
    "ControllerPolicy",
    "ControllerState",
    "GBTController",
    "MLPController",
    "GRUController",
    "get_controller_kind",
    "controller_kinds",
    "register_controller_kind",
    "save_controller",
    "load_controller",
    "verify_checkpoint",
    "read_manifest",
    "LoadedController",
    "FORMAT",
    "FORMAT_VERSION",
    "fit_from_table",
    "fit_store",
    "training_table",
    "infer_keep_index",
    "offline_metrics",
]
