"""Chunks: the committed parts of a run that is still being recorded (or was killed).

A long recording commits its rows every C steps, so a killed process loses at most one chunk. A
chunk never makes a run visible: the run is committed only by its ``runs/`` fragment, written by
:meth:`Store.write_run` at the end, after which the chunks are dropped. A run with chunks and no
``runs/`` fragment is **incomplete**: :meth:`Store.runs` and every reader never see it;
:meth:`Store.incomplete_runs` lists it, :meth:`Store.read_chunks` reads what it committed (a
resumed recording starts from there), and :meth:`Store.drop_chunks` removes it.

Layout (next to the tables; nothing else in the store reads it)::

    chunks/<run_id>/<start:09d>-<stop:09d>.steps.parquet       STEP_SCHEMA rows start .. stop-1
    chunks/<run_id>/<start:09d>-<stop:09d>.decisions.parquet   DECISION_SCHEMA (if any)
    chunks/<run_id>/<start:09d>-<stop:09d>.branches.parquet    BRANCH_SCHEMA (if any)
    chunks/<run_id>/<start:09d>-<stop:09d>.layers.npy          float32 [stop-start, layer, stat]
    chunks/<run_id>/<start:09d>-<stop:09d>.json                the marker, written last

Each file is put atomically through the store's :class:`~trajlib.store._fs.Root` (temp file +
rename on a local disk, one PUT on object storage); a chunk exists once its marker (run row so
far, layer names) is in place; files of a chunk without a marker are leftovers.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np
import polars as pl

from trajlib import schema as S
from trajlib.errors import ConfigError
from trajlib.store._fs import Root
from trajlib.store._layout import check_run_id

__all__ = [
    "CHUNKS_DIR",
    "drop_chunks",
    "incomplete_runs",
    "list_chunks",
    "read_chunks",
    "write_chunk",
]

CHUNKS_DIR = "chunks"
_MARKER = re.compile(r"^(\d{9})-(\d{9})\.json$")
_FILE = re.compile(r"^(\d{9})-(\d{9})\.")
_TABLES = (
    ("steps", S.STEP_SCHEMA),
    ("decisions", S.DECISION_SCHEMA),
    ("branches", S.BRANCH_SCHEMA),
)


def _dir(run_id: str) -> str:
    return f"{CHUNKS_DIR}/{check_run_id(run_id)}"


def _parquet(df: pl.DataFrame) -> memoryview:
    buf = io.BytesIO()
    df.write_parquet(buf, compression="lz4", statistics=True)
    return buf.getbuffer()


def write_chunk(
    root: Root,
    run_id: str,
    start: int,
    stop: int,
    *,
    run: dict[str, Any],
    steps: pl.DataFrame,
    decisions: pl.DataFrame | None = None,
    branches: pl.DataFrame | None = None,
    layers: np.ndarray | None = None,
    layer_names: list[str] | None = None,
    durable: bool = True,
) -> None:
    """Commit rows ``start .. stop - 1`` of ``run_id`` (and its decisions / branches with steps
    in that range) as one chunk; a chunk with the same range is replaced."""
    if not 0 <= start < stop:
        raise ConfigError("chunk", "0 <= start < stop", (start, stop))
    d = _dir(run_id)
    root.mkdirs(CHUNKS_DIR, d)
    stem = f"{d}/{start:09d}-{stop:09d}"
    root.remove(f"{stem}.json", tree=False)  # the old chunk of this range is gone first
    for name, df in (("steps", steps), ("decisions", decisions), ("branches", branches)):
        if df is not None and df.height:
            root.put_atomic(f"{stem}.{name}.parquet", _parquet(df), run_id, durable=durable)
    if layers is not None:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(layers, dtype=np.float32))
        root.put_atomic(f"{stem}.layers.npy", buf.getbuffer(), run_id, durable=durable)
    marker = {"run": run, "layer_names": layer_names, "start": start, "stop": stop}
    data = json.dumps(marker, sort_keys=True, default=str).encode()
    root.put_atomic(f"{stem}.json", data, run_id, durable=durable)


def list_chunks(root: Root, run_id: str) -> list[tuple[int, int]]:
    """The committed chunks of ``run_id``: ``(start, stop)`` pairs, sorted."""
    out = []
    for name in root.listdir(_dir(run_id)):
        m = _MARKER.match(name)
        if m:
            out.append((int(m.group(1)), int(m.group(2))))
    return sorted(out)


def read_chunks(root: Root, run_id: str, upto: int | None = None) -> dict[str, Any]:
    """What the committed chunks of ``run_id`` hold, for steps below ``upto`` (all if None):
    ``steps`` / ``decisions`` / ``branches`` frames (trajlib.schema), ``layers`` (float32
    ``[step, layer, stat]`` or None), ``layer_names``, ``run`` (the last chunk's run row) and
    ``stop`` (the first step not covered)."""
    d = _dir(run_id)
    names = set(root.listdir(d))
    frames: dict[str, list[pl.DataFrame]] = {name: [] for name, _ in _TABLES}
    layers: list[np.ndarray] = []
    last: dict[str, Any] = {}
    expect, n_chunks = 0, 0
    for start, stop in list_chunks(root, run_id):
        if (upto is not None and stop > upto) or start != expect:
            break  # chunks are contiguous from step 0
        stem = f"{start:09d}-{stop:09d}"
        last = json.loads(root.read_bytes(f"{d}/{stem}.json"))
        for name, _schema in _TABLES:
            if f"{stem}.{name}.parquet" in names:
                frames[name].append(
                    pl.read_parquet(io.BytesIO(root.read_bytes(f"{d}/{stem}.{name}.parquet")))
                )
        if f"{stem}.layers.npy" in names:
            layers.append(np.load(io.BytesIO(root.read_bytes(f"{d}/{stem}.layers.npy"))))
        expect, n_chunks = stop, n_chunks + 1
    out: dict[str, Any] = {
        name: pl.concat(frames[name]) if frames[name] else S.empty_frame(schema)
        for name, schema in _TABLES
    }
    out["layers"] = np.concatenate(layers) if layers and len(layers) == n_chunks else None
    out["layer_names"] = last.get("layer_names")
    out["run"] = last.get("run")
    out["stop"] = expect
    return out


def drop_chunks(root: Root, run_id: str, from_step: int = 0) -> None:
    """Remove the chunks of ``run_id`` that start at ``from_step`` or later (all by default)."""
    d = _dir(run_id)
    if from_step <= 0:
        root.remove(d, tree=True)
        return
    for name in root.listdir(d):
        m = _FILE.match(name)
        if m and int(m.group(1)) >= from_step:
            root.remove(f"{d}/{name}", tree=False)


def incomplete_runs(root: Root, committed: set[str]) -> list[str]:
    """Run ids with at least one committed chunk and no commit (sorted)."""
    return sorted(
        name
        for name in root.listdir(CHUNKS_DIR)
        if name not in committed and list_chunks(root, name)
    )
