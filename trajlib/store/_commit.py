"""What each table holds and which runs are committed: the one module the façade
(:mod:`trajlib.store._store`) and the maintenance modules (``_check``, ``_compact``, ``_gc``) share.

- :data:`SCHEMAS`: table name -> polars schema (from :mod:`trajlib.schema`).
- :func:`run_counts`: the row counts recorded in a runs file at commit (``trajlib.counts``).
- :class:`CommitIndex`: the commit predicates of one store directory. A run is committed once its
  ``runs/<run_id>.parquet`` fragment exists, or once a compacted ``runs/part-*.parquet`` holds it.
  The index caches the run ids of part files (immutable once written) and the list of compacted
  runs files (until ``compaction.epoch`` changes), so ``is_committed`` stays O(1) for writers.
"""

from __future__ import annotations

import json

import polars as pl

from trajlib import schema as S
from trajlib.errors import StoreError
from trajlib.store._fs import Root
from trajlib.store._layout import (
    BRANCHES,
    COUNTS_KEY,
    DECISIONS,
    EPOCH,
    JOURNAL,
    RUNS,
    STEPS,
    Snapshot,
    check_run_id,
    snapshot,
)

__all__ = ["SCHEMAS", "CommitIndex", "run_counts"]

SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    RUNS: S.RUN_SCHEMA,
    STEPS: S.STEP_SCHEMA,
    DECISIONS: S.DECISION_SCHEMA,
    BRANCHES: S.BRANCH_SCHEMA,
}


def run_counts(root: Root, rel: str) -> dict:
    """The ``trajlib.counts`` metadata of a runs file (run fragment: one dict; part: id -> dict)."""
    meta = pl.read_parquet_metadata(root.open_read(rel))
    raw = meta.get(COUNTS_KEY)
    if raw is None:
        raise StoreError(
            f"{root.display}/{rel}: lacks the {COUNTS_KEY!r} metadata written by write_run"
        )
    return json.loads(raw)


class CommitIndex:
    """Which runs of the store at ``root`` are committed (see the module docstring)."""

    def __init__(self, root: Root) -> None:
        self.root = root
        self._part_ids: dict[str, frozenset[str]] = {}
        self._parts_cache: tuple[object, list[str]] | None = None

    def part_run_ids(self, rel: str) -> frozenset[str]:
        """Run ids held by one compacted file (cached: part files are immutable)."""
        ids = self._part_ids.get(rel)
        if ids is None:
            col = pl.read_parquet(self.root.open_read(rel), columns=[S.RUN_ID])[S.RUN_ID]
            ids = frozenset(col.unique().to_list())
            self._part_ids[rel] = ids
        return ids

    def committed(self, snap: Snapshot) -> set[str]:
        """Ids of the runs committed in ``snap`` (a :func:`~trajlib.store._layout.snapshot`)."""
        ids = set(snap.fragments[RUNS])
        for rel in snap.parts[RUNS]:
            ids |= self.part_run_ids(rel)
        return ids

    def is_committed(self, run_id: str) -> bool:
        """True once the run's ``runs/`` fragment (or a compacted runs file holding it) exists."""
        check_run_id(run_id, "run_id")
        if self.root.exists(f"{RUNS}/{run_id}.parquet"):
            return True
        return any(run_id in self.part_run_ids(rel) for rel in self.runs_parts())

    def runs_parts(self) -> list[str]:
        """Compacted runs files, cached until ``compaction.epoch`` changes.

        Listing ``runs/`` costs O(committed runs); this keeps ``is_committed`` O(1) for writers.
        The epoch is read before listing and replaced by compaction only after its swap, so a
        stale cache is never kept.
        """
        root = self.root
        if root.exists(JOURNAL):
            return snapshot(root, (RUNS,)).parts[RUNS]
        key = root.stamp(EPOCH)
        if self._parts_cache is not None and self._parts_cache[0] == key:
            return self._parts_cache[1]
        parts = snapshot(root, (RUNS,)).parts[RUNS]
        if not root.exists(JOURNAL):
            self._parts_cache = (key, parts)
        return parts
