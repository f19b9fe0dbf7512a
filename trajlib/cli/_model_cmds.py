"""``trajlib model info DIR`` and ``trajlib model verify DIR``.

``add_model_commands(subparsers)`` registers the ``model`` command on the main parser's
subparsers; each leaf sets ``func`` to a handler ``(argparse.Namespace) -> int``. User errors raise
:class:`~trajlib.errors.TrajlibError` (the main entry point prints them and exits 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from trajlib.controllers import verify_checkpoint
from trajlib.controllers._checkpoint import read_manifest

__all__ = ["add_model_commands", "cmd_model_info", "cmd_model_verify"]


def add_model_commands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``model {info,verify} DIR`` to ``subparsers`` (from ``parser.add_subparsers()``)."""
    model = subparsers.add_parser("model", help="inspect and verify controller checkpoints")
    sub = model.add_subparsers(dest="model_command", metavar="{info,verify}")
    sub.required = True
    info = sub.add_parser("info", help="print a checkpoint's manifest summary")
    info.add_argument("dir", help="checkpoint folder (holds manifest.json)")
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    info.set_defaults(func=cmd_model_info)
    verify = sub.add_parser("verify", help="check every payload file's sha256 and that it loads")
    verify.add_argument("dir", help="checkpoint folder (holds manifest.json)")
    verify.set_defaults(func=cmd_model_verify)
    return model


def cmd_model_info(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the manifest summary of ``args.dir``; raises CheckpointError when unreadable."""
    out = out or sys.stdout
    m = read_manifest(args.dir)
    if getattr(args, "json", False):
        print(json.dumps(m, indent=1), file=out)
        return 0
    fs = m["feature_set"]
    actions = [a.get("label") or json.dumps(a.get("moves")) for a in m["action_space"]]
    hps = [
        f"{h['name']} [{h['low']:g}, {h['high']:g}] {h.get('scale', 'log')}" for h in m["hp_space"]
    ]
    td = m.get("training_data") or {}
    lines = [
        f"checkpoint     {args.dir}",
        f"kind           {m['kind']}  (format {m['format']} v{m['format_version']}, "
        f"trajlib {m.get('trajlib_version', '?')})",
        f"feature set    {fs.get('name')} v{fs.get('version')}  hash {fs.get('hash')}  "
        f"({len(fs.get('names', []))} features)",
        f"actions        {len(actions)}: {', '.join(map(str, actions))}",
        f"hyperparams    {'; '.join(hps)}",
        f"acting         every {m['every']} steps, mode {m['mode']}, "
        f"base schedule {m['base_schedule']}",
        f"labels         {json.dumps(m.get('label_strategy'))}",
        f"training data  {json.dumps(td, sort_keys=True)}",
        f"params         {json.dumps(m['params'], sort_keys=True)}",
    ]
    metrics = m.get("offline_metrics") or {}
    if metrics:
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, int | float) else f"{k}={v}" for k, v in metrics.items()
        )
        lines.append(f"offline        {shown}")
    rule = m.get("decision_rule")
    if isinstance(rule, dict):
        cal = rule.get("calibration") or {}
        how = (
            f"calibrated by {cal.get('grouped_by')} ({cal.get('n_folds')} folds, "
            f"precision >= {cal.get('min_precision')})"
            if cal.get("table")
            else "set by hand"
        )
        zs = rule.get("z_by_action")
        z = rule.get("z") if zs is None else "z_a (" + ", ".join(map(str, zs)) + "; None: never)"
        lines.append(f"do no harm     act iff mean - {z} x std > {rule.get('margin')}; {how}")
    lines.append(f"files          {', '.join(sorted(m['files']))}")
    print("\n".join(lines), file=out)
    return 0


def cmd_model_verify(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Exit code 0 when the checkpoint at ``args.dir`` is intact, 1 listing its problems."""
    out = out or sys.stdout
    problems = verify_checkpoint(args.dir)
    if not problems:
        print(f"{args.dir}: ok", file=out)
        return 0
    print(f"{args.dir}: {len(problems)} problem(s)", file=out)
    for p in problems:
        print(f"  - {p}", file=out)
    return 1
