"""Deploy: put a controller checkpoint into anybody's PyTorch training loop.

:class:`ControllerScheduler` behaves like a ``torch.optim.lr_scheduler`` scheduler; it computes the
online features from optimizer hooks and the losses you give it, and asks the controller every N
steps (optionally with a :class:`Lookahead`: the best candidates tried for a few steps on the next
batches before each decision). Adapters for Lightning and Hugging Face live in :mod:`trajlib.deploy.lightning` and
:mod:`trajlib.deploy.hf`; the measurement probe is :class:`trajlib.measure.StepProbe`.
"""

from trajlib.deploy._lookahead import Lookahead, LookaheadDecision
from trajlib.deploy._scheduler import (
    DEAD_TOL,
    DEAD_WINDOWS,
    GUARD,
    GUARD_WINDOWS,
    OVERFIT_REPORTS,
    OVERFIT_TOL,
    RELAPSE_START_Z,
    RELAPSE_TOL,
    RELAPSE_WINDOWS,
    STALL_FACTOR,
    STALL_WINDOWS,
    ControllerScheduler,
    guard_tag,
)

__all__ = [
    "DEAD_TOL",
    "DEAD_WINDOWS",
    "GUARD",
    "GUARD_WINDOWS",
    "OVERFIT_REPORTS",
    "OVERFIT_TOL",
    "RELAPSE_START_Z",
    "RELAPSE_TOL",
    "RELAPSE_WINDOWS",
    "STALL_FACTOR",
    "STALL_WINDOWS",
    "ControllerScheduler",
    "Lookahead",
    "LookaheadDecision",
    "guard_tag",
]
