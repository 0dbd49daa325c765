"""The built image, pulled from the registry and run by kubesim's podman kubelet as a pod:
the last step before a Job runs the snapshot (a third-party and an editable package)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from k8s_executor.image import build_image
from tests.image.conftest import BaseImage, PodmanService, RegistryServer, TinyEnv
from tests.image.infra import wait_until

pytestmark = [pytest.mark.podman, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_a_pod_runs_the_snapshot(
    tiny_env: TinyEnv,
    oci_registry: RegistryServer,
    podman_service: PodmanService,
    base_image: BaseImage,
    kubesim_factory: Callable[..., Any],
) -> None:
    ref = build_image(
        oci_registry.host,
        repository="kubelet/env",
        base_image=base_image.local,
        prefix=tiny_env.venv,
        podman_url=podman_service.url,
    )
    # The kubelet's podman runs with this suite's configuration (machine.md: the default
    # one cannot run containers on these VMs) and private store.
    podman_cmd = ["env", *(f"{k}={v}" for k, v in podman_service.env.items()), "podman"]
    sim = kubesim_factory(runtime="podman", kubelet_options={"podman_cmd": podman_cmd})
    code = "import json, tinypkg, localpkg; print(json.dumps([tinypkg.VALUE, localpkg.hello()]))"
    pod: Any = {
        "metadata": {"name": "snapshot"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": ref.reference, "command": ["python", "-c", code]}
            ],
        },
    }
    with sim.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespaced_pod("default", pod)

        def phase() -> str:
            status = core.read_namespaced_pod("snapshot", "default").status
            return str(status.phase if status is not None else None)

        wait_until(lambda: phase() in ("Succeeded", "Failed"), 120, "the pod to finish")
        log = core.read_namespaced_pod_log("snapshot", "default")
        assert phase() == "Succeeded", log
    assert json.loads(log) == [42, "hello from localpkg"]
