"""Compare trajectory-only ``outcome`` labels with branch labels on the same runs of a store.

    python scripts/compare_labels.py STORE [--reference greedy]

Prints one JSON object per outcome setting (source train / val, kernel bandwidths) with the
numbers of :func:`trajlib.labels.compare_labels`: ``spearman`` and ``sign_agreement`` of the
taken action's advantage over keep, ``argmax_agreement`` and ``reachable_share``.
"""

from __future__ import annotations

import argparse
import json

from trajlib.controllers._from_store import training_table
from trajlib.labels import compare_labels, trajectory_labels
from trajlib.store import open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--reference", default="greedy", help="branch label strategy to compare with")
    args = ap.parse_args()
    st = open_store(args.store)
    _, ref, spec = training_table(st, labels=args.reference)
    dec = st.decisions().collect()
    keep, n_act = spec.action_space.keep_index, len(spec.action_space)
    for source in ("train", "val"):
        for bandwidth in (1.0, 2.0, 4.0):
            lab = trajectory_labels(
                st.steps(), dec, keep, n_act, source=source, bandwidth=bandwidth
            )
            res = compare_labels(lab, ref, dec, keep)
            print(
                json.dumps(
                    {"source": source, "bandwidth": bandwidth, "reference": args.reference}
                    | {k: round(v, 4) for k, v in res.items()}
                )
            )


if __name__ == "__main__":
    main()
