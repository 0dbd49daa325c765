"""Real container infrastructure for the tests that need it (the image builder's, ``doctor``'s):
an OCI registry, one that requires a login, and a podman REST service. A pytest plugin
of the suite (``tests/conftest.py``), so every test directory sees the same fixtures.

They come from `.ci/containers.sh` (apt packages, a podman configuration that works on
our VMs, and the base image ``localhost/k8sx-base:py3.11``). Missing pieces skip the
tests locally and fail them under ``CI=true``, where nothing may be skipped silently.
The processes themselves are started by ``tests/image/infra.py`` (shared with the
benchmark).

Fixtures (session-wide):

    containers_dir_path the directory .ci/containers.sh configured
    oci_registry        docker-registry on 127.0.0.1:<random port>, temp storage
    auth_registry       another one that requires a login (htpasswd)
    podman_service      `podman system service` on a private unix socket, configured so
                        that podman pulls from oci_registry without TLS
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.image import infra
from tests.image.infra import PodmanService, RegistryServer


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


@dataclass(frozen=True)
class AuthRegistry:
    server: RegistryServer
    username: str
    password: str


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
