"""Storage of one run through fsspec: layout, atomic writes, retries, cleanup.

Layout under the storage URL (see docs/architecture.md)::

    <storage>/<run-id>/<batch>/fn          callables + initializer, once per batch
    <storage>/<run-id>/<batch>/in/<index>  the tasks of one index
    <storage>/<run-id>/<batch>/out/<index> their outcomes, written atomically

An operation that fails past all its tries (``StorageRetry``) marks the storage *down*:
until some operation of this store gets an answer again, each one is tried once, and
retries already waiting give up. A storage that is gone costs one retry budget, not one
per operation: the futures of a run, and its shutdown, end within a bounded time.

The worker imports this module: keep it free of anything but fsspec and the stdlib.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from ._options import StorageRetry
from .errors import StorageError

T = TypeVar("T")

# Errors that retrying cannot fix. Anything else from the storage stack (connection resets,
# timeouts, throttling and 5xx as surfaced by s3fs/gcsfs/adlfs) is worth another try.
_PERMANENT: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
    FileExistsError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    NotImplementedError,
)
_TRANSIENT_ERRNOS = {
    errno.EAGAIN,
    errno.EBUSY,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.EIO,
    getattr(errno, "EREMOTEIO", 121),  # s3fs's translation of a 5xx answer
}
# s3fs raises a bare OSError for throttling and 5xx answers; libraries of the storage
# stack raise their own classes, recognised by module.
_TRANSIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "http")


def is_transient(exc: BaseException) -> bool:
    """Whether a storage error may go away when the operation is tried again."""
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OSError):
        return exc.errno is None or exc.errno in _TRANSIENT_ERRNOS
    module = type(exc).__module__.split(".")[0]
    return module in _TRANSIENT_MODULES


# What fsspec's rm/expand_path take for a glob pattern in a path.
_GLOB = re.compile(r"[*?[]")

# How to delete a run prefix left behind, by URL scheme (said when shutdown cannot).
_DELETE_COMMANDS = {
    "s3": "aws s3 rm --recursive {url}/",
    "s3a": "aws s3 rm --recursive s3{rest}/",
    "gs": "gcloud storage rm --recursive {url}",
    "gcs": "gcloud storage rm --recursive gs{rest}",
}


def _delete_command(url: str, is_local: bool) -> str:
    """A command that deletes the prefix ``url``, or a phrase saying to."""
    if is_local:
        return f"`rm -r {url}`"
    scheme, sep, rest = url.partition("://")
    template = _DELETE_COMMANDS.get(scheme)
    if template is None:
        return f"your storage's own tools (everything under {url}/)"
    return "`" + template.format(url=url, rest=sep and "://" + rest) + "`"


def describe(exc: BaseException) -> str:
    """``Type: message`` of a storage error, with the service's own error code and HTTP
    status when the exception it was translated from carries them (s3fs turns botocore's
    ``ClientError`` into a bare ``OSError`` and keeps it as ``__cause__``)."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    for _ in range(5):
        if cause is None:
            break
        response = getattr(cause, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if code is not None and str(code) == str(status):
                code = None  # a HEAD's answer has no body: its code is its status
            said = ", ".join(str(x) for x in (code, status and f"HTTP {status}") if x)
            return f"{text} ({said})" if said and said not in text else text
        cause = cause.__cause__ or cause.__context__
    return text


def new_run_id() -> str:
    """A short random run id, usable in Kubernetes names and labels."""
    return "r" + uuid.uuid4().hex[:11]


class RunStore:
    """The storage of one run: ``<storage>/<run-id>/``.

    Args:
        url: the run's root URL (the storage URL joined with the run id).
        storage_options: passed to ``fsspec.core.url_to_fs``.
        retry: how transient errors are retried.
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        retry: StorageRetry | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = retry or StorageRetry()
        self.options = dict(storage_options or {})  # for a store beside this one
        self.is_local = "://" not in self.url or self.url.startswith("file://")
        self.fs: Any = None
        # Set while the storage is down (an operation failed past its tries, none has
        # been answered since); _down_since: when, by time.monotonic().
        self._down = threading.Event()
        self._down_since = 0.0
        if self.is_local:
            # Plain file operations, not fsspec's LocalFileSystem: importing fsspec costs a
            # worker ~50 ms of its start-up, and local files need nothing it adds.
            self.root = os.path.abspath(self.url.removeprefix("file://"))
            # Absolute in the URL too: workers get it, and they may start elsewhere (a
            # pod's working directory is the image's, a subprocess may be given another).
            self.url = self.root
            return
        import fsspec

        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except ImportError as exc:
            raise StorageError(
                f"cannot open storage {url!r}: {exc} (for s3:// URLs: "
                "pip install 'k8s-executor[s3]')"
            ) from exc
        except ValueError as exc:
            raise StorageError(
                f"cannot open storage {url!r}: {exc}; use an fsspec URL such as "
                "s3://bucket/prefix, gs://bucket/prefix or file:///shared/dir"
            ) from exc
        self.root = self.root.rstrip("/")

    # -- paths ---------------------------------------------------------------------

    def path(self, *parts: str | int) -> str:
        """The filesystem path of a key under the run root."""
        return "/".join([self.root, *(str(p) for p in parts)])

    # -- operations ----------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` atomically: readers see all of it or nothing.

        Raises:
            StorageError: for every failure, naming the URL (a missing bucket or a parent
                directory that cannot be created included: for a write, "not found" is
                not an answer but a broken storage).
        """
        path = self.path(key)
        try:
            self._call(f"write {key}", lambda: self._put_atomic(path, data))
        except FileNotFoundError as exc:
            raise StorageError(
                f"cannot write {key} at {self.url}: {type(exc).__name__}: {exc}; "
                + self._where_hint()
            ) from exc

    def put_new(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` atomically unless ``key`` exists: True if this call
        wrote it, False if something was there (another copy's outcome, see
        ``_first_write``).

        First writer wins on a local directory (the data is written aside, then hard
        linked to the name: ``link`` fails if the name exists) and on S3 (a PUT with
        ``If-None-Match: *``, which S3 refuses with 412 if the key exists). Elsewhere it
        is a check, then a write: two writers at once may both write (last one wins).
        """
        path = self.path(key)
        try:
            wrote: bool = self._call(f"write {key}", lambda: self._put_new(path, data))
        except FileNotFoundError as exc:
            raise StorageError(
                f"cannot write {key} at {self.url}: {type(exc).__name__}: {exc}; "
                + self._where_hint()
            ) from exc
        return wrote

    @property
    def first_writer_wins(self) -> bool:
        """Whether ``put_new`` is first-writer-wins on this storage (local, S3)."""
        return self.is_local or self._is_s3()

    def _is_s3(self) -> bool:
        protocol = getattr(self.fs, "protocol", ())
        names = {protocol} if isinstance(protocol, str) else set(protocol)
        return bool(names & {"s3", "s3a"})

    def _put_new(self, path: str, data: bytes) -> bool:
        if self.is_local:
            parent = path.rsplit("/", 1)[0]
            os.makedirs(parent, exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            try:
                os.link(tmp, path)  # atomic, and refuses an existing name
            except FileExistsError:
                return False
            finally:
                os.remove(tmp)
            return True
        if self._is_s3():
            try:
                # s3fs sends If-None-Match: * and turns the 412 into FileExistsError.
                self.fs.pipe_file(path, data, mode="create")
            except FileExistsError:
                return False
            return True
        if self.fs.exists(path):
            return False
        self.fs.pipe_file(path, data)
        return True

    def get(self, key: str) -> bytes:
        """Read ``key``; raises FileNotFoundError if it does not exist."""
        path = self.path(key)
        data: bytes = self._call(f"read {key}", lambda: self._read(path))
        return data

    def get_or_none(self, key: str) -> bytes | None:
        """Read ``key``, or return None if it does not exist."""
        try:
            return self.get(key)
        except FileNotFoundError:
            return None

    def age(self, key: str) -> float | None:
        """Seconds since ``key`` was last written (by the storage's clock), or None when it
        does not exist."""
        path = self.path(key)

        def modified() -> float:
            if self.is_local:
                return os.stat(path).st_mtime
            info = self.fs.info(path)
            when = info.get("LastModified") or info.get("mtime") or info.get("updated")
            if hasattr(when, "timestamp"):
                return float(when.timestamp())
            return float(when)

        try:
            return max(0.0, time.time() - self._call(f"look at {key}", modified))
        except FileNotFoundError:
            return None

    def list_keys(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` (relative to the run root, any depth); [] when none.

        One LIST request on an object store (a few for more than 1 000 keys)."""
        base = self.path(prefix)

        def find() -> list[str]:
            if self.is_local:
                keys = []
                for folder, _, files in os.walk(base):
                    keys += [
                        os.path.relpath(os.path.join(folder, f), self.root)
                        for f in files
                        if ".tmp-" not in f  # a write in progress (see _put_atomic)
                    ]
                return keys
            # s3fs and others cache listings: a poll must see the storage, not the cache.
            self.fs.invalidate_cache(base)
            found: list[str] = self.fs.find(base)
            return [p.removeprefix(self.root).lstrip("/") for p in found]

        try:
            return self._call(f"list {prefix}", find)
        except FileNotFoundError:
            return []

    def delete(self, *keys: str) -> None:
        """Delete ``keys`` (one request on an object store); missing keys are no error."""
        paths = [self.path(k) for k in keys]

        def remove() -> None:
            if self.is_local:
                for path in paths:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
            else:
                self._rm_files(paths)

        with contextlib.suppress(FileNotFoundError):
            self._call(f"delete {', '.join(keys)}", remove)

    def delete_all(self) -> None:
        """Delete the whole run prefix; a missing prefix is not an error.

        Raises:
            StorageError: the prefix could not be deleted (some of it may be left): the
                message, one line, names it, the cause, and how to delete it later.
        """

        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                if self.is_local:
                    shutil.rmtree(self.root)
                elif _GLOB.search(self.root):
                    self._remove_literally()
                else:
                    self.fs.rm(self.root, recursive=True)

        try:
            self._call("delete the run", remove)
        except FileNotFoundError as exc:  # e.g. the bucket itself is gone
            raise StorageError(
                f"cannot delete the run at {self.url}: {type(exc).__name__}: {exc}"
            ) from exc
        except StorageError as exc:
            raise StorageError(
                f"{exc}; its objects are left there: once the storage answers, delete them "
                f"with {_delete_command(self.url, self.is_local)}"
            ) from exc

    def _remove_literally(self) -> None:
        # A listing by prefix is literal (unlike rm's recursive expansion, see _rm_files).
        found = self.fs.find(self.root, withdirs=True, detail=True)
        dirs = [p for p, info in found.items() if info.get("type") == "directory"]
        self._rm_files([p for p in found if p not in dirs])
        # Stores with real directories keep them, empty; object stores have none left.
        for path in sorted([*dirs, self.root], key=len, reverse=True):
            with contextlib.suppress(OSError):
                self.fs.rmdir(path)
        self.fs.invalidate_cache(self.root)

    def _rm_files(self, paths: list[str]) -> None:
        """Delete these files (missing ones are no error): in bulk, where no path holds
        ``[``, ``*`` or ``?``, which fsspec's rm expands as a glob pattern (it would delete
        what the pattern matches, and miss the path itself); else one at a time."""
        if any(_GLOB.search(p) for p in paths):
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(path)
        elif paths:
            self.fs.rm(paths)

    def _where_hint(self) -> str:
        if self.is_local:
            return (
                "can this machine create that directory? Pass storage= (or set "
                "K8S_EXECUTOR_STORAGE) to a directory you may write"
            )
        return (
            "does the bucket exist, and may these credentials write to it? Pass storage= "
            "(or set K8S_EXECUTOR_STORAGE) to a writable URL; `k8s-executor doctor` checks it"
        )

    def _read(self, path: str) -> bytes:
        if self.is_local:
            with open(path, "rb") as f:
                return f.read()
        data: bytes = self.fs.cat_file(path)
        return data

    def _put_atomic(self, path: str, data: bytes) -> None:
        if self.is_local:
            # A local write is visible while in progress: write aside, then rename (atomic
            # on POSIX). Object stores publish a PUT only once complete, so they need none.
            parent = path.rsplit("/", 1)[0]
            os.makedirs(parent, exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, data)

    def _call(self, what: str, op: Callable[[], T]) -> T:
        delay = self.retry.initial_delay
        for attempt in range(1, self.retry.attempts + 1):
            try:
                result = op()
            except FileNotFoundError:
                self._answered()
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise StorageError(f"cannot {what} at {self.url}: {describe(exc)}") from exc
                # Full jitter keeps many workers from retrying in lockstep; the wait ends
                # early when another operation finds the storage down.
                if (
                    attempt == self.retry.attempts
                    or self._down.is_set()
                    or self._down.wait(random.uniform(0, delay))
                ):
                    raise StorageError(self._gave_up(what, attempt, exc)) from exc
                delay = min(delay * 2, self.retry.max_delay)
                if not self.is_local:
                    # s3fs caches listings and connections; a reset connection may linger.
                    self.fs.invalidate_cache()
            else:
                self._answered()
                return result
        raise AssertionError("unreachable")

    def _gave_up(self, what: str, attempt: int, exc: BaseException) -> str:
        """The message of an operation's last failed try; marks the storage down."""
        if attempt == self.retry.attempts:
            if not self._down.is_set():
                self._down_since = time.monotonic()
                self._down.set()
            return f"cannot {what} at {self.url} after {attempt} tries: {describe(exc)}"
        down = time.monotonic() - self._down_since
        tries = "1 try" if attempt == 1 else f"{attempt} tries"
        return (
            f"cannot {what} at {self.url} after {tries}: {describe(exc)} (the storage has "
            f"been down for {down:.0f} s: not retried until it answers)"
        )

    def _answered(self) -> None:
        if self._down.is_set():
            self._down.clear()
