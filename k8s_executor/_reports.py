"""What the backend and the warm pool report, routed to the engine's parts: the private
:class:`~k8s_executor.backends._base.Listener` the backend is started with, and the warm
pool's :class:`~k8s_executor._warm_pool.Engine`.

A report of a straggler's duplicate goes to the :class:`~k8s_executor._speculate.Speculator`,
the others to the :class:`~k8s_executor._resolve.Resolver` (and, with warm workers, to the
:class:`~k8s_executor._warm_pool.WarmPool`). An error escaping them would leave the
backend's thread (or the warm pool's) without a way to report again: the executor breaks
instead (``died``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from ._batches import Task
from ._dispatch import Dispatcher
from ._progress import Progress
from ._resolve import Resolver
from ._speculate import Speculator
from ._warm_pool import WarmPool
from .backends._base import IndexExit, waits_for_room

__all__ = ["Reports"]


class Reports:
    """Routes the reports of the backend and the warm pool (see the module docstring).

    Args:
        lock: the engine's lock.
        resolver: settles the futures of the launched batches.
        dispatcher: launches the warm pool's new workers.
        bar: the run's bar, if any (read with the lock held).
        broken: ``broken(error, held, thread=...)``, the engine's ``backend_broken``.
        died: ``died(name, error)``, the engine's ``thread_died``.
    """

    def __init__(
        self,
        lock: threading.RLock,
        resolver: Resolver,
        dispatcher: Dispatcher,
        *,
        bar: Callable[[], Progress | None],
        broken: Callable[..., None],
        died: Callable[[str, BaseException], None],
    ) -> None:
        self._lock = lock
        self._resolver = resolver
        self._dispatcher = dispatcher
        self._bar = bar
        self._broken = broken
        self._died = died
        self.speculator: Speculator | None = None  # set as the run starts, if any
        self.warm: WarmPool | None = None  # set as the run starts, if any

    def index_started(self, batch_id: str, index: int) -> bool:
        """Mark the first live call of an index running; False if all were cancelled
        (see ``Resolver.index_started``)."""
        try:
            origin = None if self.speculator is None else self.speculator.origin(batch_id)
            if origin is not None:  # a duplicate of a straggler (see _speculate)
                return self._resolver.index_started(*origin)
            return self._resolver.index_started(batch_id, index)
        except BaseException as exc:
            self._died("backend's delivery", exc)
            return False

    def index_finished(self, batch_id: str, index: int, exit: IndexExit) -> None:
        """Resolve the futures of a finished index from its outcome in storage; with warm
        workers, the index's worker ended (it may have run other indexes since)."""
        try:
            if self.speculator is not None and self.speculator.origin(batch_id) is not None:
                # A duplicate of a straggler: never a warm worker (see _speculate).
                self.speculator.copy_finished(batch_id, index, exit)
                return
            self._resolver.index_finished(batch_id, index, exit)
            if self.warm is not None:
                self.warm.worker_ended(batch_id, index, exit)
        except BaseException as exc:
            self._died("backend's delivery", exc)

    def waiting(self, note: str) -> None:
        """Show why calls wait (``note``; "" clears it) on the run's bar and its maps'."""
        with self._lock:
            run_bar = self._bar()
            bars = {id(run_bar): run_bar} if run_bar is not None else {}
            bars.update((id(b), b) for b in self._resolver.bars())
        for bar in bars.values():
            bar.note(note)
        if self.warm is not None and waits_for_room(note):
            # Pods of this run wait for quota or node room that idle warm workers hold
            # (a Job of more pods than fit at once: its first pods, done and idle, would
            # keep the rest pending for their whole idle window).
            self.warm.release_idle()

    def backend_broken(
        self, error: BaseException, held: Iterable[Task] = (), *, thread: str = ""
    ) -> None:
        """Fail every unfinished future: nothing can run any more (the engine's)."""
        self._broken(error, held, thread=thread)

    def warm_finished(
        self, batch_id: str, index: int, exit: IndexExit, worker: tuple[str, int]
    ) -> None:
        """Resolve an index a warm worker reported done (or lost); ``worker``: the index
        that worker was started for."""
        try:
            self._resolver.warm_finished(batch_id, index, exit, worker)
        except BaseException as exc:
            self._died("warm-worker", exc)

    def declined(self, batch_id: str, index: int) -> bool:
        """Whether an index waiting for a worker has no call left to run."""
        return self._resolver.declined(batch_id, index)

    def launch_part(self, batch_id: str, indexes: tuple[int, ...]) -> bool:
        """Start new workers for ``indexes`` of a batch; False if that failed."""
        return self._dispatcher.launch_part(batch_id, indexes)
