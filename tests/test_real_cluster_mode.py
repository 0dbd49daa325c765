"""Real-cluster mode (``K8SX_TEST_CLUSTER``, docs/testing.md) keeps working.

The end-to-end test points the mode at a standalone kubesim in another process (``python
-m tests.kubesim``): the suite then takes exactly the path a real cluster would (cluster.json,
the session check, executor keywords from the file, workers met through the storage,
objects read through the API), on a cluster it did not start itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import kube_helpers
from tests.helpers import SharedPath
from tests.kube_helpers import ENV_VAR, ClusterConfigError, ClusterUnderTest, load_cluster_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def standalone_kubesim(tmp_path: Path) -> Iterator[str]:
    """A kubesim in its own process; yields the kubeconfig path it printed."""
    with kube_helpers.standalone_kubesim(tmp_path / "kubesim.log") as kubeconfig:
        yield kubeconfig


def _jobs_created_since(kubeconfig: str, resource_version: str) -> set[str]:
    """Names of the executor Jobs created after ``resource_version``, replayed by a watch
    (they are deleted by now; the API server's history still has them)."""
    from kubernetes import watch

    cluster = ClusterUnderTest(kubeconfig, None, "default")
    stream: Any = watch.Watch()  # type: ignore[no-untyped-call]
    try:
        events = stream.stream(
            cluster.batch.list_namespaced_job,
            cluster.namespace,
            resource_version=resource_version,
            label_selector="app.kubernetes.io/managed-by=k8s-executor",
            timeout_seconds=2,
        )
        return {e["object"].metadata.name for e in events if e["type"] == "ADDED"}
    finally:
        cluster.close()


def _job_list_version(kubeconfig: str) -> str:
    cluster = ClusterUnderTest(kubeconfig, None, "default")
    try:
        return str(cluster.batch.list_namespaced_job("default").metadata.resource_version)
    finally:
        cluster.close()


@pytest.fixture(params=["local-dir", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """cluster.json's storage fields: a local directory, or an S3 server (moto) whose
    credentials reach the pods as a real cluster's would: a Secret (``pod_secrets``) and
    the endpoint in ``pod_env``, while this machine uses ``storage_options``."""
    if request.param == "local-dir":
        yield {"storage": str(tmp_path / "storage")}
        return
    from tests.s3server import s3_server

    with s3_server(buckets=("k8sx-tests",)) as s3:
        credentials = {"key": "testing", "secret": "testing"}
        yield {
            "storage": "s3://k8sx-tests/suite",
            "storage_options": {
                **credentials,
                "client_kwargs": {"endpoint_url": s3.endpoint, "region_name": "us-east-1"},
            },
            "pod_env": {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_DEFAULT_REGION": "us-east-1"},
            "pod_secrets": ["s3-credentials"],
            "secret": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        }


@pytest.mark.slow
@pytest.mark.kubesim_only  # it brings its own cluster: nothing to add on a real one
@pytest.mark.timeout(400)
def test_suite_runs_against_a_cluster_from_cluster_json(
    standalone_kubesim: str, storage: dict[str, Any], tmp_path: Path
) -> None:
    storage = dict(storage)
    secret = storage.pop("secret", None)
    if secret is not None:
        cluster = ClusterUnderTest(standalone_kubesim, None, "default")
        body = {"metadata": {"name": "s3-credentials"}, "stringData": secret}
        cluster.core.create_namespaced_secret("default", body)
        cluster.close()
    pythonpath = os.pathsep.join(p or os.getcwd() for p in sys.path)
    cluster_json = tmp_path / "cluster.json"
    cluster_json.write_text(
        json.dumps(
            {
                "kubeconfig": standalone_kubesim,
                # The process kubelet runs pods as processes of this machine: "image" is
                # this interpreter, and the tests come from this checkout.
                "image": "kubesim.local/process:latest",
                "python": sys.executable,
                "startup_timeout": 60,
                **storage,
                "pod_env": {"PYTHONPATH": pythonpath, **storage.get("pod_env", {})},
            }
        )
    )
    before = _job_list_version(standalone_kubesim)
    selection = (
        "kubernetes and (cancel_pending_future or map_timeout_raises"
        " or leaves_no_job_pod_secret or evicted_worker)"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "tests/behaviour",
            "tests/test_kubernetes_backend.py",
            "-k",
            selection,
        ],
        cwd=ROOT,
        env={**os.environ, ENV_VAR: str(cluster_json)},
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    # Two behaviour tests and one backend test ran; the eviction test needs kubesim's kubelet.
    assert re.search(r"^=* 3 passed, \d+ deselected", out, re.MULTILINE), out
    assert f"{ENV_VAR}: 1 kubesim-only test not run on the real cluster: 1 needs" in out, out
    assert f"{ENV_VAR}={cluster_json}: Kubernetes tests run on the real cluster" in out, out
    # ...and they ran on that cluster, not on a kubesim of their own: its API server saw
    # the Jobs (the session check's, then at least one per test).
    assert len(_jobs_created_since(standalone_kubesim, before)) >= 4, out
    # Every test's shared directory (its run storage in it) was removed afterwards.
    config = load_cluster_config(cluster_json)
    assert SharedPath(f"{config.storage}/k8sx-tests", config.storage_options).listdir() == []


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(data))
    return path


KUBECONFIG = """apiVersion: v1
kind: Config
current-context: c
clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u, namespace: team}}]
"""


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    return path


def test_cluster_json_defaults_and_relative_paths(tmp_path: Path, kubeconfig: Path) -> None:
    config = load_cluster_config(
        _write(tmp_path, {"kubeconfig": "kubeconfig", "storage": "shared", "registry": "r:5000"})
    )
    assert config.kubeconfig == str(kubeconfig)
    assert config.storage == str(tmp_path / "shared")  # relative to cluster.json
    assert config.namespace == "team"  # the context's
    assert config.image is None  # built from the registry at session start
    assert (config.startup_timeout, config.share_storage_options) == (180.0, False)


@pytest.mark.usefixtures("kubeconfig")
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"storage": "s3://b/p", "image": "i"}, "missing kubeconfig"),
        ({"kubeconfig": "kubeconfig", "image": "i"}, "missing storage"),
        (
            {"kubeconfig": "kubeconfig", "storage": "/s", "imgae": "i"},
            r"unknown field\(s\) \['imgae'\]",
        ),
        ({"kubeconfig": "kubeconfig", "storage": "/s"}, "needs image .* or registry"),
        ({"kubeconfig": "kubeconfig", "storage": "/s", "image": "auto"}, "needs registry"),
        ({"kubeconfig": "nope", "storage": "/s", "image": "i"}, "kubeconfig .*nope does not exist"),
        (
            {"kubeconfig": "kubeconfig", "storage": "/s", "image": "i", "context": "x"},
            "no context 'x'",
        ),
        (
            {"kubeconfig": "kubeconfig", "storage": "/s", "image": "i", "pod_secrets": "s"},
            "pod_secrets='s' is not allowed: expected Secrets",
        ),
        (
            {"kubeconfig": "kubeconfig", "storage": "/s", "image": "i", "startup_timeout": True},
            "startup_timeout=True is not allowed",
        ),
        (
            {"kubeconfig": "kubeconfig", "storage": "/s", "image": "i", "pod_env": {"A": 1}},
            "pod_env: every value must be a string",
        ),
        (
            {"kubeconfig": "kubeconfig", "storage": "/s", "image": "i", "resources": {"cpus": 1}},
            "resources: .*cpus",
        ),
        (
            {"kubeconfig": "kubeconfig", "storage": "/s", "image": "i", "resources": {"cpu": -1}},
            "resources: .*cpu",
        ),
    ],
)
def test_cluster_json_mistakes_are_named(
    tmp_path: Path, data: dict[str, Any], message: str
) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ClusterConfigError, match=rf"^{ENV_VAR}={path}: .*{message}"):
        load_cluster_config(path)


def test_unreadable_or_malformed_cluster_json(tmp_path: Path) -> None:
    with pytest.raises(ClusterConfigError, match="cannot read it"):
        load_cluster_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ClusterConfigError, match="not valid JSON"):
        load_cluster_config(tmp_path / "bad.json")


def test_a_bad_cluster_json_stops_pytest_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, {"kubeconfig": "nope"})
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/behaviour", "--co"],
        cwd=ROOT,
        env={**os.environ, ENV_VAR: str(path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert f"ERROR: {ENV_VAR}={path}: missing storage" in run.stderr
