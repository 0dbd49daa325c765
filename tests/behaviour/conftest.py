"""The backends the behaviour suite runs against.

Every test runs once per backend: ``local`` (subprocesses) and ``kubernetes`` against
kubesim with its process kubelet (pods run as local processes, through the real
Kubernetes API flow: Job, controller, pods, watch), or, in real-cluster mode
(``K8SX_TEST_CLUSTER``, see ``docs/testing.md``), against that cluster. A test that only
makes sense on some backends says so with ``@pytest.mark.backends("local")``; it is then
not generated for the others (not skipped).

Tests and workers meet through ``shared_dir`` (files both reach), never through paths of
this machine: on a real cluster the workers are elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import KubernetesExecutor
from tests.helpers import SharedPath
from tests.kube_helpers import ClusterUnderTest, real_cluster_config
from tests.kube_helpers import shared_dir as make_shared_dir

BACKENDS = ["local", "kubernetes"]

ExecutorFactory = Callable[..., KubernetesExecutor]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends(*names): run only on these backends")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_name" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        names = [b for b in BACKENDS if marker is None or b in marker.args]
        metafunc.parametrize("backend_name", names, indirect=True)


@pytest.fixture
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def shared_dir(
    backend_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[SharedPath]:
    """A directory the test and its workers both reach: ``tmp_path`` unless the workers
    are pods of a real cluster (then a prefix under its storage, removed afterwards)."""
    config = real_cluster_config(request.config) if backend_name == "kubernetes" else None
    with make_shared_dir(tmp_path, config) as shared:
        yield shared


@pytest.fixture
def local_workers(backend_name: str, request: pytest.FixtureRequest) -> bool:
    """Workers are processes of this machine (their pids and CLOCK_MONOTONIC are ours)."""
    return backend_name == "local" or real_cluster_config(request.config) is None


@pytest.fixture
def executor_kwargs(
    backend_name: str, request: pytest.FixtureRequest, shared_dir: SharedPath
) -> dict[str, Any]:
    """What a test passes to KubernetesExecutor to run on the current backend."""
    if backend_name == "local":
        return {"backend": "local"}
    cluster: ClusterUnderTest = request.getfixturevalue("cluster")
    return cluster.executor_kwargs(shared_dir / "storage")


@pytest.fixture
def make_executor(executor_kwargs: dict[str, Any]) -> Iterator[ExecutorFactory]:
    """Build executors on the current backend; shut them all down after the test."""
    made: list[KubernetesExecutor] = []

    def factory(*args: Any, **kwargs: Any) -> KubernetesExecutor:
        executor = KubernetesExecutor(*args, **{**executor_kwargs, **kwargs})
        made.append(executor)
        return executor

    yield factory
    for executor in made:
        executor.shutdown(wait=True, cancel_futures=True)
