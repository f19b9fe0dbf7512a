"""``trajlib plot``: a real collected store rendered to PNGs a person can read."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from trajlib import schema as S
from trajlib.cli import main
from trajlib.evaluate import plot_store, run_figure_names
from trajlib.store import open_store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def image(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    return np.asarray(mpimg.imread(path))


def test_cli_plots_every_expected_figure(tiny_store: Path, tmp_path: Path, capsys) -> None:
    runs = open_store(tiny_store).runs().collect().sort(S.TASK, S.RUN_ID)
    first = runs.unique(S.TASK, keep="first", maintain_order=True)[S.RUN_ID].to_list()
    out = tmp_path / "png"
    assert main(["plot", str(tiny_store), "--out", str(out)]) == 0
    assert "wrote 7 figure(s)" in capsys.readouterr().out
    # overview + (curves, layers, fan) for the first run of each of the 2 tasks
    expected = {"overview.png"} | {n for r in first for n in run_figure_names(r)}
    assert {p.name for p in out.iterdir()} == expected
    for p in out.iterdir():
        w, h = png_size(p)
        assert 600 <= w <= 2400 and 250 <= h <= 1600, (p.name, w, h)
        assert p.stat().st_size > 15_000, p.name  # a drawn figure, not an empty canvas
        px = image(p)[..., :3]
        # more than a blank page: many distinct colours and a good share of non-white pixels
        assert np.mean(px.min(axis=-1) < 0.9) > 0.03, p.name
        assert len(np.unique(px.reshape(-1, 3), axis=0)) > 50, p.name


def test_one_run_without_overview_and_bad_ids(tiny_store: Path, tmp_path: Path, capsys) -> None:
    rid = open_store(tiny_store).runs().collect()[S.RUN_ID][-1]
    out = tmp_path / "one"
    paths = plot_store(tiny_store, out, run_ids=[rid], overview=False)
    assert [p.name for p in paths] == run_figure_names(rid)
    assert sorted(p.name for p in out.iterdir()) == sorted(run_figure_names(rid))
    assert main(["plot", str(tiny_store), "--out", str(out), "--run", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_fan_is_skipped_for_runs_without_branches(unbranched_store: Path, tmp_path: Path) -> None:
    """A store recorded without branches: curves and heat map only, no fan."""
    st = open_store(unbranched_store)
    assert st.branches().collect().height == 0
    rid = st.runs().collect()[S.RUN_ID][0]
    paths = plot_store(unbranched_store, tmp_path, run_ids=[rid])
    assert [p.name for p in paths] == ["overview.png", *run_figure_names(rid, branches=False)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    assert all(png_size(p)[0] > 600 for p in paths)


def test_run_ids_are_made_safe_file_names() -> None:
    names = run_figure_names("pkg.mod:task/0001", branches=True)
    assert names[0] == "run-pkg.mod_task_0001-curves.png"
    assert all("/" not in n and ":" not in n for n in names)
