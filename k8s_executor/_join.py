"""Joining: a call of a named run that another session's worker is running now is not
started again; its future resolves when that copy stores the result.

A later client (the same script run again after the laptop slept) submits its calls;
those with a stored result resolve at once (``_durable.StoredResults``). The others are
looked up in the run's launch records (``_sessions``): a call some session launched
whose worker is still at work is *joined*. The :class:`Joiner`'s thread then reads, every
:data:`POLL_SECONDS`, for each joined call:

- the copy's outcome ``<storage>/<run-id>/<batch>/out/<index>``: written, its worker has
  ended. The result, stored before the outcome, is then read: the future resolves with
  it, or, stored it is not (the call raised, or its result did not verify), the call
  runs again here (``rerun``).
- else its marker ``alive/<index>``: older than :data:`~k8s_executor._durable.JOIN_GRACE`
  at the first look (by the storage's clock), or unchanged for that long since (by
  ours), the copy is lost: the call runs again. Never written, the copy is lost at
  once, unless its session is detached (its pod may be pending) and launched less than
  :data:`~k8s_executor._durable.START_GRACE` ago. So is a call whose session's deadline
  has passed.

Bounded: a join ends when its copy's worker ends, at most ``JOIN_GRACE`` after that
worker stops refreshing its marker (``START_GRACE`` after its launch if it never
started), and never later than its session's deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import _payload as wire
from ._batches import Task
from ._durable import JOIN_GRACE, StoredResults, alive_key, copy_alive
from ._sessions import LaunchRecord, read_launches
from ._store import RunStore
from .errors import StorageError

__all__ = ["POLL_SECONDS", "Joiner"]

_log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
"""How often the outcomes and markers of joined calls are read."""


@dataclass(eq=False)
class _Joined:
    task: Task
    batch: RunStore  # the batch's storage, in the session that launched it
    index: int
    deadline: float | None
    started: float  # when its session launched it (epoch seconds)
    first: bool = True  # not looked at yet
    marker: bytes | None = None
    changed: float = field(default_factory=time.monotonic)


class Joiner:
    """Follows the calls of a named run that other sessions run (module docstring).

    Args:
        root: the storage root (sessions' run prefixes are ``<root>/<run-id>``).
        named: the named run's store.
        stored: its stored results, read with this machine's key.
        own_run_id: this session's run id (its own launches are not joined).
        settle: ``settle(task, result=...)`` resolves a joined call.
        rerun: ``rerun(tasks)`` runs calls whose copy was lost, here.
        changed: called once joined calls are resolved or handed to ``rerun``.
        died: ``died(name, error, tasks)`` when the thread ends on an unexpected error,
            with the joined calls not resolved yet (the engine breaks and fails them).
    """

    def __init__(
        self,
        *,
        root: str,
        named: RunStore,
        stored: StoredResults,
        own_run_id: str,
        settle: Callable[..., None],
        rerun: Callable[[list[Task]], None],
        changed: Callable[[], None],
        died: Callable[[str, BaseException, list[Task]], None],
    ) -> None:
        self._root = root.rstrip("/")
        self._named = named
        self._stored = stored
        self._own = own_run_id
        self._settle = settle
        self._rerun = rerun
        self._changed = changed
        self._died = died
        self._lock = threading.Lock()
        self._joined: list[_Joined] = []
        self._where: dict[str, tuple[LaunchRecord, int]] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.joined = 0

    def _launched(self) -> dict[str, tuple[LaunchRecord, int]]:
        # Read once, at the first submit: the launches of sessions before this one.
        if self._where is None:
            try:
                launches = read_launches(self._named)
            except StorageError as exc:
                _log.warning("cannot read the launches of %s: %s", self._named.url, exc)
                launches = []
            where: dict[str, tuple[LaunchRecord, int]] = {}
            for record in launches:
                if record.run_id == self._own:
                    continue
                for identity, index, *_ in record.calls:
                    where[identity] = (record, index)  # the latest launch of a call
            self._where = where
        return self._where

    def join(self, tasks: list[Task]) -> list[Task]:
        """Join those of ``tasks`` (unsettled, with an identity) that another session
        launched; the others, to run here."""
        launched = self._launched()
        now = time.time()
        joined, rest = [], []
        for t in tasks:
            found = launched.get(t.identity) if t.identity and not t.settled else None
            if found is None or (found[0].deadline is not None and found[0].deadline < now):
                rest.append(t)
                continue
            record, index = found
            batch = RunStore(f"{self._root}/{record.run_id}/{record.batch_id}", self._named.options)
            joined.append(_Joined(t, batch, index, record.deadline, record.started))
        if joined:
            with self._lock:
                self._joined += joined
                self.joined += len(joined)
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._follow, name="k8sx-join", daemon=True
                    )
                    self._thread.start()
        return rest

    def stop(self) -> list[Task]:
        """Stop following; the joined calls not resolved yet (lock of the engine not held)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            left, self._joined = self._joined, []
        return [j.task for j in left if not j.task.settled]

    def tasks(self) -> list[Task]:
        """The joined calls not resolved yet (followed still)."""
        with self._lock:
            return [j.task for j in self._joined if not j.task.settled]

    def pending(self) -> int:
        """How many joined calls are not resolved yet."""
        with self._lock:
            return len(self._joined)

    def _follow(self) -> None:
        try:
            self._follow_loop()
        except BaseException as exc:
            # Never silently: a joined future would wait for ever, and the engine's
            # shutdown with it (it waits for what is joined).
            left = self.drop()
            self._died("join", exc, left)
            self._changed()

    def drop(self) -> list[Task]:
        """Follow none of the joined calls any more (the thread goes on, idle); those not
        resolved yet, to be settled. Any thread, the engine's lock held or not."""
        with self._lock:
            left, self._joined = self._joined, []
        return [j.task for j in left if not j.task.settled]

    def _follow_loop(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            with self._lock:
                joined = list(self._joined)
            done, lost = [], []
            for j in joined:
                state = self._look(j)
                if state == "done":
                    done.append(j)
                elif state == "lost":
                    lost.append(j)
            again = [j.task for j in lost if not j.task.settled]
            if again:
                # Queued before they stop counting as joined: the engine never sees
                # neither (it would stop launching).
                _log.info("%d joined calls lost their copy: they run again here", len(again))
                self._rerun(again)
            if done or lost:
                with self._lock:
                    gone = {id(j) for j in done + lost}
                    self._joined = [j for j in self._joined if id(j) not in gone]
                self._changed()

    def _look(self, j: _Joined) -> str:
        """``"done"`` (resolved), ``"lost"`` (to run again) or ``"running"``."""
        if j.task.settled:
            return "done"  # cancelled meanwhile
        try:
            # The outcome first: the result is stored before it, so an outcome with no
            # result stored means none ever will be.
            ended = j.batch.get_or_none(f"out/{j.index}") is not None
            results = self._stored.load(j.task.identity, wire.callable_name(j.task.fn))
            if results is not None:
                self._settle(j.task, result=results[0] if j.task.single else results)
                return "done"
            if ended:
                return "lost"
            marker = j.batch.get_or_none(alive_key(j.index))
            age = j.batch.age(alive_key(j.index)) if j.first and marker is not None else None
        except StorageError as exc:
            _log.warning("cannot follow a joined call (it runs again): %s", exc)
            return "lost"
        now, first = time.monotonic(), j.first
        j.first = False
        if j.deadline is not None and j.deadline < time.time():
            return "lost"
        if marker is None or first:
            detached = j.deadline is not None
            if not copy_alive(age, time.time() - j.started, detached=detached):
                return "lost"
        if marker != j.marker:
            j.marker, j.changed = marker, now
        if marker is not None and now - j.changed > JOIN_GRACE:
            return "lost"
        return "running"
