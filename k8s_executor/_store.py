"""Storage of one run through fsspec: layout, atomic writes, retries, cleanup.

Layout under the storage URL (see docs/architecture.md)::

    <storage>/<run-id>/<batch>/fn          callables + initializer, once per batch
    <storage>/<run-id>/<batch>/in/<index>  the tasks of one index
    <storage>/<run-id>/<batch>/out/<index> their outcomes, written atomically

The worker imports this module: keep it free of anything but fsspec and the stdlib.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
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
        self.is_local = "://" not in self.url or self.url.startswith("file://")
        self.fs: Any = None
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
            elif paths:
                self.fs.rm(paths)

        with contextlib.suppress(FileNotFoundError):
            self._call(f"delete {', '.join(keys)}", remove)

    def delete_all(self) -> None:
        """Delete the whole run prefix; a missing prefix is not an error."""

        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                if self.is_local:
                    shutil.rmtree(self.root)
                else:
                    self.fs.rm(self.root, recursive=True)

        try:
            self._call("delete the run", remove)
        except FileNotFoundError as exc:  # e.g. the bucket itself is gone
            raise StorageError(
                f"cannot delete the run at {self.url}: {type(exc).__name__}: {exc}"
            ) from exc

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
                return op()
            except FileNotFoundError:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise StorageError(
                        f"cannot {what} at {self.url}: {type(exc).__name__}: {exc}"
                    ) from exc
                if attempt == self.retry.attempts:
                    raise StorageError(
                        f"cannot {what} at {self.url} after {attempt} tries: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                # Full jitter keeps many workers from retrying in lockstep.
                time.sleep(random.uniform(0, delay))
                delay = min(delay * 2, self.retry.max_delay)
                if not self.is_local:
                    # s3fs caches listings and connections; a reset connection may linger.
                    self.fs.invalidate_cache()
        raise AssertionError("unreachable")
