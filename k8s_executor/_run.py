"""The engine of one executor: its lifecycle (start, shutdown, broken), composing the
parts that do the work.

``KubernetesExecutor`` (``_executor``) is the user's object: arguments, public API,
lifecycle. It hands tasks to a :class:`Run`, as CPython's ``ProcessPoolExecutor`` hands
work items to its ``_ExecutorManagerThread``. The backend reports to the engine's
:class:`~k8s_executor._reports.Reports` (the private
:class:`~k8s_executor.backends._base.Listener`), never to the user's object.

The parts, one job each::

    _launch     Launcher     calls → pickled tasks; a batch's function table and inputs → storage
    _dispatch   Dispatcher   the queue, the batching window, launching batches
                Heartbeat    <run>/heartbeat, every Backend.heartbeat_interval
    _resolve    Resolver     the launched batches; outcomes and exits → settled futures
    _skips      SkipMarkers  cancelled calls → <batch>/skip/<i>, read by their workers
    _warm_pool  WarmPool     with warm workers: who runs which index
    _speculate  Speculator   with Batching(speculate=True): duplicates of stragglers
    _reports    Reports      the backend's and the warm pool's reports → the parts above
    _named_run  NamedRun     a named run's stored results and joined calls
    _run_storage             the run's storage, opened as it starts (open_storage)

Threads::

    caller      make_task (pickle the calls) → enqueue
    dispatcher  queue → batch → write fn, in/<i> → Backend.launch
    backend's   index_started / index_finished / backend_broken → futures
    heartbeat   <run>/heartbeat, every Backend.heartbeat_interval
    finalizer   wait for (or kill) the work → close the backend → delete the storage

One lock guards the engine's state (its parts are handed it), and no storage or network
call is made while it is held: a slow PUT must not stall ``submit`` nor the delivery of the
backend's events. What needs writing is collected under the lock and written after; skip
markers, which must land in order, are serialised by a lock of their own (see ``_skips``),
never by the engine's.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import shutil
import sys
import threading
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import Future
from typing import Any

from ._batches import Batch, Task
from ._config import Settings
from ._dispatch import Dispatcher, Heartbeat
from ._launch import Launcher
from ._leave import Leaver
from ._named_run import NamedRun, detached_error
from ._outcomes import shut_down_error
from ._progress import Progress
from ._reports import Reports
from ._resolve import Resolver
from ._run_storage import open_storage
from ._skips import SkipMarkers
from ._speculate import Speculator, make_speculator
from ._store import RunStore
from ._warm_pool import WarmPool
from .errors import ExecutorBrokenError

__all__ = ["INTERPRETER_EXIT", "Run", "State"]

# Set by the executor's interpreter-exit hook, which runs before the atexit handlers: from
# then on no executor accepts calls (as ProcessPoolExecutor's ``_global_shutdown``).
INTERPRETER_EXIT = threading.Event()

_log = logging.getLogger("k8s_executor._executor")


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
        self._batches: dict[str, Batch] = {}  # launched, unfinished; shared with the parts
        self._skips = SkipMarkers(self._lock, self._batches, self._skipped)
        self._resolver = Resolver(
            self._cond, self._batches, self._skips, key=key, backend=self._backend
        )
        self._launcher = Launcher(
            settings,
            max_workers=max_workers,
            initializer=initializer,
            run_id=run_id,
            key=key,
            settle=self._resolver.settle,
        )
        self._dispatcher = Dispatcher(
            self._cond,
            self,
            backend=self._backend,
            batching=settings.batching,
            launcher=self._launcher,
            resolver=self._resolver,
            skips=self._skips,
        )
        self._reports = Reports(
            self._lock,
            self._resolver,
            self._dispatcher,
            bar=lambda: self._bar,
            broken=self.backend_broken,
            died=self.thread_died,
        )
        self._store: RunStore | None = None
        self._named: NamedRun | None = None  # a named run's stored results and joins
        self._leaving = False  # a detached run's client stops following it
        self._leaver = Leaver(
            self._lock,
            backend=self._backend,
            dispatcher=self._dispatcher,
            resolver=self._resolver,
            launcher=self._launcher,
            run_name=settings.run_name,
        )
        self._warm: WarmPool | None = None  # with Timeouts.keep_warm: who runs what
        self._speculator: Speculator | None = None  # with Batching.speculate
        self._temp_dir: str | None = None
        self._heartbeat: Heartbeat | None = None
        self._finalizer: threading.Thread | None = None
        self._kill = False
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
            future.add_done_callback(functools.partial(self._resolver.task_done, task))
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
        if self._named is not None:  # before queueing: a reused call never reaches a worker
            with self._cond:
                # Before joining: a call joined once the dispatcher has ended could be
                # queued on it later (its copy lost), and never launched.
                self.check_accepting()
            tasks = self._named.reuse(tasks)
        with self._cond:
            self.check_accepting()
            self._dispatcher.put(tasks, flush=flush)

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
        opened = open_storage(self._settings, self._run_id, self._key)
        self._temp_dir, store = opened.temp_dir, opened.store
        try:
            self._backend.start(self._reports, self._max_workers, opened.context)
        except BaseException:
            # Cluster unreachable, forbidden, misconfigured: the caller of submit sees it,
            # and nothing is left behind.
            with contextlib.suppress(Exception):
                self._backend.close(kill=True)
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
                self._temp_dir = None
            raise
        self._store = self._skips.store = self._launcher.store = self._resolver.store = store
        if opened.named is not None:
            self._named = NamedRun(
                self._cond,
                root=opened.root,
                named=opened.named,
                key=self._key,
                run_id=self._run_id,
                settle=self._resolver.settle,
                put=functools.partial(self._dispatcher.put, flush=True),
                dispatching=self.dispatching,
                refused=self._refused_error,
                died=self.thread_died,
            )
            self._launcher.named, self._launcher.deadline_at = opened.named, opened.deadline_at
        if self._settings.keep_warm > 0:
            self._warm = WarmPool(store, self._max_workers, self._reports)
            self._resolver.warm = self._reports.warm = self._warm
        if self._settings.batching.speculate:
            speculator = make_speculator(
                self._cond,
                self._batches,
                self._settings.batching,
                max_workers=self._max_workers,
                launcher=self._launcher,
                backend=self._backend,
                resolver=self._resolver,
                warm=self._warm,
                died=self.thread_died,
            )
            self._speculator = self._reports.speculator = speculator
            speculator.start()
        interval = self._backend.heartbeat_interval
        if interval is not None:
            self._heartbeat = Heartbeat(store, interval, self.thread_died)
            self._heartbeat.start()
        self._dispatcher.start(self._warm)

    # -- the engine's state (the backend's reports go through _reports) --------------

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
            tasks += self._dispatcher.drain()
            tasks.extend(t for t in self._resolver.tasks() if not t.settled)
            self._cond.notify_all()
        if self._named is not None:
            tasks += self._named.drop()  # the joined calls: none may run again here
        for t in tasks:
            self._resolver.settle(t, error=broken)

    def _skipped(self, batch_id: str, indexes: Collection[int]) -> None:
        # The skip markers' callback: every call of these indexes was cancelled before
        # they started, and their markers are written.
        self._resolver.skipped(batch_id, indexes)
        self._backend.cancel(batch_id, indexes)

    # -- the dispatcher's (see _dispatch.Engine) -------------------------------------

    def dispatching(self) -> bool:
        """Whether calls may still be launched (lock held): also while shutting down
        as long as joined calls may need to run again here."""
        if self._state in (State.STARTING, State.RUNNING):
            return True
        return (
            self._state is State.SHUTTING_DOWN
            and not (self._kill or self._leaving)
            and self._named is not None
            and self._named.joining()
        )

    def broken_error(self) -> ExecutorBrokenError | None:
        """What every call fails with once the executor is broken (lock held)."""
        return self._broken_error

    def _refused_error(self) -> BaseException:
        # What a call that can no longer be launched fails with (lock held).
        if self._broken_error is not None:
            return self._broken_error
        if self._leaving:
            return detached_error(self._settings.run_name)
        return shut_down_error()

    def thread_died(self, name: str, error: BaseException, tasks: list[Task] | None = None) -> None:
        """An engine thread ends on ``error``: break the executor with it, failing every
        unfinished future (and ``tasks``, which the thread held)."""
        _log.error("the %s thread of run %s failed", name, self._run_id, exc_info=error)
        self.backend_broken(error, tasks or (), thread=name)

    # -- shutdown ------------------------------------------------------------------

    def shutdown(self, *, wait: bool, cancel_futures: bool, kill_workers: bool) -> None:
        """Stop accepting work; see ``KubernetesExecutor.shutdown``. A run that began
        leaving (see :meth:`leave`) finishes leaving instead, unless ``kill_workers``."""
        with self._cond:
            while self._state is State.STARTING:
                self._cond.wait()
            leaving = self._leaving and not kill_workers
        if leaving:
            self._finish_leaving()
            return
        with self._cond:
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
                self._dispatcher.flush()
                finalizer = threading.Thread(target=self._finish, name="k8sx-shutdown")
                self._finalizer = finalizer
                finalizer.start()
        if finalizer is None:
            if bar is not None:
                bar.close()
            return
        if wait and finalizer is not threading.current_thread():
            finalizer.join()

    def leave(self, *, cancel_futures: bool) -> None:
        """A detached run's client stops following it: what is queued is launched, the
        run's workers are left running (the backend's ``detach``), its storage is kept,
        and the futures not done yet fail with :class:`RunDetachedError`. When nothing
        is left running, this is an ordinary shutdown. Bounded: one launch of what was
        queued, and the backend's ``detach``.

        Re-entrant: once leaving, a second call (a second Ctrl-C, the SIGTERM handler's
        exception, another thread's shutdown) finishes the same leave, never waits for
        the detached work, and never deletes what the run keeps."""
        with self._cond:
            while self._state is State.STARTING:
                self._cond.wait()
            resume = self._leaving
            started = not resume and self._state is State.RUNNING and self._finalizer is None
            if started and cancel_futures:
                self._cancel_not_started()
        if resume:
            self._finish_leaving()
            return
        if cancel_futures and started:
            self._skips.write()
        with self._cond:
            resume = self._leaving  # another thread began leaving meanwhile
            busy = bool(self._batches) or bool(self._dispatcher.queued())
            busy = busy or (self._named is not None and self._named.joining())
            started = started and busy and not resume and self._finalizer is None
            if started:
                self._leaving = True
                self._state = State.SHUTTING_DOWN
                self._dispatcher.flush()
        if started or resume:
            self._finish_leaving()
        else:
            self.shutdown(wait=True, cancel_futures=cancel_futures, kill_workers=False)

    def _finish_leaving(self) -> None:
        # Leave's tail (_leaving set), repeated harmlessly by a later call (see _leave).
        self._leaver.finish(self._named, self._heartbeat)
        self._ended()

    def _cancel_not_started(self) -> None:
        # Called with the lock held; the caller writes the skip markers once released.
        # Every call not known to be running, in a started index too: its worker skips
        # it (see _skips). cancel() leaves running and finished futures alone.
        for t in self._dispatcher.queued():
            t.future.cancel()
        if self._named is not None:
            # Joined calls are pending here (another session's copy runs them): the
            # shutdown would wait for them otherwise. Their copies go on.
            for t in self._named.joined():
                t.future.cancel()
        self._resolver.cancel_all()

    def _finish(self) -> None:
        """Wait for the work (or kill it), then release the backend and storage."""
        self._dispatcher.join()
        with self._cond:
            while self._batches and self._broken is None and not self._kill:
                self._cond.wait()
            kill = self._kill or self._broken is not None
        if self._speculator is not None:
            self._speculator.stop()  # no duplicate starts once the work is over
        if self._named is not None:
            # Not waited for when killed (the joined copies are another session's).
            for t in self._named.stop():
                self._resolver.settle(t, error=shut_down_error())
        if self._warm is not None:
            self._warm.stop()  # the backend ends the warm workers, idle ones at once
        self._backend.close(kill=kill)
        if self._heartbeat is not None:
            self._heartbeat.stop()
        # No worker is left to report: settle whatever the backend never reported (indexes
        # dropped by a kill), so no future waits forever.
        with self._lock:
            leftover = self._resolver.drop_all()
        for t in leftover:
            self._resolver.settle(t, error=shut_down_error())
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
            self._ended()

    def _ended(self) -> None:
        # Everything is released: shut down (unless broken); the executor and the bar end.
        with self._cond:
            if self._state is not State.BROKEN:
                self._state = State.SHUT_DOWN
            bar = self._bar
            self._cond.notify_all()
        self._on_end()
        if bar is not None:
            bar.close()
