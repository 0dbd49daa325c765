"""A detached run's exit, once decided (``Run.leave``): launch what was queued, stop
following the joined calls, leave the workers running (the backend's ``detach``), and
fail the futures not done with :class:`RunDetachedError`; the run's storage is kept.

Its own part so that the steps are written once and may be repeated: an interrupted exit
(a second Ctrl-C, the SIGTERM handler's exception) is finished by the next shutdown or
leave, which runs them again; each step runs even if the one before it was interrupted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ._batches import Task
from ._dispatch import Dispatcher, Heartbeat
from ._launch import Launcher
from ._named_run import NamedRun, detached_error
from ._resolve import Resolver
from .backends._base import Backend

__all__ = ["Leaver"]


class Leaver:
    """The steps of one detached run's exit, run to their end at most once."""

    def __init__(
        self,
        lock: threading.RLock,
        *,
        backend: Backend,
        dispatcher: Dispatcher,
        resolver: Resolver,
        launcher: Launcher,
        run_name: str | None,
    ) -> None:
        self._engine_lock = lock
        self._backend = backend
        self._dispatcher = dispatcher
        self._resolver = resolver
        self._launcher = launcher
        self._run_name = run_name
        # One caller at a time; re-entrant: a signal handler's shutdown may land in the
        # middle of it on the same thread.
        self._lock = threading.RLock()
        self._done = False  # the steps ran to their end

    def finish(self, named: NamedRun | None, heartbeat: Heartbeat | None) -> None:
        """Run the exit's steps unless they already ran to their end."""
        with self._lock:
            if not self._done:
                self._steps(named, heartbeat)
                self._done = True

    def _steps(self, named: NamedRun | None, heartbeat: Heartbeat | None) -> None:
        # What an interruption leaves unsettled is settled by the next call's repeat.
        left: list[Task] = []
        try:
            self._dispatcher.join()  # launches what was queued: nothing stays here
        finally:
            try:
                if named is not None:
                    left += named.stop()
                detach: Callable[[], None] | None = getattr(self._backend, "detach", None)
                assert detach is not None  # checked at construction (_config)
                detach()
                if heartbeat is not None:
                    heartbeat.stop()
            finally:
                with self._engine_lock:
                    left += self._resolver.drop_all()
                    left += self._dispatcher.drain()
                error = detached_error(self._run_name)
                for t in left:
                    self._resolver.settle(t, error=error)
        self._launcher.close()
