"""Where a run's storage is, opened as the run starts: the root (a temporary folder
without ``Settings.storage``), the run's own store, a named run's store with this
session's record in it, and the :class:`~k8s_executor.backends._base.RunContext` the
backend is started with."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

from ._config import Settings
from ._durable import run_url
from ._sessions import Session, log_dir, start_sweep, write_session
from ._store import RunStore
from .backends._base import RunContext

__all__ = ["RunStorage", "open_storage"]


@dataclass(frozen=True)
class RunStorage:
    """What :func:`open_storage` opened."""

    root: str  # the storage root; runs are <root>/<run-id>
    temp_dir: str | None  # the temporary root, deleted with the run; None with storage
    store: RunStore  # <root>/<run-id>
    named: RunStore | None  # a named run's store, or None
    deadline_at: float | None  # the run's deadline (epoch seconds), or None
    context: RunContext  # what the backend is started with


def open_storage(settings: Settings, run_id: str, key: bytes) -> RunStorage:
    """Open the storage of run ``run_id``; a named run's session is recorded beside its
    results (before anything is launched: what a detached session leaves is found by it)
    and the sweep of expired runs is started."""
    temp_dir = None
    if settings.storage is None:
        temp_dir = root = tempfile.mkdtemp(prefix="k8sx-")
    else:
        root = settings.storage.rstrip("/")
    options = settings.storage_options
    store = RunStore(f"{root}/{run_id}", options, settings.storage_retry)
    name = settings.run_name
    deadline_at = None if settings.deadline is None else time.time() + settings.deadline
    named = None
    if name is not None:
        named = RunStore(run_url(root, name), options, settings.storage_retry)
        write_session(named, Session(run_id, time.time(), deadline_at))
        start_sweep(root, options)
    context = RunContext(
        run_id,
        store.url,
        key,
        options,
        named=name or "",
        deadline=deadline_at,
        log_dir=log_dir(run_id) if deadline_at is not None else "",
    )
    return RunStorage(root, temp_dir, store, named, deadline_at, context)
