"""The README names the two commands CI runs. (Its code blocks are run and checked by
tests/test_docs.py.)"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_names_the_commands_ci_runs():
    text = (ROOT / "README.md").read_text()
    assert "bash scripts/demo.sh" in text and "bash scripts/test.sh" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
