"""Fixtures of the image builder's tests; the container infrastructure they run on
(``oci_registry``, ``auth_registry``, ``podman_service``, ``containers_dir_path``) is
``tests/containers.py``'s, shared with the other tests that need it.

Fixtures (session-wide unless noted):

    base_image          the debootstrap base image, in podman and pushed to oci_registry
    tiny_env            (per test) a small venv: one wheel, one editable project, a copy
                        of the one pip installed for the session (_tiny_env_template)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.containers import AuthRegistry, missing
from tests.image.infra import BASE_IMAGE, PodmanService, RegistryServer

__all__ = ["AuthRegistry", "BaseImage", "PodmanService", "RegistryServer", "TinyEnv"]


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


def install_tiny_env(root: Path) -> TinyEnv:
    """A venv with a third-party package (``tinypkg``, from a wheel) and an editable one
    (``localpkg``) under ``root``, installed by pip (which compiles their .pyc files)."""
    from tests.image.envs import make_editable_project, make_venv, make_wheel, pip_install

    venv = make_venv(root / "venv")
    wheels = root / "wheels"
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
        root / "project", "localpkg", "def hello():\n    return 'hello from localpkg'\n"
    )
    pip_install(venv, str(wheel), "-e", str(project))
    return TinyEnv(venv, project, wheels)


@pytest.fixture(scope="session")
def _tiny_env_template(tmp_path_factory: pytest.TempPathFactory) -> TinyEnv:
    """The tiny environment, installed by pip once (pip takes 2-4 s; about 60 tests use it)."""
    return install_tiny_env(tmp_path_factory.mktemp("tiny-env"))


@pytest.fixture
def pip_tiny_env(tmp_path: Path) -> TinyEnv:
    """(per test) The tiny environment installed by pip in this test's directory, for a test
    that compares pip's own output byte for byte (a copy's .pyc files name the template's
    paths; compiled again elsewhere, marshal's bytes differ from pip's)."""
    return install_tiny_env(tmp_path)


@pytest.fixture
def tiny_env(_tiny_env_template: TinyEnv, tmp_path: Path) -> TinyEnv:
    """A venv with a third-party package (``tinypkg``, from a wheel) and an editable one
    (``localpkg``), installed by pip (which compiles their .pyc files): a copy of the
    session's template, the test's own to change. The copy keeps every file's mtime (the
    .pyc files stay valid); the paths the install wrote (the editable project's ``.pth``,
    ``direct_url.json``, the activate scripts) are moved to the copy. The .pyc files still
    name the template's sources (only tracebacks show it); ``pip_tiny_env`` is pip's own."""
    template = _tiny_env_template
    old_root, new_root = str(template.venv.parent), str(tmp_path)
    for part in ("venv", "project", "wheels"):
        shutil.copytree(template.venv.parent / part, tmp_path / part, symlinks=True)
    for path in (tmp_path / "venv").rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        if path.suffix == ".pyc":
            continue
        data = path.read_bytes()
        if old_root.encode() in data:
            stat = path.stat()
            path.write_bytes(data.replace(old_root.encode(), new_root.encode()))
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return TinyEnv(tmp_path / "venv", tmp_path / "project", tmp_path / "wheels")


def write_auth_file(path: Path, host: str, username: str, password: str) -> Path:
    """An auth.json as `podman login` writes it."""
    import base64
    import json

    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path
