"""The backends the behaviour suite runs against.

Every test runs once per backend: ``local`` (subprocesses), ``kubernetes`` against
kubesim with its process kubelet (pods run as local processes, through the real
Kubernetes API flow: Job, controller, pods, watch), or, in real-cluster mode
(``K8SX_TEST_CLUSTER``, see ``docs/testing.md``), against that cluster, and
``kubernetes-podman`` against kubesim with its podman kubelet: every pod a real container
whose worker is PID 1 and gets its signals from the kubelet, as on a real node (not in
real-cluster mode; it needs podman and fails under ``CI=true`` without it).
``local-s3`` and ``kubernetes-s3`` are the first two with the run's storage in S3 (a moto
server on loopback, one per session) instead of a local directory: s3fs brings its own
event loop, threads and retries, and some faults show only there. They run the tests
marked ``@pytest.mark.storage``: those whose outcome depends on what the storage holds
and when (an outcome written, missing or half-written; skip markers; the deletion at
shutdown; a worker lost with its index unwritten). For the others the storage only
carries a round trip that the marked ones make too, and on S3 a test costs 1-3 s more
(every worker imports s3fs and opens a client): their ``-s3`` runs are deselected, which
the session's summary says in one line; ``K8SX_TEST_S3_ALL=1`` runs them all. A test that
only makes sense on some backends says so with ``@pytest.mark.backends("local")``; it is
then not generated for the others (not skipped).

Tests and workers meet through ``shared_dir`` (files both reach), never through paths of
this machine: on a real cluster the workers are elsewhere.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import KubernetesExecutor
from tests.conftest import summary_note
from tests.helpers import SharedPath
from tests.kube_helpers import (
    BASE_IMAGE,
    ClusterUnderTest,
    KubesimCluster,
    KubesimPodmanCluster,
    podman_cmd,
    real_cluster_config,
)
from tests.kube_helpers import shared_dir as make_shared_dir
from tests.s3server import S3Server, s3_server

BACKENDS = ["local", "local-s3", "kubernetes", "kubernetes-s3", "kubernetes-podman"]
PODMAN = "kubernetes-podman"
S3 = "-s3"
BUCKET = "behaviour"
S3_ALL = "K8SX_TEST_S3_ALL"  # =1: every test on the -s3 backends, marked `storage` or not


def base_backend(name: str) -> str:
    """The backend of a variant: ``local-s3`` is ``local`` with S3 storage."""
    return name.removesuffix(S3)


ExecutorFactory = Callable[..., KubernetesExecutor]


def need_podman() -> None:
    """Skip without podman and its base image; fail instead under CI=true."""
    import shutil
    import subprocess

    problem = None
    if shutil.which("podman") is None:
        problem = "podman is not installed"
    else:
        exists = [*podman_cmd(), "image", "exists", BASE_IMAGE]
        if subprocess.run(exists, capture_output=True, check=False).returncode != 0:
            problem = f"the base image {BASE_IMAGE} is missing (sudo bash .ci/containers.sh)"
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"kubernetes-podman backend: {problem}")
    pytest.skip(f"kubernetes-podman backend: {problem}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends(*names): run only on these backends")
    config.addinivalue_line(
        "markers",
        "storage: the outcome depends on what the run's storage holds and when: also run "
        f"on the -s3 backends (the others are, with {S3_ALL}=1)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_name" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        names = [b for b in BACKENDS if marker is None or b in marker.args]
        if real_cluster_config(metafunc.config) is not None:
            # The real cluster brings its own storage; the podman kubelet is a kubesim.
            names = [b for b in names if b != PODMAN and not b.endswith(S3)]
        metafunc.parametrize("backend_name", names, indirect=True)


def _storage_incidental(item: pytest.Item) -> bool:
    """An -s3 run of a test not marked ``storage`` (nor asking for it by ``backends``)."""
    callspec = getattr(item, "callspec", None)
    backend = callspec.params.get("backend_name") if callspec is not None else None
    return (
        isinstance(backend, str)
        and backend.endswith(S3)
        and item.get_closest_marker("storage") is None
        and item.get_closest_marker("backends") is None
    )


@pytest.hookimpl(trylast=True)  # after -k / -m: count only what would have run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Deselected rather than not generated: the failure table marks its rows one by one,
    # which only the collected items show.
    if os.environ.get(S3_ALL) == "1":
        return
    off = [item for item in items if _storage_incidental(item)]
    if off:
        config.hook.pytest_deselected(items=off)
        items[:] = [item for item in items if not _storage_incidental(item)]
        # The session's summary says it in one line (under pytest-xdist too: see
        # tests/conftest.py, which prints it; the controller never loads this file).
        summary_note(
            config,
            "behaviour-s3",
            f"behaviour: {len(off)} runs on the -s3 backends deselected: their tests are not "
            f"marked `storage` (see tests/behaviour/conftest.py); {S3_ALL}=1 runs them",
            deselected=[item.nodeid for item in off],
        )


@pytest.fixture
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def shared_dir(
    backend_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[SharedPath]:
    """A directory the test and its workers both reach: ``tmp_path`` unless the workers
    are pods of a real cluster (then a prefix under its storage, removed afterwards)."""
    real = base_backend(backend_name) == "kubernetes"
    config = real_cluster_config(request.config) if real else None
    with make_shared_dir(tmp_path, config) as shared:
        yield shared


@pytest.fixture
def local_workers(backend_name: str, request: pytest.FixtureRequest) -> bool:
    """Workers are processes of this machine (their pids and CLOCK_MONOTONIC are ours)."""
    if backend_name == PODMAN:
        return False  # containers: their own pid namespace
    return base_backend(backend_name) == "local" or real_cluster_config(request.config) is None


@pytest.fixture(scope="session")
def behaviour_s3() -> Iterator[S3Server]:
    """One moto server for the ``-s3`` backends of the whole session."""
    with s3_server(buckets=(BUCKET,)) as server:
        yield server


@pytest.fixture
def cluster(
    backend_name: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterUnderTest]:
    """The cluster of the current Kubernetes backend (see the module docstring)."""
    if backend_name != PODMAN:
        if real_cluster_config(request.config) is not None:
            yield request.getfixturevalue("real_cluster")
            return
        process_sim = KubesimCluster(request.getfixturevalue("kubesim"))
        yield process_sim
        process_sim.close()
        return
    need_podman()
    factory = request.getfixturevalue("kubesim_factory")
    sim = factory(runtime="podman", kubelet_options={"podman_cmd": podman_cmd()})
    target = KubesimPodmanCluster(sim, tmp_path_factory.getbasetemp())
    yield target
    target.close()


@pytest.fixture
def executor_kwargs(
    backend_name: str, request: pytest.FixtureRequest, shared_dir: SharedPath
) -> dict[str, Any]:
    """What a test passes to KubernetesExecutor to run on the current backend."""
    if base_backend(backend_name) == "local":
        kwargs: dict[str, Any] = {"backend": "local"}
    else:
        cluster: ClusterUnderTest = request.getfixturevalue("cluster")
        kwargs = cluster.executor_kwargs(shared_dir / "storage")
    if backend_name.endswith(S3):
        server: S3Server = request.getfixturevalue("behaviour_s3")
        kwargs.update(
            storage=f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}",
            storage_options=server.storage_options(),
            share_storage_options=True,  # the pods reach the same server with them
        )
    return kwargs


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
