"""``manifest.json``: what a store is and which schema version wrote it."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket

from trajlib import __version__
from trajlib.errors import StoreError, StoreVersionError
from trajlib.schema import SCHEMA_VERSION, STORE_FORMAT
from trajlib.store._fs import Root, fsync_dir
from trajlib.store._layout import MANIFEST

# Schema versions this trajlib can read. Bump together with trajlib.schema.SCHEMA_VERSION and add
# a reader for the old layout if one is ever needed.
READABLE_SCHEMA_VERSIONS = frozenset({SCHEMA_VERSION})


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("polars", "pyarrow", "zarr", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - best-effort provenance only
            pass
    return out


def new_manifest() -> dict:
    return {
        "format": STORE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "trajlib_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "writer": {"host": socket.gethostname(), "pid": os.getpid(), **_versions()},
    }


def read_manifest(root: Root) -> dict:
    """Read and check ``manifest.json``.

    Raises StoreError when ``root`` is not a store (naming the path or URL) and StoreVersionError
    when its schema version cannot be read by this trajlib (naming both versions).
    """
    where = root.display
    path = root.loc(MANIFEST) if root.is_local else f"{where}/{MANIFEST}"
    if root.is_local and not root.is_dir(""):
        raise StoreError(f"{where}: no such directory; create a store with create_store(path)")
    try:
        raw = root.read_bytes(MANIFEST).decode("utf-8")
    except FileNotFoundError:
        raise StoreError(
            f"{where}: not a trajlib store (no {MANIFEST}); create one with create_store(path)"
        ) from None
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise StoreError(f"{path}: `format` must be {STORE_FORMAT!r}; got {got!r}")
    version = manifest.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise StoreError(f"{path}: `schema_version` must be an integer; got {version!r}")
    if version not in READABLE_SCHEMA_VERSIONS:
        newer = version > max(READABLE_SCHEMA_VERSIONS)
        hint = (
            "upgrade trajlib to read it"
            if newer
            else "no reader for that old layout exists in this trajlib"
        )
        raise StoreVersionError(
            f"{where}: store schema version {version}; this trajlib ({__version__}) reads schema "
            f"version {SCHEMA_VERSION} ({hint})"
        )
    return manifest


def write_manifest_once(root: Root) -> bool:
    """Create ``manifest.json`` unless it exists (atomic: temp file + ``os.link`` on disk, a
    conditional PUT on object storage).

    Returns True if this call created it. Safe when several processes create the same store.
    """
    text = json.dumps(new_manifest(), indent=2, sort_keys=True) + "\n"
    created = root.put_new(MANIFEST, text.encode("utf-8"), "_manifest", durable=True)
    if created and root.path is not None:
        fsync_dir(root.path)
    return created
