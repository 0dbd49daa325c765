"""k8s_executor: ``concurrent.futures`` code that runs on Kubernetes unchanged.

    from k8s_executor import KubernetesExecutor

    with KubernetesExecutor(max_workers=64, storage="s3://bucket/k8sx") as ex:
        results = list(ex.map(work, items))

Importing this package imports neither ``kubernetes``, ``podman``, ``joblib`` nor ``s3fs``:
the worker starts inside a pod without the client-side dependencies.
"""

from ._executor import KubernetesExecutor
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
    InitializerError,
    K8sExecutorError,
    PayloadError,
    PicklingError,
    PodStartError,
    RemoteError,
    ResultPicklingError,
    SerializationError,
    StorageError,
    UnpicklingError,
    VersionMismatchError,
    WorkerLostError,
)

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
