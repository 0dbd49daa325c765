"""The futures' side of the engine: which launched index holds which calls, and how each
call's future ends.

A call becomes running when its worker starts it (``index_started``), is settled from its
index's ``out/<i>`` and the worker's exit (``index_finished``, through ``_outcomes``), is
cancelled with its worker told to skip it (``_skips``), or fails with the error of a launch
that failed or of a run that broke. Whoever settles a task first notifies its future; a
task whose future is done is released (``Task.release``).

The :class:`Resolver` is called from the backend's threads (through the engine, the
backend's listener), from the warm pool's, from the dispatcher's (a batch launched, a
launch that failed) and from the caller's (a future cancelled). Its state is guarded by
the engine's lock, which is never held while an outcome is read from storage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future
from typing import Any

from ._batches import Batch, Index, Task
from ._outcomes import resolve_index
from ._progress import Progress
from ._skips import SkipMarkers
from ._store import RunStore
from ._warm_pool import WarmPool
from .backends._base import Backend, IndexExit

__all__ = ["Resolver"]


class Resolver:
    """Settles the futures of one run's launched batches (see the module docstring).

    Args:
        cond: the engine's condition (over its lock); notified when a batch is over.
        batches: the engine's launched, unfinished batches, by id (shared, not copied).
        skips: the run's skip markers.
        key: the run's signing key (outcomes are signed).
        backend: the run's backend (its optional ``worker_exit`` describes warm workers).
    """

    def __init__(
        self,
        cond: threading.Condition,
        batches: dict[str, Batch],
        skips: SkipMarkers,
        *,
        key: bytes,
        backend: Backend,
    ) -> None:
        self._cond = cond
        self._batches = batches
        self._skips = skips
        self._key = key
        self._backend = backend
        self.store: RunStore | None = None  # set when the run starts
        self.warm: WarmPool | None = None  # set when the run starts, with warm workers
        # Batching.speculate: other_copy(batch_id, index), lock held, is called once per
        # report of a finished copy of an index; True while another copy still runs (a
        # copy that ends without an outcome then leaves the index to it; see _speculate),
        # False for the last copy of a duplicated index, None for an index never duplicated.
        self.other_copy: Callable[[str, int], bool | None] | None = None

    # -- launched batches (lock held) -------------------------------------------------

    def register(self, batch: Batch) -> None:
        """A batch's inputs are written and it is about to launch (lock held)."""
        self._batches[batch.batch_id] = batch
        # Calls cancelled while the inputs were being written: their markers now, before
        # the backend can start a worker.
        for i, entry in enumerate(batch.indexes):
            if any(t.settled and t.future.cancelled() for t in entry.tasks):
                self._skips.add((batch.batch_id, i))

    def batch(self, batch_id: str) -> Batch | None:
        """The launched batch ``batch_id`` if it is unfinished (lock held)."""
        return self._batches.get(batch_id)

    def tasks(self) -> Iterator[Task]:
        """Every task of the launched batches, settled or not (lock held)."""
        for batch in self._batches.values():
            for entry in batch.indexes:
                yield from entry.tasks

    def cancel_all(self) -> None:
        """Cancel every call not known to be running, in a started index too (lock held):
        its worker skips it (see ``_skips``); the caller writes the markers once it has
        released the lock. ``cancel()`` leaves running and finished futures alone."""
        with self._skips.bulk():
            for t in list(self.tasks()):
                t.future.cancel()

    def drop_all(self) -> list[Task]:
        """Forget every launched batch; their tasks, for the caller to settle (lock held)."""
        tasks = list(self.tasks())
        self._batches.clear()
        return tasks

    def bars(self) -> list[Progress]:
        """The bars of the launched calls (lock held)."""
        return [b for t in self.tasks() for b in t.bars]

    def index_done(self, batch: Batch, entry: Index) -> None:
        """No call of ``entry`` is left to settle (lock held)."""
        if entry.finished:
            return
        entry.finished = True
        entry.finished_at = time.monotonic()
        batch.unfinished -= 1
        if batch.unfinished == 0:
            del self._batches[batch.batch_id]
            self._skips.forget(batch)
            self._cond.notify_all()

    # -- settling ---------------------------------------------------------------------

    def settle(self, task: Task, *, result: Any = None, error: BaseException | None = None) -> None:
        """Give ``task``'s future its result or ``error``, unless it is settled already
        (lock not held: the future's callbacks run here)."""
        with self._cond:
            if task.settled:
                return
            task.settled = True
            running = task.running
            # Taken now: once done (or cancelled meanwhile), the task drops its future.
            future = task.future
        if not running and not future.set_running_or_notify_cancel():
            return  # cancelled meanwhile: its result, if any, is dropped
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def fail_indexes(self, batch: Batch, indexes: tuple[int, ...], error: BaseException) -> None:
        """These indexes of ``batch`` could not be launched: their calls fail with ``error``."""
        with self._cond:
            entries = [batch.indexes[i] for i in indexes]
            for entry in entries:
                self.index_done(batch, entry)
        for entry in entries:
            for t in entry.tasks:
                self.settle(t, error=error)

    def task_done(self, task: Task, future: Future[Any]) -> None:
        """A future is done: count it, release what the task holds; if it was cancelled,
        tell its worker not to run it (see ``_skips``)."""
        cancelled = future.cancelled()
        failed = not cancelled and future.exception() is not None
        with self._cond:
            if cancelled and not task.settled:
                # Whoever settles a task first notifies its future: here, the waiters of
                # wait() and as_completed() learn it will never run.
                task.settled = True
                future.set_running_or_notify_cancel()
            was_running = task.running
            task.release()
        for bar in task.bars:
            bar.finished(
                task.n_calls,
                was_running=was_running,
                failed=failed,
                cancelled=cancelled,
                reused=task.reused,
            )
        if cancelled:
            self._skips.cancelled((task.batch_id, task.index))
            if self.warm is not None:
                # An index waiting for a worker may have nothing left to run.
                self.warm.drop_declined()

    # -- what the backend and the warm pool report --------------------------------------

    def index_started(self, batch_id: str, index: int) -> bool:
        """Mark the first live call of an index running; False if all were cancelled.

        Only the first: the worker runs its calls in order and re-reads its skip marker
        between them, so the later ones may still be cancelled (``shutdown(cancel_futures=
        True)`` among others). They become running when their outcome arrives."""
        key = (batch_id, index)
        while True:
            with self._cond:
                batch = self._batches.get(batch_id)
                if batch is None:
                    return False
                entry = batch.indexes[index]
                if not self._skips.unwritten(key):
                    if not entry.started:
                        entry.started, entry.started_at = True, time.monotonic()
                    for t in entry.tasks:
                        if t.settled:
                            continue
                        if t.running:
                            return True  # handed on (from a warm worker that ended)
                        if t.future.set_running_or_notify_cancel():
                            t.running = True
                            for bar in t.bars:
                                bar.started(t.n_calls)
                            return True
                        t.settled = True  # cancelled before it started
                    self.index_done(batch, entry)
                    return False
            # A marker of this index waits for its (delayed) write, or is being written:
            # it must be in storage before the worker may read it (the local backend
            # starts the worker once this returns). Not under the lock: it is a PUT.
            self._skips.write()

    def index_finished(self, batch_id: str, index: int, exit: IndexExit) -> None:
        """Resolve the futures of a finished index from its outcome in storage."""
        with self._cond:
            batch = self._batches.get(batch_id)
            if batch is None or batch.indexes[index].finished:
                return
            entry = batch.indexes[index]
            tasks = [t for t in entry.tasks if not t.settled]
            store = self.store
            copies = None if self.other_copy is None else self.other_copy(batch_id, index)
            racing = copies is True
        assert store is not None
        out_key = f"{batch_id}/out/{index}"
        data: bytes | None = None
        if racing:
            # Another copy still runs: this one settles the index only with an outcome (a
            # copy lost, unstarted or failing to read leaves it to the other one).
            try:
                data = None if exit.never_started else store.get_or_none(out_key)
            except Exception:
                data = None
            if data is None:
                return
        try:
            outcomes = resolve_index(
                tasks,
                exit,
                (lambda: data) if racing else (lambda: store.get_or_none(out_key)),
                key=self._key,
                batch_id=batch_id,
                index=index,
                n_tasks=len(entry.tasks),
                fn_names=batch.fn_names,
                # The last copy of a duplicated index never started: the other one ran,
                # and may have written the outcome (its own read of it failed, say).
                read_unstarted=copies is not None,
            )
            for outcome in outcomes:
                self.settle(outcome.task, result=outcome.result, error=outcome.error)
        finally:
            with self._cond:
                self.index_done(batch, entry)

    def warm_finished(
        self, batch_id: str, index: int, exit: IndexExit, worker: tuple[str, int]
    ) -> None:
        """Resolve an index a warm worker reported done (or lost); ``worker``: the index
        that worker was started for (its log is the backend's to find)."""
        if exit.exit_code != 0:
            describe = getattr(self._backend, "worker_exit", None)
            if describe is not None:
                exit = describe(*worker, exit)
        self.index_finished(batch_id, index, exit)

    def skipped(self, batch_id: str, indexes: Collection[int]) -> None:
        """Every call of these indexes was cancelled before any started, and their empty
        skip markers are in storage: the indexes are done now, without waiting for a
        worker that may never start (a pod stuck before its start would hold a shutdown
        until its start-up timeout). A worker that starts after all finds its marker and
        runs nothing; what the backend reports of it is ignored."""
        with self._cond:
            batch = self._batches.get(batch_id)
            if batch is None:
                return
            for i in indexes:
                entry = batch.indexes[i]
                if not entry.started and all(t.settled for t in entry.tasks):
                    self.index_done(batch, entry)

    def declined(self, batch_id: str, index: int) -> bool:
        """Whether an index waiting for a worker has no call left to run (then it is
        done: the warm pool drops it)."""
        with self._cond:
            batch = self._batches.get(batch_id)
            if batch is None or batch.indexes[index].finished:
                return True
            entry = batch.indexes[index]
            if any(not t.settled for t in entry.tasks):
                return False
            self.index_done(batch, entry)
            return True
