"""Real container infrastructure for tests: an OCI registry and a podman REST service.

Both come from `.ci/containers.sh` (apt packages, a podman configuration that works on
our VMs, and the base image ``localhost/k8sx-base:py3.11``). Missing pieces skip the
tests locally and fail them under ``CI=true``, where nothing may be skipped silently.
The processes themselves are started by ``infra.py`` (shared with the benchmark).

Fixtures (session-wide unless noted):

    containers_dir_path the directory .ci/containers.sh configured
    oci_registry        docker-registry on 127.0.0.1:<random port>, temp storage
    auth_registry       another one that requires a login (htpasswd)
    podman_service      `podman system service` on a private unix socket, configured so
                        that podman pulls from oci_registry without TLS
    base_image          the debootstrap base image, in podman and pushed to oci_registry
    tiny_env            (per test) a small venv: one wheel, one editable project
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.image import infra
from tests.image.infra import BASE_IMAGE, PodmanService, RegistryServer

__all__ = ["AuthRegistry", "BaseImage", "PodmanService", "RegistryServer", "TinyEnv"]


def missing(reason: str) -> None:
    """Skip, or fail under CI=true: CI must run every container test."""
    reason += " (run `bash .ci/containers.sh` as root to install and configure it)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def need_tool(name: str) -> str:
    try:
        return infra.need_tool(name)
    except infra.Missing as exc:
        missing(str(exc))
        raise  # unreachable: missing() raises


@pytest.fixture(scope="session")
def containers_dir_path() -> Path:
    path = infra.containers_dir()
    if not (path / "containers.conf").is_file():
        missing(f"no podman configuration in {path}")
    return path


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    need_tool("docker-registry")
    server = infra.start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield server
    finally:
        infra.stop_process(server.process)


@pytest.fixture(scope="session")
def podman_service(
    tmp_path_factory: pytest.TempPathFactory,
    containers_dir_path: Path,
    oci_registry: RegistryServer,
) -> Iterator[PodmanService]:
    need_tool("podman")
    service = infra.start_podman_service(
        tmp_path_factory.mktemp("podman"), containers_dir_path, (oci_registry.host,)
    )
    try:
        yield service
    finally:
        infra.stop_process(service.process)


@dataclass(frozen=True)
class BaseImage:
    local: str
    """In podman's store (what .ci/containers.sh built)."""
    remote: str
    """The same image, pushed to the test registry."""


@pytest.fixture(scope="session")
def base_image(podman_service: PodmanService, oci_registry: RegistryServer) -> BaseImage:
    if podman_service.cli("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        missing(f"the base image {BASE_IMAGE} is not in podman's store")
    remote = f"{oci_registry.host}/k8sx-base:py3.11"
    podman_service.cli("push", "--quiet", "--tls-verify=false", BASE_IMAGE, remote)
    return BaseImage(BASE_IMAGE, remote)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Layer digests and base facts cached for this session only, not in ~/.cache."""
    old = os.environ.get("K8SX_CACHE_DIR")
    os.environ["K8SX_CACHE_DIR"] = str(tmp_path_factory.mktemp("k8sx-cache"))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("K8SX_CACHE_DIR", None)
        else:
            os.environ["K8SX_CACHE_DIR"] = old


@dataclass(frozen=True)
class TinyEnv:
    venv: Path
    project: Path
    """The source tree of the editable package ``localpkg``."""
    wheels: Path
    """Where more tiny wheels can be written (see envs.make_wheel)."""


@pytest.fixture
def tiny_env(tmp_path: Path) -> TinyEnv:
    """A venv with a third-party package (``tinypkg``, from a wheel) and an editable one
    (``localpkg``), installed by pip (which compiles their .pyc files)."""
    from tests.image.envs import make_editable_project, make_venv, make_wheel, pip_install

    venv = make_venv(tmp_path / "venv")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = make_wheel(
        wheels,
        "tinypkg",
        "1.0",
        {
            "tinypkg/__init__.py": "VALUE = 42\n",
            "tinypkg/util.py": "def twice(x):\n    return 2 * x\n",
        },
    )
    project = make_editable_project(
        tmp_path / "project", "localpkg", "def hello():\n    return 'hello from localpkg'\n"
    )
    pip_install(venv, str(wheel), "-e", str(project))
    return TinyEnv(venv, project, wheels)


@dataclass(frozen=True)
class AuthRegistry:
    server: RegistryServer
    username: str
    password: str


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthRegistry]:
    """A second registry that requires a login (htpasswd, bcrypt)."""
    htpasswd_tool = need_tool("htpasswd")
    need_tool("docker-registry")
    directory = tmp_path_factory.mktemp("auth-registry")
    htpasswd = directory / "htpasswd"
    line = subprocess.run(
        [htpasswd_tool, "-Bbn", "k8sx", "s3cret"], check=True, capture_output=True, text=True
    ).stdout
    htpasswd.write_text(line.strip() + "\n")
    server = infra.start_registry(directory, htpasswd=htpasswd)
    try:
        yield AuthRegistry(server, "k8sx", "s3cret")
    finally:
        infra.stop_process(server.process)


def write_auth_file(path: Path, host: str, username: str, password: str) -> Path:
    """An auth.json as `podman login` writes it."""
    import base64
    import json

    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path
