"""Checkpoint integrity: tampering, truncation, missing files, versions, kinds."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from ctl_synth import MULTS, decision_spec, save_kwargs

from trajlib.controllers import (
    GBTController,
    load_controller,
    save_controller,
    verify_checkpoint,
)
from trajlib.controllers._registry import _REGISTRY
from trajlib.errors import CheckpointError, ConfigError
from trajlib.space import lr_action_space


@pytest.fixture(params=["gbt", "mlp"])
def ckpt(request, fitted, tmp_path: Path) -> Path:
    return save_controller(fitted(request.param), tmp_path / "ckpt", **save_kwargs())


def _payload_file(path: Path) -> Path:
    return next(p for p in sorted(path.iterdir()) if p.suffix in (".txt", ".safetensors"))


def test_clean_checkpoint_verifies(ckpt: Path) -> None:
    assert verify_checkpoint(ckpt) == []
    assert not list(ckpt.parent.glob(".ckpt.tmp-*"))  # temp folder renamed away


def test_one_byte_changed(ckpt: Path) -> None:
    f = _payload_file(ckpt)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    expected = json.loads((ckpt / "manifest.json").read_text())["files"][f.name]
    with pytest.raises(
        CheckpointError,
        match=rf"{f.name}: sha256 mismatch \(expected {expected}, got [0-9a-f]{{64}}\)",
    ):
        load_controller(ckpt)
    problems = verify_checkpoint(ckpt)
    assert len(problems) == 1 and problems[0].startswith(f.name)


def test_truncated_file(ckpt: Path) -> None:
    f = _payload_file(ckpt)
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{f.name}: sha256 mismatch.*truncated"):
        load_controller(ckpt)


def test_missing_file(ckpt: Path) -> None:
    f = _payload_file(ckpt)
    f.unlink()
    with pytest.raises(CheckpointError, match=f"{f.name}: missing"):
        load_controller(ckpt)
    (ckpt / "model_state.json").unlink()
    assert len(verify_checkpoint(ckpt)) == 2


def test_unlisted_file_reported(ckpt: Path) -> None:
    (ckpt / "extra.bin").write_bytes(b"x")
    assert verify_checkpoint(ckpt) == ["extra.bin: not listed in the manifest"]


def _edit_manifest(path: Path, **changes: object) -> None:
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))


def test_unknown_format_version(ckpt: Path) -> None:
    _edit_manifest(ckpt, format_version=2)
    with pytest.raises(
        CheckpointError, match=r"manifest.json: format_version 2 is not supported.*upgrade"
    ):
        load_controller(ckpt)
    _edit_manifest(ckpt, format_version="banana")
    with pytest.raises(
        CheckpointError, match="manifest.json: format_version 'banana' is not a version"
    ):
        load_controller(ckpt)
    _edit_manifest(ckpt, format_version="1.0")  # same version, other spelling: fine
    load_controller(ckpt)


def test_wrong_format_and_bad_json(ckpt: Path) -> None:
    _edit_manifest(ckpt, format="something-else")
    with pytest.raises(CheckpointError, match="manifest.json: format must be 'trajlib-controller'"):
        load_controller(ckpt)
    (ckpt / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest.json: not valid JSON"):
        load_controller(ckpt)
    with pytest.raises(CheckpointError, match="nope: not a checkpoint folder"):
        load_controller(ckpt.parent / "nope")


def test_unknown_kind(ckpt: Path) -> None:
    _edit_manifest(ckpt, kind="os.system")
    with pytest.raises(
        CheckpointError, match=r"manifest.json: unknown controller kind 'os.system'"
    ):
        load_controller(ckpt)


def test_path_traversal_in_files_refused(ckpt: Path) -> None:
    m = json.loads((ckpt / "manifest.json").read_text())
    m["files"]["../evil.txt"] = "0" * 64
    (ckpt / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="not a plain payload file name"):
        load_controller(ckpt)


def test_save_validates_arguments(fitted, tmp_path: Path) -> None:
    ctl = fitted("gbt")
    kw = save_kwargs()
    spec = kw["spec"]
    with pytest.raises(ConfigError, match="feature_names"):
        save_controller(ctl, tmp_path / "a", **{**kw, "spec": decision_spec(["x"])})
    with pytest.raises(ConfigError, match="action_space"):
        bad = replace(spec, action_space=lr_action_space((0.5, 1.0)))
        save_controller(ctl, tmp_path / "a", **{**kw, "spec": bad})
    # a spec with a bad field cannot be built, so it never reaches save_controller
    with pytest.raises(ConfigError, match="`every` must be a positive integer; got 0"):
        save_controller(ctl, tmp_path / "a", **{**kw, "spec": replace(spec, every=0)})
    with pytest.raises(ConfigError, match="mode"):
        save_controller(ctl, tmp_path / "a", **{**kw, "spec": replace(spec, mode="both")})
    with pytest.raises(ConfigError, match="spec.feature_set"):
        save_controller(ctl, tmp_path / "a", **{**kw, "spec": replace(spec, feature_set=None)})
    path = save_controller(ctl, tmp_path / "a", **kw)
    with pytest.raises(ConfigError, match="overwrite=True"):
        save_controller(ctl, path, **kw)
    save_controller(ctl, path, **{**kw, "spec": replace(spec, every=25)}, overwrite=True)
    assert load_controller(path).every == 25
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_unregistered_subclass_cannot_be_saved(tmp_path: Path) -> None:
    class Mine(GBTController):  # a concrete kind under a name nobody registered
        kind = "mine_unregistered"

    ctl = Mine()
    ctl.n_features_in_, ctl.n_actions_ = 6, len(MULTS)
    with pytest.raises(ConfigError, match="register_controller_kind"):
        save_controller(ctl, tmp_path / "m", **save_kwargs())
    assert "mine_unregistered" not in _REGISTRY


def test_no_pickle_in_the_code() -> None:
    root = Path(__file__).resolve().parents[2] / "trajlib"
    for sub in ("controllers", "labels"):
        for f in (root / sub).glob("*.py"):
            text = f.read_text()
            assert "import pickle" not in text and "joblib" not in text, f
            assert "torch.load" not in text, f


def test_loaded_gbt_walk_matches_lightgbm(fitted, tmp_path: Path) -> None:
    loaded = load_controller(save_controller(fitted("gbt"), tmp_path / "g", **save_kwargs()))
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 6))
    X[rng.random(X.shape) < 0.2] = np.nan
    X[:20, 1] = 0.0
    batch = loaded.controller.predict_values(X)  # LightGBM Booster.predict
    online = np.array([loaded.controller.decide_values(x)[0] for x in X])  # numpy walk
    np.testing.assert_allclose(online, batch, rtol=1e-12, atol=1e-12)


def test_a_shipped_controller_loads_by_name_from_any_directory(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trajlib.controllers import resolve_checkpoint, shipped_controllers

    root = Path(__file__).resolve().parents[2]
    names = shipped_controllers()
    assert "trajlib-lr-v6" in names and "trajlib-lr-v1" in names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a user's own project, not this checkout
    v6 = root / "models" / "trajlib-lr-v6" / "checkpoint"
    assert resolve_checkpoint("trajlib-lr-v6") == v6
    assert resolve_checkpoint("models/trajlib-lr-v6/checkpoint") == v6  # the README's path
    assert load_controller("trajlib-lr-v6").path == v6
    assert not verify_checkpoint("trajlib-lr-v6")
    # a real folder of that name comes first
    local = elsewhere / "trajlib-lr-v6"
    ckpt.rename(local)
    assert resolve_checkpoint("trajlib-lr-v6") == Path("trajlib-lr-v6")
    assert load_controller("trajlib-lr-v6").manifest == load_controller(local).manifest
    with pytest.raises(CheckpointError, match=r"shipped controllers \(load by name\): .*v6"):
        load_controller("trajlib-lr-v99")
