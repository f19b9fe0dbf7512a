"""Export committed runs as TensorBoard event files (one sub-directory per run)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from trajlib import schema as S
from trajlib.errors import TrajlibError

if TYPE_CHECKING:
    from trajlib.store._store import Store

# step-table columns written as scalars (every float column), tag = column name
SCALARS = tuple(c for c, dtype in S.STEP_SCHEMA.items() if dtype == pl.Float32())


def _summary_writer() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise TrajlibError(
            "exporting to TensorBoard needs the `tensorboard` package; "
            "install it with: pip install 'trajlib[tensorboard]'"
        ) from exc
    return SummaryWriter


def export_tensorboard(
    store: Store, outdir: str | os.PathLike[str], run_ids: list[str] | None = None
) -> list[Path]:
    """Write one TensorBoard log directory per committed run under ``outdir``.

    Each ``outdir/<run_id>/`` gets one scalar series per step column of :data:`SCALARS` (tag =
    column name, TensorBoard step = ``step``; nulls skipped). ``run_ids`` selects runs (default
    all committed). Returns the directories written. Raises TrajlibError when tensorboard is not
    installed or a requested run is not committed.
    """
    writer_cls = _summary_writer()
    committed = store.committed_run_ids()
    ids = sorted(committed) if run_ids is None else list(run_ids)
    missing = [r for r in ids if r not in committed]
    if missing:
        raise TrajlibError(
            f"`run_ids` must name committed runs of {store.path}; "
            f"not committed: {', '.join(missing[:5])}"
        )
    out = Path(outdir)
    written = []
    steps = store.steps(run_ids=ids).select(S.RUN_ID, S.STEP, *SCALARS).collect()
    for (rid,), frame in sorted(steps.partition_by(S.RUN_ID, as_dict=True).items()):
        logdir = out / str(rid)
        writer = writer_cls(log_dir=str(logdir))
        try:
            step = frame[S.STEP].to_list()
            for col in SCALARS:
                for s, v in zip(step, frame[col].to_list()):
                    if v is not None and not math.isnan(v):
                        writer.add_scalar(col, v, global_step=s)
        finally:
            writer.close()
        written.append(logdir)
    return written


__all__ = ["export_tensorboard", "SCALARS"]
