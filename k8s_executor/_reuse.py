"""Executors kept between joblib ``Parallel`` calls, so that their warm workers serve
the next call.

joblib ends every ``Parallel`` call with ``terminate()``; scikit-learn makes one
``Parallel`` call per search round, per cross-validation, per ensemble. If each call shut
its executor down, every call would start its workers again (pods, imports), where loky
keeps one process-wide pool. So an executor whose call ended cleanly goes back here
instead, and the next call with the same options (and the same number of workers) takes
it, with its workers still warm. An executor nobody takes within its ``keep_warm`` window
is shut down by a timer: by then its workers have left anyway. At interpreter exit the
executor's own exit hook shuts down whatever is still here.

Hand-written rather than loky's ``get_reusable_executor``: that one reuses a single
process-wide executor and resizes it; ours must tell executors apart by their options
(storage, image, namespace...), and must not keep one beyond its workers' idle window,
since an idle executor still holds a run (storage, a heartbeat).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._executor import KubernetesExecutor

_log = logging.getLogger(__name__)


def same_options(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two option mappings ask for the same executor.

    Values are compared by identity first, then with ``==``; a comparison that raises or
    does not give a plain truth value (NumPy arrays among ``initargs``) counts as
    different, so an executor is reused only when that is certain.
    """
    if a.keys() != b.keys():
        return False
    for key, left in a.items():
        right = b[key]
        if left is right:
            continue
        try:
            equal = left == right
        except Exception:
            return False
        if not isinstance(equal, bool) or not equal:
            return False
    return True


@dataclass
class _Idle:
    options: Mapping[str, Any]
    max_workers: int
    executor: KubernetesExecutor
    timer: threading.Timer = field(repr=False)


class ReusePool:
    """Idle executors by their options; each is handed to one caller at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Idle] = []

    def take(
        self,
        options: Mapping[str, Any],
        max_workers: int,
        new: Callable[[], KubernetesExecutor],
    ) -> tuple[KubernetesExecutor, bool]:
        """An idle executor made with ``options`` for ``max_workers`` and True, or
        ``new()`` and False."""
        with self._lock:
            for i, idle in enumerate(self._idle):
                if idle.max_workers == max_workers and same_options(idle.options, options):
                    del self._idle[i]
                    idle.timer.cancel()
                    return idle.executor, True
        return new(), False

    def give_back(
        self, options: Mapping[str, Any], max_workers: int, executor: KubernetesExecutor
    ) -> None:
        """Keep ``executor`` for the next caller during its ``keep_warm`` window; shut it
        down at once when it keeps no workers warm."""
        window = executor.keep_warm
        if window <= 0:
            executor.shutdown(wait=True)
            return
        timer = threading.Timer(window, self._expire, args=(executor,))
        timer.daemon = True  # the executor's exit hook shuts it down at exit
        timer.name = f"k8s-executor-reuse-{executor.run_id}"
        with self._lock:
            self._idle.append(_Idle(dict(options), max_workers, executor, timer))
        timer.start()

    def _expire(self, executor: KubernetesExecutor) -> None:
        with self._lock:
            kept = [i for i in self._idle if i.executor is not executor]
            if len(kept) == len(self._idle):
                return  # taken meanwhile
            self._idle = kept
        try:
            executor.shutdown(wait=True)
        except Exception:  # a timer thread has nobody to raise to
            _log.exception("cannot shut down the idle executor of run %s", executor.run_id)

    def clear(self) -> None:
        """Shut every idle executor down now."""
        with self._lock:
            idle, self._idle = self._idle, []
        for entry in idle:
            entry.timer.cancel()
            entry.executor.shutdown(wait=True)

    def __len__(self) -> int:
        with self._lock:
            return len(self._idle)
