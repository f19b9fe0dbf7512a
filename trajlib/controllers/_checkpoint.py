"""Controller checkpoints: a folder with ``manifest.json`` and payload files, never pickle.

Layout::

    <dir>/manifest.json        what the controller is, what it was trained on, sha256 of each file
    <dir>/model_state.json     small learned metadata of the kind (hashed like every payload file)
    <dir>/model.safetensors    torch kinds: weights + input standardisation
    <dir>/model_<a>.txt        gbt: LightGBM text model of action a

Loading reads each payload file once, checks its sha256 against the manifest, and only then parses
it (safetensors / LightGBM text / JSON); the kind is resolved through the controller registry, so
nothing in a checkpoint can name code to run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

import trajlib
from trajlib.controllers._base import Controller
from trajlib.controllers._harm import HarmRule
from trajlib.controllers._registry import get_controller_kind
from trajlib.errors import (
    CheckpointError,
    ConfigError,
    FeatureSetMismatchError,
    UnknownNameError,
)
from trajlib.space import ActionSpace, HyperparameterSpace
from trajlib.spec import MODES, DecisionSpec, FeatureSetRef

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MODES",
    "LoadedController",
    "save_controller",
    "load_controller",
    "verify_checkpoint",
    "read_manifest",
    "resolve_checkpoint",
    "shipped_controllers",
]

FORMAT = "trajlib-controller"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_STATE = "model_state.json"
_REQUIRED = (
    "format",
    "format_version",
    "kind",
    "feature_set",
    "action_space",
    "hp_space",
    "every",
    "mode",
    "base_schedule",
    "params",
    "files",
)


@dataclass(frozen=True)
class LoadedController:
    """A verified checkpoint: the fitted controller, its decision spec (with the feature set it
    reads) and the manifest. The decision fields are read-only views of ``spec``."""

    controller: Controller
    manifest: dict[str, Any]
    spec: DecisionSpec
    path: Path = field(default_factory=Path)

    def __deepcopy__(self, memo: dict[int, Any]) -> LoadedController:
        """A loaded controller is read-only: a deep copy (of a scheduler, say) shares it."""
        return self

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickled as its checkpoint folder (never as pickled models): unpickling loads and
        verifies the checkpoint again."""
        d = Path(self.path)
        # set by load_controller on what it loaded: a controller replaced since, or one built in
        # memory, is not its folder's
        if getattr(self, "_loaded_from", None) != (id(self.controller), d):
            raise TypeError(
                "LoadedController: only a controller as load_controller loaded it can be pickled "
                f"(it is pickled as its checkpoint folder); this one is not {str(d)!r}'s"
            )
        return (load_controller, (str(d.resolve()),))

    @property
    def _feature_set(self) -> FeatureSetRef:
        if self.spec.feature_set is None:  # load_controller always sets it
            raise CheckpointError(f"{self.path}: the decision spec names no feature set")
        return self.spec.feature_set

    @property
    def action_space(self) -> ActionSpace:
        return self.spec.action_space

    @property
    def hp_space(self) -> HyperparameterSpace:
        return self.spec.hp_space

    @property
    def every(self) -> int:
        return self.spec.every

    @property
    def mode(self) -> str:
        return self.spec.mode

    @property
    def base_schedule(self) -> str:
        return self.spec.base_schedule

    @property
    def feature_names(self) -> list[str]:
        return list(self._feature_set.names)

    @property
    def feature_set_hash(self) -> str:
        return self._feature_set.hash

    @property
    def feature_set_name(self) -> str:
        return self._feature_set.name

    @property
    def feature_set_version(self) -> str:
        return self._feature_set.version

    @property
    def decision_rule(self) -> HarmRule | None:
        """The do-no-harm rule the checkpoint was saved with (``decision_rule`` in the manifest);
        ``None`` for a checkpoint without one (it acts on the argmax, as before)."""
        d = self.manifest.get("decision_rule")
        return None if d is None else HarmRule.from_dict(d)

    @property
    def feature_nan_fraction(self) -> dict[str, float]:
        """Per feature, the share of training rows where it was missing (a feature absent here
        was never recorded: treat it as possibly missing)."""
        d = self.manifest.get("training_data", {}).get("feature_nan_fraction") or {}
        return {str(k): float(v) for k, v in d.items()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _jsonable(name: str, value: Any) -> Any:
    """``value`` as strict JSON data (no NaN/inf, str keys); ConfigError naming ``name`` if not."""
    try:
        text = json.dumps(value, allow_nan=False, sort_keys=True, default=_to_builtin)
    except (TypeError, ValueError) as e:
        raise ConfigError(name, "JSON-serialisable data (finite numbers, str keys)", value) from e
    return json.loads(text)


def _to_builtin(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serialisable")


def _metrics(offline_metrics: Mapping[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k, v in dict(offline_metrics).items():
        try:
            f = float(v)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"offline_metrics.{k}", "a number", v) from e
        out[str(k)] = f if math.isfinite(f) else None  # JSON has no NaN
    return out


def save_controller(
    controller: Controller,
    path: str | os.PathLike[str],
    *,
    spec: DecisionSpec,
    label_strategy: str | Mapping[str, Any],
    training_data: Mapping[str, Any],
    offline_metrics: Mapping[str, Any],
    overwrite: bool = False,
    decision_rule: HarmRule | None = None,
) -> Path:
    """Write a fitted ``controller`` to the folder ``path``; returns the folder's path.

    The folder is written under a temporary name next to ``path`` and renamed into place, so a
    reader never sees half a checkpoint. ``spec`` is the controller's decision spec, with the
    feature set it was fitted on (:meth:`DecisionSpec.with_feature_set`). ``label_strategy`` is a
    name or ``LabelStrategy.to_dict()``; ``training_data`` a JSON-able summary (``n_rows``, ``n_runs``,
    ``tasks``, ``store``); ``offline_metrics`` a dict of numbers (non-finite stored as null).
    Raises :class:`ConfigError` on inconsistent arguments, :class:`NotFittedError` when the
    controller is not fitted. ``decision_rule`` (a :class:`HarmRule`) is stored as the manifest's
    ``decision_rule``: deployment then acts only when the rule says the best action is
    confidently better than keep.
    """
    _check_savable(controller, spec)
    if decision_rule is not None and not isinstance(decision_rule, HarmRule):
        raise ConfigError("decision_rule", "a HarmRule or None", type(decision_rule).__name__)
    files, state = controller._payload()
    files = dict(files)
    if MODEL_STATE in files or MANIFEST in files:
        raise ConfigError("payload", f"no file named {MODEL_STATE} or {MANIFEST}", list(files))
    files[MODEL_STATE] = json.dumps(
        _jsonable("model_state", state), indent=1, sort_keys=True, allow_nan=False
    ).encode()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": type(controller).kind,
        "trajlib_version": trajlib.__version__,
        **spec.to_dict(),  # feature_set, action_space, hp_space, mode, base_schedule, every
        "label_strategy": _jsonable("label_strategy", label_strategy),
        "training_data": _jsonable(
            "training_data",
            {"n_rows": None, "n_runs": None, "tasks": None, "store": None, **dict(training_data)},
        ),
        "offline_metrics": _metrics(offline_metrics),
        "params": _jsonable("params", controller.get_params(deep=False)),
        "files": {name: _sha256(data) for name, data in sorted(files.items())},
    }
    if decision_rule is not None:
        manifest["decision_rule"] = _jsonable("decision_rule", decision_rule.to_dict())
    return _write_folder(Path(path), files, manifest, overwrite)


def _check_savable(controller: Controller, spec: DecisionSpec) -> None:
    """A fitted controller of a registered kind, and a spec that matches its widths."""
    if not isinstance(controller, Controller):
        raise ConfigError("controller", "a fitted trajlib Controller", type(controller).__name__)
    controller._check_fitted()
    kind = type(controller).kind
    try:
        if get_controller_kind(kind) is not type(controller):
            raise ConfigError("controller", f"the class registered as kind {kind!r}", controller)
    except UnknownNameError as e:
        raise ConfigError(
            "controller",
            "an instance of a registered controller kind",
            kind,
            hint="decorate the class with register_controller_kind",
        ) from e
    if not isinstance(spec, DecisionSpec):
        raise ConfigError("spec", "a DecisionSpec", type(spec).__name__)
    if spec.feature_set is None:
        raise ConfigError("spec.feature_set", "the feature set the controller was fitted on", None)
    names = spec.feature_set.names
    if len(names) != controller.n_features_in_:
        raise ConfigError(
            "feature_names", f"{controller.n_features_in_} names (the fitted width)", len(names)
        )
    if len(spec.action_space) != controller.n_actions_:
        raise ConfigError(
            "action_space",
            f"an ActionSpace with {controller.n_actions_} actions (the fitted width)",
            len(spec.action_space),
        )


def _write_folder(
    dest: Path, files: Mapping[str, bytes], manifest: Mapping[str, Any], overwrite: bool
) -> Path:
    """Write the payload files and the manifest under a temporary name, then rename into place."""
    if dest.exists() and not overwrite:
        raise ConfigError(
            "path", "a folder that does not exist yet", str(dest), hint="pass overwrite=True"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            _write(tmp / name, data)
        _write(tmp / MANIFEST, json.dumps(manifest, indent=1, allow_nan=False).encode())
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _write(p: Path, data: bytes) -> None:
    with open(p, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# ---------------------------------------------------------------------------------------- reading
#: The checkout that holds this package and the shipped controllers (``models/<name>/checkpoint``);
#: an installed wheel has no ``models/`` beside it, and then only real paths load.
_CHECKOUT = Path(__file__).resolve().parents[2]


def shipped_controllers() -> list[str]:
    """The names of the controllers shipped in ``models/`` of this checkout (empty when trajlib
    is installed without it)."""
    models = _CHECKOUT / "models"
    if not models.is_dir():
        return []
    return sorted(p.parent.parent.name for p in models.glob(f"*/checkpoint/{MANIFEST}"))


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when it is a folder; else a shipped controller's name
    (``"trajlib-lr-v6"``) or a path relative to the checkout (the README's
    ``"models/trajlib-lr-v6/checkpoint"``, from any working directory); else ``path``
    unchanged (the caller says it is missing)."""
    d = Path(path)
    if d.is_dir() or d.is_absolute():
        return d
    candidates = [_CHECKOUT / d]
    if len(d.parts) == 1:
        candidates.insert(0, _CHECKOUT / "models" / d / "checkpoint")
    return next((c for c in candidates if (c / MANIFEST).is_file()), d)


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and check ``<path>/manifest.json`` (format, version, required fields).

    Does not check payload hashes; :func:`load_controller` and :func:`verify_checkpoint` do.
    """
    d = resolve_checkpoint(path)
    mpath = d / MANIFEST
    if not d.is_dir():
        names = shipped_controllers()
        hint = f"; shipped controllers (load by name): {', '.join(names)}" if names else ""
        raise CheckpointError(
            f"{d}: not a checkpoint folder (does not exist or is not a folder){hint}"
        )
    if not mpath.is_file():
        raise CheckpointError(f"{mpath}: missing; not a trajlib controller checkpoint")
    try:
        manifest = json.loads(mpath.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{mpath}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{mpath}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{mpath}: format must be {FORMAT!r}; got {manifest.get('format')!r}")
    raw = manifest.get("format_version")
    try:
        version = Version(str(raw))
    except InvalidVersion as e:
        raise CheckpointError(f"{mpath}: format_version {raw!r} is not a version") from e
    supported = Version(str(FORMAT_VERSION))
    if version.major != supported.major or version > supported:
        raise CheckpointError(
            f"{mpath}: format_version {raw!r} is not supported; this trajlib "
            f"({trajlib.__version__}) reads format_version {FORMAT_VERSION}"
            + ("; upgrade trajlib" if version > supported else "")
        )
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise CheckpointError(f"{mpath}: missing fields {missing}")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise CheckpointError(f"{mpath}: 'files' must map file names to sha256 hex strings")
    for name in files:
        if name != Path(name).name or name.startswith(".") or name == MANIFEST:
            raise CheckpointError(f"{mpath}: file entry {name!r} is not a plain payload file name")
    return manifest


def _read_payload(d: Path, manifest: Mapping[str, Any]) -> tuple[dict[str, bytes], list[str]]:
    """Read every listed file once and check its hash: (contents of good files, problems)."""
    good: dict[str, bytes] = {}
    problems: list[str] = []
    for name, expected in manifest["files"].items():
        p = d / name
        if not p.is_file():
            problems.append(f"{name}: missing (expected sha256 {expected})")
            continue
        data = p.read_bytes()
        got = _sha256(data)
        if got != expected:
            problems.append(
                f"{name}: sha256 mismatch (expected {expected}, got {got}); "
                "the file was modified or truncated"
            )
            continue
        good[name] = data
    listed = set(manifest["files"]) | {MANIFEST}
    for p in sorted(d.iterdir()):
        if p.name not in listed and not p.name.startswith("."):
            problems.append(f"{p.name}: not listed in the manifest")
    if MODEL_STATE not in manifest["files"]:
        problems.append(f"{MODEL_STATE}: not listed in the manifest")
    return good, problems


def load_controller(
    path: str | os.PathLike[str], *, expect_feature_set_hash: str | None = None
) -> LoadedController:
    """Load and verify a checkpoint folder.

    Raises :class:`CheckpointError` naming the file for a missing/tampered/truncated payload, an
    unsupported format version or an unknown kind, and :class:`FeatureSetMismatchError` (a
    CheckpointError) when ``expect_feature_set_hash`` differs from the checkpoint's. ``path``
    may also name a shipped controller (``"trajlib-lr-v6"``; :func:`resolve_checkpoint`).
    """
    d = resolve_checkpoint(path)
    manifest = read_manifest(d)
    fs = manifest["feature_set"]
    if not isinstance(fs, dict) or "hash" not in fs or "names" not in fs:
        raise CheckpointError(f"{d / MANIFEST}: feature_set must hold 'hash' and 'names'")
    if expect_feature_set_hash is not None and fs["hash"] != expect_feature_set_hash:
        raise FeatureSetMismatchError(
            f"{d}: controller was trained on feature set {fs.get('name')!r} with hash "
            f"{fs['hash']}, but the features offered have hash {expect_feature_set_hash}; "
            "derive features with the checkpoint's feature set or refit"
        )
    try:
        cls = get_controller_kind(str(manifest["kind"]))
    except UnknownNameError as e:
        raise CheckpointError(f"{d / MANIFEST}: {e}") from e
    files, problems = _read_payload(d, manifest)
    if problems:
        raise CheckpointError(f"{d}: " + "; ".join(problems))
    try:
        state = json.loads(files[MODEL_STATE])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{MODEL_STATE}: not valid JSON ({e})") from e
    params = manifest["params"]
    if not isinstance(params, dict):
        raise CheckpointError(f"{d / MANIFEST}: params must be an object")
    try:
        cls(**params)
    except TypeError as e:
        raise CheckpointError(f"{d / MANIFEST}: params do not fit kind {cls.kind!r} ({e})") from e
    controller = cls._from_payload(params, files, state)
    try:
        spec = DecisionSpec.from_dict(manifest)
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{d / MANIFEST}: bad decision spec ({e})") from e
    names = spec.feature_set.names if spec.feature_set is not None else ()
    if len(names) != controller.n_features_in_:
        raise CheckpointError(
            f"{d / MANIFEST}: {len(names)} feature names but the model takes "
            f"{controller.n_features_in_} features"
        )
    if len(spec.action_space) != controller.n_actions_:
        raise CheckpointError(
            f"{d / MANIFEST}: {len(spec.action_space)} actions but the model scores "
            f"{controller.n_actions_}"
        )
    loaded = LoadedController(controller=controller, manifest=manifest, spec=spec, path=d)
    object.__setattr__(loaded, "_loaded_from", (id(controller), d))  # what pickle may reload
    _ = loaded.decision_rule  # a malformed rule fails here, not in the user's training loop
    return loaded


def verify_checkpoint(path: str | os.PathLike[str]) -> list[str]:
    """Every problem found in the checkpoint at ``path``; an empty list when it loads cleanly."""
    d = resolve_checkpoint(path)
    try:
        manifest = read_manifest(d)
    except CheckpointError as e:
        return [str(e)]
    _, problems = _read_payload(d, manifest)
    if problems:
        return problems
    try:
        load_controller(d)
    except CheckpointError as e:
        return [str(e)]
    return []
