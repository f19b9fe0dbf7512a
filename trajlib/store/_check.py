"""``Store.validate``: every committed run complete and consistent across its tables.

Checked: the manifest (format, schema version); each runs file (RUN_SCHEMA, file name = run id,
``trajlib.counts`` metadata); no run committed twice; for steps / decisions / branches files of
committed runs: exact schema, rows only of committed runs, row counts equal to those recorded at
commit, steps ``0 .. steps_done - 1`` each exactly once, decision and branch steps within
``0 .. steps_done``; each recorded layer array present with the recorded shape, float32, and the
run's layer names and ``LAYER_STATS`` in its attributes. Files of uncommitted runs are garbage for
``gc``, not problems. A compaction journal is honoured exactly as readers honour it.
"""

from __future__ import annotations

import json
import os

import polars as pl

from trajlib import schema as S
from trajlib.errors import StoreError
from trajlib.store._coerce import STATUSES
from trajlib.store._commit import SCHEMAS, run_counts
from trajlib.store._fs import Root, as_root
from trajlib.store._layout import (
    BRANCHES,
    DECISIONS,
    LAYERS_DIR,
    RUNS,
    STEPS,
    fragment_id,
    snapshot,
)
from trajlib.store._manifest import read_manifest


def _schema_diff(got: dict[str, pl.DataType], want: dict[str, pl.DataType]) -> str:
    parts = [f"missing {c}" for c in want if c not in got]
    parts += [f"extra {c}" for c in got if c not in want]
    parts += [
        f"{c} is {got[c]}, expected {want[c]}" for c in want if c in got and got[c] != want[c]
    ]
    if not parts and list(got) != list(want):
        parts.append("column order differs")
    return "; ".join(parts)


