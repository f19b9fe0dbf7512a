"""docs/deploy.md covers the three integrations. (Its blocks are run by tests/test_docs.py:
plain PyTorch and resume in order with their asserts, Lightning and Hugging Face each alone.)"""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_the_doc_has_the_three_integrations():
    assert len(BLOCKS) >= 4
    text = DOC.read_text()
    assert "## Use a controller in your training loop" in text
    for title in ("### Plain PyTorch", "### PyTorch Lightning", "### Hugging Face"):
        assert title in text
