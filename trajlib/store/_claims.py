"""Claim files: ``locks/<owner>.claim`` created with O_CREAT|O_EXCL.

A claim records the pid, host, process start time and a random token of its holder. A claim whose
holder is on this host and no longer alive (pid gone, or pid reused by a process that started at
another time) is stale and may be taken over. Taking over is serialised by an ``flock`` on
``locks/.takeover.lock`` (released by the kernel if the taker dies), so two processes can never both
remove a stale claim and both create a new one.
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

from trajlib.store._layout import new_token, temp_path

CLAIM_SUFFIX = ".claim"
# Claims are linked into place complete; an empty or partial one can only come from an older
# writer or damage, and is treated as stale after this long.
_EMPTY_CLAIM_GRACE_S = 30.0
_HOST = socket.gethostname()


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


def holder_alive(info: dict) -> bool:
    """Whether the process recorded in a claim still runs. Claims of other hosts count as live."""
    if info.get("host") != _HOST:
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


def read_claim(path: Path) -> tuple[bytes, dict | None] | None:
    """(raw bytes, parsed info or None when empty/partial); None when no claim file exists."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return raw, None
    return raw, info if isinstance(info, dict) else None


def claim_is_stale(path: Path, raw_info: tuple[bytes, dict | None]) -> bool:
    _raw, info = raw_info
    if info is None:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return False
        return age > _EMPTY_CLAIM_GRACE_S
    return not holder_alive(info)


@contextlib.contextmanager
def _takeover_lock(locks: Path) -> Iterator[None]:
    fd = os.open(locks / ".takeover.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def remove_if_stale(path: Path) -> bool:
    """Remove the claim at ``path`` if it is stale; True if this call removed it."""
    first = read_claim(path)
    if first is None or not claim_is_stale(path, first):
        return False
    with _takeover_lock(path.parent):
        again = read_claim(path)  # it may have been taken over meanwhile
        if again is None or again[0] != first[0] or not claim_is_stale(path, again):
            return False
        path.unlink()
        return True


def try_claim(locks: Path, owner: str) -> str | None:
    """Create ``locks/<owner>.claim``; return its token, or None if a live process holds it.

    The claim is written in full to a temporary file and then hard-linked into place: ``link``
    fails if the claim exists (the same exclusivity as O_CREAT|O_EXCL), and a claim file is never
    seen empty — a writer killed at any moment leaves either no claim or a complete one whose dead
    holder makes it stale at once (an orphaned temporary file is removed by ``gc``).
    """
    path = locks / f"{owner}{CLAIM_SUFFIX}"
    token = new_token()
    pid = os.getpid()
    body = json.dumps(
        {"pid": pid, "host": _HOST, "start": _own_start(), "token": token, "created": time.time()}
    ).encode()
    tmp = temp_path(path, owner)
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)
    try:
        for _attempt in range(3):
            try:
                os.link(tmp, path)
            except FileExistsError:
                if remove_if_stale(path):
                    continue
                return None
            return token
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def holds(locks: Path, owner: str, token: str) -> bool:
    got = read_claim(locks / f"{owner}{CLAIM_SUFFIX}")
    return got is not None and got[1] is not None and got[1].get("token") == token


def release(locks: Path, owner: str, token: str) -> None:
    """Remove the claim if (and only if) it is still ours."""
    path = locks / f"{owner}{CLAIM_SUFFIX}"
    if holds(locks, owner, token):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def live_claim(locks: Path, owner: str) -> dict | None:
    """Info of a live claim on ``owner`` (``{}`` if not yet readable), None if free or stale."""
    path = locks / f"{owner}{CLAIM_SUFFIX}"
    got = read_claim(path)
    if got is None or claim_is_stale(path, got):
        return None
    return got[1] or {}


def claim_owners(locks: Path) -> list[str]:
    try:
        with os.scandir(locks) as it:
            return sorted(e.name[: -len(CLAIM_SUFFIX)] for e in it if e.name.endswith(CLAIM_SUFFIX))
    except FileNotFoundError:
        return []
