"""The client's side of warm workers: which worker is idle, who gets the next index, and
what becomes a new pod (see ``_warm`` for the storage protocol).

The engine (``_run.Run``) hands every prepared batch to the :class:`WarmPool` instead of
launching it whole. The pool gives each index to an idle warm worker if there is one,
launches the rest as new workers (a Job of only those indexes) while fewer than
``max_workers`` are alive, and keeps what is left until a worker goes idle or ends. So
``max_workers`` bounds warm and new workers together, and the backend never holds a
launched index back for want of a slot.

A worker's life, as the pool sees it: launched (it holds a slot) → its ``done-0`` marker
is listed (its own index is resolved; it is idle) → assigned (busy) → ``done-k`` listed
(idle again) → ... → ended (its backend reports the pod or process gone; the slot is free).
An assignment the worker never took when it ends goes to another worker; one it took
fails with it, as any call of a lost worker does.

The pool's lock is never held across storage I/O nor while calling the engine.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from . import _warm as warm
from ._store import RunStore
from .backends._base import IndexExit
from .errors import StorageError

__all__ = ["WarmPool"]

_log = logging.getLogger("k8s_executor._executor")

# The client LISTs warm/ while it waits for a marker: every FIRST_LIST seconds right after
# something happened, growing by half up to LAST_LIST while nothing does (a long call
# costs one LIST a second, about 3 600 an hour).
FIRST_LIST = 0.02
LAST_LIST = 1.0


# An index a LIST shows done: batch, index, exit code, and its worker's own index.
_Finished = tuple[str, int, int, tuple[str, int]]


class Engine(Protocol):
    """What the pool asks of the engine (``_reports.Reports``)."""

    def index_started(self, batch_id: str, index: int) -> bool:
        """Mark an index's first live call running; False if all were cancelled."""

    def warm_finished(
        self, batch_id: str, index: int, exit: IndexExit, worker: tuple[str, int]
    ) -> None:
        """Resolve an index from its outcome in storage; ``worker``: the batch and index
        the worker that ran it was started for."""

    def backend_broken(self, error: BaseException, *, thread: str = "") -> None:
        """Fail every unfinished future: ``thread`` died of ``error``."""

    def declined(self, batch_id: str, index: int) -> bool:
        """Whether an index has nothing left to run (every call cancelled or settled):
        then it is done, without a worker."""

    def launch_part(self, batch_id: str, indexes: tuple[int, ...]) -> bool:
        """Start new workers for these indexes of a batch; False if that failed (the
        engine failed their calls)."""


@dataclass
class _Worker:
    wid: str
    own: tuple[str, int]
    """The batch and index it was started for."""
    seq: int = 0
    """The last assignment sent to it (0: none yet)."""
    done: int = -1
    """The last assignment it reported done (0: its own index)."""
    assignment: tuple[str, int] | None = None
    """The batch index it was asked to run and has not reported done."""

    @property
    def idle(self) -> bool:
        return self.assignment is None and self.done == self.seq


