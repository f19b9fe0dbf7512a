"""Where a store lives: a local directory or an fsspec URL (``s3://bucket/prefix``, ``memory://``).

Every other store module reaches files through a :class:`Root`, addressed by paths relative to the
store (``runs/r1.parquet``). Two implementations:

- :class:`LocalRoot`: a directory (also ``file://`` URLs). Temp file + ``rename`` for atomic writes,
  ``link`` for create-if-absent, fsync when durable: exactly the on-disk behaviour of before.
- :class:`RemoteRoot`: any other fsspec URL (``s3://`` through s3fs). One ``PUT`` is atomic per
  object, so a write goes straight to its final name; create-if-absent is a conditional ``PUT``
  (S3 ``If-None-Match: *``, fsspec's ``mode="create"``). Transient errors (connection dropped,
  throttling, 5xx) are retried with exponential backoff a bounded number of times and counted
  (:func:`retry_count`); the rest become one :class:`~trajlib.errors.StoreError` line naming the
  URL. Credentials come from the environment (the botocore chain: ``AWS_*`` variables, profiles,
  instance roles); they are never written to the store and are redacted from messages.

Importing this module imports neither fsspec nor s3fs.
"""

from __future__ import annotations

import abc
import contextlib
import io
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from trajlib.errors import StoreError

__all__ = [
    "Root",
    "LocalRoot",
    "RemoteRoot",
    "as_root",
    "is_url",
    "redact",
    "retry_count",
]

T = TypeVar("T")

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_USERINFO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")
_SECRET_ENV = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
)
# bounded retries of transient object-store errors: attempts and first backoff (doubles each time)
RETRIES_ENV = "TRAJLIB_STORE_RETRIES"
DEFAULT_RETRIES = 4
BACKOFF_S = 0.2

_RETRIES = [0]  # transient errors retried in this process (read by the collector's report)


def retry_count() -> int:
    """Transient object-store errors retried by this process so far."""
    return _RETRIES[0]


def is_url(location: object) -> bool:
    """True for ``scheme://...`` strings (``file://`` included)."""
    return isinstance(location, str) and _SCHEME_RE.match(location) is not None


def redact(text: str) -> str:
    """``text`` with URL user-info and the values of credential variables replaced by ``***``."""
    text = _USERINFO_RE.sub(r"\1***@", text)
    text = re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@", r"\1***@", text)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _new_token() -> str:
    return uuid.uuid4().hex[:16]


def atomic_write_bytes(
    data: bytes | memoryview, final: Path, owner: str, *, durable: bool = True
) -> None:
    """Write ``data`` to a temporary next to ``final`` (``.<owner>.<token>.tmp``, fsynced when
    ``durable``), rename it into place, then fsync the directory: a reader sees the old file or
    the whole new one."""
    tmp = final.parent / f".{owner}.{_new_token()}.tmp"
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            view = memoryview(data)
            while view.nbytes:
                view = view[os.write(fd, view) :]
            if durable:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(final.parent)


