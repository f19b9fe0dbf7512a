"""TensorBoard export writes one log directory per run whose scalars read back equal."""

from __future__ import annotations

import pytest

from trajlib import schema as S
from trajlib.cli import main
from trajlib.errors import TrajlibError
from trajlib.store import export_tensorboard

pytest.importorskip("tensorboard")


def _scalars(logdir) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_tensorboard_round_trip(store, run_factory, tmp_path):
    runs = {rid: run_factory(rid, n_steps=40, val_every=10) for rid in ("a", "b")}
    for r in runs.values():
        store.write_run(**r)
    dirs = export_tensorboard(store, tmp_path / "tb")
    assert sorted(d.name for d in dirs) == ["a", "b"]
    got = _scalars(tmp_path / "tb" / "a")
    steps = runs["a"]["steps"]
    for col in (S.LOSS, S.LR, S.GRAD_NORM, S.UPDATE_NORM):
        assert got[col] == pytest.approx(dict(zip(steps[S.STEP], steps[col])), rel=1e-6)
    val = steps.drop_nulls(S.VAL_LOSS)
    assert got[S.VAL_LOSS] == pytest.approx(dict(zip(val[S.STEP], val[S.VAL_LOSS])), rel=1e-6)
    assert sorted(got[S.VAL_ACC]) == [9, 19, 29, 39]  # nulls are skipped
    assert sorted(got[S.GRAD_COS]) == list(range(1, 40))  # null at step 0


def test_export_selected_runs_and_cli(store, run_factory, tmp_path):
    store.write_run(**run_factory("a", n_steps=20))
    store.write_run(**run_factory("b", n_steps=20))
    assert [d.name for d in export_tensorboard(store, tmp_path / "one", run_ids=["b"])] == ["b"]
    with pytest.raises(TrajlibError, match="not committed: zzz"):
        export_tensorboard(store, tmp_path / "x", run_ids=["zzz"])
    assert (
        main(["export", "tensorboard", str(store.path), str(tmp_path / "cli"), "--run", "a"]) == 0
    )
    assert _scalars(tmp_path / "cli" / "a")[S.LOSS]


def test_missing_tensorboard_gives_install_hint(store, monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_tb(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tb)
    with pytest.raises(TrajlibError, match=r"pip install 'trajlib\[tensorboard\]'"):
        export_tensorboard(store, tmp_path / "tb")
