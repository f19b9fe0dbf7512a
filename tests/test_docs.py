"""The documentation is tested: every code block of README.md and docs/*.md runs or is checked.

* ``python`` blocks: each document's blocks run in order in one namespace (so a later block may
  use an earlier block's names), with the ``assert`` lines they contain; a block that needs an
  optional package (Lightning, transformers) runs alone in a fresh namespace. They run in a
  temporary directory holding links to the repository's ``models/`` (shipped checkpoints) and
  ``collectors/``, so relative paths work as they do from the repository's root.
* ``bash`` (and unlabelled) blocks, and inline code that starts like a command: every
  ``trajlib …`` line is parsed by the real command-line parser (``build_parser().parse_args``,
  nothing executed), so a renamed command or flag fails here; ``python SCRIPT ARGS`` is parsed
  by the script's own ``argparse`` parser (its ``main`` stops right after parsing); ``bash FILE``
  and ``make TARGET`` must exist. Any other command line fails the test.
* ``text`` blocks are diagrams. A block that is deliberately not runnable is marked with
  ``<!-- no-test -->`` on the line above it; the markers are counted in :data:`EXPECTED_NO_TEST`,
  so adding one is a visible change to this file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import inspect
import io
import itertools
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NO_TEST = "<!-- no-test -->"
#: documents with blocks marked ``<!-- no-test -->``, and how many: store.md's object-storage
#: example needs an S3 server; tests/test_s3_store.py runs it against a local one
EXPECTED_NO_TEST: dict[str, int] = {"docs/store.md": 1}
OPTIONAL = {"lightning": "lightning.pytorch", "transformers": "transformers"}
SHELL = {"bash", "sh", "shell", "console", ""}
PROSE = {"text"}  # diagrams and tables
#: files the docs describe as the design of issue 14, not there yet (remove each when it lands)
PLANNED: set[str] = set()


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marked: bool  # <!-- no-test --> above it

    @property
    def needs(self) -> str | None:
        for word, module in OPTIONAL.items():
            if re.search(rf"^\s*(from|import) {word}\b", self.code, flags=re.M):
                return module
        return None

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def parse_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
        name = str(path.relative_to(ROOT))
        out.append(
            Block(name, i + 1, m.group(1), "\n".join(lines[i + 1 : j]) + "\n", prev == NO_TEST)
        )
        i = j + 1
    return out


BLOCKS = [b for d in DOCS for b in parse_blocks(d)]
RUN = [b for b in BLOCKS if not b.marked]
ORDERED = {
    d: [b for b in RUN if b.doc == d and b.lang == "python" and not b.needs]
    for d in {b.doc for b in RUN}
}
ORDERED = {d: bs for d, bs in sorted(ORDERED.items()) if bs}
ALONE = [b for b in RUN if b.lang == "python" and b.needs]


def _inline_commands(path: Path) -> list[tuple[str, str]]:
    """Inline code spans outside fenced blocks that start like a command line."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    spans = re.findall(r"`([^`\n]+)`", text)
    start = re.compile(r"^(trajlib|python|\.venv/bin/python|PYTHONPATH=\S+ python|bash|make) ")
    return [(str(path.relative_to(ROOT)), s) for s in spans if start.match(s + " ")]


def _shell_lines() -> list[tuple[str, str]]:
    out = []
    for b in RUN:
        if b.lang in SHELL:
            out += [(f"{b}", ln) for ln in b.code.splitlines() if ln.split("#")[0].strip()]
    for d in DOCS:
        out += _inline_commands(d)
    return out


SHELL_LINES = _shell_lines()


# ----------------------------------------------------------------------------- the commands
class _Parsed(Exception):
    pass


def _exact_flags(args: list[str], help_text: str, what: str) -> None:
    """argparse accepts unambiguous prefixes (``--label`` for ``--labels``): the docs must use
    each flag as its parser spells it."""
    for a in args:
        if a.startswith("--"):
            flag = a.split("=")[0]
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (
                f"{what}: {flag} is not one of the parser's flags (an abbreviation?)"
            )


def _parse_trajlib(args: list[str]) -> None:
    from trajlib.cli import _UsageError, build_parser

    try:
        build_parser().parse_args(args)
        words = list(itertools.takewhile(lambda a: not a.startswith("-"), args))
        help_out = io.StringIO()
        with contextlib.redirect_stdout(help_out), contextlib.suppress(SystemExit):
            build_parser().parse_args([*words, "--help"])  # the sub-command's own help
        _exact_flags(args, help_out.getvalue(), f"trajlib {shlex.join(args)}")
        return
    except (SystemExit, _UsageError) as e:  # the CLI's parser raises _UsageError for main()
        error = f"trajlib {shlex.join(args)}: the command-line parser refused it ({e})"
    if all(re.fullmatch(r"[a-z][a-z-]*", a) for a in args):  # `trajlib fit`: names a command
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                build_parser().parse_args([*args, "--help"])
        except SystemExit as e:
            if e.code == 0:
                return
        except _UsageError:
            pass
    raise AssertionError(error)


def _parse_script(path: Path, args: list[str]) -> None:
    """Parse ``args`` with the script's own parser: its ``main(argv)`` stops after parsing. A
    script without ``argparse`` takes no arguments (and is not run)."""
    if "argparse" not in path.read_text():
        assert not args, f"{path.name} takes no arguments, the docs give it {args}"
        return
    spec = importlib.util.spec_from_file_location(f"_doc_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert hasattr(mod, "main"), f"{path}: no main(argv) to parse {args} with"
    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):  # noqa: ANN001, ANN202
        real(self, argv, namespace)
        _exact_flags(args, self.format_help(), f"{path.name} {shlex.join(args)}")
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_then_stop  # type: ignore[method-assign]
    argv0 = sys.argv
    try:
        if inspect.signature(mod.main).parameters:
            mod.main(args)
        else:  # main() reads sys.argv
            sys.argv = [str(path), *args]
            mod.main()
    except _Parsed:
        return
    except SystemExit as e:
        raise AssertionError(f"{path.name} {shlex.join(args)}: its parser refused it") from e
    finally:
        argparse.ArgumentParser.parse_args = real  # type: ignore[method-assign]
        sys.argv = argv0
    raise AssertionError(f"{path.name}: main() returned without parsing its arguments")


def check_command(line: str) -> None:
    """Check one command line of the docs (see the module docstring); raise AssertionError."""
    argv = shlex.split(line, comments=True)
    while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # PYTHONPATH=. python ...
        argv.pop(0)
    assert argv, line
    head, rest = argv[0], argv[1:]
    if head == "trajlib":
        return _parse_trajlib(rest)
    if head in ("python", ".venv/bin/python") and rest[:2] == ["-m", "trajlib"]:
        return _parse_trajlib(rest[2:])
    if head in ("python", ".venv/bin/python") and rest[:2] == ["-m", "pytest"]:
        for flag, value in zip(rest[2:], rest[3:]):
            if flag == "-m":  # markers used in a -m expression are declared
                declared = (ROOT / "pyproject.toml").read_text()
                for word in re.findall(r"[a-z_]+", value):
                    assert word in ("not", "and", "or") or f'"{word}:' in declared, (line, word)
        return None
    if head in ("python", ".venv/bin/python") and rest and rest[0].endswith(".py"):
        script = ROOT / rest[0]
        assert script.is_file(), f"{line}: {rest[0]} does not exist"
        return _parse_script(script, rest[1:])
    if head == "bash":
        assert len(rest) == 1 and (ROOT / rest[0]).is_file(), f"{line}: no such file"
        return None
    if head == "ray" and rest[:1] == ["start"]:  # parsed by ray's own (click) command, not run
        from ray.scripts.scripts import start

        start.make_context("ray start", rest[1:])
        return None
    if head == "make":
        makefile = (ROOT / "Makefile").read_text()
        for target in rest:
            assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), (line, target)
        return None
    raise AssertionError(
        f"{line!r}: not a command form tests/test_docs.py can check "
        f"(add one there, or mark the block {NO_TEST})"
    )


@pytest.mark.parametrize(("where", "line"), SHELL_LINES, ids=[f"{w}:{ln}" for w, ln in SHELL_LINES])
def test_command_line_in_the_docs_parses(where: str, line: str) -> None:
    check_command(line)


def test_every_trajlib_line_of_the_docs_is_checked() -> None:
    """The README's command-line block holds the main commands; all of them are collected."""
    lines = [ln for _, ln in SHELL_LINES]
    for cmd in ("collect", "features", "fit", "evaluate", "iterate", "store", "model", "export"):
        assert any(ln.startswith(f"trajlib {cmd} ") for ln in lines), cmd
    assert "bash scripts/demo.sh" in [ln.split("#")[0].strip() for ln in lines]


@pytest.mark.parametrize(
    "line",
    [
        "trajlib fit data/full --kind gbt --label greedy --out m",  # renamed flag
        "trajlib collect",  # the recipe is required (a bare command name is only a reference)
        "trajlib fit data/x --kind gbt --out",  # a flag without its value
        "trajlib colect collectors/full.toml --store s",
        "python tests/benchmarks/bench_deploy.py --no-such-flag",
        "bash scripts/no-such.sh",
        "make no-such-target",
        "rm -rf data",
    ],
)
def test_the_command_check_rejects_broken_lines(line: str) -> None:
    if line == "trajlib collect":
        _parse_trajlib(["collect"])  # a command name alone is accepted as a reference ...
        with pytest.raises(AssertionError):
            _parse_trajlib(["colect"])  # ... but only a real one
        return
    with pytest.raises(AssertionError):
        check_command(line)


# ----------------------------------------------------------------------------- the code
@pytest.fixture
def docs_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A scratch working directory with the checkpoints and recipes the examples name."""
    (tmp_path / "models").symlink_to(ROOT / "models")
    (tmp_path / "collectors").symlink_to(ROOT / "collectors")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)


def _run(blocks: list[Block]) -> None:
    ns: dict[str, object] = {"__name__": "__doc__"}
    for b in blocks:
        # padded so that tracebacks name the document's own file and line
        code = compile("\n" * b.line + b.code, str(ROOT / b.doc), "exec")
        exec(code, ns)  # noqa: S102 - the point of the test


@pytest.mark.parametrize("doc", list(ORDERED))
def test_python_blocks_of_a_doc_run_in_order(doc: str, docs_workdir) -> None:  # noqa: ANN001
    _run(ORDERED[doc])


@pytest.mark.parametrize("block", ALONE, ids=[str(b) for b in ALONE])
def test_python_block_with_an_optional_package_runs_alone(block: Block, docs_workdir) -> None:  # noqa: ANN001
    assert block.needs
    pytest.importorskip(block.needs)
    _run([block])


def test_every_block_is_run_checked_or_marked() -> None:
    """No block is silently left out: python runs, shell is parsed, text is a diagram; anything
    else must carry the no-test marker; the markers are the expected ones."""
    assert {"README.md", "docs/deploy.md", "docs/store.md"} <= set(ORDERED)
    covered = {id(b) for bs in ORDERED.values() for b in bs} | {id(b) for b in ALONE}
    for b in RUN:
        assert b.lang in SHELL | PROSE or id(b) in covered, f"{b}: {b.lang!r} block not run"
    marked: dict[str, int] = {}
    for b in BLOCKS:
        if b.marked:
            marked[b.doc] = marked.get(b.doc, 0) + 1
    assert marked == EXPECTED_NO_TEST, marked
    n_py = sum(len(bs) for bs in ORDERED.values()) + len(ALONE)
    print(f"{len(BLOCKS)} blocks: {n_py} python run, {len(BLOCKS) - len(RUN)} marked {NO_TEST}")


def test_docs_name_only_files_that_exist() -> None:
    """Relative links and `path/like/this.py` spans in the docs point at real files."""
    for d in DOCS:
        text = d.read_text()
        for target in re.findall(r"\]\(([^)#:]+)\)", text):
            assert (d.parent / target).exists(), f"{d.name}: link to {target}"
        for span in re.findall(
            r"`((?:trajlib|tests|scripts|collectors|docs)/[\w./-]+\.\w+)`", text
        ):
            assert span in PLANNED or (ROOT / span).exists(), f"{d.name}: {span}"
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
