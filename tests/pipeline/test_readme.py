"""The README's Python code blocks run as written (so the quickstart cannot rot)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_python_blocks_execute_in_order(monkeypatch):
    blocks = _blocks(ROOT / "README.md")
    assert blocks, "the README has Python examples"
    monkeypatch.chdir(ROOT)
    threads = torch.get_num_threads()
    ns: dict[str, object] = {"__name__": "__readme__"}
    try:
        for i, code in enumerate(blocks):
            exec(compile(code, f"README.md block {i}", "exec"), ns)  # noqa: S102
    finally:
        torch.set_num_threads(threads)
    sched = ns.get("sched")
    assert sched is not None and sched.events["errors"] == 0  # type: ignore[attr-defined]
    assert sched.events["decisions"] > 0  # type: ignore[attr-defined]


def test_readme_names_the_commands_ci_runs():
    text = (ROOT / "README.md").read_text()
    assert "bash scripts/demo.sh" in text and "bash scripts/test.sh" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