def validate(location: Root | str | os.PathLike[str]) -> list[str]:
    """Problems of the store at ``location`` (a directory, URL or Root), each naming the file or
    run concerned; empty means consistent."""
    root = as_root(location)
    try:
        read_manifest(root)
        snap = snapshot(root)
    except StoreError as exc:
        return [str(exc)]
    problems: list[str] = []

    # ---- runs: the commit markers
    frames: list[pl.DataFrame] = []
    counts: dict[str, dict] = {}
    seen: dict[str, list[str]] = {}
    for rel in (*snap.fragments[RUNS].values(), *snap.parts[RUNS]):
        try:
            df = pl.read_parquet(root.open_read(rel))
            meta = run_counts(root, rel)
        except (StoreError, OSError, pl.exceptions.PolarsError, json.JSONDecodeError) as exc:
            problems.append(f"{rel}: unreadable runs file ({exc})")
            continue
        diff = _schema_diff(dict(df.schema), S.RUN_SCHEMA)
        if diff:
            problems.append(f"{rel}: not RUN_SCHEMA ({diff})")
            continue
        ids = df[S.RUN_ID].to_list()
        rid = fragment_id(rel.rpartition("/")[2])
        if rid is not None:
            if ids != [rid]:
                problems.append(f"{rel}: must hold exactly one row of run {rid!r}; got {ids[:5]}")
                continue
            counts[rid] = meta
        else:
            if set(meta) != set(ids):
                problems.append(f"{rel}: {S.RUN_ID}s differ from its trajlib.counts metadata")
            counts.update(meta)
        for r in ids:
            seen.setdefault(r, []).append(rel)
        frames.append(df)
    for rid, rels in sorted(seen.items()):
        if len(rels) > 1:
            problems.append(f"run {rid!r}: committed {len(rels)} times ({', '.join(rels)})")
    runs = (pl.concat(frames) if frames else pl.DataFrame(schema=S.RUN_SCHEMA)).unique(
        S.RUN_ID, keep="first", maintain_order=True
    )
    for rid, status, done in runs.select(S.RUN_ID, S.STATUS, S.STEPS_DONE).rows():
        if status not in STATUSES:
            problems.append(f"run {rid!r}: status must be one of {STATUSES}; got {status!r}")
        if done is None or done < 0:
            problems.append(f"run {rid!r}: steps_done must be a non-negative integer; got {done}")
    steps_done = {r: (d or 0) for r, d in runs.select(S.RUN_ID, S.STEPS_DONE).rows()}
    committed = set(steps_done)

    # ---- steps, decisions, branches
    for table in (STEPS, DECISIONS, BRANCHES):
        rels = [rel for rid, rel in snap.fragments[table].items() if rid in committed]
        rels += snap.parts[table]
        good: list[str] = []
        for rel in rels:
            try:
                diff = _schema_diff(
                    dict(pl.read_parquet_schema(root.open_read(rel))), SCHEMAS[table]
                )
            except (OSError, pl.exceptions.PolarsError) as exc:
                problems.append(f"{rel}: unreadable ({exc})")
                continue
            if diff:
                problems.append(f"{rel}: not the {table} schema ({diff})")
            else:
                good.append(rel)
        if good:
            agg = (
                pl.scan_parquet(
                    root.scan_source(good), include_file_paths="_file", **root.scan_options()
                )
                .group_by(S.RUN_ID)
                .agg(
                    pl.len().alias("n"),
                    pl.col(S.STEP).min().alias("lo"),
                    pl.col(S.STEP).max().alias("hi"),
                    pl.col(S.STEP).n_unique().alias("nu"),
                    pl.col("_file").first().alias("file"),
                )
                .collect()
            )
        else:
            agg = pl.DataFrame(
                schema={
                    S.RUN_ID: pl.String,
                    "n": pl.UInt32,
                    "lo": pl.Int32,
                    "hi": pl.Int32,
                    "nu": pl.UInt32,
                    "file": pl.String,
                }
            )
        found = {row[0]: row for row in agg.rows()}
        for rid, (_r, n, _lo, _hi, _nu, file) in sorted(found.items()):
            if rid not in committed:
                problems.append(f"{table}: {n} rows of uncommitted run {rid!r} in {file}")
        for rid in sorted(committed):
            done = steps_done[rid]
            n, lo, hi, nu = found.get(rid, (rid, 0, None, None, 0, None))[1:5]
            want = done if table == STEPS else counts.get(rid, {}).get(table)
            if want is None:
                problems.append(f"run {rid!r}: no recorded {table} row count (trajlib.counts)")
            elif n != want:
                problems.append(f"run {rid!r}: {n} {table} rows; expected {want}")
            if n == 0:
                continue
            if table == STEPS and (lo != 0 or hi != done - 1 or nu != n):
                problems.append(
                    f"run {rid!r}: steps must be 0..{done - 1} each once; got "
                    f"{nu} distinct of {n} rows from {lo} to {hi}"
                )
            elif table != STEPS and (lo < 0 or hi > done):
                problems.append(f"run {rid!r}: {table} steps must lie in 0..{done}; got {lo}..{hi}")

    # ---- per-layer arrays
    layer_names = dict(runs.select(S.RUN_ID, S.LAYER_NAMES).rows())
    for rid in sorted(committed):
        shape = counts.get(rid, {}).get("layers")
        if shape is None:
            continue
        problems += _check_layers(root, rid, list(shape), steps_done[rid], layer_names[rid])
    return problems


def _check_layers(
    root: Root, rid: str, shape: list[int], done: int, names_json: str | None
) -> list[str]:
    import zarr

    rel = f"{LAYERS_DIR}/{rid}"
    if not root.exists(f"{rel}/zarr.json"):
        return [f"run {rid!r}: layer array {LAYERS_DIR}/{rid} is missing (recorded shape {shape})"]
    try:
        arr = zarr.open_array(store=root.zarr_store(rel, read_only=True), mode="r")
        attrs = dict(arr.attrs)
    except Exception as exc:  # noqa: BLE001 - any zarr failure is a problem to report
        return [f"run {rid!r}: layer array unreadable ({exc})"]
    out = []
    if list(arr.shape) != shape or shape[0] != done:
        out.append(
            f"run {rid!r}: layer array shape {list(arr.shape)}; expected {shape} with {done} steps"
        )
    if str(arr.dtype) != "float32":
        out.append(f"run {rid!r}: layer array dtype {arr.dtype}; expected float32")
    if attrs.get("stats") != list(S.LAYER_STATS):
        out.append(
            f"run {rid!r}: layer array stats {attrs.get('stats')}; expected {list(S.LAYER_STATS)}"
        )
    want_names = json.loads(names_json) if names_json else None
    if attrs.get("layer_names") != want_names:
        out.append(
            f"run {rid!r}: layer names {attrs.get('layer_names')} differ from the run's "
            f"{want_names}"
        )
    return out
