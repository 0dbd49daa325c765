"""The part of the engine only a named run has ([durable runs](../docs/durable-runs.md)):
its calls with a stored result resolve from storage, those another session runs now are
joined (``_join``), and the joined calls whose copy was lost run again here.

The engine (``_run.Run``) composes a :class:`NamedRun` once its storage is open, and
hands it what it needs of the engine as callables: settling a task, putting tasks on the
dispatcher, whether calls may still be launched and what they fail with when not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from . import _payload as wire
from ._batches import Task
from ._durable import StoredResults
from ._join import Joiner
from ._store import RunStore
from .errors import RunDetachedError

__all__ = ["NamedRun", "detached_error"]


class NamedRun:
    """A named run's stored results and joins, as one client sees them.

    Args:
        cond: the engine's condition (its lock); notified when joins change.
        root: the storage root.
        named: the named run's store.
        key: the run's signing key.
        run_id: this session's run id.
        settle: ``settle(task, result=..., error=...)``, the engine's.
        put: ``put(tasks)`` queues tasks on the dispatcher, flushed (lock held).
        dispatching: whether calls may still be launched (lock held).
        refused: what a call fails with once none may be launched any more (broken,
            shut down, or the client leaving a detached run) (lock held).
        died: ``died(name, error, tasks)``, the engine's ``thread_died``: the joiner's
            thread failed, holding ``tasks``.
    """

    def __init__(
        self,
        cond: threading.Condition,
        *,
        root: str,
        named: RunStore,
        key: bytes,
        run_id: str,
        settle: Callable[..., None],
        put: Callable[[list[Task]], None],
        dispatching: Callable[[], bool],
        refused: Callable[[], BaseException],
        died: Callable[[str, BaseException, list[Task]], None],
    ) -> None:
        self._cond = cond
        self._settle = settle
        self._put = put
        self._dispatching = dispatching
        self._refused = refused
        self._stored = StoredResults(named, key)
        self._joiner = Joiner(
            root=root,
            named=named,
            stored=self._stored,
            own_run_id=run_id,
            settle=settle,
            rerun=self._rerun,
            changed=self._joins_changed,
            died=died,
        )

    def reuse(self, tasks: list[Task]) -> list[Task]:
        """Calls with a stored result resolve from storage, without a pod; those another
        session runs now are joined. The tasks left to run here."""
        named = [t for t in tasks if t.identity and not t.settled]
        if not named:
            return tasks
        found = self._stored.find([(t.identity, wire.callable_name(t.fn)) for t in named])
        for t in named:
            results = found.get(t.identity)
            if results is not None:
                t.reused = True  # before settling: the bar counts it as it finishes
                self._settle(t, result=results[0] if t.single else results)
        joined = set(map(id, named)) - set(map(id, self._joiner.join(named)))
        return [t for t in tasks if id(t) not in joined]

    def joining(self) -> bool:
        """Whether joined calls are still followed (they may need to run again here)."""
        return self._joiner.pending() > 0

    def stop(self) -> list[Task]:
        """Stop following the joined calls; those not resolved yet (to be settled)."""
        return self._joiner.stop()

    def joined(self) -> list[Task]:
        """The joined calls not resolved yet (to cancel them)."""
        return self._joiner.tasks()

    def drop(self) -> list[Task]:
        """Follow none of the joined calls any more (the engine broke); those not resolved
        yet, to be settled. Never waits (any thread, the joiner's too)."""
        return self._joiner.drop()

    def _rerun(self, tasks: list[Task]) -> None:
        """Joined calls whose copy was lost: run them here (the joiner's thread)."""
        with self._cond:
            if self._dispatching():
                self._put(tasks)
                return
            error = self._refused()
        for t in tasks:
            self._settle(t, error=error)

    def _joins_changed(self) -> None:
        with self._cond:
            self._cond.notify_all()


def detached_error(name: Any) -> RunDetachedError:
    """What the calls a detached run's client stopped following fail with."""
    return RunDetachedError(
        f"run {name!r} is detached and this client stopped following it: the call goes "
        "on without it; run the script again with the same run name, or "
        f"`k8s-executor results {name}`, for its outcome"
    )
