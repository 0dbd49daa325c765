"""The errors that subclass ``BrokenProcessPool`` (see ``errors`` for the whole tree).

Kept apart because ``concurrent.futures.process`` imports multiprocessing: the worker,
which starts once per pod, never imports this module.
"""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool

from .errors import K8sExecutorError, ResultPicklingError, UnpicklingError

__all__ = [
    "BrokenResultPicklingError",
    "BrokenUnpicklingError",
    "InitializerError",
    "WorkerLostError",
]


class WorkerLostError(K8sExecutorError, BrokenProcessPool):
    """A worker (process or pod) ended without reporting the outcome of its tasks.

    Only the futures of that worker fail; the executor stays usable. Subclasses
    :class:`concurrent.futures.process.BrokenProcessPool` so code written for
    ``ProcessPoolExecutor`` keeps catching it.

    Attributes:
        exit_code: the worker's exit code, or ``None`` if it was killed by a signal or
            never reported one.
        signal: the number of the signal that killed it, if any.
        reason: a short cause, e.g. ``"OOMKilled"``, ``"Evicted"`` or ``"Killed"``.
        log_tail: the last lines the worker wrote to stderr.
    """

    def __init__(
        self,
        message: str,
        *,
        exit_code: int | None = None,
        signal: int | None = None,
        reason: str | None = None,
        log_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.signal = signal
        self.reason = reason
        self.log_tail = log_tail


class InitializerError(K8sExecutorError, BrokenProcessPool):
    """The executor's ``initializer`` raised in a worker, so its tasks did not run.

    The initializer's exception is attached as ``__cause__``.
    """


# Where ProcessPoolExecutor's pool breaks (a call item or a result that cannot cross the
# process boundary ends its worker), ours fails only the call concerned, but with an
# exception that is both our specific class and a BrokenProcessPool, so code written for
# either catches it (loky's TerminatedWorkerError is the precedent).


class BrokenUnpicklingError(UnpicklingError, BrokenProcessPool):
    """A call's function or arguments could not be loaded in the worker, or its result
    here: an :class:`~k8s_executor.UnpicklingError` that is also a ``BrokenProcessPool``."""


class BrokenResultPicklingError(ResultPicklingError, BrokenProcessPool):
    """Pickling a result in the worker raised ``SystemExit`` (or another exception that is
    not an ``Exception``): a ``ResultPicklingError`` that is also a ``BrokenProcessPool``."""
