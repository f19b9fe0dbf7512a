"""Claim files: ``locks/<owner>.claim``, created if absent (``link`` on disk, a conditional PUT with
``If-None-Match: *`` on object storage).

A claim records the pid, host, process start time and a random token of its holder. A claim whose
holder is on this host and no longer alive (pid gone, or pid reused by a process that started at
another time) is stale and may be taken over. On object storage a claim of another host is also
stale once older than ``TRAJLIB_CLAIM_TTL_S`` (default 24 h; no host can see another's processes).
Taking over is serialised: on disk by an ``flock`` on ``locks/.takeover.lock`` (released by the
kernel if the taker dies); on object storage by creating ``locks/.takeover.<token>`` if absent,
named after the stale claim's token, so exactly one taker removes that claim. Either way two
processes can never both remove a stale claim and both create a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from trajlib.store._fs import LocalRoot, Root
from trajlib.store._layout import LOCKS_DIR, new_token

CLAIM_SUFFIX = ".claim"
# Claims are linked into place complete; an empty or partial one can only come from an older
# writer or damage, and is treated as stale after this long.
_EMPTY_CLAIM_GRACE_S = 30.0
_HOST = socket.gethostname()
CLAIM_TTL_ENV = "TRAJLIB_CLAIM_TTL_S"
_DEFAULT_TTL_S = 24 * 3600.0
TAKEOVER_PREFIX = ".takeover."


def _root(where: Root | Path) -> Root:
    """A store root from a Root, or from the path of a local store's ``locks`` directory."""
    return where if isinstance(where, Root) else LocalRoot(Path(where).parent)


def _rel(owner: str) -> str:
    return f"{LOCKS_DIR}/{owner}{CLAIM_SUFFIX}"


def _ttl_s() -> float:
    try:
        return float(os.environ.get(CLAIM_TTL_ENV, _DEFAULT_TTL_S))
    except ValueError:
        return _DEFAULT_TTL_S


_OWN_START: dict[int, str | None] = {}


def _own_start() -> str | None:
    pid = os.getpid()  # keyed by pid: a forked child has its own start time
    if pid not in _OWN_START:
        _OWN_START[pid] = _proc_start(pid)
    return _OWN_START[pid]


def _proc_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces; it is wrapped in parentheses
    return stat.rpartition(")")[2].split()[19]


def holder_alive(info: dict, remote: bool = False) -> bool:
    """Whether the process recorded in a claim still runs. Claims of other hosts count as live
    (on object storage: until ``TRAJLIB_CLAIM_TTL_S`` after they were made)."""
    if info.get("host") != _HOST:
        if remote:
            created = info.get("created")
            return not isinstance(created, (int, float)) or time.time() - created < _ttl_s()
        return True
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = info.get("start")
    return start is None or _proc_start(pid) in (None, start)


def read_claim(path: Path | Root, owner: str | None = None) -> tuple[bytes, dict | None] | None:
    """(raw bytes, parsed info or None when empty/partial); None when no claim file exists.

    ``read_claim(claim_file_path)`` or ``read_claim(root, owner)``."""
    try:
        if isinstance(path, Root):
            raw = path.read_bytes(_rel(str(owner)))
        else:
            raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw, None
    return raw, info if isinstance(info, dict) else None


def claim_is_stale(root: Root, owner: str, raw_info: tuple[bytes, dict | None]) -> bool:
    _raw, info = raw_info
    if info is None:
        mtime = root.mtime(_rel(owner))
        if mtime is None:
            return False
        return time.time() - mtime > _EMPTY_CLAIM_GRACE_S
    return not holder_alive(info, remote=not root.is_local)


