"""§9.15 with the podman runtime: a real image pulled from a loopback registry is not set up
here, so this checks what needs no registry: an unpullable image and a local image run.

Skipped when podman is missing, except under ``CI=true`` where a missing podman is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.kube_helpers import BASE_IMAGE, podman_cmd
from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import wait_for
from tests.kubesim_tests.job_helpers import NS, phase, raw

pytestmark = pytest.mark.podman

if shutil.which("podman") is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("podman is required under CI=true (apt-get install -y podman runc)")
    pytest.skip("podman is not installed", allow_module_level=True)


def _local_image() -> str | None:
    """The Python base image .ci/containers.sh imports, if it is in the store."""
    result = subprocess.run(
        [*podman_cmd(), "image", "exists", BASE_IMAGE], capture_output=True, check=False
    )
    return BASE_IMAGE if result.returncode == 0 else None


@pytest.fixture
def core(kubesim_factory: Any) -> Iterator[Any]:
    sim: Kubesim = kubesim_factory(runtime="podman", kubelet_options={"podman_cmd": podman_cmd()})
    with sim.api_client() as api:
        yield client.CoreV1Api(api)


def _get(core: Any, name: str) -> dict[str, Any]:
    return raw(core.read_namespaced_pod(name, NS, _preload_content=False))


def test_podman_unpullable_image_backs_off(core: Any) -> None:
    pod = {
        "metadata": {"name": "nopull"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "127.0.0.1:1/missing/image:1"}],
        },
    }
    core.create_namespaced_pod(NS, pod)

    def reason() -> str:
        statuses = _get(core, "nopull")["status"].get("containerStatuses") or [{}]
        return str(statuses[0].get("state", {}).get("waiting", {}).get("reason"))

    wait_for(lambda: reason() == "ImagePullBackOff", 60)
    assert phase(_get(core, "nopull")) == "Pending"


def test_podman_runs_local_image(core: Any) -> None:
    image = _local_image()
    if image is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no local podman image to run: .ci/containers.sh builds one")
        pytest.skip("no local podman image to run (bash .ci/containers.sh builds one)")
    pod = {
        "metadata": {"name": "run"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "echo hi; exit 3"],
                }
            ],
        },
    }
    core.create_namespaced_pod(NS, pod)
    done = wait_for(lambda: (p := _get(core, "run")) and phase(p) == "Failed" and p, 60)
    term = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3
    assert core.read_namespaced_pod_log("run", NS) == "hi\n"
