"""image="auto" through the executor: the first submit snapshots this venv into the
registry, the Job runs that image by digest with the venv's own python, and an unchanged
environment builds nothing the next time."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import ConfigError, KubernetesExecutor
from tests import helpers
from tests.image.conftest import BaseImage, RegistryServer
from tests.kube_helpers import kubesim_kwargs

pytestmark = [pytest.mark.podman, pytest.mark.slow]


def _kwargs(kubesim: Any, tmp_path: Path, registry: str, base: str) -> dict[str, Any]:
    kw = kubesim_kwargs(kubesim, tmp_path / "storage")
    del kw["image"], kw["python"]  # image="auto" picks both
    kw.update(registry=registry, base_image=base)
    return kw


@pytest.mark.timeout(600)
def test_auto_image_is_built_once_and_run_by_digest(
    kubesim: Any,
    oci_registry: RegistryServer,
    base_image: BaseImage,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    kw = _kwargs(kubesim, tmp_path, oci_registry.host, base_image.remote)
    with KubernetesExecutor(**kw) as ex:
        assert ex.submit(helpers.square, 7).result(timeout=300) == 49
        (job,) = kubesim.store.list("jobs", "default")[0]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith(f"{oci_registry.host}/k8s-executor-env@sha256:")
    assert container["command"][0] == os.path.join(sys.prefix, "bin", "python")
    assert "k8s_executor: built" in capfd.readouterr().err

    # Same environment: the registry already has it, nothing is built or pushed.
    with KubernetesExecutor(**kw) as ex:
        assert ex.submit(helpers.square, 8).result(timeout=120) == 64
    assert "k8s_executor: built" not in capfd.readouterr().err


def test_auto_image_needs_a_registry(kubesim: Any, tmp_path: Path) -> None:
    kw = kubesim_kwargs(kubesim, tmp_path / "storage")
    kw["image"] = "auto"
    with pytest.raises(ConfigError, match="image='auto' needs registry="):
        KubernetesExecutor(**kw)
    del kw["image"]
    env_registry = os.environ.pop("K8S_EXECUTOR_REGISTRY", None)
    try:
        with pytest.raises(ConfigError, match="the kubernetes backend needs an image"):
            KubernetesExecutor(**kw)
    finally:
        if env_registry is not None:
            os.environ["K8S_EXECUTOR_REGISTRY"] = env_registry
