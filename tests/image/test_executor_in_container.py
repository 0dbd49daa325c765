"""The whole path a user's call takes on a cluster, with nothing stood in for but the
control plane: ``image="auto"`` snapshots this venv into the registry, kubesim's podman
kubelet pulls it and runs the worker *inside the container*, and the worker reads its
call from and writes its result to S3 (moto, reached over the host network), with the
credentials the run's Secret carries."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from k8s_executor import KubernetesExecutor, Timeouts
from tests.image.conftest import BaseImage, PodmanService, RegistryServer
from tests.s3server import S3Server, s3_server

pytestmark = [pytest.mark.podman, pytest.mark.slow]


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with s3_server(buckets=("runs",)) as server:
        yield server


@pytest.mark.timeout(600)
def test_a_call_runs_in_the_snapshot_container_over_s3(
    oci_registry: RegistryServer,
    podman_service: PodmanService,
    base_image: BaseImage,
    kubesim_factory: Callable[..., Any],
    s3: S3Server,
) -> None:
    # The kubelet's podman runs with this suite's configuration and private store.
    podman_cmd = ["env", *(f"{k}={v}" for k, v in podman_service.env.items()), "podman"]
    sim = kubesim_factory(runtime="podman", kubelet_options={"podman_cmd": podman_cmd})

    def where(x: int) -> dict[str, Any]:
        # Defined here, so pickled by value: the image has k8s_executor and the venv's
        # packages, not this test suite.
        import os
        import sys

        import numpy

        return {
            "square": x * x,
            "in_container": os.path.exists("/run/.containerenv"),
            "prefix": sys.prefix,
            "numpy": numpy.__version__,
            "storage": os.environ.get("K8S_EXECUTOR_STORAGE_OPTIONS") is not None,
        }

    with KubernetesExecutor(
        backend="kubernetes",
        kubeconfig=str(sim.kubeconfig_path),
        registry=oci_registry.host,
        base_image=base_image.remote,
        storage="s3://runs/k8sx",
        storage_options=s3.storage_options(),
        share_storage_options=True,  # the pods get the endpoint and keys from the Secret
        max_workers=2,
        timeouts=Timeouts(startup=300),
    ) as ex:
        results = list(ex.map(where, [3, 4]))
        run_id = ex.run_id
    import numpy

    assert [r["square"] for r in results] == [9, 16]
    for r in results:
        assert r["in_container"], r  # podman's marker file: not this machine's process
        assert r["prefix"] == sys.prefix  # the venv, at the same absolute path
        assert r["numpy"] == numpy.__version__
        assert r["storage"]
    import s3fs

    fs = s3fs.S3FileSystem(**s3.storage_options())
    assert not fs.exists(f"runs/k8sx/{run_id}")  # shutdown removed the run's objects
