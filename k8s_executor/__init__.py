"""k8s_executor: ``concurrent.futures`` code that runs on Kubernetes unchanged.

    from k8s_executor import KubernetesExecutor

    with KubernetesExecutor(max_workers=64, storage="s3://bucket/k8sx") as ex:
        results = list(ex.map(work, items))

Importing this package imports neither ``kubernetes``, ``podman``, ``joblib`` nor ``s3fs``:
the worker starts inside a pod without the client-side dependencies.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._options import (
    Batching,
    PodOptions,
    Resources,
    Scheduling,
    StorageRetry,
    Timeouts,
    VolumeMount,
)
from ._version import __version__
from .errors import (
    ArgumentsPicklingError,
    ClusterError,
    ConfigError,
    ExecutorBrokenError,
    FunctionPicklingError,
    K8sExecutorError,
    PayloadError,
    PicklingError,
    PodStartError,
    RemoteError,
    ResultPicklingError,
    RunDetachedError,
    SerializationError,
    StorageError,
    UnpicklingError,
    VersionMismatchError,
)

if _TYPE_CHECKING:
    from ._executor import KubernetesExecutor
    from ._pool_errors import InitializerError, WorkerLostError

__all__ = [
    "ArgumentsPicklingError",
    "Batching",
    "ClusterError",
    "ConfigError",
    "ExecutorBrokenError",
    "FunctionPicklingError",
    "InitializerError",
    "K8sExecutorError",
    "KubernetesExecutor",
    "PayloadError",
    "PicklingError",
    "PodOptions",
    "PodStartError",
    "RemoteError",
    "Resources",
    "ResultPicklingError",
    "RunDetachedError",
    "Scheduling",
    "SerializationError",
    "StorageError",
    "StorageRetry",
    "Timeouts",
    "UnpicklingError",
    "VersionMismatchError",
    "VolumeMount",
    "WorkerLostError",
    "__version__",
]

# Resolved on first use: `python -m k8s_executor.worker` imports this package, and a
# worker needs neither the executor (threads, backends) nor the BrokenProcessPool errors
# (multiprocessing); loading them lazily halves a worker's start-up time.
_LAZY = {
    "KubernetesExecutor": "._executor",
    "InitializerError": "._pool_errors",
    "WorkerLostError": "._pool_errors",
}


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
