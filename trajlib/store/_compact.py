"""Compaction: merge per-run fragments into part files, crash safe at every moment.

Phases (``_HOOK`` is called after each, for tests):

1. ``written``: each batch of committed runs (in run id order) is streamed into temporary files
   ``.<_compact>.<token>.tmp``, one per table, invisible to readers. Fragments are sorted by step
   and concatenated in run id order, so part files are sorted by (run_id, step).
2. ``journal``: ``compaction.json`` lists the new part names and every fragment they replace.
3. ``renamed``: the temporaries are renamed to ``<table>/part-<token>-<n>.parquet``. Readers keep
   using the fragments until *all* new names exist, then use the parts and hide the fragments.
4. ``deleted``: the replaced fragments are removed; then the journal is removed.

A crash leaves at worst a journal: :func:`recover` (run by ``gc`` and the next ``compact``) rolls
forward when every new file is in place and back otherwise. On object storage (no rename) the
journal is written first and each part is then PUT at its final name; readers hide the new names
until all of them exist, exactly as during phase 3 on disk. Layer arrays are written sharded (one
shard file per run) by ``write_run`` already, so compaction leaves ``layers.zarr`` as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl

from trajlib import schema as S
from trajlib.errors import StoreError
from trajlib.store import _claims
from trajlib.store._commit import SCHEMAS, run_counts
from trajlib.store._fs import Root, as_root, fsync_dir, fsync_file
from trajlib.store._layout import (
    COMPACT_OWNER,
    COUNTS_KEY,
    JOURNAL,
    PARQUET_COMPRESSION,
    PART_PREFIX,
    ROW_GROUP_ROWS,
    RUNS,
    TABLES,
    bump_epoch,
    journal_complete,
    new_token,
    put_parquet,
    read_journal,
    snapshot,
    temp_path,
    write_parquet,
)

_HOOK: Callable[[str], None] | None = None  # test hook, called with the name of each phase done


def _phase(name: str) -> None:
    if _HOOK is not None:
        _HOOK(name)


def _fsync_tables(root: Root) -> None:
    if root.path is not None:
        for table in TABLES:
            fsync_dir(root.path / table)


def recover(root: Root) -> list[str]:
    """Finish (all new files present) or undo (otherwise) an interrupted compaction of the store
    at ``root``.

    The caller must hold the compaction claim. Returns the relative paths removed.
    """
    journal = read_journal(root)
    if journal is None:
        return []
    victims = journal["replaces"] if journal_complete(root, journal) else journal["new"]
    removed = []
    for rel in victims:
        if root.remove(rel):
            removed.append(rel)
    _fsync_tables(root)
    bump_epoch(root, str(journal.get("token", "recovered")))
    root.remove(JOURNAL)
    if root.path is not None:
        fsync_dir(root.path)
    removed.append(JOURNAL)
    return removed


def _batches(ids: list[str], steps_done: dict[str, int], rows_per_file: int) -> list[list[str]]:
    batches: list[list[str]] = [[]]
    rows = 0
    for rid in ids:
        if batches[-1] and rows + steps_done[rid] > rows_per_file:
            batches.append([])
            rows = 0
        batches[-1].append(rid)
        rows += steps_done[rid]
    return [b for b in batches if b]


def compact(
    location: Root | str | os.PathLike[str],
    *,
    rows_per_file: int = 4_000_000,
    durable: bool = True,
) -> dict:
    """Merge the per-run fragments of the committed runs of the store at ``location`` (a directory,
    URL or Root) into part files (see module docstring); ``durable`` fsyncs each part before the
    journal.

    Returns ``{"runs", "parts_written", "files_before", "files_after", "recovered",
    "seconds"}``. Raises StoreError if another live process is compacting this store.
    """
    if rows_per_file < 1:
        from trajlib.errors import ConfigError

        raise ConfigError("rows_per_file", "a positive integer", rows_per_file)
    t0 = time.perf_counter()
    root = as_root(location)
    token = _claims.try_claim(root, COMPACT_OWNER)
    if token is None:
        info = _claims.live_claim(root, COMPACT_OWNER)
        raise StoreError(
            f"{root.display}: another compaction is running ({info}); wait for it to finish"
        )
    try:
        recovered = recover(root)
        work = _compact_locked if root.path is not None else _compact_remote
        return {
            **work(root, rows_per_file, durable),
            "recovered": recovered,
            "seconds": round(time.perf_counter() - t0, 3),
        }
    finally:
        _claims.release(root, COMPACT_OWNER, token)


def _compact_locked(root: Root, rows_per_file: int, durable: bool) -> dict:
    assert root.path is not None
    base = root.path
    snap = snapshot(root)
    files_before = sum(len(snap.fragments[t]) + len(snap.parts[t]) for t in TABLES)
    ids = sorted(snap.fragments[RUNS])
    if not ids:
        return {
            "runs": 0,
            "parts_written": 0,
            "files_before": files_before,
            "files_after": files_before,
        }
    counts = {rid: run_counts(root, snap.fragments[RUNS][rid]) for rid in ids}
    steps_done = {rid: int(c["steps"]) for rid, c in counts.items()}
    token = new_token()
    staged: list[tuple[Path, Path]] = []  # (temporary, final)
    replaces: list[str] = []
    try:
        for n, batch in enumerate(_batches(ids, steps_done, rows_per_file)):
            for table in TABLES:
                rels = [snap.fragments[table][rid] for rid in batch if rid in snap.fragments[table]]
                if not rels:
                    continue
                final = base / table / f"{PART_PREFIX}{token}-{n:05d}.parquet"
                tmp = temp_path(final, COMPACT_OWNER)
                staged.append((tmp, final))
                paths = [str(base / rel) for rel in rels]
                if table == RUNS:
                    df = pl.read_parquet(paths, schema=S.RUN_SCHEMA).sort(S.RUN_ID)
                    meta = {COUNTS_KEY: json.dumps({rid: counts[rid] for rid in batch})}
                    write_parquet(df, tmp, metadata=meta)
                else:
                    pl.scan_parquet(paths, schema=SCHEMAS[table]).sink_parquet(
                        tmp,
                        compression=PARQUET_COMPRESSION,
                        statistics=True,
                        row_group_size=ROW_GROUP_ROWS,
                        maintain_order=True,
                    )
                if durable:
                    fsync_file(tmp)
                replaces.extend(rels)
        _phase("written")
        journal = {
            "token": token,
            "created": time.time(),
            "pid": os.getpid(),
            "new": [f"{final.parent.name}/{final.name}" for _tmp, final in staged],
            "replaces": replaces,
        }
        _write_journal(root, journal)
    except BaseException:
        for tmp, _final in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    _phase("journal")
    for tmp, final in staged:
        os.replace(tmp, final)
    _fsync_tables(root)
    _phase("renamed")
    for rel in replaces:
        root.remove(rel, tree=False)
    _fsync_tables(root)
    _phase("deleted")
    bump_epoch(root, token)
    root.remove(JOURNAL)
    fsync_dir(base)
    after = snapshot(root)
    return {
        "runs": len(ids),
        "parts_written": len(staged),
        "files_before": files_before,
        "files_after": sum(len(after.fragments[t]) + len(after.parts[t]) for t in TABLES),
    }


def _write_journal(root: Root, journal: dict) -> None:
    text = json.dumps(journal, indent=2, sort_keys=True) + "\n"
    root.put_atomic(JOURNAL, text.encode("utf-8"), COMPACT_OWNER)


def _compact_remote(root: Root, rows_per_file: int, durable: bool) -> dict:
    """Compaction on object storage: journal first, then each part PUT at its final name."""
    snap = snapshot(root)
    files_before = sum(len(snap.fragments[t]) + len(snap.parts[t]) for t in TABLES)
    ids = sorted(snap.fragments[RUNS])
    if not ids:
        return {
            "runs": 0,
            "parts_written": 0,
            "files_before": files_before,
            "files_after": files_before,
        }
    counts = {rid: run_counts(root, snap.fragments[RUNS][rid]) for rid in ids}
    steps_done = {rid: int(c["steps"]) for rid, c in counts.items()}
    token = new_token()
    plan: list[tuple[str, str, list[str], list[str]]] = []  # (table, final rel, fragments, ids)
    for n, batch in enumerate(_batches(ids, steps_done, rows_per_file)):
        for table in TABLES:
            rels = [snap.fragments[table][rid] for rid in batch if rid in snap.fragments[table]]
            if rels:
                plan.append((table, f"{table}/{PART_PREFIX}{token}-{n:05d}.parquet", rels, batch))
    replaces = [rel for _t, _f, rels, _b in plan for rel in rels]
    journal = {
        "token": token,
        "created": time.time(),
        "pid": os.getpid(),
        "new": [final for _t, final, _r, _b in plan],
        "replaces": replaces,
    }
    _write_journal(root, journal)
    _phase("journal")
    for table, final, rels, batch in plan:
        src = root.scan_source(rels)
        if table == RUNS:
            lf = pl.scan_parquet(src, schema=S.RUN_SCHEMA, **root.scan_options())
            df = lf.collect().sort(S.RUN_ID)
            meta = {COUNTS_KEY: json.dumps({rid: counts[rid] for rid in batch})}
            put_parquet(root, final, df, COMPACT_OWNER, durable=durable, metadata=meta)
        else:
            df = pl.scan_parquet(src, schema=SCHEMAS[table], **root.scan_options()).collect()
            put_parquet(root, final, df, COMPACT_OWNER, durable=durable)
    _phase("renamed")
    for rel in replaces:
        root.remove(rel, tree=False)
    _phase("deleted")
    bump_epoch(root, token)
    root.remove(JOURNAL, tree=False)
    after = snapshot(root)
    return {
        "runs": len(ids),
        "parts_written": len(plan),
        "files_before": files_before,
        "files_after": sum(len(after.fragments[t]) + len(after.parts[t]) for t in TABLES),
    }
