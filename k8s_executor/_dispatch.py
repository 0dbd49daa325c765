"""The launching side of the engine: the queue of calls, the batching window, batches
launched on the backend (or handed to the warm pool), and the run's heartbeat.

The :class:`Dispatcher`'s thread takes the queued tasks once the batching window closes
(or at once when flushed: a ``map``, a shutdown), has the ``Launcher`` write them to
storage, registers the batch with the ``Resolver`` and launches it. A launch the backend
refuses for good breaks the executor; one that is throttled or fails past its retries
fails only its own calls (see :func:`fails_only_its_calls`).

The queue is guarded by the engine's lock, never held while storage or the backend is
called. The window and the launch policy are pure functions, tested on their own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from ._batches import Task
from ._launch import Launcher
from ._options import Batching
from ._resolve import Resolver
from ._skips import SkipMarkers
from ._store import RunStore
from ._warm_pool import WarmPool
from .backends._base import Backend
from .errors import ClusterError, ExecutorBrokenError, StorageError

__all__ = ["SHORTEST_WINDOW", "Dispatcher", "Heartbeat", "batch_window", "fails_only_its_calls"]

_log = logging.getLogger("k8s_executor._executor")

SHORTEST_WINDOW = 0.01
"""Seconds of batching window when starting a batch costs next to nothing: a warm worker
takes it in milliseconds (no pod start to share out). The local backend's own window; the
window of a backend that names none."""

# Statuses of a failed launch that do not condemn the next one: throttling, server errors
# (a restarting or overloaded API server).
_PASSING = frozenset({429, 500, 502, 503, 504})


def batch_window(configured: float | None, backend: float, *, warm_idle: bool) -> float:
    """Seconds the first queued call waits for others to join its batch.

    Args:
        configured: ``Batching.window`` (None: the backend's).
        backend: the backend's ``batch_window``.
        warm_idle: whether a warm worker is idle now.
    """
    if configured is not None:
        return configured
    return min(backend, SHORTEST_WINDOW) if warm_idle else backend


def fails_only_its_calls(error: ClusterError) -> bool:
    """Whether a launch that failed with ``error`` fails only its own calls (throttled,
    failing past the retries, unreachable: the next batch tries again, as a new call to
    ProcessPoolExecutor may succeed after a worker crashed) rather than break the executor
    (refused: RBAC, an invalid Job; so would the next one be)."""
    return error.status is None or error.status in _PASSING


class Engine(Protocol):
    """What the dispatcher asks of the engine (``_run.Run``)."""

    def dispatching(self) -> bool:
        """Whether calls may still be launched: the run is starting or running (lock held)."""

    def broken_error(self) -> ExecutorBrokenError | None:
        """The error every call fails with once the executor is broken (lock held)."""

    def backend_broken(
        self, error: BaseException, held: Iterable[Task] = (), *, thread: str = ""
    ) -> None:
        """Fail every unfinished future (and those of ``held``): nothing can run any more."""

    def thread_died(self, name: str, error: BaseException, tasks: list[Task] | None = None) -> None:
        """The engine's thread ``name`` ends on ``error`` (it held ``tasks``)."""


class Dispatcher:
    """Queues a run's tasks and launches them in batches (see the module docstring).

    Args:
        cond: the engine's condition, over its lock (which guards the queue).
        engine: the run's engine.
        backend: where the batches run.
        batching: the batching window and size.
        launcher: writes a batch's inputs.
        resolver: settles the futures; knows the launched batches.
        skips: the run's skip markers (written before a launch when calls were cancelled
            while its inputs were being written).
    """

    def __init__(
        self,
        cond: threading.Condition,
        engine: Engine,
        *,
        backend: Backend,
        batching: Batching,
        launcher: Launcher,
        resolver: Resolver,
        skips: SkipMarkers,
    ) -> None:
        self._cond = cond
        self._engine = engine
        self._backend = backend
        self._batching = batching
        self._launcher = launcher
        self._resolver = resolver
        self._skips = skips
        self._queue: list[Task] = []
        self._taken: list[Task] = []  # taken from the queue: being written, then launched
        self._flush = False
        self._warm: WarmPool | None = None
        self._thread: threading.Thread | None = None

    # -- the engine's calls -------------------------------------------------------------

    def start(self, warm: WarmPool | None) -> None:
        """Start the dispatcher thread (the run has started; ``warm``: its warm pool)."""
        self._warm = warm
        self._thread = threading.Thread(target=self._run, name="k8sx-dispatch", daemon=True)
        self._thread.start()

    def put(self, tasks: list[Task], *, flush: bool) -> None:
        """Queue tasks (lock held); ``flush`` sends them without waiting for the window."""
        self._queue.extend(t for t in tasks if not t.settled)
        self._flush = self._flush or flush
        self._cond.notify_all()

    def flush(self) -> None:
        """Send what is queued at once (lock held): the run shuts down."""
        self._flush = True
        self._cond.notify_all()

    def queued(self) -> list[Task]:
        """The tasks not launched yet: waiting for their batch, or in the batch being
        written (lock held). Cancelled meanwhile, the latter get their skip markers before
        the batch launches (``Resolver.register``)."""
        return [*self._queue, *self._taken]

    def drain(self) -> list[Task]:
        """Empty the queue; the unsettled tasks it held (lock held)."""
        tasks = [t for t in self._queue if not t.settled]
        self._queue.clear()
        return tasks

    def join(self) -> None:
        """Wait for the dispatcher thread to end (the run is no longer dispatching and
        the queue is empty)."""
        if self._thread is not None:
            self._thread.join()

    def launch_part(self, batch_id: str, indexes: tuple[int, ...]) -> bool:
        """Start new workers for ``indexes`` of a batch; False if that failed (their calls
        failed with the error, or the executor broke)."""
        with self._cond:
            batch = self._resolver.batch(batch_id)
        if batch is None:
            return False
        whole = indexes == tuple(range(len(batch.indexes)))
        try:
            self._backend.launch(self._launcher.spec(batch_id, indexes, whole=whole))
            return True
        except ClusterError as exc:
            if not fails_only_its_calls(exc):
                self._engine.backend_broken(exc)
                return False
            self._resolver.fail_indexes(batch, indexes, exc)
        except Exception as exc:
            self._engine.backend_broken(exc)
        return False

    # -- the dispatcher thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            # Whatever escaped (a storage error of an unexpected kind, a bug): nothing would
            # send the queued calls any more. Break the executor rather than strand them.
            with self._cond:
                taken = list(self._taken)
            self._engine.thread_died("dispatcher", exc, taken)

    def _loop(self) -> None:
        configured = self._batching.window
        backend_window = getattr(self._backend, "batch_window", SHORTEST_WINDOW)
        limit = self._batching.max_calls
        while True:
            with self._cond:
                while not self._queue:
                    if not self._engine.dispatching():
                        return
                    self._cond.wait()
            warm_idle = configured is None and self._warm is not None and self._warm.has_idle()
            wait = batch_window(configured, backend_window, warm_idle=warm_idle)
            with self._cond:
                deadline = time.monotonic() + wait
                while not self._flush and len(self._queue) < limit:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not self._engine.dispatching():
                        break
                    self._cond.wait(remaining)
                self._taken = self._queue[:limit]
                del self._queue[:limit]
                if not self._queue:
                    self._flush = False
            self._launch(self._taken)
            with self._cond:
                self._taken = []

    def _launch(self, tasks: list[Task]) -> None:
        batch = self._launcher.prepare(tasks)
        if batch is None:
            return
        with self._cond:
            broken = self._engine.broken_error()
            if broken is None:
                self._resolver.register(batch)
            unwritten = self._skips.unwritten()
        if broken is not None:
            # Broken while the inputs were being written: nothing may launch any more.
            for entry in batch.indexes:
                for t in entry.tasks:
                    self._resolver.settle(t, error=broken)
            return
        if unwritten:
            self._skips.write()
        if self._warm is not None:
            # Idle warm workers first, new ones for the rest as slots allow (_warm_pool).
            self._warm.add(batch.batch_id, len(batch.indexes))
        else:
            self.launch_part(batch.batch_id, tuple(range(len(batch.indexes))))


class Heartbeat:
    """Refreshes ``<run>/heartbeat`` every ``interval`` seconds: workers of a client that
    vanished give up after a grace period of many beats.

    Args:
        store: the run's storage.
        interval: seconds between beats.
        died: ``died(name, error)`` when the thread ends on an unexpected error.
    """

    def __init__(
        self, store: RunStore, interval: float, died: Callable[[str, BaseException], None]
    ) -> None:
        self._store = store
        self._interval = interval
        self._died = died
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="k8sx-heartbeat", daemon=True)

    def start(self) -> None:
        """Beat from now on."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (no worker is left); returns once the thread has ended."""
        self._stopped.set()
        self._thread.join()

    def _beat(self) -> None:
        beat = 0
        try:
            while True:
                beat += 1
                try:
                    self._store.put("heartbeat", str(beat).encode())
                except StorageError as exc:
                    # Retried at the next beat; workers wait a grace period of many beats.
                    _log.warning("cannot refresh the run's heartbeat: %s", exc)
                if self._stopped.wait(self._interval):
                    return
        except BaseException as exc:
            # Without the heartbeat every worker gives up after its grace period.
            self._died("heartbeat", exc)
