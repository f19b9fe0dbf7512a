"""Garbage collection of what unfinished runs and compactions left behind.

Removes: fragments and layer arrays of runs that are not committed, temporary files, stale claims,
and the leftovers of an interrupted compaction. Each run is cleaned while gc holds that run's claim
(so no writer can be writing it meanwhile), and only after checking again that it is not committed.
Nothing of a committed run or of a run under a live claim is ever removed.
"""

from __future__ import annotations

import os
import time

from trajlib.errors import ConfigError
from trajlib.store import _claims
from trajlib.store._commit import CommitIndex
from trajlib.store._compact import recover
from trajlib.store._fs import Root, as_root
from trajlib.store._layout import (
    COMPACT_OWNER,
    LAYERS_DIR,
    LOCKS_DIR,
    TABLES,
    check_run_id,
    snapshot,
    temp_owner,
)

# an object-storage takeover marker older than this has done its job (see trajlib.store._claims)
_TAKEOVER_MARKER_S = 600.0


def _older_than(root: Root, rel: str, seconds: float) -> bool:
    mtime = root.mtime(rel)
    return mtime is not None and time.time() - mtime > seconds


def _join(d: str, name: str) -> str:
    return f"{d}/{name}" if d else name


def gc(location: Root | str | os.PathLike[str]) -> list[str]:
    """Remove the garbage of the store at ``location`` (a directory, URL or Root); return the
    removed paths relative to it, sorted."""
    root = as_root(location)
    removed: list[str] = []

    # 1. stale claims (their holders are dead), so their runs can be cleaned below
    for claimant in _claims.claim_owners(root):
        if _claims.remove_if_stale(root, claimant):
            removed.append(f"{LOCKS_DIR}/{claimant}{_claims.CLAIM_SUFFIX}")
    if not root.is_local:
        for rel in _claims.takeover_markers(root):
            if _older_than(root, rel, _TAKEOVER_MARKER_S) and root.remove(rel):
                removed.append(rel)

    # 2. an interrupted compaction, unless one is running now
    token = _claims.try_claim(root, COMPACT_OWNER)
    if token is not None:
        try:
            removed += recover(root)
            for d in ("", LAYERS_DIR, *TABLES):
                for name in root.listdir(d):
                    owner = temp_owner(name)
                    rel = _join(d, name)
                    if owner == "_manifest" and not _older_than(root, rel, 60.0):
                        continue  # maybe a create_store in progress
                    if owner in (COMPACT_OWNER, "_manifest") and root.remove(rel):
                        removed.append(rel)
        finally:
            _claims.release(root, COMPACT_OWNER, token)

    # 3. per-run leftovers: fragments of uncommitted runs, layer arrays, temporaries
    snap = snapshot(root)
    index = CommitIndex(root)
    committed = index.committed(snap)
    owned: dict[str, list[str]] = {}
    for table in TABLES:
        for rid, rel in snap.fragments[table].items():
            if rid not in committed:
                owned.setdefault(rid, []).append(rel)
    for d in (*TABLES, LAYERS_DIR, LOCKS_DIR):
        for name in root.listdir(d):
            owner = temp_owner(name)
            rel = _join(d, name)
            if owner is not None and not owner.startswith("_"):
                owned.setdefault(owner, []).append(rel)
            elif (
                d == LAYERS_DIR
                and owner is None
                and name != "zarr.json"
                and name not in committed
                and root.is_dir(rel)
            ):
                owned.setdefault(name, []).append(rel)
    for rid, rels in sorted(owned.items()):
        try:
            check_run_id(rid)
        except ConfigError:  # no writer can own this name: plain garbage
            removed += [rel for rel in rels if root.remove(rel)]
            continue
        token = _claims.try_claim(root, rid)
        if token is None:
            continue  # a live process (this one included) is writing this run
        try:
            still_committed = index.is_committed(rid)
            for rel in rels:
                if still_committed and temp_owner(rel.rpartition("/")[2]) is None:
                    continue  # a committed run's own files: never touched
                if root.remove(rel):
                    removed.append(rel)
        finally:
            _claims.release(root, rid, token)
    return sorted(removed)
