"""Garbage collection of what unfinished runs and compactions left behind.

Removes: fragments and layer arrays of runs that are not committed, temporary files, stale claims,
and the leftovers of an interrupted compaction. Each run is cleaned while gc holds that run's claim
(so no writer can be writing it meanwhile), and only after checking again that it is not committed.
Nothing of a committed run or of a run under a live claim is ever removed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from trajlib.errors import ConfigError
from trajlib.store import _claims
from trajlib.store._commit import CommitIndex
from trajlib.store._compact import recover
from trajlib.store._layout import (
    COMPACT_OWNER,
    LAYERS_DIR,
    LOCKS_DIR,
    TABLES,
    check_run_id,
    snapshot,
    temp_owner,
)


def _entries(directory: Path) -> list[str]:
    try:
        with os.scandir(directory) as it:
            return [e.name for e in it]
    except FileNotFoundError:
        return []


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        return False
    return True


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def gc(root: Path) -> list[str]:
    """Remove the garbage of the store at ``root``; return the removed paths relative to it,
    sorted."""
    locks = root / LOCKS_DIR
    removed: list[str] = []

    # 1. stale claims (their holders are dead), so their runs can be cleaned below
    for claimant in _claims.claim_owners(locks):
        path = locks / f"{claimant}{_claims.CLAIM_SUFFIX}"
        if _claims.remove_if_stale(path):
            removed.append(f"{LOCKS_DIR}/{path.name}")

    # 2. an interrupted compaction, unless one is running now
    token = _claims.try_claim(locks, COMPACT_OWNER)
    if token is not None:
        try:
            removed += recover(root)
            for d in (root, root / LAYERS_DIR, *(root / t for t in TABLES)):
                for name in _entries(d):
                    owner = temp_owner(name)
                    if owner == "_manifest" and not _older_than(d / name, 60.0):
                        continue  # maybe a create_store in progress
                    if owner in (COMPACT_OWNER, "_manifest") and _remove(d / name):
                        removed.append(str((d / name).relative_to(root)))
        finally:
            _claims.release(locks, COMPACT_OWNER, token)

    # 3. per-run leftovers: fragments of uncommitted runs, layer arrays, temporaries
    snap = snapshot(root)
    index = CommitIndex(root)
    committed = index.committed(snap)
    owned: dict[str, list[Path]] = {}
    for table in TABLES:
        for rid, rel in snap.fragments[table].items():
            if rid not in committed:
                owned.setdefault(rid, []).append(root / rel)
    for d in (*(root / t for t in TABLES), root / LAYERS_DIR, locks):
        for name in _entries(d):
            owner = temp_owner(name)
            if owner is not None and not owner.startswith("_"):
                owned.setdefault(owner, []).append(d / name)
            elif (
                d.name == LAYERS_DIR
                and owner is None
                and name != "zarr.json"
                and (d / name).is_dir()
                and name not in committed
            ):
                owned.setdefault(name, []).append(d / name)
    for rid, paths in sorted(owned.items()):
        try:
            check_run_id(rid)
        except ConfigError:  # no writer can own this name: plain garbage
            removed += [str(p.relative_to(root)) for p in paths if _remove(p)]
            continue
        token = _claims.try_claim(locks, rid)
        if token is None:
            continue  # a live process (this one included) is writing this run
        try:
            still_committed = index.is_committed(rid)
            for p in paths:
                if still_committed and temp_owner(p.name) is None:
                    continue  # a committed run's own files: never touched
                if _remove(p):
                    removed.append(str(p.relative_to(root)))
        finally:
            _claims.release(locks, rid, token)
    return sorted(removed)