class Root(abc.ABC):
    """A store location; paths passed to its methods are relative to the store root."""

    #: where the store is, for messages (credentials redacted)
    display: str
    #: True for a local directory
    is_local: bool
    #: the directory of a local store; None for a remote one
    path: Path | None

    @abc.abstractmethod
    def loc(self, rel: str = "") -> str:
        """The full path or URL of ``rel`` (for polars and zarr)."""

    @abc.abstractmethod
    def listdir(self, rel: str) -> list[str]:
        """Names directly inside directory ``rel`` (files and sub-directories); [] if absent."""

    @abc.abstractmethod
    def exists(self, rel: str) -> bool: ...

    @abc.abstractmethod
    def is_dir(self, rel: str) -> bool: ...

    @abc.abstractmethod
    def read_bytes(self, rel: str) -> bytes:
        """The content of file ``rel``; FileNotFoundError if it does not exist."""

    @abc.abstractmethod
    def put_atomic(
        self, rel: str, data: bytes | memoryview, owner: str, *, durable: bool = True
    ) -> None:
        """Replace ``rel`` with ``data``: a reader sees the old object or the whole new one."""

    @abc.abstractmethod
    def put_new(self, rel: str, data: bytes, owner: str, *, durable: bool = False) -> bool:
        """Create ``rel`` holding ``data`` unless it exists (atomically); True if this call did."""

    @abc.abstractmethod
    def remove(self, rel: str, *, tree: bool | None = None) -> bool:
        """Remove file or tree ``rel``; True if something was removed. ``tree`` says which it is
        when the caller knows (saves a request on object storage, where a file's removal then
        reports True whether or not it existed)."""

    @abc.abstractmethod
    def mtime(self, rel: str) -> float | None:
        """Modification time (epoch seconds), None if absent."""

    @abc.abstractmethod
    def stamp(self, rel: str) -> object:
        """A value that changes whenever ``rel`` is replaced; None if absent."""

    @abc.abstractmethod
    def size(self) -> tuple[int, int]:
        """(bytes, files) of the whole store."""

    def mkdirs(self, *rels: str) -> None:  # noqa: B027 - a default: no-op unless overridden
        """Create directories (no-op on object storage, which has none)."""

    def check_reachable(self) -> None:  # noqa: B027 - a default: no-op unless overridden
        """Raise StoreError naming the location when it cannot be reached (remote stores)."""

    def scan_source(self, rels: list[str]) -> Any:
        """What ``polars.scan_parquet`` should be given for the files ``rels``."""
        return [self.loc(r) for r in rels]

    def scan_options(self) -> dict[str, Any]:
        """Keyword arguments for ``polars.scan_parquet`` of :meth:`scan_source`."""
        return {}

    def open_read(self, rel: str) -> Any:
        """Something ``polars.read_parquet`` / ``read_parquet_metadata`` can read."""
        return self.loc(rel)

    @abc.abstractmethod
    def zarr_store(self, rel: str, *, read_only: bool) -> Any:
        """A zarr v3 store rooted at ``rel``."""

    @abc.abstractmethod
    def write_tree(self, rel: str, owner: str, durable: bool, fill: Callable[[Any], None]) -> None:
        """Have ``fill(zarr_store)`` write a zarr array, then make it appear at ``rel``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.display!r})"


class LocalRoot(Root):
    """A store directory on a local (or shared POSIX) filesystem."""

    is_local = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._dir = Path(path)
        self.path = self._dir
        self.display = str(self._dir)

    def loc(self, rel: str = "") -> str:
        return str(self._dir / rel) if rel else str(self._dir)

    def listdir(self, rel: str) -> list[str]:
        try:
            with os.scandir(self._dir / rel) as it:
                return [e.name for e in it]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def exists(self, rel: str) -> bool:
        return (self._dir / rel).exists()

    def is_dir(self, rel: str) -> bool:
        p = self._dir / rel
        return p.is_dir() and not p.is_symlink()

    def read_bytes(self, rel: str) -> bytes:
        return (self._dir / rel).read_bytes()

    def put_atomic(
        self, rel: str, data: bytes | memoryview, owner: str, *, durable: bool = True
    ) -> None:
        atomic_write_bytes(data, self._dir / rel, owner, durable=durable)

    def put_new(self, rel: str, data: bytes, owner: str, *, durable: bool = False) -> bool:
        final = self._dir / rel
        tmp = final.parent / f".{owner}.{_new_token()}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, final)
            return True
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def remove(self, rel: str, *, tree: bool | None = None) -> bool:
        p = self._dir / rel
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            return False
        return True

    def mtime(self, rel: str) -> float | None:
        try:
            return (self._dir / rel).stat().st_mtime
        except FileNotFoundError:
            return None

    def stamp(self, rel: str) -> object:
        try:
            st = os.stat(self._dir / rel)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def size(self) -> tuple[int, int]:
        total = files = 0
        for dirpath, _dirs, names in os.walk(self._dir):
            for n in names:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(dirpath, n)).st_size
                    files += 1
        return total, files

    def mkdirs(self, *rels: str) -> None:  # noqa: B027 - a default: no-op unless overridden
        for rel in rels:
            (self._dir / rel).mkdir(parents=True, exist_ok=True)

    def zarr_store(self, rel: str, *, read_only: bool) -> Any:
        return str(self._dir / rel)

    def write_tree(self, rel: str, owner: str, durable: bool, fill: Callable[[Any], None]) -> None:
        final = self._dir / rel
        tmp = final.parent / f".{owner}.{_new_token()}.tmp"
        try:
            fill(str(tmp))
            if durable:
                for dirpath, _d, files in os.walk(tmp):
                    for f in files:
                        fsync_file(Path(dirpath) / f)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if durable:
            fsync_dir(final.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _transient(exc: BaseException) -> bool:
    """Whether ``exc`` from an object store is worth retrying (network, throttling, 5xx)."""
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    names = {c.__name__ for c in type(exc).__mro__}
    if names & {
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ClientConnectorError",
        "ClientOSError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "ClientPayloadError",
        "HTTPClientError",
    }:
        return True
    text = str(exc)
    return any(
        s in text
        for s in (
            "SlowDown",
            "ServiceUnavailable",
            "InternalError",
            "RequestTimeout",
            " 503",
            " 500",
        )
    )


def _describe(exc: BaseException) -> str:
    """A short reason for ``exc``: missing bucket, refused credential, unreachable, or its text."""
    text = str(exc) or type(exc).__name__
    low = text.lower()
    if "nosuchbucket" in low or "bucket does not exist" in low or "specified bucket" in low:
        return "the bucket does not exist"
    if any(
        s in low
        for s in (
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "accessdenied",
            "access denied",
            "forbidden",
            "expiredtoken",
            "nocredentials",
            "unable to locate credentials",
        )
    ) or isinstance(exc, PermissionError):
        return "the credentials were refused (" + text.splitlines()[0][:160] + ")"
    if _transient(exc):
        return "cannot reach the object store (" + text.splitlines()[0][:160] + ")"
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}"


class RemoteRoot(Root):
    """A store under an fsspec URL other than ``file://`` (``s3://bucket/prefix``, ``memory://x``)."""

    is_local = False
    path = None

    def __init__(self, url: str, retries: int | None = None) -> None:
        try:
            import fsspec
        except ImportError:
            raise StoreError(
                f"{redact(url)}: store URLs need fsspec; install it with: pip install 'trajlib[s3]'"
            ) from None

        url = url.rstrip("/")
        self.url = url
        self.display = redact(url)
        self.protocol = _SCHEME_RE.match(url).group(1).lower()  # type: ignore[union-attr]
        if retries is None:
            raw = os.environ.get(RETRIES_ENV, str(DEFAULT_RETRIES))
            try:
                retries = int(raw)
            except ValueError:
                raise StoreError(f"{RETRIES_ENV} must be an integer >= 0; got {raw!r}") from None
        self.retries = max(0, retries)
        kwargs: dict[str, Any] = {"skip_instance_cache": True}
        if self.protocol in ("s3", "s3a"):
            # our own bounded retry (counted); botocore's and s3fs's would hide the errors
            kwargs.update(
                use_listings_cache=False,
                config_kwargs={
                    "retries": {"max_attempts": 1, "mode": "standard"},
                    "connect_timeout": 5,
                    "read_timeout": 60,
                },
            )
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:
                kwargs["endpoint_url"] = endpoint
        self._fs_kwargs = kwargs
        try:
            fs, base = fsspec.url_to_fs(url, **kwargs)
        except ImportError as exc:
            raise StoreError(
                f"{self.display}: this URL needs a package that is not installed ({exc}); "
                "for s3:// install it with: pip install 'trajlib[s3]'"
            ) from None
        except ValueError as exc:
            raise StoreError(f"{self.display}: cannot open this URL ({_describe(exc)})") from None
        if hasattr(fs, "retries"):
            fs.retries = 1  # s3fs's own silent retries off: ours below are bounded and counted
        self.fs = fs
        self.base = base.rstrip("/")

    # -------------------------------------------------------------- plumbing
    def _key(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def loc(self, rel: str = "") -> str:
        return f"{self.url}/{rel}" if rel else self.url

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, retrying transient errors; other errors as one StoreError line."""
        delay = BACKOFF_S
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except (FileNotFoundError, FileExistsError):
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                if _transient(exc) and attempt < self.retries:
                    _RETRIES[0] += 1
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise StoreError(redact(f"{self.display}: {what} failed: {_describe(exc)}")) from (
                    None
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def _not_found_is_bucket(self, exc: FileNotFoundError) -> bool:
        return "bucket" in str(exc).lower()

    # -------------------------------------------------------------- Root
    def check_reachable(self) -> None:  # noqa: B027 - a default: no-op unless overridden
        """Raise StoreError naming the URL when the bucket is missing or access is refused."""

        def probe() -> None:
            try:
                if self.protocol in ("s3", "s3a"):  # one HEAD, however big the bucket
                    self.fs.call_s3("head_bucket", Bucket=self.base.split("/")[0])
                else:
                    self.fs.ls(self.base)
            except FileNotFoundError as exc:
                if self.protocol in ("s3", "s3a") or self._not_found_is_bucket(exc):
                    raise StoreError(
                        redact(f"{self.display}: the bucket does not exist ({exc})")
                    ) from None

        self.call("listing the bucket", probe)

    def listdir(self, rel: str) -> list[str]:
        key = self._key(rel)

        def ls() -> list[str]:
            try:
                entries = self.fs.ls(key, detail=False, refresh=True)
            except FileNotFoundError:
                return []
            except NotADirectoryError:
                return []
            out = []
            for e in entries:
                name = str(e).rstrip("/").rpartition("/")[2]
                if name and str(e).rstrip("/") != key:
                    out.append(name)
            return out

        return self.call(f"listing {rel or '/'}", ls)

    def exists(self, rel: str) -> bool:
        """Whether object ``rel`` exists (a file; directories are prefixes, see :meth:`is_dir`)."""
        if self.protocol in ("s3", "s3a"):
            return self._info(rel) is not None
        key = self._key(rel)
        return self.call(f"checking {rel}", lambda: bool(self.fs.exists(key)))

    def is_dir(self, rel: str) -> bool:
        key = self._key(rel)
        return self.call(f"checking {rel}", lambda: bool(self.fs.isdir(key)))

    def read_bytes(self, rel: str) -> bytes:
        key = self._key(rel)
        return self.call(f"reading {rel}", lambda: bytes(self.fs.cat_file(key)))

    def put_atomic(
        self, rel: str, data: bytes | memoryview, owner: str, *, durable: bool = True
    ) -> None:
        key = self._key(rel)
        payload = bytes(data)
        self.call(f"writing {rel}", lambda: self.fs.pipe_file(key, payload))

    def put_new(self, rel: str, data: bytes, owner: str, *, durable: bool = False) -> bool:
        key = self._key(rel)

        def create() -> bool:
            try:
                self.fs.pipe_file(key, data, mode="create")
            except FileExistsError:
                return False
            return True

        # a retried create whose first attempt did land reads as "exists": the caller then
        # re-reads the object and recognises its own token (claims do)
        return self.call(f"creating {rel}", create)

    def remove(self, rel: str, *, tree: bool | None = None) -> bool:
        key = self._key(rel)

        def rm() -> bool:
            try:
                if tree is False:
                    self.fs.rm_file(key)
                    return True
                if tree or self.fs.isdir(key):
                    if not self.fs.find(key):
                        return False
                    self.fs.rm(key, recursive=True)
                    return True
                self.fs.rm_file(key)
            except FileNotFoundError:
                return False
            return True

        return self.call(f"removing {rel}", rm)

    def _info(self, rel: str) -> dict | None:
        """Metadata of object ``rel`` (one HEAD on S3), None if there is none."""
        key = self._key(rel)

        def info() -> dict | None:
            if self.protocol in ("s3", "s3a"):
                bucket, _, path = key.partition("/")
                try:
                    return dict(self.fs.call_s3("head_object", Bucket=bucket, Key=path))
                except FileNotFoundError:
                    return None
            try:
                return dict(self.fs.info(key, refresh=True))
            except FileNotFoundError:
                return None

        return self.call(f"checking {rel}", info)

    def mtime(self, rel: str) -> float | None:
        info = self._info(rel)
        if info is None:
            return None
        for k in ("LastModified", "mtime", "created"):
            v = info.get(k)
            if v is not None:
                return v.timestamp() if hasattr(v, "timestamp") else float(v)
        return time.time()

    def stamp(self, rel: str) -> object:
        info = self._info(rel)
        if info is None:
            return None
        return (info.get("ETag"), str(info.get("LastModified") or info.get("created")))

    def size(self) -> tuple[int, int]:
        def du() -> tuple[int, int]:
            total = files = 0
            try:
                found = self.fs.find(self.base, detail=True)
            except FileNotFoundError:
                return 0, 0
            for info in found.values():
                if info.get("type") != "directory":
                    total += int(info.get("size") or 0)
                    files += 1
            return total, files

        return self.call("listing the store", du)

    def scan_source(self, rels: list[str]) -> Any:
        if self.protocol in _POLARS_NATIVE:
            return [self.loc(r) for r in rels]
        return [io.BytesIO(self.read_bytes(r)) for r in rels]

    def scan_options(self) -> dict[str, Any]:
        if self.protocol not in ("s3", "s3a"):
            return {}
        opts: dict[str, Any] = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["aws_endpoint_url"] = endpoint
            if endpoint.startswith("http://"):
                opts["aws_allow_http"] = "true"
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            opts["aws_region"] = region
        opts["max_retries"] = self.retries  # polars' own bounded retry of cloud reads
        return {"storage_options": opts}

    def open_read(self, rel: str) -> Any:
        return io.BytesIO(self.read_bytes(rel))

    def zarr_store(self, rel: str, *, read_only: bool) -> Any:
        from zarr.storage import FsspecStore

        opts = {k: v for k, v in self._fs_kwargs.items() if k != "skip_instance_cache"}
        with warnings.catch_warnings():
            # zarr warns about sync filesystems wrapped for async use (memory://); it works
            warnings.simplefilter("ignore")
            return FsspecStore.from_url(self.loc(rel), storage_options=opts, read_only=read_only)

    def write_tree(self, rel: str, owner: str, durable: bool, fill: Callable[[Any], None]) -> None:
        # no rename on object storage: write in place (invisible until the run's marker exists);
        # the caller removed what an earlier attempt left
        try:
            self.call(f"writing {rel}", lambda: fill(self.zarr_store(rel, read_only=False)))
        except BaseException:
            with contextlib.suppress(Exception):
                self.remove(rel, tree=True)
            raise


# protocols polars reads itself (its own object-store client); others go through fsspec
_POLARS_NATIVE = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https"})


def as_root(location: str | os.PathLike[str] | Root) -> Root:
    """A :class:`Root` for a directory, a ``file://`` URL or another fsspec URL."""
    if isinstance(location, Root):
        return location
    if isinstance(location, str) and is_url(location):
        scheme = _SCHEME_RE.match(location).group(1).lower()  # type: ignore[union-attr]
        if scheme in ("file", "local"):
            return LocalRoot(location.split("://", 1)[1] or "/")
        return RemoteRoot(location)
    if not isinstance(location, (str, os.PathLike)):
        from trajlib.errors import ConfigError

        raise ConfigError("store", "a directory path or a URL such as s3://bucket/prefix", location)
    return LocalRoot(location)
