"""Helpers that run in child processes for the crash and concurrency tests.

As a script: ``python _crash_writer.py STORE N_RUNS N_STEPS`` writes runs r000.. into STORE,
skipping committed ones (what a restarted collector does), printing "ready" once imports are done.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _store_fixtures import make_run  # noqa: E402

from trajlib.store import create_store, open_store  # noqa: E402


def run_ids(n: int) -> list[str]:
    return [f"r{i:03d}" for i in range(n)]


def write_all(path: str, n: int, n_steps: int) -> None:
    import zarr  # noqa: F401 - imported lazily by write_run; warm up before "ready"

    store = create_store(path)
    make_run("warm-up", n_steps=n_steps)
    print("ready", flush=True)
    for rid in run_ids(n):
        if store.is_committed(rid):
            continue
        store.write_run(**make_run(rid, n_steps=n_steps, n_layers=2))
    print("done", flush=True)


def concurrent_writer(path: str, ids: list[str], n_steps: int, barrier, queue) -> None:
    """Write ``ids`` into the store at ``path`` after all writers reach ``barrier``."""
    data = [make_run(rid, n_steps=n_steps, n_layers=2) for rid in ids]
    store = create_store(path, exist_ok=True)
    barrier.wait()
    results = {}
    for r in data:
        results[r["run"]["run_id"]] = store.write_run(**r)
    queue.put(results)


def compact_and_die_at(path: str, phase: str) -> None:
    """Compact the store and ``os._exit`` right after ``phase`` (a SIGKILL stand-in)."""
    import os

    from trajlib.store import _compact

    def hook(name: str) -> None:
        if name == phase:
            os._exit(9)

    _compact._HOOK = hook
    open_store(path).compact()


if __name__ == "__main__":
    write_all(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
