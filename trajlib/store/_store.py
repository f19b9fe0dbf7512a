"""The :class:`Store`: atomic commits of finished runs, lazy reads of committed ones."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from trajlib import schema as S
from trajlib.errors import StoreError
from trajlib.store import _chunks, _claims
from trajlib.store._check import validate
from trajlib.store._coerce import coerce_all
from trajlib.store._commit import SCHEMAS, CommitIndex
from trajlib.store._compact import compact
from trajlib.store._fs import Root, as_root, retry_count
from trajlib.store._gc import gc
from trajlib.store._layout import (
    BRANCHES,
    COUNTS_KEY,
    DECISIONS,
    LAYER_CHUNK_STEPS,
    LAYERS_DIR,
    LOCKS_DIR,
    MANIFEST,
    RUNS,
    STEPS,
    TABLES,
    Snapshot,
    check_run_id,
    dir_size,
    encode_parquet,
    new_token,
    put_parquet,
    snapshot,
)
from trajlib.store._manifest import read_manifest, write_manifest_once

Filter = str | Iterable[str] | None


def _as_set(value: Filter) -> set[str] | None:
    if value is None:
        return None
    return {value} if isinstance(value, str) else set(value)


Location = str | os.PathLike[str]


class Store:
    """A trajectory store: a directory or an fsspec URL such as ``s3://bucket/prefix`` (see
    ``docs/store.md`` for the layout and guarantees).

    Create one with :func:`create_store` or open one with :func:`open_store`. A ``Store`` object
    is cheap; it caches only the run ids of compacted files (which never change once written).
    It is meant for one thread; separate processes may share a store directory freely.

    ``durable=True`` fsyncs every fragment and directory entry before the commit, so a committed
    run survives a power loss, not only a killed process.
    """

    def __init__(self, path: Location | Root, *, durable: bool = True) -> None:
        self._retries0 = retry_count()
        root = as_root(path)
        self.root: Root = root
        #: the directory of a local store; the URL (credentials redacted) of a remote one
        self.path: Path | str = root.path if root.path is not None else root.display
        self.url: str = root.display
        try:
            self.manifest = read_manifest(root)
        except StoreError:
            if not root.is_local:
                root.check_reachable()  # a missing bucket or refused credential says so
            raise
        self.durable = durable
        self._held: dict[str, str] = {}  # run id -> claim token held by this object
        self._index = CommitIndex(root)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @property
    def retries(self) -> int:
        """Transient object-store errors retried since this object was opened (its opening
        included; by any store object of this thread meanwhile); always 0 on disk."""
        return retry_count() - self._retries0

    # ------------------------------------------------------------------ which runs are committed
    def _locks(self) -> Root:
        return self.root

    def part_run_ids(self, rel: str) -> frozenset[str]:
        """Run ids held by one compacted file (cached: part files are immutable)."""
        return self._index.part_run_ids(rel)

    def _committed(self, snap: Snapshot) -> set[str]:
        return self._index.committed(snap)

    def is_committed(self, run_id: str) -> bool:
        """True once the run's ``runs/`` fragment (or a compacted runs file holding it) exists."""
        return self._index.is_committed(run_id)

    def committed_run_ids(self) -> set[str]:
        """Ids of every committed run."""
        return self._committed(snapshot(self.root, (RUNS,)))

    # ------------------------------------------------------------------ claims
    def claim(self, run_id: str) -> bool:
        """Claim ``run_id`` for this process (``locks/<run_id>.claim``, O_CREAT|O_EXCL).

        Returns False if another live process holds it. A claim left by a dead process on this
        host is taken over. Claiming a run this object already holds returns True.
        """
        check_run_id(run_id, "run_id")
        token = self._held.get(run_id)
        if token is not None and _claims.holds(self._locks(), run_id, token):
            return True
        token = _claims.try_claim(self._locks(), run_id)
        if token is None:
            self._held.pop(run_id, None)
            return False
        self._held[run_id] = token
        return True

    def release(self, run_id: str) -> None:
        """Release a claim taken with :meth:`claim` (no-op if this object does not hold it)."""
        token = self._held.pop(run_id, None)
        if token is not None:
            _claims.release(self._locks(), run_id, token)

    def _acquire(self, run_id: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while True:
            if self.claim(run_id):
                return True
            if self.is_committed(run_id) or time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    # ------------------------------------------------------------------ writing
    def write_run(
        self,
        run: dict,
        steps: pl.DataFrame,
        decisions: pl.DataFrame | None = None,
        branches: pl.DataFrame | None = None,
        layers: np.ndarray | None = None,
        layer_names: list[str] | None = None,
        *,
        claim_timeout_s: float = 10.0,
    ) -> bool:
        """Commit one finished run atomically; return False (writing nothing) if it is committed.

        ``run``: RUN_SCHEMA fields; ``run_id``, ``task``, ``status`` and ``steps_done`` are
        required, the others default to null. ``steps``: STEP_SCHEMA columns, one row per step
        ``0 .. steps_done - 1`` (any order; stored sorted). ``decisions`` / ``branches``:
        DECISION_SCHEMA / BRANCH_SCHEMA rows with steps in ``0 .. steps_done``. A missing
        ``run_id`` column is filled in. ``layers``: array ``[step, layer, stat]`` with
        ``len(layer_names)`` layers and the stats of ``trajlib.schema.LAYER_STATS``.

        Compatible numeric dtypes are cast; a missing, extra or incompatible column, a row count
        that disagrees with ``steps_done`` or a row of another run raises ConfigError before
        anything is written. If another live process is writing the same run, waits up to
        ``claim_timeout_s`` for it to finish and returns False (exactly one writer commits).
        A claim this object took with :meth:`claim` is used, and released once the run is written.
        """
        run_df, steps_df, dec_df, br_df, lay = coerce_all(
            run, steps, decisions, branches, layers, layer_names
        )
        run_id: str = run_df[S.RUN_ID][0]
        if self.is_committed(run_id) or not self._acquire(run_id, claim_timeout_s):
            return False
        try:
            if self.is_committed(run_id):  # committed by another process before our claim
                return False
            return self._write_fragments(run_id, run_df, steps_df, dec_df, br_df, lay)
        finally:
            self.release(run_id)

    def _write_fragments(
        self,
        run_id: str,
        run_df: pl.DataFrame,
        steps_df: pl.DataFrame,
        dec_df: pl.DataFrame | None,
        br_df: pl.DataFrame | None,
        lay: tuple[np.ndarray, list[str]] | None,
    ) -> bool:
        root, durable = self.root, self.durable
        counts: dict[str, object] = {
            STEPS: steps_df.height,
            DECISIONS: 0 if dec_df is None else dec_df.height,
            BRANCHES: 0 if br_df is None else br_df.height,
            "layers": None if lay is None else list(lay[0].shape),
        }
        written: list[str] = []
        try:
            for table, df in ((STEPS, steps_df), (DECISIONS, dec_df), (BRANCHES, br_df)):
                rel = f"{table}/{run_id}.parquet"
                if df is None or df.height == 0:
                    # leftovers of an earlier, unfinished attempt must not become part of this run
                    root.remove(rel, tree=False)
                    continue
                put_parquet(root, rel, df, run_id, durable=durable)
                written.append(rel)
            self._write_layers(run_id, lay)
            marker = f"{RUNS}/{run_id}.parquet"
            meta = {COUNTS_KEY: json.dumps(counts)}
            if root.is_local:
                put_parquet(root, marker, run_df, run_id, durable=durable, metadata=meta)
            else:
                # a conditional PUT: a writer whose claim was taken over never commits twice
                payload = bytes(encode_parquet(run_df, meta))
                if not root.put_new(marker, payload, run_id) and (
                    root.read_bytes(marker) != payload  # not our own PUT, retried after landing
                ):
                    return False  # committed by another writer (its claim outlived ours)
        except BaseException:
            # not committed: remove what this attempt wrote (gc would do it otherwise); on object
            # storage another writer's commit may own these names by now: leave them then
            try:
                if root.is_local or not self._index.is_committed(run_id):
                    for rel in written:
                        root.remove(rel, tree=False)
            except Exception:  # noqa: BLE001 - best effort (the store may be unreachable): gc
                pass
            raise
        return True

    def _write_layers(self, run_id: str, lay: tuple[np.ndarray, list[str]] | None) -> None:
        rel = f"{LAYERS_DIR}/{run_id}"
        self.root.remove(rel, tree=True)  # leftover of an unfinished attempt (we hold the claim)
        if lay is None:
            return
        import zarr

        data, names = lay
        n, n_layers, n_stats = data.shape
        chunk = max(1, min(LAYER_CHUNK_STEPS, n))
        shard = max(chunk, math.ceil(n / chunk) * chunk)

        def fill(store: object) -> None:
            arr = zarr.create_array(
                store=store,  # type: ignore[arg-type]
                shape=data.shape,
                dtype="float32",
                chunks=(chunk, max(1, n_layers), n_stats),
                shards=(shard, max(1, n_layers), n_stats),
                attributes={"layer_names": names, "stats": list(S.LAYER_STATS)},
                dimension_names=("step", "layer", "stat"),
                zarr_format=3,
            )
            if data.size:
                arr[...] = data

        self.root.write_tree(rel, run_id, self.durable, fill)

    # ------------------------------------------------------------------ reading
    def runs(self, task: Filter = None, status: Filter = None) -> pl.LazyFrame:
        """Lazy RUN_SCHEMA frame of the committed runs, optionally of some tasks / statuses."""
        return self._scan_runs(snapshot(self.root, (RUNS,)), task, status)

    def _scan_runs(self, snap: Snapshot, task: Filter, status: Filter) -> pl.LazyFrame:
        files = [*snap.fragments[RUNS].values(), *snap.parts[RUNS]]
        lf = self._scan(files, S.RUN_SCHEMA) if files else pl.LazyFrame(schema=S.RUN_SCHEMA)
        tasks, statuses = _as_set(task), _as_set(status)
        if tasks is not None:
            lf = lf.filter(pl.col(S.TASK).is_in(sorted(tasks)))
        if statuses is not None:
            lf = lf.filter(pl.col(S.STATUS).is_in(sorted(statuses)))
        return lf

    def _scan(self, rels: list[str], schema: dict) -> pl.LazyFrame:
        root = self.root
        return pl.scan_parquet(root.scan_source(rels), schema=schema, **root.scan_options())

    def _scan_table(
        self, table: str, task: Filter, status: Filter, run_ids: Filter
    ) -> pl.LazyFrame:
        schema = SCHEMAS[table]
        snap = snapshot(self.root, (RUNS, table))  # runs first: see snapshot()
        committed = self._committed(snap)
        wanted: set[str] | None = None
        if task is not None or status is not None:
            sel = self._scan_runs(snap, task, status).select(S.RUN_ID).collect()
            wanted = set(sel[S.RUN_ID].to_list())
        ids = _as_set(run_ids)
        if ids is not None:
            wanted = ids if wanted is None else wanted & ids
        frags = [
            rel
            for rid, rel in snap.fragments[table].items()
            if rid in committed and (wanted is None or rid in wanted)
        ]
        parts = snap.parts[table]
        if wanted is not None:
            parts = [rel for rel in parts if not self.part_run_ids(rel).isdisjoint(wanted)]
        frames = []
        if frags:
            frames.append(self._scan(frags, schema))
        if parts:
            lf = self._scan(parts, schema)
            if wanted is not None:
                lf = lf.filter(pl.col(S.RUN_ID).is_in(sorted(wanted)))
            frames.append(lf)
        if not frames:
            return pl.LazyFrame(schema=schema)
        return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")

    def steps(
        self, task: Filter = None, status: Filter = None, run_ids: Filter = None
    ) -> pl.LazyFrame:
        """Lazy STEP_SCHEMA frame of committed runs (filters: task, status, run ids).

        Rows of one run are contiguous and sorted by step; runs come in no particular order.
        """
        return self._scan_table(STEPS, task, status, run_ids)

    def decisions(
        self, task: Filter = None, status: Filter = None, run_ids: Filter = None
    ) -> pl.LazyFrame:
        """Lazy DECISION_SCHEMA frame of committed runs (same filters as :meth:`steps`)."""
        return self._scan_table(DECISIONS, task, status, run_ids)

    def branches(
        self, task: Filter = None, status: Filter = None, run_ids: Filter = None
    ) -> pl.LazyFrame:
        """Lazy BRANCH_SCHEMA frame of committed runs (same filters as :meth:`steps`)."""
        return self._scan_table(BRANCHES, task, status, run_ids)

    def layers(self, run_id: str) -> tuple[np.ndarray, list[str], list[str]]:
        """Per-layer statistics of a committed run.

        Returns ``(array, layer_names, stat_names)``; ``array`` is float32 with shape
        ``[steps_done, len(layer_names), len(stat_names)]``.
        """
        import zarr

        if not self.is_committed(run_id):
            raise StoreError(f"{self.url}: run {run_id!r} is not committed")
        rel = f"{LAYERS_DIR}/{run_id}"
        if not self.root.exists(f"{rel}/zarr.json"):
            raise StoreError(
                f"{self.url}: run {run_id!r} has no per-layer array "
                "(it was written without `layers`)"
            )
        arr = zarr.open_array(store=self.root.zarr_store(rel, read_only=True), mode="r")
        attrs = dict(arr.attrs)
        names: list[str] = attrs["layer_names"]  # type: ignore[assignment]
        stats: list[str] = attrs["stats"]  # type: ignore[assignment]
        return np.asarray(arr[...], dtype=np.float32), list(names), list(stats)

    # ------------------------------------------------------------------ maintenance
    def info(self) -> dict:
        """Summary: runs by task and status, total steps, decisions, branches, size on disk.

        Keys: ``path``, ``schema_version``, ``runs``, ``runs_by_task`` (task -> status -> count),
        ``steps``, ``decisions``, ``branches``, ``size_bytes``, ``files``, ``fragments`` (per-run
        step files), ``parts`` (compacted step files), ``compaction_pending``.
        """
        snap = snapshot(self.root)
        runs = self._scan_runs(snap, None, None).select(S.TASK, S.STATUS, S.STEPS_DONE).collect()
        by_task: dict[str, dict[str, int]] = {}
        for task, status, n in runs.group_by(S.TASK, S.STATUS).len().sort(S.TASK, S.STATUS).rows():
            by_task.setdefault(task, {})[status] = n

        def count(table: str) -> int:
            return int(self._scan_table(table, None, None, None).select(pl.len()).collect().item())

        size, files = dir_size(self.root)
        return {
            "path": self.url,
            "schema_version": self.manifest["schema_version"],
            "runs": runs.height,
            "runs_by_task": by_task,
            "steps": int(runs[S.STEPS_DONE].sum() or 0),
            "decisions": count(DECISIONS),
            "branches": count(BRANCHES),
            "size_bytes": size,
            "files": files,
            "fragments": len(snap.fragments[STEPS]),
            "parts": len(snap.parts[STEPS]),
            "compaction_pending": snap.journal is not None,
        }

    def validate(self) -> list[str]:
        """Problems found (empty list = consistent). See :func:`trajlib.store._check.validate`."""
        return validate(self.root)

    def gc(self) -> list[str]:
        """Remove what unfinished runs and compactions left; return the paths removed.

        A run this object has claimed (:meth:`claim`) counts as under a live claim: left alone."""
        return gc(self.root)

    def compact(self, *, rows_per_file: int = 4_000_000) -> dict:
        """Merge per-run fragments into sorted part files; return statistics."""
        return compact(self.root, rows_per_file=rows_per_file, durable=self.durable)

    # ------------------------------------------------------------------ chunks (trajlib.store._chunks)
    def write_chunk(self, run_id: str, start: int, stop: int, **tables: Any) -> None:
        """Commit rows ``start .. stop - 1`` of a run still being recorded (never visible as a
        run; see :mod:`trajlib.store._chunks`)."""
        _chunks.write_chunk(self.root, run_id, start, stop, durable=self.durable, **tables)

    def read_chunks(self, run_id: str, upto: int | None = None) -> dict[str, Any]:
        """What the committed chunks of an unfinished run hold (steps below ``upto``)."""
        return _chunks.read_chunks(self.root, run_id, upto)

    def drop_chunks(self, run_id: str, from_step: int = 0) -> None:
        """Remove the chunks of ``run_id`` starting at ``from_step`` or later (all by default)."""
        _chunks.drop_chunks(self.root, run_id, from_step)

    def incomplete_runs(self) -> list[str]:
        """Runs with committed chunks and no commit (killed recordings), sorted."""
        return _chunks.incomplete_runs(self.root, self.committed_run_ids())


def create_store(path: Location, exist_ok: bool = True, *, durable: bool = True) -> Store:
    """Create a store at ``path`` — a directory or an fsspec URL such as ``s3://bucket/prefix`` —
    (or open it if it exists and ``exist_ok``) and return it.

    Raises StoreError if ``path`` is a non-empty directory (or prefix) that is not a store, or a
    store exists and ``exist_ok`` is False; StoreVersionError if it has another schema version.
    """
    root = as_root(path)
    if root.path is not None:
        p = root.path
        if p.exists() and not p.is_dir():
            raise StoreError(f"{p}: exists and is not a directory")
        p.mkdir(parents=True, exist_ok=True)
    else:
        root.check_reachable()  # the bucket exists and the credentials are accepted
        _check_conditional_writes(root)
    where = root.display
    created = False
    if not root.exists(MANIFEST):
        others = [n for n in root.listdir("") if not n.startswith(".")]
        # re-check: another process may have created the store while we listed
        if others and not root.exists(MANIFEST):
            raise StoreError(
                f"{where}: directory is not empty and not a trajlib store "
                f"(found {', '.join(sorted(others)[:5])}); choose an empty path"
            )
        if not others:
            created = write_manifest_once(root)
    if not created and not exist_ok:
        raise StoreError(f"{where}: a store already exists (pass exist_ok=True to open it)")
    store = Store(root, durable=durable)  # checks format and version
    root.mkdirs(*TABLES, LOCKS_DIR)
    _ensure_layers_group(root)
    return store


def _check_conditional_writes(root: Root) -> None:
    """Refuse an object store that ignores create-if-absent (``If-None-Match: *``): there two
    writers could both claim, and both commit, one run."""
    rel = f"{LOCKS_DIR}/.probe.{new_token()}"
    try:
        first = root.put_new(rel, b"1", "_probe")
        second = root.put_new(rel, b"2", "_probe")
    finally:
        root.remove(rel, tree=False)
    if not first or second:
        raise StoreError(
            f"{root.display}: this object store does not honour conditional writes "
            "(PUT with If-None-Match: *), which claims and commit markers rely on; use AWS S3, "
            "MinIO or another server that supports them"
        )


def _ensure_layers_group(root: Root) -> None:
    rel = f"{LAYERS_DIR}/zarr.json"
    if root.exists(rel):
        return
    root.mkdirs(LAYERS_DIR)
    doc = {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {"stats": list(S.LAYER_STATS), "layout": "one array per run id"},
    }
    root.put_atomic(rel, (json.dumps(doc, indent=2) + "\n").encode("utf-8"), "_manifest")


def open_store(path: Location, *, durable: bool = True) -> Store:
    """Open an existing store (a directory or an fsspec URL such as ``s3://bucket/prefix``);
    StoreError if ``path`` is not one, StoreVersionError if its schema version is not readable by
    this trajlib."""
    return Store(path, durable=durable)
