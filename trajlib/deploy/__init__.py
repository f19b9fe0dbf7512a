"""Deploy: put a controller checkpoint into anybody's PyTorch training loop.

:class:`ControllerScheduler` behaves like a ``torch.optim.lr_scheduler`` scheduler; it computes the
online features from optimizer hooks and the losses you give it, and asks the controller every N
steps.
"""

from trajlib.deploy._probe import LAYER_ROWS, PROBE_COLUMNS, STRIDED, StepProbe, summarise
from trajlib.deploy._scheduler import ControllerScheduler

__all__ = [
    "ControllerScheduler",
    "StepProbe",
    "STRIDED",
    "summarise",
    "PROBE_COLUMNS",
    "LAYER_ROWS",
]
