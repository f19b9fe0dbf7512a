"""Column names and dtypes of every table in a trajectory store (one place, used everywhere).

Conventions
-----------
* Row ``t`` of the step table describes optimizer step ``t`` (0-based) of a run: the minibatch loss
  and gradient at the parameters theta_t, the hyperparameters used by update ``t``, and the update
  u_t = theta_{t+1} - theta_t.
* Validation is measured on theta_{t+1} (after update ``t``) whenever ``(t + 1) % val_every == 0``
  and at the end of the run; it is stored in row ``t``. Rows without a measurement hold null.
* A decision at step ``s`` (``s % every == 0``, ``s > 0``) is taken after ``s`` updates, sees rows
  ``t < s`` only, and sets the hyperparameters for steps ``s .. s + every - 1``.
"""

from __future__ import annotations

import polars as pl

SCHEMA_VERSION = 1
STORE_FORMAT = "trajlib-store"

# ---------------------------------------------------------------- steps (one row per step per run)
RUN_ID = "run_id"
STEP = "step"
LOSS = "loss"  # minibatch training loss at theta_t
LR = "lr"  # learning rate used by update t (what is in force)
MOMENTUM = "momentum"  # SGD momentum or Adam beta1 in force
WEIGHT_DECAY = "weight_decay"
L2 = "l2"  # explicit L2 penalty coefficient added to the loss
INPUT_NOISE = "input_noise"  # std of Gaussian noise added to inputs
LR_MULT = "lr_mult"  # controller/behaviour multiplier m(t) (lr = base_lr * base_factor * m)
BASE_FACTOR = "base_factor"  # base schedule factor in [0, 1] (1 for free mode)
GRAD_NORM = "grad_norm"  # global L2 norm of the gradient at theta_t
WEIGHT_NORM = "weight_norm"  # global L2 norm of theta_t
UPDATE_NORM = "update_norm"  # global L2 norm of u_t
GRAD_COS = "grad_cos"  # cosine(g_t, g_{t-1}); null at t = 0
UPDATE_COS = "update_cos"  # cosine(u_t, u_{t-1}); null at t = 0
UPD_RATIO_MEAN = "upd_ratio_mean"  # mean over layers of |u_l| / |theta_l|
UPD_RATIO_MAX = "upd_ratio_max"
UPD_RATIO_MIN = "upd_ratio_min"
UPD_RATIO_MEDIAN = "upd_ratio_median"
STEP_TIME_S = "step_time_s"
FINITE = "finite"  # loss and gradient were finite
VAL_LOSS = "val_loss"  # on theta_{t+1}; null when not measured
VAL_ACC = "val_acc"  # null when not measured or not a classification task

HP_COLUMNS = (LR, MOMENTUM, WEIGHT_DECAY, L2, INPUT_NOISE)

STEP_SCHEMA: dict[str, pl.DataType] = {
    RUN_ID: pl.String(),
    STEP: pl.Int32(),
    LOSS: pl.Float32(),
    LR: pl.Float32(),
    MOMENTUM: pl.Float32(),
    WEIGHT_DECAY: pl.Float32(),
    L2: pl.Float32(),
    INPUT_NOISE: pl.Float32(),
    LR_MULT: pl.Float32(),
    BASE_FACTOR: pl.Float32(),
    GRAD_NORM: pl.Float32(),
    WEIGHT_NORM: pl.Float32(),
    UPDATE_NORM: pl.Float32(),
    GRAD_COS: pl.Float32(),
    UPDATE_COS: pl.Float32(),
    UPD_RATIO_MEAN: pl.Float32(),
    UPD_RATIO_MAX: pl.Float32(),
    UPD_RATIO_MIN: pl.Float32(),
    UPD_RATIO_MEDIAN: pl.Float32(),
    STEP_TIME_S: pl.Float32(),
    FINITE: pl.Boolean(),
    VAL_LOSS: pl.Float32(),
    VAL_ACC: pl.Float32(),
}

# ---------------------------------------------------------------- per-layer array (zarr)
# layers.zarr/<run_id> has shape [step, layer, stat]; layer names in the array's attributes.
LAYER_STATS = ("grad_norm", "weight_norm", "update_norm")

