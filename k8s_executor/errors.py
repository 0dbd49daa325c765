"""The exceptions k8s_executor raises.

Every error the library raises itself derives from :class:`K8sExecutorError`. Errors
that existing ``concurrent.futures`` code already catches keep their stdlib bases, so
``except BrokenProcessPool:`` or ``except pickle.PicklingError:`` go on working::

    Exception
     ├── K8sExecutorError
     │    ├── ConfigError (ValueError)            a bad option value, or no backend chosen
     │    ├── StorageError (OSError)              storage failed after retries
     │    ├── PayloadError                        signature, format or version mismatch
     │    │    └── VersionMismatchError           worker runs another Python / package version
     │    ├── SerializationError                  a payload could not cross the wire
     │    │    ├── PicklingError (pickle.PicklingError)
     │    │    │    ├── FunctionPicklingError     the callable (or initializer) on the client
     │    │    │    ├── ArgumentsPicklingError    the arguments on the client
     │    │    │    └── ResultPicklingError       the return value in the worker
     │    │    └── UnpicklingError (pickle.UnpicklingError)
     │    │                                       loading the function/arguments in the worker,
     │    │                                       or a result on the client, failed
     │    ├── RemoteError                         a task raised an exception that cannot be
     │    │                                       rebuilt here (its class is missing locally)
     │    ├── ClusterError                        the Kubernetes API refused or is unreachable
     │    ├── image.ImageError                    the environment image could not be built
     │    │                                       or pushed (k8s_executor.image)
     │    ├── PodStartError                       a pod never started (image pull, scheduling)
     │    └── RunDetachedError                    a detached run's client stopped following it
     └── RuntimeError
          └── concurrent.futures.BrokenExecutor
               ├── ExecutorBrokenError (K8sExecutorError)   nothing can run at all
               └── concurrent.futures.process.BrokenProcessPool
                    ├── WorkerLostError (K8sExecutorError)  a worker died before reporting
                    ├── InitializerError (K8sExecutorError) the initializer raised
                    ├── BrokenUnpicklingError (UnpicklingError)
                    │        a call's function or arguments could not be loaded in the
                    │        worker, or its result here (where ProcessPoolExecutor's pool
                    │        would break; only that call fails)
                    └── BrokenResultPicklingError (ResultPicklingError)
                             pickling a result raised SystemExit in the worker
"""

from __future__ import annotations

import pickle
from concurrent.futures import BrokenExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._pool_errors import InitializerError, WorkerLostError

__all__ = [
    "ArgumentsPicklingError",
    "ClusterError",
    "ConfigError",
    "ExecutorBrokenError",
    "FunctionPicklingError",
    "InitializerError",
    "K8sExecutorError",
    "PayloadError",
    "PicklingError",
    "PodStartError",
    "RemoteError",
    "ResultPicklingError",
    "RunDetachedError",
    "SerializationError",
    "StorageError",
    "UnpicklingError",
    "VersionMismatchError",
    "WorkerLostError",
]


class K8sExecutorError(Exception):
    """Base class of every error raised by k8s_executor itself."""


class ConfigError(K8sExecutorError, ValueError):
    """An option has a value that is not allowed, or the setup is incomplete."""


class StorageError(K8sExecutorError, OSError):
    """Reading or writing the run's storage failed, after retrying transient errors."""


class PayloadError(K8sExecutorError):
    """A payload is corrupt, unsigned, signed with another key, or of an unknown format."""


class VersionMismatchError(PayloadError):
    """Client and worker run different Python major.minor or k8s_executor versions."""


class SerializationError(K8sExecutorError):
    """A payload could not be pickled or unpickled.

    Attributes:
        what: which part failed: ``"function"``, ``"initializer"``, ``"arguments"`` or
            ``"result"``.
    """

    what: str

    def __init__(self, message: str, *, what: str) -> None:
        super().__init__(message)
        self.what = what

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_serialization_error, (type(self), str(self), self.what))


def _rebuild_serialization_error(
    cls: type[SerializationError], message: str, what: str
) -> SerializationError:
    return cls(message, what=what)


class PicklingError(SerializationError, pickle.PicklingError):
    """A function, its arguments or its result could not be pickled."""


class FunctionPicklingError(PicklingError):
    """The submitted callable (or the executor's initializer) could not be pickled."""


class ArgumentsPicklingError(PicklingError):
    """The arguments of a call could not be pickled."""


class ResultPicklingError(PicklingError):
    """The value a task returned could not be pickled in the worker."""


class UnpicklingError(SerializationError, pickle.UnpicklingError):
    """A payload was pickled but could not be loaded on the other side.

    In the worker this usually means a module available locally is missing from the
    worker's environment; on the client, that a result references a module missing here.
    """


class RemoteError(K8sExecutorError):
    """A task raised an exception whose class cannot be rebuilt in this process.

    Attributes:
        type_name: the qualified name of the remote exception's class.
        message: ``str()`` of the remote exception.
        remote_traceback: the formatted remote traceback.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.remote_traceback))


class ClusterError(K8sExecutorError):
    """The Kubernetes API refused a request or could not be reached.

    Attributes:
        status: the HTTP status of the refusal, or None if the API was unreachable.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PodStartError(K8sExecutorError):
    """A pod could not start within ``Timeouts.startup`` (image pull, scheduling, config).

    Attributes:
        reason: the Kubernetes reason, e.g. ``ImagePullBackOff`` or ``Unschedulable``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ExecutorBrokenError(K8sExecutorError, BrokenExecutor):
    """Nothing can run at all: the backend is unreachable or refuses every launch."""


class RunDetachedError(K8sExecutorError):
    """The client of a detached run stopped following it (``shutdown``, the end of its
    ``with`` block, Ctrl-C) before this call ended: the call goes on in the cluster, and
    running the script again (or ``k8s-executor results RUN``) gives its outcome."""


def __getattr__(name: str) -> Any:
    # WorkerLostError and InitializerError subclass BrokenProcessPool, whose module pulls
    # in multiprocessing (~50 ms). Workers start once per pod and never need them, so
    # they are defined on first use, by the client only.
    if name in ("WorkerLostError", "InitializerError"):
        from . import _pool_errors

        return getattr(_pool_errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
