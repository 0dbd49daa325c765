"""Skip markers: ``<batch>/skip/<index>`` tells a worker which of its calls were cancelled.

A cancelled call must not run, as with ProcessPoolExecutor, even when it shares a worker
with calls that were not cancelled. The worker reads the marker before its first call:
empty means every call of the index was cancelled (and the backend is told, so it can
avoid starting the worker at all); otherwise it lists the task ids to leave out. Only the
first call of a started index is running for the engine: the worker re-reads its marker
between calls (at most every ``SKIP_RECHECK_SECONDS``, see ``worker``), so the later ones
can still be cancelled, and a result of a call cancelled meanwhile is dropped.

Markers are collected under the engine's lock and written after it is released, one
writer at a time (``_io``), so that the markers of an index land in order, each with
everything cancelled so far, and whoever finds its index's marker being written waits
for that write rather than for the engine's lock.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

from ._batches import Batch
from ._store import RunStore
from .errors import StorageError

__all__ = ["SKIP_MARKER_DELAY", "SkipMarkers"]

_log = logging.getLogger("k8s_executor._executor")
# Seconds between a call's cancellation and its index's skip marker being written; the
# cancellations that come meanwhile share the write.
SKIP_MARKER_DELAY = 0.02

Key = tuple[str, int]  # (batch, index)


class SkipMarkers:
    """The skip markers of one run.

    Args:
        lock: the engine's lock, which guards ``batches`` and the markers' state.
        batches: the engine's launched, unfinished batches, by id (shared, not copied).
        cancel: the backend's ``cancel(batch_id, indexes)``, for indexes left empty.
    """

    def __init__(
        self,
        lock: threading.RLock,
        batches: dict[str, Batch],
        cancel: Callable[[str, Collection[int]], None],
    ) -> None:
        self._lock = lock
        self._batches = batches
        self._cancel = cancel
        self.store: RunStore | None = None  # set when the run starts
        self._pending: set[Key] = set()  # cancelled since their marker was last written
        self._inflight: set[Key] = set()  # collected, being written
        self._written: dict[Key, float] = {}  # when, by time.monotonic()
        self._timer: threading.Timer | None = None
        self._io = threading.Lock()
        self._bulk = False

    @property
    def timer(self) -> threading.Timer | None:
        """The delayed write waiting to run, if any."""
        return self._timer

    def add(self, key: Key) -> None:
        """A call of a launched index was cancelled (lock held); written by :meth:`write`."""
        self._pending.add(key)

    def unwritten(self, key: Key | None = None) -> bool:
        """Whether a marker (of ``key``, or any) waits for its write or is being written
        (lock held)."""
        if key is None:
            return bool(self._pending or self._inflight)
        return key in self._pending or key in self._inflight

    def forget(self, batch: Batch) -> None:
        """``batch`` is over (lock held)."""
        for i in range(len(batch.indexes)):
            self._written.pop((batch.batch_id, i), None)

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Cancel many calls inside (lock held): one marker per index, written by the
        caller's :meth:`write` once it has released the lock."""
        self._bulk = True
        try:
            yield
        finally:
            self._bulk = False

    def cancelled(self, key: Key) -> None:
        """A call of index ``key`` was cancelled (lock not held): its marker is written
        before this returns, unless the index's was written a moment ago."""
        with self._lock:
            if key[0] not in self._batches:
                return  # not launched yet: it will never be
            self._pending.add(key)
            if self._bulk:
                return
            last = self._written.get(key)
            write_now = last is None or time.monotonic() - last >= SKIP_MARKER_DELAY
            if not write_now:
                if self._timer is not None:
                    return
                # The index's marker was written a moment ago: a loop is cancelling many
                # of its calls. Write once for all of them shortly, not once per call.
                timer = threading.Timer(SKIP_MARKER_DELAY, self.write)
                timer.daemon = True
                self._timer = timer
        if write_now:
            # Written before cancel() returns, so the worker sees it if it starts later.
            self.write()
        else:
            timer.start()

    def write(self) -> None:
        """Write the markers of every index with calls cancelled since its last one
        (lock not held)."""
        with self._io:
            with self._lock:
                timer, self._timer = self._timer, None
                if timer is not None and timer is not threading.current_thread():
                    timer.cancel()
                pending, self._pending = self._pending, set()
                markers = self._collect(pending)
                self._inflight.update((b, i) for b, i, _, _ in markers)
                store = self.store
            try:
                for batch_id, index, marker, _ in markers:
                    assert store is not None
                    try:
                        store.put(f"{batch_id}/skip/{index}", marker)
                    except StorageError as exc:
                        # The calls stay cancelled; only the worker will not know to skip them.
                        _log.warning(
                            "cannot tell batch %s index %s to skip: %s", batch_id, index, exc
                        )
            finally:
                with self._lock:
                    now = time.monotonic()
                    for batch_id, index, _, _ in markers:
                        self._inflight.discard((batch_id, index))
                        if batch_id in self._batches:
                            self._written[(batch_id, index)] = now
        for batch_id, index, _, empty in markers:
            if empty:
                self._cancel(batch_id, [index])

    def _collect(self, pending: set[Key]) -> list[tuple[str, int, bytes, bool]]:
        # Lock held: (batch, index, marker, every call of the index cancelled).
        markers = []
        for batch_id, index in sorted(pending):
            batch = self._batches.get(batch_id)
            if batch is None or self.store is None:
                continue
            entry = batch.indexes[index]
            if entry.finished or entry.skipped:
                continue
            ids = [t.task_id for t in entry.tasks if t.future.cancelled()]
            if not entry.started and all(t.future.done() for t in entry.tasks):
                # Nothing left to run: the worker need not start.
                entry.skipped = True
                markers.append((batch_id, index, b"", True))
            else:
                # A started worker re-reads its marker between calls.
                markers.append((batch_id, index, json.dumps({"tasks": ids}).encode(), False))
        return markers