class WarmPool:
    """Schedules a run's indexes on warm and new workers (see the module docstring).

    Args:
        store: the run's storage.
        max_workers: the most workers alive at once, warm or new.
        engine: the run's engine.
    """

    def __init__(self, store: RunStore, max_workers: int, engine: Engine) -> None:
        self._store = store
        self._max_workers = max_workers
        self._engine = engine
        self._cond = threading.Condition()
        self._workers: dict[str, _Worker] = {}
        self._owners: dict[tuple[str, int], str] = {}  # own index → its latest worker
        self._ended: set[str] = set()
        # Own indexes whose worker ended before a LIST showed it: a marker of theirs listed
        # later is a dead worker's, never an idle one (see worker_ended).
        self._gone: set[tuple[str, int]] = set()
        self._unsent: dict[str, warm.Assignment] = {}  # by worker: its write failed
        self._pending: collections.deque[tuple[str, int]] = collections.deque()
        self._live = 0  # indexes launched whose worker has not ended
        self._stopped = False
        self._hurry = False  # list again soon: something was just assigned
        self._poller = threading.Thread(target=self._poll, name="k8sx-warm", daemon=True)
        self._poller.start()

    # -- the engine's calls -------------------------------------------------------------

    def add(self, batch_id: str, indexes: int) -> None:
        """Schedule every index of a prepared batch."""
        with self._cond:
            self._pending.extend((batch_id, i) for i in range(indexes))
        self.pump()

    def has_idle(self) -> bool:
        """Whether a call sent now would start at once in a warm worker."""
        with self._cond:
            return any(w.idle for w in self._workers.values())

    def worker_ended(self, batch_id: str, index: int, exit: IndexExit) -> None:
        """The worker started for ``index`` of ``batch_id`` is gone (its pod or process
        ended): free its slot, and settle or hand on what it was asked to run."""
        with self._cond:
            self._live -= 1
            wid = self._owners.pop((batch_id, index), None)
            worker = None if wid is None else self._workers.pop(wid, None)
            if wid is not None:
                self._ended.add(wid)
                self._unsent.pop(wid, None)
            else:
                # Not seen yet: it left (its idle window over, or killed) before a LIST
                # showed its done-0. A LIST in flight, or a later one, may still show that
                # marker; taken for an idle worker, it would be given calls that nobody
                # runs and no backend report would ever hand on (a hang).
                self._gone.add((batch_id, index))
            self._cond.notify_all()
        if worker is not None and worker.assignment is not None:
            self._settle_orphan(worker, exit)
        self.pump()

    def release_idle(self) -> int:
        """Ask every idle worker to leave now (their pods hold quota that pods of this run
        are refused for); the number asked."""
        with self._cond:
            leaving = [w for w in self._workers.values() if w.idle]
            for worker in leaving:
                worker.seq += 1  # a stop: never idle again
        for worker in leaving:
            try:
                stop = warm.stop_assignment(worker.seq)
                self._store.put(warm.next_key(worker.wid), stop.encode())
            except StorageError as exc:  # it leaves at the end of its idle window
                _log.warning("cannot ask a warm worker to leave: %s", exc)
        return len(leaving)

    def stop(self) -> None:
        """Stop listing (the run is over; the backend ends the workers)."""
        with self._cond:
            self._stopped = True
            self._pending.clear()
            self._cond.notify_all()
        self._poller.join()

    # -- scheduling -----------------------------------------------------------------------

    def drop_declined(self) -> None:
        """Forget the pending indexes whose calls were all cancelled (no I/O: safe to call
        with the engine's lock held)."""
        with self._cond:
            waiting = list(self._pending)
        declined = {item for item in waiting if self._engine.declined(*item)}
        if declined:
            with self._cond:
                self._pending = collections.deque(i for i in self._pending if i not in declined)

    def pump(self) -> None:
        """Give pending indexes to idle workers, then to new workers while slots are free;
        drop those whose calls were all cancelled meanwhile."""
        self.drop_declined()
        while True:
            assigned, launches = self._plan()
            again = False
            for worker, seq, (batch_id, index) in assigned:
                again |= not self._assign(worker, seq, batch_id, index)
            for batch_id, indexes in launches.items():
                if not self._engine.launch_part(batch_id, tuple(indexes)):
                    with self._cond:
                        self._live -= len(indexes)
                    again = True
            if not again:
                return

    def _plan(self) -> tuple[list[tuple[_Worker, int, tuple[str, int]]], dict[str, list[int]]]:
        assigned = []
        launches: dict[str, list[int]] = {}
        with self._cond:
            if self._stopped:
                return [], {}
            idle = (w for w in list(self._workers.values()) if w.idle)
            while self._pending:
                worker = next(idle, None)
                if worker is not None:
                    item = self._pending.popleft()
                    worker.seq += 1
                    worker.assignment = item
                    assigned.append((worker, worker.seq, item))
                elif self._live < self._max_workers:
                    batch_id, index = self._pending.popleft()
                    launches.setdefault(batch_id, []).append(index)
                    self._live += 1
                else:
                    break
            if assigned or launches:
                self._hurry = True
                self._cond.notify_all()
        return assigned, launches

    def _assign(self, worker: _Worker, seq: int, batch_id: str, index: int) -> bool:
        """Send one index to an idle worker; False if none of its calls is left to run."""
        if not self._engine.index_started(batch_id, index):
            with self._cond:  # all cancelled: the worker is idle still
                if worker.seq == seq:
                    worker.seq -= 1
                    worker.assignment = None
            return False
        assignment = warm.Assignment(seq, batch_id, index)
        try:
            self._store.put(warm.next_key(worker.wid), assignment.encode())
        except StorageError as exc:
            # Maybe written after all; sent again on every pass of the poller until the
            # storage takes it (the worker ignores an assignment it has seen).
            _log.warning("cannot hand index %d of %s to a warm worker: %s", index, batch_id, exc)
            with self._cond:
                self._unsent[worker.wid] = assignment
                self._cond.notify_all()
        return True

    def _resend(self) -> None:
        """Write again the assignments whose first write failed (no lock held)."""
        with self._cond:
            unsent = list(self._unsent.items())
        for wid, assignment in unsent:
            try:
                self._store.put(warm.next_key(wid), assignment.encode())
            except StorageError:
                continue
            with self._cond:
                if self._unsent.get(wid) is assignment:
                    del self._unsent[wid]

    def _settle_orphan(self, worker: _Worker, exit: IndexExit) -> None:
        # The worker ended with an assignment not reported done: finished after all (its
        # done marker not listed yet), lost with it (taken), or never taken (hand it on).
        assert worker.assignment is not None
        batch_id, index = worker.assignment
        try:
            markers = [
                m
                for k in self._store.list_keys(f"{warm.FOLDER}/{worker.wid}")
                if (m := warm.parse_marker(k)) is not None and m.seq == worker.seq
            ]
        except StorageError as exc:
            exit = IndexExit(None, reason="StorageError", message=str(exc))
            self._engine.warm_finished(batch_id, index, exit, worker.own)
            return
        done = next((m for m in markers if m.kind == "done"), None)
        if done is not None:
            self._engine.warm_finished(batch_id, index, IndexExit(done.code), worker.own)
        elif markers:
            self._engine.warm_finished(batch_id, index, exit, worker.own)
        else:
            with self._cond:
                self._pending.appendleft((batch_id, index))

    # -- listing markers --------------------------------------------------------------------

    def _waiting(self) -> bool:
        # Called with the lock held: a live worker has not reported idle yet.
        idle = sum(w.idle for w in self._workers.values())
        return self._live > idle

    def _poll(self) -> None:
        delays = _growing()
        try:
            while True:
                with self._cond:
                    while not self._stopped and not self._waiting():
                        self._cond.wait()
                    if self._stopped:
                        return
                self._resend()
                try:
                    keys = self._store.list_keys(warm.FOLDER)
                except StorageError as exc:
                    _log.warning("cannot list the run's warm workers: %s", exc)
                    keys = []
                finished, fresh = self._scan(keys)
                for batch_id, index, code, own in finished:
                    self._engine.warm_finished(batch_id, index, IndexExit(code), own)
                if fresh:
                    self.pump()
                with self._cond:
                    if fresh or self._hurry:
                        self._hurry = False
                        delays = _growing()
                    if not self._stopped:
                        self._cond.wait(next(delays))
        except BaseException as exc:
            # A bug: without this thread no warm worker's outcome would be seen. Break the
            # executor (every unfinished future fails) rather than strand the calls.
            _log.error("the warm-worker thread failed", exc_info=exc)
            self._engine.backend_broken(exc, thread="warm-worker")

    def _scan(self, keys: list[str]) -> tuple[list[_Finished], bool]:
        """Apply a LIST of ``warm/``: the indexes it shows finished (with their exit
        codes), and whether a worker became idle."""
        latest: dict[str, warm.Marker] = {}
        for key in keys:
            marker = warm.parse_marker(key)
            if marker is None or marker.kind != "done":
                continue
            if marker.wid not in latest or marker.seq > latest[marker.wid].seq:
                latest[marker.wid] = marker
        finished: list[_Finished] = []
        fresh = False
        with self._cond:
            for wid, marker in latest.items():
                if wid in self._ended:
                    continue
                worker = self._workers.get(wid)
                if worker is None:
                    own = (marker.batch_id, marker.index)
                    if own in self._gone or (own not in self._owners and marker.seq != 0):
                        continue  # not a worker of ours any more
                    worker = self._workers[wid] = _Worker(wid, own)
                    replaced = self._owners.get(own)
                    self._owners[own] = wid
                    if replaced is not None and replaced in self._workers:
                        # A retried pod of the same index: the first one is gone.
                        self._replaced(self._workers.pop(replaced))
                if marker.seq <= worker.done:
                    continue
                assert marker.code is not None
                worker.done = marker.seq
                if marker.seq == 0:
                    finished.append((*worker.own, marker.code, worker.own))
                elif marker.seq == worker.seq and worker.assignment is not None:
                    finished.append((*worker.assignment, marker.code, worker.own))
                    worker.assignment = None
                fresh |= worker.idle
        return finished, fresh

    def _replaced(self, worker: _Worker) -> None:
        # Called with the lock held. The Job retried the index (Timeouts/retries): what
        # the first pod was asked to run is run again elsewhere, as a retry would.
        self._ended.add(worker.wid)
        if worker.assignment is not None:
            self._pending.appendleft(worker.assignment)


def _growing() -> Iterator[float]:
    delay = FIRST_LIST
    while True:
        yield delay
        delay = min(delay * 1.5, LAST_LIST)
