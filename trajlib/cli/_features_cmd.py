"""``trajlib features STORE [--set NAME] --out FILE.parquet``: write the decision table of a store."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

__all__ = ["add_features_command", "run_features_command"]


def add_features_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the ``features`` sub-command on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "features",
        help="derive the decision table (features, actions, branch outcomes) of a store",
        description=(
            "One row per decision point: run_id, step, the feature set's features, n_missing, the "
            "action taken and its propensity, and each branched action's outcomes "
            "({outcome}_a{i}, e.g. val_loss_a0)."
        ),
    )
    p.add_argument("store", help="path of a trajectory store (data/<store>)")
    p.add_argument(
        "--set",
        dest="feature_set",
        default="default",
        metavar="NAME",
        help="registered feature set (default: %(default)s)",
    )
    p.add_argument("--out", required=True, metavar="FILE.parquet", help="parquet file to write")
    p.set_defaults(func=run_features_command)


def run_features_command(args: argparse.Namespace) -> int:
    """Build the decision table of ``args.store`` and write it to ``args.out`` (atomically)."""
    from trajlib.features import decision_table, get_feature_set
    from trajlib.store import open_store

    fs = get_feature_set(args.feature_set)
    st = open_store(args.store)
    branches = st.branches() if hasattr(st, "branches") else None
    table = decision_table(st.runs(), st.steps(), st.decisions(), branches, fs)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".features-", suffix=".parquet", dir=os.path.dirname(out))
    os.close(fd)
    try:
        table.write_parquet(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(
        f"wrote {table.height} decision rows x {len(fs)} features "
        f"(set {fs.name!r} v{fs.version}, hash {fs.hash[:12]}) to {out}",
        file=sys.stderr,
    )
    return 0
