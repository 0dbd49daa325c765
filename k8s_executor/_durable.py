"""Named runs: every call has an identity, and its result, once stored, is reused.

``KubernetesExecutor(run="grid-2026-12")`` names a run. A call of a named run has an
identity: the SHA-256 of its function's pickle and its arguments' pickle (and the names of
its large shared buffers, themselves SHA-256s of their bytes). The worker that runs a call
successfully stores its result under ``<storage>/named/<name>/calls/<identity>``, signed
with the run's key, as soon as the call returns (not at the end of its share of calls), so
a client that dies half-way loses only the calls that were still running. A later client
of the same run name that submits a call with a stored result gets it from storage
without a pod.

Only results are stored, never exceptions: a call that failed (maybe because of a bug
since fixed in a module its function calls, which the identity does not cover) runs again.

The key stays on the client's machine (``$XDG_STATE_HOME/k8s-executor/keys``, mode 0600),
one per storage and run name: the storage holds no key, so a writer to the bucket cannot
forge a result a client would unpickle. A stored result that does not verify with this
machine's key (another machine's run of the same name) is not used: its call runs again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import _payload as wire
from .errors import ConfigError, PayloadError, StorageError

_log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
"""Run names: lowercase letters, digits and ``-``, 1-40 characters, starting and ending
with a letter or digit (they go into storage paths and Kubernetes label values)."""

PREFIX = "named"
"""The storage prefix of named runs, beside the per-executor run prefixes (``r<hex>``)."""

CALLS = "calls"

READERS = 32
"""Stored results read at once when many calls are reused."""

ALIVE_SECONDS = 5.0
"""How often the worker of a named run rewrites ``<batch>/alive/<index>`` while it runs
its index: a later client joining its calls (``_join``) sees it is still at work."""

JOIN_GRACE = 6 * ALIVE_SECONDS
"""Seconds a joined index's marker may stay unchanged (or, not written yet, the join may
wait for a worker to start) before its copy counts as lost and its calls run again."""


START_GRACE = 300.0
"""Seconds an index of a detached session may go without its marker (its pod pending:
scheduling, an image pull, a full quota) before a joining client counts its calls lost.
An index of a session that is not detached has no such grace: its workers cannot
outlive their client, so one that never wrote its marker will not."""


def copy_alive(marker_age: float | None, launched_ago: float, *, detached: bool) -> bool:
    """Whether a launched index's worker may still be at work, at a joining client's
    first look: its marker was written at most ``JOIN_GRACE`` seconds ago (``marker_age``,
    None: never), or, not written yet, a detached session's index is younger than
    ``START_GRACE`` (``launched_ago``)."""
    if marker_age is not None:
        return marker_age <= JOIN_GRACE
    return detached and launched_ago < START_GRACE


def alive_key(index: int) -> str:
    """The key, below a batch's storage, of the marker its index's worker refreshes."""
    return f"alive/{index}"


def check_name(name: object, where: str = "run=") -> str:
    """``name`` if it is a valid run name, else :class:`ConfigError` saying what is."""
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise ConfigError(
            f"{where}{name!r} is not allowed: a run name is 1-40 lowercase letters, digits "
            "and '-', starting and ending with a letter or digit (e.g. 'grid-2026-12')"
        )
    return name


def run_url(storage_root: str, name: str) -> str:
    """Where a named run's stored results live."""
    return f"{storage_root.rstrip('/')}/{PREFIX}/{name}"


def call_key(identity: str) -> str:
    """The storage key of a call's result, below :func:`run_url`."""
    return f"{CALLS}/{identity}"


def identity(fn_blob: bytes, calls_blob: bytes, buffers: Iterable[str]) -> str:
    """A call's identity: the SHA-256 of its function, its arguments and its shared
    buffers' names (each part length-prefixed, so no two splits give the same bytes)."""
    h = hashlib.sha256()
    for part in (fn_blob, calls_blob, *(b.encode() for b in buffers)):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


class FunctionBlobs:
    """The pickle of each function submitted, made once per function object (weakly
    held: the cache keeps no function, nor what a bound method's object holds, alive)."""

    def __init__(self) -> None:
        self._cache: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()

    def get(self, fn: Callable[..., Any]) -> bytes:
        try:
            return self._cache[fn]
        except (KeyError, TypeError):
            pass
        blob = wire.dump_function(fn)
        with contextlib.suppress(TypeError):  # not weakly referenceable, or unhashable:
            self._cache[fn] = blob  # pickled each time
        return blob


# -- the run's key -------------------------------------------------------------------------


def _state_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "k8s-executor"


