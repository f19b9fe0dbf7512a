"""Every ```python block of docs/record.md runs, in order, in one namespace (so they can't rot),
in a temporary working directory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "record.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
_NAMESPACE: dict[str, object] = {}


def test_the_page_has_its_sections():
    text = DOC.read_text()
    assert text.startswith("# Record your own training")
    for title in (
        "## A plain loop",
        "## With branches",
        "## Long runs",
        "## PyTorch Lightning",
        "## Hugging Face Trainer",
        "## Read it back",
    ):
        assert title in text
    assert len(BLOCKS) == 6


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_block_runs(index, tmp_path_factory, monkeypatch):
    if "lightning" in BLOCKS[index]:
        pytest.importorskip("lightning.pytorch")
    if "transformers" in BLOCKS[index]:
        pytest.importorskip("transformers")
    monkeypatch.chdir(_workdir(tmp_path_factory))
    code = compile(BLOCKS[index], f"{DOC.name}[block {index}]", "exec")
    exec(code, _NAMESPACE)  # noqa: S102 - the point of the test


_DIR: list[Path] = []


def _workdir(factory: pytest.TempPathFactory) -> Path:
    """One working directory for all blocks (they share data/mine)."""
    if not _DIR:
        _DIR.append(factory.mktemp("record-docs"))
    return _DIR[0]
