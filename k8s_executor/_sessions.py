"""The records of a named run: which client ran it until when, and which calls each
launched where.

Every client of a named run (a *session*, one executor) writes, beside the run's stored
results, under ``<storage>/named/<name>/``::

    sessions/<run-id>.json          {"run_id", "started", "deadline", "owner"}, at start
    launches/<run-id>-<batch>.json  the batch's tasks in submission order, before its Job
                                    is created: [[identity, index, function, calls,
                                    single], ...] (``calls``: a map chunk's size;
                                    ``single``: a submit, whose result is not a list)

A later client reads them to *join* the calls another session's workers are running
(``_join``), ``k8s-executor results`` and ``ls --named`` to report on the run, and any
client of the storage to remove the runs whose deadline has passed (:func:`sweep_expired`).

The records are JSON, not signed: a forged record can make a client wait for a call (at
most until the session's deadline) or run it again, never accept a result (results are
signed with the key kept on the client's machine), and the sweep deletes only what is
shaped like a run's own prefix (``<storage>/r<hex>``) and the named run's own folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ._contract import past_deadline
from ._durable import PREFIX, check_name, forget_key, run_url
from ._store import RunStore
from .errors import StorageError

__all__ = [
    "LaunchRecord",
    "Session",
    "expired",
    "forget_run",
    "named_runs",
    "read_launches",
    "read_sessions",
    "sweep_expired",
    "write_launch",
    "write_session",
]

_log = logging.getLogger(__name__)

SESSIONS = "sessions"
LAUNCHES = "launches"
RUN_ID = re.compile(r"r[0-9a-f]{11}")
"""The shape of a run id (``_store.new_run_id``): the only prefixes the sweep deletes."""


@dataclass(frozen=True)
class Session:
    """One client of a named run."""

    run_id: str
    started: float
    """When it started (seconds since the epoch, this client's clock)."""
    deadline: float | None = None
    """A detached session: when its workers stop and its storage may go (epoch seconds)."""
    owner: str = ""


@dataclass(frozen=True)
class LaunchRecord:
    """The tasks of one batch a session launched: ``(identity, index, function, calls,
    single)`` each (see the module docstring)."""

    run_id: str
    batch_id: str
    started: float
    deadline: float | None = None
    calls: list[tuple[str, int, str, int, bool]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The record's key, below ``launches/``."""
        return f"{self.run_id}-{self.batch_id}"


def write_session(named: RunStore, session: Session) -> None:
    """Record a session (before it launches anything)."""
    named.put(f"{SESSIONS}/{session.run_id}.json", json.dumps(asdict(session)).encode())


def write_launch(named: RunStore, record: LaunchRecord) -> None:
    """Record a batch's calls (before its Job is created)."""
    named.put(f"{LAUNCHES}/{record.name}.json", json.dumps(asdict(record)).encode())


def read_sessions(named: RunStore) -> list[Session]:
    """The run's sessions, oldest first (unreadable records are skipped, with a warning)."""
    sessions = []
    for data in _records(named, SESSIONS):
        try:
            s = Session(**data)
            if not RUN_ID.fullmatch(s.run_id):
                raise ValueError(f"run id {s.run_id!r}")
            sessions.append(Session(s.run_id, float(s.started), _number(s.deadline), s.owner))
        except (TypeError, ValueError) as exc:
            _log.warning("a session record of %s is not used: %s", named.url, exc)
    return sorted(sessions, key=lambda s: s.started)


def read_launches(named: RunStore) -> list[LaunchRecord]:
    """The run's launch records in the order their calls were submitted."""
    launches = []
    for data in _records(named, LAUNCHES):
        try:
            r = LaunchRecord(**data)
            if not RUN_ID.fullmatch(r.run_id) or not re.fullmatch(r"b\d+", r.batch_id):
                raise ValueError(f"launch {r.run_id!r}/{r.batch_id!r}")
            calls = [(str(i), int(k), str(f), int(n), bool(one)) for i, k, f, n, one in r.calls]
            launches.append(
                LaunchRecord(r.run_id, r.batch_id, float(r.started), _number(r.deadline), calls)
            )
        except (TypeError, ValueError) as exc:
            _log.warning("a launch record of %s is not used: %s", named.url, exc)
    return sorted(launches, key=lambda r: (r.started, r.run_id, r.batch_id))


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _records(named: RunStore, folder: str) -> Iterable[dict[str, Any]]:
    for key in named.list_keys(folder):
        if not key.endswith(".json"):
            continue
        try:
            data = json.loads(named.get(key))
        except (FileNotFoundError, ValueError) as exc:
            _log.warning("record %s/%s is not used: %s", named.url, key, exc)
            continue
        if isinstance(data, dict):
            yield data


def expired(sessions: list[Session], now: float) -> bool:
    """Whether a run's storage may go: it has sessions, every one detached and past its
    deadline by ``_contract.EXPIRY_MARGIN`` (a run some client used without ``detach``
    keeps its results until ``k8s-executor forget``)."""
    return bool(sessions) and all(past_deadline(s.deadline, now) for s in sessions)


def deadline(sessions: list[Session]) -> float | None:
    """The run's deadline: its last session's, when every session is detached."""
    if not sessions or any(s.deadline is None for s in sessions):
        return None
    return max(s.deadline for s in sessions if s.deadline is not None)


def named_runs(root: str, options: dict[str, Any]) -> list[str]:
    """The names of the named runs in the storage ``root``."""
    store = RunStore(f"{root.rstrip('/')}/{PREFIX}", options)
    try:
        if store.is_local:
            names = os.listdir(store.root)
        else:
            store.fs.invalidate_cache(store.root)
            names = [
                p.rstrip("/").rsplit("/", 1)[-1] for p in store.fs.ls(store.root, detail=False)
            ]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(f"cannot list the named runs at {store.url}: {exc}") from exc
    good = []
    for name in sorted(names):
        with contextlib.suppress(Exception):
            good.append(check_name(name, ""))
    return good


def remove_run(root: str, name: str, options: dict[str, Any], sessions: list[Session]) -> None:
    """Delete a named run: its sessions' run prefixes, its folder, this machine's key."""
    root = root.rstrip("/")
    for s in sessions:
        RunStore(f"{root}/{s.run_id}", options).delete_all()
        shutil.rmtree(_log_dir(s.run_id), ignore_errors=True)
    RunStore(run_url(root, name), options).delete_all()
    forget_key(root, name)


def _remove_expired(root: str, name: str, options: dict[str, Any], old: list[Session]) -> bool:
    """Delete the expired sessions ``old`` of a named run, then the run itself (folder,
    this machine's key) unless a session not in ``old`` started meanwhile: whether the
    whole run went.

    Deleting the old prefixes takes a while on an object store; a client of the same run
    name may start in that window. Its session is read again before the folder goes: when
    one is there, only the old sessions' own records go, and the folder (with the stored
    results the new session reuses) and the key stay."""
    root = root.rstrip("/")
    for s in old:
        RunStore(f"{root}/{s.run_id}", options).delete_all()
        shutil.rmtree(_log_dir(s.run_id), ignore_errors=True)
    named = RunStore(run_url(root, name), options)
    known = {s.run_id for s in old}
    if all(s.run_id in known for s in read_sessions(named)):
        named.delete_all()
        forget_key(root, name)
        return True
    launches = [
        k
        for k in named.list_keys(LAUNCHES)
        if k.removeprefix(f"{LAUNCHES}/").split("-", 1)[0] in known
    ]
    named.delete(*launches, *(f"{SESSIONS}/{run_id}.json" for run_id in sorted(known)))
    _log.info("named run %s: a session started during the sweep, the run stays", name)
    return False


def forget_run(root: str, name: str, options: dict[str, Any]) -> int:
    """Delete a named run (``k8s-executor forget``): what :func:`remove_run` deletes;
    the number of sessions whose prefixes went with it."""
    check_name(name, "")
    sessions = read_sessions(RunStore(run_url(root, name), options))
    remove_run(root, name, options, sessions)
    return len(sessions)


def _log_dir(run_id: str) -> str:
    from ._durable import _state_dir

    return str(_state_dir() / "logs" / run_id)


def log_dir(run_id: str) -> str:
    """Where the local backend's detached workers of a session write their output."""
    return _log_dir(run_id)


def sweep_expired(root: str, options: dict[str, Any], now: float | None = None) -> list[str]:
    """Remove every named run of the storage whose deadline has passed (what a detached
    run leaves once nothing runs any more); the names removed. Never raises: a run that
    cannot be removed now is logged, and tried again by the next sweep."""
    now = time.time() if now is None else now
    removed = []
    try:
        names = named_runs(root, options)
    except StorageError as exc:
        _log.warning("cannot look for expired named runs: %s", exc)
        return []
    for name in names:
        try:
            sessions = read_sessions(RunStore(run_url(root, name), options))
            if expired(sessions, now) and _remove_expired(root, name, options, sessions):
                removed.append(name)
        except StorageError as exc:
            _log.warning("cannot remove the expired named run %s: %s", name, exc)
    return removed


def start_sweep(root: str, options: dict[str, Any]) -> None:
    """:func:`sweep_expired` in a daemon thread: a named run's start does not wait for it."""
    threading.Thread(
        target=sweep_expired, args=(root, options), name="k8sx-sweep", daemon=True
    ).start()
