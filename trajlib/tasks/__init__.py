"""Tasks: what to train. A task is a model factory, fixed data splits, a loss, a metric and defaults.

Built-ins (no downloads): ``mnist1d-mlp``, ``mnist1d-cnn``, ``digits-mlp``, ``digits-cnn``,
``teacher-student``, ``synth-classification``, ``char-lm``. Generated tasks ``gen-<i>``,
``gen2-<i>`` and ``gen3-<i>`` (:func:`generated_task`): a distribution over architectures, data,
optimizers and budgets, each with a family label. A user task is any zero-argument callable returning a
:class:`Task`, named as ``module:function``.
"""

from trajlib.tasks import _builtin  # noqa: F401  (registers the built-in tasks; defines, no work)
from trajlib.tasks._base import Task, TaskData, get_task, list_tasks, register_task
from trajlib.tasks._generated import (
    GENERATED_FAMILIES,
    GENERATED_VERSIONS,
    generated_task,
    generated_tasks,
    is_generated,
)

__all__ = [
    "GENERATED_FAMILIES",
    "GENERATED_VERSIONS",
    "Task",
    "TaskData",
    "generated_task",
    "generated_tasks",
    "get_task",
    "is_generated",
    "list_tasks",
    "register_task",
]

# Not public (the engines' batching helpers, in trajlib.tasks._base): kept in this namespace only
# while trajlib.collect._engine imports them from here.
from trajlib.tasks._base import batch_slot, epoch_order  # noqa: E402, F401