@contextlib.contextmanager
def _takeover_lock(locks: Path) -> Iterator[None]:
    fd = os.open(locks / ".takeover.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _token_of(raw_info: tuple[bytes, dict | None]) -> str:
    info = raw_info[1]
    tok = info.get("token") if info else None
    if isinstance(tok, str) and tok.isalnum():
        return tok
    import hashlib

    return hashlib.sha256(raw_info[0]).hexdigest()[:16]


def remove_if_stale(where: Root | Path, owner: str | None = None) -> bool:
    """Remove the claim of ``owner`` if it is stale; True if this call removed it.

    ``remove_if_stale(root, owner)`` or ``remove_if_stale(claim_file_path)``."""
    if owner is None:  # a claim file's path
        p = Path(where)  # type: ignore[arg-type]
        root: Root = LocalRoot(p.parent.parent)
        owner = p.name[: -len(CLAIM_SUFFIX)]
    else:
        root = _root(where)
    rel = _rel(owner)
    first = read_claim(root, owner)
    if first is None or not claim_is_stale(root, owner, first):
        return False
    if root.path is not None:
        with _takeover_lock(root.path / LOCKS_DIR):
            again = read_claim(root, owner)  # it may have been taken over meanwhile
            if again is None or again[0] != first[0] or not claim_is_stale(root, owner, again):
                return False
            return root.remove(rel, tree=False)
    # object storage: one taker per stale claim wins the marker named after its token
    marker = f"{LOCKS_DIR}/{TAKEOVER_PREFIX}{_token_of(first)}"
    if not root.put_new(marker, json.dumps({"owner": owner, "at": time.time()}).encode(), owner):
        return False
    again = read_claim(root, owner)
    if again is None or again[0] != first[0]:
        return False
    return root.remove(rel, tree=False)


def try_claim(where: Root | Path, owner: str) -> str | None:
    """Create ``locks/<owner>.claim``; return its token, or None if a live process holds it.

    On disk the claim is written in full to a temporary file and then hard-linked into place:
    ``link`` fails if the claim exists (the same exclusivity as O_CREAT|O_EXCL), and a claim file
    is never seen empty — a writer killed at any moment leaves either no claim or a complete one
    whose dead holder makes it stale at once (an orphaned temporary file is removed by ``gc``).
    On object storage one conditional PUT does the same.
    """
    root = _root(where)
    rel = _rel(owner)
    token = new_token()
    pid = os.getpid()
    body = json.dumps(
        {"pid": pid, "host": _HOST, "start": _own_start(), "token": token, "created": time.time()}
    ).encode()
    for _attempt in range(3):
        if root.put_new(rel, body, owner):
            return token
        got = read_claim(root, owner)
        if got is not None and got[0] == body:  # a retried PUT whose first attempt landed
            return token
        if remove_if_stale(root, owner):
            continue
        return None
    return None


def holds(where: Root | Path, owner: str, token: str) -> bool:
    got = read_claim(_root(where), owner)
    return got is not None and got[1] is not None and got[1].get("token") == token


def release(where: Root | Path, owner: str, token: str) -> None:
    """Remove the claim if (and only if) it is still ours."""
    root = _root(where)
    if holds(root, owner, token):
        root.remove(_rel(owner), tree=False)


def live_claim(where: Root | Path, owner: str) -> dict | None:
    """Info of a live claim on ``owner`` (``{}`` if not yet readable), None if free or stale."""
    root = _root(where)
    got = read_claim(root, owner)
    if got is None or claim_is_stale(root, owner, got):
        return None
    return got[1] or {}


def claim_owners(where: Root | Path) -> list[str]:
    root = _root(where)
    return sorted(
        n[: -len(CLAIM_SUFFIX)]
        for n in root.listdir(LOCKS_DIR)
        if n.endswith(CLAIM_SUFFIX) and not n.startswith(".")
    )


def takeover_markers(root: Root) -> list[str]:
    """Relative paths of the takeover markers of object storage (``gc`` removes old ones)."""
    return [f"{LOCKS_DIR}/{n}" for n in root.listdir(LOCKS_DIR) if n.startswith(TAKEOVER_PREFIX)]
