"""Every ```python block of docs/deploy.md runs, in order, in one namespace (so they can't rot).

The blocks read the checkpoint folder from ``TRAJLIB_CHECKPOINT``; the test points it at the
session's real ``tiny_checkpoint`` and runs in a temporary working directory.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
_NAMESPACE: dict[str, object] = {}


def _needs(block: str) -> str | None:
    if "lightning" in block:
        return "lightning.pytorch"
    if "transformers" in block:
        return "transformers"
    return None


def test_the_doc_has_the_three_integrations():
    assert len(BLOCKS) >= 4
    text = DOC.read_text()
    assert "## Use a controller in your training loop" in text
    for title in ("### Plain PyTorch", "### PyTorch Lightning", "### Hugging Face"):
        assert title in text


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_block_runs(index, tiny_checkpoint, tmp_path, monkeypatch):
    block = BLOCKS[index]
    need = _needs(block)
    if need:
        pytest.importorskip(need)
    monkeypatch.setenv("TRAJLIB_CHECKPOINT", str(tiny_checkpoint))
    monkeypatch.chdir(tmp_path)
    code = compile(block, f"{DOC.name}[block {index}]", "exec")
    exec(code, _NAMESPACE)  # noqa: S102 - the point of the test