# ---------------------------------------------------------------- runs (one row per run)
TASK = "task"
SEED = "seed"
STATUS = "status"  # complete | diverged | failed
STATUS_COMPLETE, STATUS_DIVERGED, STATUS_FAILED = "complete", "diverged", "failed"
STEPS_DONE = "steps_done"
BUDGET = "budget"
DIVERGED_AT = "diverged_at"  # step of the first non-finite loss, null otherwise
FINAL_VAL_LOSS = "final_val_loss"
FINAL_VAL_ACC = "final_val_acc"
FINAL_TEST_LOSS = "final_test_loss"
FINAL_TEST_ACC = "final_test_acc"
RECIPE = "recipe"  # name of the recipe
ENTRY = "entry"  # JSON of the recipe entry that produced this run (task, seed, behaviour, hps)
BEHAVIOUR = "behaviour"  # name of the behaviour schedule
BASE_SCHEDULE = "base_schedule"
OPTIMIZER = "optimizer"
EVERY = "every"  # decision interval
VAL_EVERY = "val_every"
WALL_TIME_S = "wall_time_s"
ERROR = "error"  # message for failed runs
CREATED = "created"
LAYER_NAMES = "layer_names"  # JSON list

RUN_SCHEMA: dict[str, pl.DataType] = {
    RUN_ID: pl.String(),
    TASK: pl.String(),
    SEED: pl.Int64(),
    STATUS: pl.String(),
    STEPS_DONE: pl.Int32(),
    BUDGET: pl.Int32(),
    DIVERGED_AT: pl.Int32(),
    FINAL_VAL_LOSS: pl.Float64(),
    FINAL_VAL_ACC: pl.Float64(),
    FINAL_TEST_LOSS: pl.Float64(),
    FINAL_TEST_ACC: pl.Float64(),
    RECIPE: pl.String(),
    ENTRY: pl.String(),
    BEHAVIOUR: pl.String(),
    BASE_SCHEDULE: pl.String(),
    OPTIMIZER: pl.String(),
    EVERY: pl.Int32(),
    VAL_EVERY: pl.Int32(),
    WALL_TIME_S: pl.Float64(),
    ERROR: pl.String(),
    CREATED: pl.String(),
    LAYER_NAMES: pl.String(),
}

# ---------------------------------------------------------------- decisions (one row per decision)
ACTION = "action"  # index into the action space taken by the behaviour policy
PROPENSITY = "propensity"  # probability the behaviour policy had of taking it
N_ACTIONS = "n_actions"
DECISION_SCHEMA: dict[str, pl.DataType] = {
    RUN_ID: pl.String(),
    STEP: pl.Int32(),
    ACTION: pl.Int16(),
    PROPENSITY: pl.Float32(),
    N_ACTIONS: pl.Int16(),
    LR: pl.Float32(),  # lr in force just before the decision
    LR_MULT: pl.Float32(),
    MOMENTUM: pl.Float32(),
    WEIGHT_DECAY: pl.Float32(),
}

# ---------------------------------------------------------------- branches (one row per decision x action)
HORIZON = "horizon"  # steps each branch ran
BRANCH_TRAIN_LOSS = "train_loss"  # mean minibatch loss over the last quarter of the branch
BRANCH_VAL_LOSS = "val_loss"  # validation loss at the end of the branch (horizon H)
BRANCH_VAL_LOSS_HALF = "val_loss_half"  # validation loss after H/2 steps
BRANCH_VAL_LOSS_COOLED = "val_loss_cooled"  # after a linear LR cool-down to 0 at the end
BRANCH_VAL_ACC = "val_acc"
BRANCH_DIVERGED = "diverged"
COOLDOWN = "cooldown"  # cool-down steps used for val_loss_cooled (0 = not measured)
BRANCH_SCHEMA: dict[str, pl.DataType] = {
    RUN_ID: pl.String(),
    STEP: pl.Int32(),
    ACTION: pl.Int16(),
    HORIZON: pl.Int32(),
    COOLDOWN: pl.Int32(),
    BRANCH_TRAIN_LOSS: pl.Float32(),
    BRANCH_VAL_LOSS_HALF: pl.Float32(),
    BRANCH_VAL_LOSS: pl.Float32(),
    BRANCH_VAL_LOSS_COOLED: pl.Float32(),
    BRANCH_VAL_ACC: pl.Float32(),
    BRANCH_DIVERGED: pl.Boolean(),
}


def empty_frame(schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """An empty frame with exactly this schema."""
    return pl.DataFrame(schema=schema)
