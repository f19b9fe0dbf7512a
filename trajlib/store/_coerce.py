"""Check and cast what ``Store.write_run`` is given against :mod:`trajlib.schema`.

Every problem raises :class:`~trajlib.errors.ConfigError` naming the column (``steps.loss``,
``run.status``...), what was expected and what was got. Nothing is written before these checks pass.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from trajlib import schema as S
from trajlib.errors import ConfigError
from trajlib.store._layout import check_run_id

REQUIRED_RUN_FIELDS = (S.RUN_ID, S.TASK, S.STATUS, S.STEPS_DONE)
STATUSES = (S.STATUS_COMPLETE, S.STATUS_DIVERGED, S.STATUS_FAILED)

_INT_RANGES: dict[str, tuple[int, int]] = {
    "Int16": (-(2**15), 2**15 - 1),
    "Int32": (-(2**31), 2**31 - 1),
    "Int64": (-(2**63), 2**63 - 1),
}


def _castable(got: pl.DataType, want: pl.DataType) -> bool:
    """Casts ``write_run`` does silently: numeric widening/narrowing checked by a strict cast."""
    if got == pl.Null:
        return True
    if want.is_float():
        return got.is_numeric()
    if want.is_integer():
        return got.is_integer()
    if want == pl.String:
        return isinstance(got, (pl.Categorical, pl.Enum))
    return False


def coerce_frame(
    df: object, schema: dict[str, pl.DataType], table: str, run_id: str
) -> pl.DataFrame:
    """Return ``df`` with exactly ``schema``'s columns, order and dtypes.

    A missing ``run_id`` column is filled with ``run_id``; any other missing or extra column, a
    dtype that cannot be cast without loss, or a row of another run raises ConfigError.
    """
    if not isinstance(df, pl.DataFrame):
        raise ConfigError(table, "a polars DataFrame", type(df).__name__)
    if S.RUN_ID not in df.columns:
        df = df.with_columns(pl.lit(run_id, dtype=pl.String).alias(S.RUN_ID))
    for col in schema:
        if col not in df.columns:
            raise ConfigError(
                f"{table}.{col}",
                f"a column of dtype {schema[col]}",
                "no such column",
                f"every column of trajlib.schema's {table} table is required",
            )
    extra = [c for c in df.columns if c not in schema]
    if extra:
        raise ConfigError(
            f"{table}.{extra[0]}",
            "absent (not a column of the schema)",
            f"an extra column of dtype {df.schema[extra[0]]}",
            "drop it or add it to trajlib.schema",
        )
    casts = []
    have = df.schema
    for col, want in schema.items():
        got = have[col]
        if got == want:
            continue
        if not _castable(got, want):
            raise ConfigError(f"{table}.{col}", f"dtype {want}", f"dtype {got}")
        casts.append(pl.col(col).cast(want, strict=True))
    if casts:
        try:
            df = df.with_columns(casts)
        except pl.exceptions.PolarsError as exc:
            # find the offending column for the message
            for col, want in schema.items():
                try:
                    df.select(pl.col(col).cast(want, strict=True))
                except pl.exceptions.PolarsError:
                    raise ConfigError(
                        f"{table}.{col}",
                        f"values that fit dtype {want}",
                        f"dtype {df.schema[col]} with out-of-range values",
                    ) from exc
            raise
    if list(df.columns) != list(schema):
        df = df.select(list(schema))
    ids = df[S.RUN_ID]
    if df.height and not (ids.null_count() == 0 and (ids == run_id).all()):
        bad = ids.filter(ids.is_null() | (ids != run_id))[0]
        raise ConfigError(f"{table}.run_id", f"{run_id!r} in every row (the run's id)", bad)
    if S.STEP in schema and df[S.STEP].null_count():
        raise ConfigError(f"{table}.step", "non-null in every row", None)
    return df


def _check_step_range(df: pl.DataFrame, table: str, steps_done: int) -> None:
    if df.height == 0:
        return
    lo, hi = int(df[S.STEP].min()), int(df[S.STEP].max())  # type: ignore[arg-type]
    if lo < 0 or hi > steps_done:
        raise ConfigError(
            f"{table}.step", f"within 0..{steps_done} (steps_done)", f"values from {lo} to {hi}"
        )


def _scalar(field: str, value: object, want: pl.DataType) -> object:
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if want == pl.String:
        if isinstance(value, str):
            return value
        raise ConfigError(f"run.{field}", "a string", value)
    if want.is_integer():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"run.{field}", f"an integer ({want})", value)
        lo, hi = _INT_RANGES[str(want)]
        if not lo <= value <= hi:
            raise ConfigError(f"run.{field}", f"an integer within {want}'s range", value)
        return value
    if want.is_float():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"run.{field}", "a number", value)
        return float(value)
    raise AssertionError(f"unhandled dtype {want}")  # pragma: no cover - schema programming error


def coerce_run(run: object, layer_names: Sequence[str] | None) -> pl.DataFrame:
    """One-row RUN_SCHEMA frame from the run dict; optional fields default to null.

    ``entry`` may be given as a mapping (stored as sorted JSON), ``layer_names`` as a list (stored
    as JSON); ``created`` defaults to now (UTC, ISO 8601).
    """
    if not isinstance(run, Mapping):
        raise ConfigError("run", "a mapping of RUN_SCHEMA fields", type(run).__name__)
    unknown = [k for k in run if k not in S.RUN_SCHEMA]
    if unknown:
        raise ConfigError(
            f"run.{unknown[0]}",
            "a field of trajlib.schema.RUN_SCHEMA",
            "an unknown field",
            f"known: {', '.join(S.RUN_SCHEMA)}",
        )
    for f in REQUIRED_RUN_FIELDS:
        if run.get(f) is None:
            raise ConfigError(f"run.{f}", "present and not null", run.get(f))
    row = dict(run)
    check_run_id(row[S.RUN_ID])
    if row[S.STATUS] not in STATUSES:
        raise ConfigError("run.status", f"one of {', '.join(STATUSES)}", row[S.STATUS])
    if isinstance(row.get(S.ENTRY), Mapping):
        row[S.ENTRY] = json.dumps(row[S.ENTRY], sort_keys=True)
    if not isinstance(row.get(S.LAYER_NAMES), (str, type(None))):
        row[S.LAYER_NAMES] = json.dumps(list(row[S.LAYER_NAMES]))
    if layer_names is not None:
        as_json = json.dumps(list(layer_names))
        if row.get(S.LAYER_NAMES) is not None and json.loads(row[S.LAYER_NAMES]) != list(
            layer_names
        ):
            raise ConfigError(
                "run.layer_names", f"the layer_names argument {as_json}", row[S.LAYER_NAMES]
            )
        row[S.LAYER_NAMES] = as_json
    if row.get(S.CREATED) is None:
        row[S.CREATED] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    values = {f: [_scalar(f, row.get(f), dt)] for f, dt in S.RUN_SCHEMA.items()}
    if values[S.STEPS_DONE][0] < 0:  # type: ignore[operator]
        raise ConfigError("run.steps_done", "a non-negative integer", values[S.STEPS_DONE][0])
    return pl.from_dicts([{f: v[0] for f, v in values.items()}], schema=S.RUN_SCHEMA)


def coerce_layers(
    layers: object, layer_names: Sequence[str] | None, n_steps: int
) -> tuple[np.ndarray, list[str]]:
    """Check the per-layer array: shape [n_steps, len(layer_names), len(LAYER_STATS)], float32."""
    if not isinstance(layers, np.ndarray):
        raise ConfigError("layers", "a numpy array [step, layer, stat]", type(layers).__name__)
    if layers.ndim != 3 or layers.shape[2] != len(S.LAYER_STATS):
        raise ConfigError(
            "layers",
            f"shape [step, layer, {len(S.LAYER_STATS)}] (stats {', '.join(S.LAYER_STATS)})",
            f"shape {list(layers.shape)}",
        )
    if layers.shape[0] != n_steps:
        raise ConfigError(
            "layers",
            f"{n_steps} rows along axis 0 (one per step row)",
            f"shape {list(layers.shape)}",
        )
    if not (np.issubdtype(layers.dtype, np.floating) or np.issubdtype(layers.dtype, np.integer)):
        raise ConfigError("layers", "a numeric array (stored as float32)", f"dtype {layers.dtype}")
    if layer_names is None:
        raise ConfigError(
            "layer_names",
            f"a list of {layers.shape[1]} layer names",
            None,
            "needed whenever layers is given",
        )
    names = list(layer_names)
    if len(names) != layers.shape[1] or not all(isinstance(n, str) for n in names):
        raise ConfigError("layer_names", f"{layers.shape[1]} strings (layers.shape[1])", names)
    return np.ascontiguousarray(layers, dtype=np.float32), names


def coerce_all(
    run: object,
    steps: object,
    decisions: object,
    branches: object,
    layers: object,
    layer_names: Sequence[str] | None,
) -> tuple[
    pl.DataFrame,
    pl.DataFrame,
    pl.DataFrame | None,
    pl.DataFrame | None,
    tuple[np.ndarray, list[str]] | None,
]:
    """Check every input of ``write_run``; return frames ready to write."""
    run_df = coerce_run(run, layer_names)
    run_id: str = run_df[S.RUN_ID][0]
    steps_done: int = run_df[S.STEPS_DONE][0]
    steps_df = coerce_frame(steps, S.STEP_SCHEMA, "steps", run_id)
    if not steps_df[S.STEP].is_sorted():
        steps_df = steps_df.sort(S.STEP)
    if steps_df.height != steps_done:
        raise ConfigError(
            "run.steps_done", f"the number of step rows ({steps_df.height})", steps_done
        )
    step = steps_df[S.STEP].to_numpy()
    if step.size and not np.array_equal(step, np.arange(step.size, dtype=step.dtype)):
        dup = int(step.size - np.unique(step).size)
        raise ConfigError(
            "steps.step",
            f"0..{steps_done - 1}, each exactly once",
            f"values from {step.min()} to {step.max()} with {dup} duplicates",
        )
    dec_df = br_df = None
    if decisions is not None:
        dec_df = coerce_frame(decisions, S.DECISION_SCHEMA, "decisions", run_id).sort(S.STEP)
        _check_step_range(dec_df, "decisions", steps_done)
    if branches is not None:
        br_df = coerce_frame(branches, S.BRANCH_SCHEMA, "branches", run_id).sort(S.STEP, S.ACTION)
        _check_step_range(br_df, "branches", steps_done)
    lay = None
    if layers is not None:
        lay = coerce_layers(layers, layer_names, steps_done)
    elif layer_names is not None and not all(isinstance(n, str) for n in layer_names):
        raise ConfigError("layer_names", "a list of strings", list(layer_names))
    return run_df, steps_df, dec_df, br_df, lay
