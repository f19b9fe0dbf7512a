"""Fixtures for the collect tests: a small real sink that writes parquet fragments.

It implements the RunSink protocol the way a store does (claim files created with O_EXCL, a run
visible only once its ``runs/`` fragment is renamed into place), so the executor tests exercise
real writes from worker processes. It is replaced by ``trajlib.store`` where that is available.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl


class ParquetSink:
    """Writes ``runs/``, ``steps/``, ``decisions/``, ``branches/`` parquet and ``layers/`` npy
    fragments per run; a run is committed once ``runs/<id>.parquet`` exists."""

    def __init__(self, root: str | os.PathLike, fail_after: int | None = None) -> None:
        self.root = Path(root)
        for d in ("runs", "steps", "decisions", "branches", "layers", "locks"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.fail_after = fail_after
        self.written = 0

    def is_committed(self, run_id: str) -> bool:
        return (self.root / "runs" / f"{run_id}.parquet").exists()

    def claim(self, run_id: str) -> bool:
        try:
            fd = os.open(self.root / "locks" / run_id, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True

    def release(self, run_id: str) -> None:
        (self.root / "locks" / run_id).unlink(missing_ok=True)

    def write_run(self, run, steps, decisions=None, branches=None, layers=None, layer_names=None):
        n_committed = len(list((self.root / "runs").glob("*.parquet")))
        if self.fail_after is not None and n_committed >= self.fail_after:
            raise RuntimeError("sink stopped (simulated crash)")
        rid = run["run_id"]
        if self.is_committed(rid):
            return False
        steps.write_parquet(self.root / "steps" / f"{rid}.parquet")
        if decisions is not None:
            decisions.write_parquet(self.root / "decisions" / f"{rid}.parquet")
        if branches is not None:
            branches.write_parquet(self.root / "branches" / f"{rid}.parquet")
        if layers is not None:
            np.save(self.root / "layers" / f"{rid}.npy", layers)
        row = {k: v for k, v in run.items()}
        row["pid"] = os.getpid()
        row["layer_names"] = json.dumps(layer_names or [])
        tmp = self.root / "runs" / f".{rid}.tmp"
        pl.DataFrame([row]).write_parquet(tmp)
        tmp.rename(self.root / "runs" / f"{rid}.parquet")
        self.written += 1
        return True

    def runs(self) -> pl.DataFrame:
        files = sorted((self.root / "runs").glob("*.parquet"))
        return pl.concat([pl.read_parquet(f) for f in files], how="diagonal") if files else None

    def steps(self, run_id: str) -> pl.DataFrame:
        return pl.read_parquet(self.root / "steps" / f"{run_id}.parquet")


def open_sink(root: str, fail_after: int | None = None) -> ParquetSink:
    """Picklable sink factory target (``functools.partial(open_sink, root)``)."""
    return ParquetSink(root, fail_after)
