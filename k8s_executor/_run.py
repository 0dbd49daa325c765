"""The engine of one executor: queue, dispatcher, launch, heartbeat, skip markers,
resolution of futures, shutdown.

``KubernetesExecutor`` (``_executor``) is the user's object: arguments, public API,
lifecycle. It hands tasks to a :class:`Run`, as CPython's ``ProcessPoolExecutor`` hands
work items to its ``_ExecutorManagerThread``. The backend reports to the :class:`Run`
(the private :class:`~k8s_executor.backends._base.Listener`), never to the user's object.

Threads::

    caller      make_task (pickle the calls) → enqueue
    dispatcher  queue → batch → write fn, in/<i> → Backend.launch
    backend's   index_started / index_finished / backend_broken → futures
    heartbeat   <run>/heartbeat, every Backend.heartbeat_interval
    finalizer   wait for (or kill) the work → close the backend → delete the storage

One lock guards the engine's state, and no storage or network call is made while it is
held: a slow PUT must not stall ``submit`` nor the delivery of the backend's events. What
needs writing is collected under the lock and written after; skip markers, which must land
in order, are serialised by a lock of their own (see ``_skips``), never by the engine's.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from ._batches import Batch, Index, Task
from ._config import Settings
from ._launch import Launcher
from ._outcomes import resolve_index, shut_down_error
from ._progress import Progress
from ._skips import SkipMarkers
from ._store import RunStore
from ._warm_pool import WarmPool
from .backends._base import QUOTA_WAIT, IndexExit, RunContext
from .errors import ClusterError, ExecutorBrokenError, StorageError

__all__ = ["INTERPRETER_EXIT", "Run", "State"]

# Set by the executor's interpreter-exit hook, which runs before the atexit handlers: from
# then on no executor accepts calls (as ProcessPoolExecutor's ``_global_shutdown``).
INTERPRETER_EXIT = threading.Event()

_log = logging.getLogger("k8s_executor._executor")
# Statuses of a failed launch that do not condemn the next one: throttling, server
# errors (a restarting or overloaded API server). Unreachable (no status) too.
_PASSING = frozenset({429, 500, 502, 503, 504})
# The batching window while a warm worker is idle (the local backend's).
_WARM_WINDOW = 0.01


class State(enum.Enum):
    CREATED = "created"  # no submit yet: no thread, no storage, no backend started
    STARTING = "starting"  # the backend is starting (outside the lock); others wait
    RUNNING = "running"
    SHUTTING_DOWN = "shutting down"
    SHUT_DOWN = "shut down"
    BROKEN = "broken"


class Run:
    """Runs the tasks of one executor on its backend (see the module docstring).

    Args:
        settings: the resolved configuration (backend, storage, batching...).
        max_workers: the most workers at once.
        initializer: the pickled initializer and initargs, or None.
        run_id: the run's id (storage prefix, labels).
        key: the run's signing key.
        on_start: called once the backend has started (the executor registers for exit).
        on_end: called once everything is released.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        max_workers: int,
        initializer: tuple[bytes, bytes] | None,
        run_id: str,
        key: bytes,
        on_start: Callable[[], None],
        on_end: Callable[[], None],
    ) -> None:
        self._backend = settings.backend
        self._settings = settings
        self._batching = settings.batching
        self._max_workers = max_workers
        self._run_id = run_id
        self._key = key
        self._on_start = on_start
        self._on_end = on_end
        self._state = State.CREATED
        self._broken: BaseException | None = None
        self._broken_error: ExecutorBrokenError | None = None
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._queue: list[Task] = []
        self._flush = False
        self._batches: dict[str, Batch] = {}
        self._skips = SkipMarkers(self._lock, self._batches, self._backend.cancel)
        self._launcher = Launcher(
            settings,
            max_workers=max_workers,
            initializer=initializer,
            run_id=run_id,
            key=key,
            settle=self._settle,
        )
        self._store: RunStore | None = None
        self._warm: WarmPool | None = None  # with Timeouts.keep_warm: who runs what
        self._temp_dir: str | None = None
        self._dispatcher: threading.Thread | None = None
        self._finalizer: threading.Thread | None = None
        self._kill = False
        self._heartbeat: threading.Thread | None = None
        self._stopped = threading.Event()
        self._bar: Progress | None = None

    # -- submission (caller's thread) ----------------------------------------------

    def make_task(
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        *,
        single: bool,
        bars: tuple[Progress, ...] = (),
    ) -> Task:
        """Pickle ``calls`` of ``fn`` into a task for ``future`` (failed at once if they
        cannot be pickled)."""
        self.check_accepting()
        task = self._launcher.make_task(future, fn, calls, single=single, bars=bars)
        if not task.settled:
            future.add_done_callback(functools.partial(self._task_done, task))
        return task

    def bars(self) -> tuple[Progress, ...]:
        """The run's bar (started with the first call) when progress is shown."""
        if not self._settings.show_progress:
            return ()
        with self._lock:
            if self._bar is None and self._state in (
                State.CREATED,
                State.STARTING,
                State.RUNNING,
            ):
                self._bar = Progress(f"k8s_executor {self._run_id}")
            return () if self._bar is None else (self._bar,)

    def check_accepting(self) -> None:
        """Raise if no new call may be scheduled (broken, shut down, interpreter exit)."""
        state = self._state
        if state is State.BROKEN:
            raise ExecutorBrokenError(
                f"the executor is broken and cannot run new calls: {self._broken}"
            ) from self._broken
        if INTERPRETER_EXIT.is_set() or sys.is_finalizing():
            # Before the shutdown state: the exit hook shut the executor down, not the user.
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        if state in (State.SHUTTING_DOWN, State.SHUT_DOWN):
            raise RuntimeError("cannot schedule new futures after shutdown")

    def enqueue(self, tasks: list[Task], *, flush: bool) -> None:
        """Queue tasks for the dispatcher (starting the run on first use); ``flush``
        sends them without waiting for the batching window."""
        self._start_once()
        with self._cond:
            self.check_accepting()
            self._queue.extend(t for t in tasks if not t.settled)
            self._flush = self._flush or flush
            self._cond.notify_all()

    def _start_once(self) -> None:
        with self._cond:
            while self._state is State.STARTING:
                self._cond.wait()
            self.check_accepting()
            if self._state is not State.CREATED:
                return
            self._state = State.STARTING
        # Outside the lock: starting a backend may take a while (the Kubernetes backend
        # talks to the API server), and the backend may report to us meanwhile.
        try:
            self._start()
        except BaseException:
            with self._cond:
                self._state = State.CREATED
                self._cond.notify_all()
            raise
        with self._cond:
            if self._state is State.STARTING:
                self._state = State.RUNNING
            self._cond.notify_all()
        self._on_start()

    def _start(self) -> None:
        storage = self._settings.storage
        if storage is None:
            self._temp_dir = tempfile.mkdtemp(prefix="k8sx-")
            root = self._temp_dir
        else:
            root = storage.rstrip("/")
        options = self._settings.storage_options
        store = RunStore(f"{root}/{self._run_id}", options, self._settings.storage_retry)
        run = RunContext(self._run_id, store.url, self._key, options)
        try:
            self._backend.start(self, self._max_workers, run)
        except BaseException:
            # Cluster unreachable, forbidden, misconfigured: the caller of submit sees it,
            # and nothing is left behind.
            with contextlib.suppress(Exception):
                self._backend.close(kill=True)
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
                self._temp_dir = None
            raise
        self._store = self._skips.store = self._launcher.store = store
        if self._settings.keep_warm > 0:
            self._warm = WarmPool(store, self._max_workers, self)
        interval = self._backend.heartbeat_interval
        if interval is not None:
            self._heartbeat = threading.Thread(
                target=self._beat, args=(interval,), name="k8sx-heartbeat", daemon=True
            )
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="k8sx-dispatch", daemon=True
        )
        for thread in (self._heartbeat, self._dispatcher):
            if thread is not None:
                thread.start()

    # -- dispatcher thread ---------------------------------------------------------

    def _dispatch(self) -> None:
        tasks: list[Task] = []
        try:
            self._dispatch_loop(tasks)
        except BaseException as exc:
            # Whatever escaped (a storage error of an unexpected kind, a bug): nothing would
            # send the queued calls any more. Break the executor rather than strand them.
            self._thread_died("dispatcher", exc, tasks)

    def _dispatch_loop(self, tasks: list[Task]) -> None:
        # ``tasks`` holds the calls being launched, for _dispatch to fail if this dies.
        window = self._batching.window
        if window is None:
            window = getattr(self._backend, "batch_window", 0.01)
        limit = self._batching.max_calls
        while True:
            with self._cond:
                while not self._queue:
                    if self._state not in (State.STARTING, State.RUNNING):
                        return
                    self._cond.wait()
            wait = window
            if self._batching.window is None and self._warm is not None and self._warm.has_idle():
                # A warm worker takes a batch in milliseconds: no pod start to share out.
                wait = min(window, _WARM_WINDOW)
            with self._cond:
                deadline = time.monotonic() + wait
                while not self._flush and len(self._queue) < limit:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._state is not State.RUNNING:
                        break
                    self._cond.wait(remaining)
                tasks[:] = self._queue[:limit]
                del self._queue[:limit]
                if not self._queue:
                    self._flush = False
            self._launch(tasks)
            tasks.clear()

    def _launch(self, tasks: list[Task]) -> None:
        batch = self._launcher.prepare(tasks)
        if batch is None:
            return
        with self._lock:
            broken = self._broken_error
            if broken is None:
                self._batches[batch.batch_id] = batch
                # Calls cancelled while the inputs were being written: their markers now,
                # before the backend can start a worker.
                for i, entry in enumerate(batch.indexes):
                    if any(t.settled and t.future.cancelled() for t in entry.tasks):
                        self._skips.add((batch.batch_id, i))
            unwritten = self._skips.unwritten()
        if broken is not None:
            # Broken while the inputs were being written: nothing may launch any more.
            for entry in batch.indexes:
                for t in entry.tasks:
                    self._settle(t, error=broken)
            return
        if unwritten:
            self._skips.write()
        if self._warm is not None:
            # Idle warm workers first, new ones for the rest as slots allow (_warm_pool).
            self._warm.add(batch.batch_id, len(batch.indexes))
        else:
            self.launch_part(batch.batch_id, tuple(range(len(batch.indexes))))

    def launch_part(self, batch_id: str, indexes: tuple[int, ...]) -> bool:
        """Start new workers for ``indexes`` of a batch; False if that failed (their calls
        failed with the error, or the executor broke)."""
        with self._lock:
            batch = self._batches.get(batch_id)
        if batch is None:
            return False
        whole = indexes == tuple(range(len(batch.indexes)))
        try:
            self._backend.launch(self._launcher.spec(batch_id, indexes, whole=whole))
            return True
        except ClusterError as exc:
            if exc.status is not None and exc.status not in _PASSING:
                self.backend_broken(exc)  # refused (RBAC, an invalid Job): so will the next
                return False
            # Throttled or failing past the retries, or unreachable: these calls fail with
            # it; the next batch tries again (as a new call to ProcessPoolExecutor may
            # succeed after a worker crashed).
            with self._lock:
                entries = [batch.indexes[i] for i in indexes]
                for entry in entries:
                    self._index_done(batch, entry)
            for entry in entries:
                for t in entry.tasks:
                    self._settle(t, error=exc)
        except Exception as exc:
            self.backend_broken(exc)
        return False

    def _beat(self, interval: float) -> None:
        """Refresh the run's heartbeat: workers of a vanished client give up."""
        assert self._store is not None
        beat = 0
        try:
            while True:
                beat += 1
                try:
                    self._store.put("heartbeat", str(beat).encode())
                except StorageError as exc:
                    # Retried at the next beat; workers wait a grace period of many beats.
                    _log.warning("cannot refresh the run's heartbeat: %s", exc)
                if self._stopped.wait(interval):
                    return
        except BaseException as exc:
            # Without the heartbeat every worker gives up after its grace period.
            self._thread_died("heartbeat", exc)

    def _thread_died(
        self, name: str, error: BaseException, tasks: list[Task] | None = None
    ) -> None:
        """An engine thread ends on ``error``: break the executor with it, failing every
        unfinished future (and ``tasks``, which the thread held)."""
        _log.error("the %s thread of run %s failed", name, self._run_id, exc_info=error)
        self.backend_broken(error, tasks or (), thread=name)

    # -- skip markers --------------------------------------------------------------

    def _task_done(self, task: Task, future: Future[Any]) -> None:
        """A future is done: count it, release what the task holds; if it was cancelled,
        tell its worker not to run it (see ``_skips``)."""
        cancelled = future.cancelled()
        failed = not cancelled and future.exception() is not None
        with self._lock:
            if cancelled and not task.settled:
                # Whoever settles a task first notifies its future: here, the waiters of
                # wait() and as_completed() learn it will never run.
                task.settled = True
                future.set_running_or_notify_cancel()
            was_running = task.running
            task.release()
        for bar in task.bars:
            bar.finished(task.n_calls, was_running=was_running, failed=failed, cancelled=cancelled)
        if cancelled:
            self._skips.cancelled((task.batch_id, task.index))
            if self._warm is not None:
                # An index waiting for a worker may have nothing left to run.
                self._warm.drop_declined()

    # -- listener (called by the backend, from its threads) ------------------------

    def index_started(self, batch_id: str, index: int) -> bool:
        """Mark the first live call of an index running; False if all were cancelled.

        Only the first: the worker runs its calls in order and re-reads its skip marker
        between them, so the later ones may still be cancelled (``shutdown(cancel_futures=
        True)`` among others). They become running when their outcome arrives."""
        try:
            return self._index_started(batch_id, index)
        except BaseException as exc:
            self._thread_died("backend's delivery", exc)
            return False

    def _index_started(self, batch_id: str, index: int) -> bool:
        key = (batch_id, index)
        while True:
            with self._lock:
                batch = self._batches.get(batch_id)
                if batch is None:
                    return False
                entry = batch.indexes[index]
                if not self._skips.unwritten(key):
                    entry.started = True
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
                    self._index_done(batch, entry)
                    return False
            # A marker of this index waits for its (delayed) write, or is being written:
            # it must be in storage before the worker may read it (the local backend
            # starts the worker once this returns). Not under the lock: it is a PUT.
            self._skips.write()

    def index_finished(self, batch_id: str, index: int, exit: IndexExit) -> None:
        """Resolve the futures of a finished index from its outcome in storage; with warm
        workers, the index's worker ended (it may have run other indexes since)."""
        try:
            self._index_finished(batch_id, index, exit)
            if self._warm is not None:
                self._warm.worker_ended(batch_id, index, exit)
        except BaseException as exc:
            self._thread_died("backend's delivery", exc)

    def declined(self, batch_id: str, index: int) -> bool:
        """Whether an index waiting for a worker has no call left to run (then it is
        done: the warm pool drops it)."""
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None or batch.indexes[index].finished:
                return True
            entry = batch.indexes[index]
            if any(not t.settled for t in entry.tasks):
                return False
            self._index_done(batch, entry)
            return True

    def warm_finished(
        self, batch_id: str, index: int, exit: IndexExit, worker: tuple[str, int]
    ) -> None:
        """Resolve an index a warm worker reported done (or lost); ``worker``: the index
        that worker was started for (its log is the backend's to find)."""
        try:
            if exit.exit_code != 0:
                describe = getattr(self._backend, "worker_exit", None)
                if describe is not None:
                    exit = describe(*worker, exit)
            self._index_finished(batch_id, index, exit)
        except BaseException as exc:
            self._thread_died("warm-worker", exc)

    def _index_finished(self, batch_id: str, index: int, exit: IndexExit) -> None:
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None or batch.indexes[index].finished:
                return
            entry = batch.indexes[index]
            tasks = [t for t in entry.tasks if not t.settled]
            store = self._store
        assert store is not None
        try:
            outcomes = resolve_index(
                tasks,
                exit,
                lambda: store.get_or_none(f"{batch_id}/out/{index}"),
                key=self._key,
                batch_id=batch_id,
                index=index,
                n_tasks=len(entry.tasks),
                fn_names=batch.fn_names,
            )
            for outcome in outcomes:
                self._settle(outcome.task, result=outcome.result, error=outcome.error)
        finally:
            with self._lock:
                self._index_done(batch, entry)

    def waiting(self, note: str) -> None:
        """Show why calls wait (``note``; "" clears it) on the run's bar and its maps'."""
        with self._lock:
            bars = {id(self._bar): self._bar} if self._bar is not None else {}
            for batch in self._batches.values():
                for entry in batch.indexes:
                    bars.update((id(b), b) for t in entry.tasks for b in t.bars)
        for bar in bars.values():
            bar.note(note)
        if self._warm is not None and note.startswith(QUOTA_WAIT):
            # Pods of this run are refused for quota that idle warm workers hold.
            self._warm.release_idle()

    def backend_broken(
        self, error: BaseException, held: Iterable[Task] = (), *, thread: str = ""
    ) -> None:
        """Fail every unfinished future (and those of ``held``): nothing can run any more.

        ``thread`` names the engine thread that died of ``error``, if that is the cause."""
        with self._lock:
            tasks = [t for t in held if not t.settled]
            broken = self._broken_error
            if broken is None:
                self._broken = error
                if self._state in (State.STARTING, State.RUNNING):
                    self._state = State.BROKEN
                if thread:
                    what = f"the executor's {thread} thread failed: {type(error).__name__}"
                else:
                    what = f"the {self._backend.name} backend cannot run work"
                broken = ExecutorBrokenError(f"{what}: {error}")
                broken.__cause__ = error
                self._broken_error = broken
            tasks += [t for t in self._queue if not t.settled]
            self._queue.clear()
            for batch in self._batches.values():
                for entry in batch.indexes:
                    tasks.extend(t for t in entry.tasks if not t.settled)
            self._cond.notify_all()
        for t in tasks:
            self._settle(t, error=broken)

    # -- resolution ----------------------------------------------------------------

    def _settle(
        self, task: Task, *, result: Any = None, error: BaseException | None = None
    ) -> None:
        with self._lock:
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

    def _index_done(self, batch: Batch, entry: Index) -> None:
        # Called with the lock held.
        if entry.finished:
            return
        entry.finished = True
        batch.unfinished -= 1
        if batch.unfinished == 0:
            del self._batches[batch.batch_id]
            self._skips.forget(batch)
            self._cond.notify_all()

    # -- shutdown ------------------------------------------------------------------

    def shutdown(self, *, wait: bool, cancel_futures: bool, kill_workers: bool) -> None:
        """Stop accepting work; see ``KubernetesExecutor.shutdown``."""
        with self._cond:
            while self._state is State.STARTING:
                self._cond.wait()
            if kill_workers:
                self._kill = True
                self._cond.notify_all()  # a shutdown already waiting for the work stops
            if cancel_futures or kill_workers:
                self._cancel_not_started()
        if cancel_futures or kill_workers:
            self._skips.write()
        with self._cond:
            finalizer, bar = self._finalizer, None
            if finalizer is None and self._state in (State.CREATED, State.SHUT_DOWN):
                # Nothing was ever started.
                bar, self._state = self._bar, State.SHUT_DOWN
            elif finalizer is None:
                if self._state is State.RUNNING:
                    self._state = State.SHUTTING_DOWN
                self._flush = True
                self._cond.notify_all()
                finalizer = threading.Thread(target=self._finish, name="k8sx-shutdown")
                self._finalizer = finalizer
                finalizer.start()
        if finalizer is None:
            if bar is not None:
                bar.close()
            return
        if wait and finalizer is not threading.current_thread():
            finalizer.join()

    def _cancel_not_started(self) -> None:
        # Called with the lock held; the caller writes the skip markers once released.
        # Every call not known to be running, in a started index too: its worker skips
        # it (see _skips). cancel() leaves running and finished futures alone.
        for t in self._queue:
            t.future.cancel()
        with self._skips.bulk():
            for batch in self._batches.values():
                for entry in batch.indexes:
                    for t in entry.tasks:
                        t.future.cancel()

    def _finish(self) -> None:
        """Wait for the work (or kill it), then release the backend and storage."""
        if self._dispatcher is not None:
            self._dispatcher.join()
        with self._cond:
            while self._batches and self._broken is None and not self._kill:
                self._cond.wait()
            kill = self._kill or self._broken is not None
        if self._warm is not None:
            self._warm.stop()  # the backend ends the warm workers, idle ones at once
        self._backend.close(kill=kill)
        self._stopped.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        # No worker is left to report: settle whatever the backend never reported (indexes
        # dropped by a kill), so no future waits forever.
        with self._lock:
            leftover = [t for b in self._batches.values() for e in b.indexes for t in e.tasks]
            self._batches.clear()
        for t in leftover:
            self._settle(t, error=shut_down_error())
        self._launcher.close()
        try:
            if self._store is not None:
                self._store.delete_all()
        except Exception as exc:
            # Every future is settled: say what is left behind (one line, with what to do,
            # where the user looks: not a logging record), and finish the shutdown.
            print(f"k8s_executor: run {self._run_id}: {exc}", file=sys.stderr, flush=True)
        finally:
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
            with self._lock:
                if self._state is not State.BROKEN:
                    self._state = State.SHUT_DOWN
                bar = self._bar
            self._on_end()
            if bar is not None:
                bar.close()
