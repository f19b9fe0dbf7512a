"""Claims are linked into place complete, so a writer killed while claiming never blocks a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from trajlib.store._claims import read_claim


def test_a_claim_of_a_dead_writer_is_taken_over_at_once(store):
    # a complete claim whose holder is dead (what a SIGKILL at any point after claiming leaves)
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(proc.stdout)
    assert store.claim("r001")
    claim = store.path / "locks" / "r001.claim"
    raw, info = read_claim(claim)
    info["pid"], info["start"] = dead_pid, None
    store.release("r001")
    claim.write_text(json.dumps(info))
    assert store.claim("r001")  # no waiting for a grace period
    store.release("r001")
    assert not claim.exists()


def test_an_orphaned_claim_temporary_is_garbage_and_claims_are_never_empty(store):
    locks = store.path / "locks"
    locks.mkdir(exist_ok=True)
    orphan = locks / ".r002.deadbeef.tmp"  # killed after writing its claim, before linking it
    orphan.write_text('{"pid": 1}')
    assert store.claim("r002")
    assert (locks / "r002.claim").stat().st_size > 0
    store.release("r002")
    removed = store.gc()
    assert "locks/.r002.deadbeef.tmp" in removed and not orphan.exists()
    assert not [p for p in os.listdir(locks) if p.endswith(".tmp")]
