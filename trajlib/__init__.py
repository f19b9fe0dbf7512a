"""trajlib: learned hyperparameter controllers.

Many training runs become a controller that sets the learning rate (and momentum, weight decay) of
live PyTorch training. The stages, left to right (each imports only from those on its left), and
the names this package offers for each::

    tasks        what to train                    trajlib.tasks.get_task, Task
    collect      recipe -> instrumented runs      load_recipe, collect_into
                 your own loop -> runs            record (a Recorder)
    store        runs on disk, read lazily        open_store
    features     trajectories -> features         derive, get_feature_set
    labels       branches -> per-action targets   trajlib.labels.make_labels
    controllers  fit, save, load                  fit_store, load_controller
    deploy       the controller in your loop      ControllerScheduler
    evaluate     against baselines, held out      run_evaluation
    pipeline     the stages chained               demo, iterate

The decision contract (what a controller decides over, and what one run is) is
:class:`DecisionSpec` and :class:`RunConfig` from :mod:`trajlib.spec`. Shared vocabulary lives
in :mod:`trajlib.space`, :mod:`trajlib.schema` and :mod:`trajlib.errors` (every error trajlib
raises on purpose is a :class:`TrajlibError`).

Quick start::

    import trajlib

    recipe = trajlib.load_recipe("collectors/quickstart.toml")
    trajlib.collect_into(recipe, "data/quick")                 # instrumented runs, branches
    ckpt, metrics = trajlib.fit_store("data/quick", out="models/quick")
    sched = trajlib.ControllerScheduler(optimizer, ckpt, total_steps=1000)
    # in the loop: loss.backward(); optimizer.step(); sched.observe(loss); sched.step()

Importing trajlib does no work: every name above is imported on first use (PEP 562), and each
subpackage (``trajlib.collect``, ``trajlib.evaluate``...) is importable on its own. Lower-level
pieces are in each subpackage's ``__all__``; engine internals stay in their private modules.
"""

import importlib

__version__ = "0.1.0"

# name -> module that defines it publicly; imported on first attribute access
_LAZY: dict[str, str] = {
    "ControllerScheduler": "trajlib.deploy",
    "DecisionSpec": "trajlib.spec",
    "RunConfig": "trajlib.spec",
    "TrajlibError": "trajlib.errors",
    "collect_into": "trajlib.pipeline",
    "demo": "trajlib.pipeline",
    "derive": "trajlib.features",
    "fit_store": "trajlib.controllers",
    "get_feature_set": "trajlib.features",
    "iterate": "trajlib.pipeline",
    "load_controller": "trajlib.controllers",
    "load_recipe": "trajlib.collect",
    "open_store": "trajlib.store",
    "record": "trajlib.pipeline",
    "run_evaluation": "trajlib.evaluate",
}
# the stages and contracts, importable as attributes too (``trajlib.evaluate`` after ``import
# trajlib``); not in __all__, so ``from trajlib import *`` brings the names above only
_SUBMODULES = frozenset(
    {
        "cli",
        "collect",
        "controllers",
        "deploy",
        "errors",
        "evaluate",
        "features",
        "labels",
        "pipeline",
        "schema",
        "space",
        "spec",
        "store",
        "tasks",
    }
)

__all__ = [
    "__version__",
    "ControllerScheduler",
    "DecisionSpec",
    "RunConfig",
    "TrajlibError",
    "collect_into",
    "demo",
    "derive",
    "fit_store",
    "get_feature_set",
    "iterate",
    "load_controller",
    "load_recipe",
    "open_store",
    "record",
    "run_evaluation",
]

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing would double the import time
if TYPE_CHECKING:
    from trajlib.collect import load_recipe
    from trajlib.controllers import fit_store, load_controller
    from trajlib.deploy import ControllerScheduler
    from trajlib.errors import TrajlibError
    from trajlib.evaluate import run_evaluation
    from trajlib.features import derive, get_feature_set
    from trajlib.pipeline import collect_into, demo, iterate, record
    from trajlib.spec import DecisionSpec, RunConfig
    from trajlib.store import open_store


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is not None:
        try:
            value = getattr(importlib.import_module(module), name)
        except ModuleNotFoundError as e:
            if e.name != module:  # a dependency is missing: say so
                raise
            raise AttributeError(f"trajlib.{name} needs {module}, which this install lacks") from e
        globals()[name] = value  # later accesses skip this function
        return value
    if name in _SUBMODULES:
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from e
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