def _keys_dir() -> Path:
    return _state_dir() / "keys"


def default_named_storage() -> Path:
    """Where a named run on the local backend keeps its results when no ``storage=``
    is given (a run's usual temporary directory would not outlive it)."""
    return _state_dir() / "storage"


def key_path(storage_root: str, name: str) -> Path:
    """The file holding the key of run ``name`` in ``storage_root``."""
    digest = hashlib.sha256(run_url(storage_root, name).encode()).hexdigest()[:32]
    return _keys_dir() / f"{name}-{digest}.key"


def load_or_create_key(storage_root: str, name: str) -> bytes:
    """The run's signing key: the one this machine made for it before, or a new one
    (written with mode 0600; two clients racing to make it agree on the first written)."""
    path = key_path(storage_root, name)
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = wire.new_key()
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.hex().encode())
    try:
        os.link(tmp, path)  # fails if another client made it first: theirs wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(f"{path} does not hold a run key (64 hex digits): delete it")
    return key


def forget_key(storage_root: str, name: str) -> None:
    """Delete this machine's key of the run."""
    key_path(storage_root, name).unlink(missing_ok=True)


def named_runs_root(storage: str | None) -> str:
    """The storage a named run uses: ``storage``, or the local backend's default."""
    return storage if storage is not None else str(default_named_storage())


def stored_count(storage_root: str, name: str, options: dict[str, Any]) -> int:
    """How many results run ``name`` has stored."""
    from ._store import RunStore

    check_name(name, "")
    return len(RunStore(run_url(storage_root, name), options).list_keys(CALLS))


def forget_named_run(storage_root: str, name: str, options: dict[str, Any]) -> None:
    """Delete run ``name``'s stored results and this machine's key of it
    (``k8s-executor forget``).

    Raises:
        StorageError: the results could not be deleted (the message says how to later).
    """
    from ._store import RunStore

    check_name(name, "")
    RunStore(run_url(storage_root, name), options).delete_all()
    forget_key(storage_root, name)


# -- stored results ------------------------------------------------------------------------


class StoredResults:
    """The results a named run has stored, as seen by one client."""

    def __init__(self, store: Any, key: bytes) -> None:
        self._store = store
        self._key = key
        self._known: set[str] | None = None
        self.reused = 0

    def _listing(self) -> set[str]:
        if self._known is None:
            try:
                keys = self._store.list_keys(CALLS)
            except StorageError as exc:
                _log.warning("cannot list the stored results of %s: %s", self._store.url, exc)
                keys = []
            self._known = {k.rsplit("/", 1)[-1] for k in keys}
        return self._known

    def find(self, wanted: list[tuple[str, str]]) -> dict[str, list[Any]]:
        """The results of the calls ``wanted`` (identity, function name) that are stored
        and verify: one list per call, its task's results. Read concurrently (a thousand
        results from an object store are a thousand requests)."""
        known = self._listing()
        wanted = [(i, name) for i, name in wanted if i in known]
        if not wanted:
            return {}
        if len(wanted) == 1:
            found = [self._load(*wanted[0])]
        else:
            with ThreadPoolExecutor(min(READERS, len(wanted)), "k8sx-reuse") as pool:
                found = list(pool.map(lambda w: self._load(*w), wanted))
        results = {i: r for (i, _), r in zip(wanted, found, strict=True) if r is not None}
        self.reused += len(results)
        return results

    def load(self, call_identity: str, fn_name: str) -> list[Any] | None:
        """The stored result of one call if there is one now (not from the listing the
        first :meth:`find` made), and it verifies; else None."""
        try:
            data = self._store.get(call_key(call_identity))
        except FileNotFoundError:
            return None
        return self._open(call_identity, fn_name, data)

    def _load(self, call_identity: str, fn_name: str) -> list[Any] | None:
        try:
            data = self._store.get(call_key(call_identity))
        except (StorageError, FileNotFoundError) as exc:
            _log.warning("stored result %s not used (it runs again): %s", call_identity, exc)
            return None
        return self._open(call_identity, fn_name, data)

    def _open(self, call_identity: str, fn_name: str, data: bytes) -> list[Any] | None:
        try:
            outcomes = wire.open_outcomes(self._key, data)
        except PayloadError as exc:
            _log.warning("stored result %s not used (it runs again): %s", call_identity, exc)
            return None
        if not isinstance(outcomes, list) or len(outcomes) != 1 or outcomes[0].results is None:
            return None
        try:
            results: list[Any] = wire.load_results(outcomes[0].results, fn_name)
        except Exception as exc:
            _log.warning("stored result %s not used (it runs again): %s", call_identity, exc)
            return None
        return results
