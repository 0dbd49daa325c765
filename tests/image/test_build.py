"""build_image end to end: real podman, real registry, images that really run."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
from pathlib import Path
from typing import Any

import pytest

from k8s_executor.errors import ConfigError
from k8s_executor.image import (
    BaseImageError,
    EnvironmentSnapshotError,
    ImageRef,
    PodmanUnavailableError,
    PythonMismatchError,
    RegistryAuthError,
    RegistryUnreachableError,
    build_image,
)
from k8s_executor.image._layers import EPOCH
from tests.image.conftest import AuthRegistry, BaseImage, PodmanService, RegistryServer, TinyEnv
from tests.image.envs import make_wheel, pip_install
from tests.image.infra import start_registry, stop_process

pytestmark = [pytest.mark.podman, pytest.mark.slow]

PROBE = """
import json, os, sys
import tinypkg, tinypkg.util, localpkg
print(json.dumps({
    "value": tinypkg.VALUE,
    "twice": tinypkg.util.twice(21),
    "hello": localpkg.hello(),
    "localpkg": localpkg.__file__,
    "prefix": sys.prefix,
    "executable": os.path.realpath(sys.executable),
    "version": list(sys.version_info[:2]),
    "pyc_mtime": os.stat(tinypkg.util.__cached__).st_mtime,
}))
"""


def build(env: TinyEnv, registry: RegistryServer, base: str, **kw: Any) -> ImageRef:
    kw.setdefault("compression", "none")
    return build_image(
        registry.host,
        base_image=base,
        prefix=env.venv,
        podman_url=kw.pop("podman_url", None),
        **kw,
    )


def run_probe(podman_service: PodmanService, reference: str) -> dict[str, Any]:
    result = podman_service.cli(
        "run", "--rm", "--network", "host", reference, "python", "-c", PROBE, check=False
    )
    assert result.returncode == 0, result.stderr
    probe: dict[str, Any] = json.loads(result.stdout)
    return probe


@pytest.mark.timeout(300)
def test_the_image_runs_the_snapshot(
    tiny_env: TinyEnv,
    oci_registry: RegistryServer,
    podman_service: PodmanService,
    base_image: BaseImage,
) -> None:
    ref = build(
        tiny_env,
        oci_registry,
        base_image.local,
        podman_url=podman_service.url,
        compression="gzip",
        repository="e2e/env",
    )
    assert ref.built
    assert ref.reference.startswith(f"{oci_registry.host}/e2e/env@sha256:")
    assert ref.tag == f"{oci_registry.host}/e2e/env:env-{ref.fingerprint}"
    probe = run_probe(podman_service, ref.reference)
    assert probe["value"] == 42
    assert probe["twice"] == 42
    assert probe["hello"] == "hello from localpkg"
    # Same absolute paths as here; the editable package runs from the copied source tree.
    assert probe["prefix"] == str(tiny_env.venv)
    assert probe["localpkg"] == str(tiny_env.project / "src/localpkg/__init__.py")
    # The venv's python is the base image's interpreter, same major.minor as ours.
    assert probe["executable"] == "/usr/bin/python3.11"
    assert probe["version"] == [3, 11]
    # The shipped .pyc was valid: Python used it instead of recompiling (and rewriting) it.
    assert probe["pyc_mtime"] == EPOCH


def test_unchanged_environment_builds_nothing(
    tiny_env: TinyEnv,
    oci_registry: RegistryServer,
    podman_service: PodmanService,
    base_image: BaseImage,
) -> None:
    first = build(tiny_env, oci_registry, base_image.local, podman_url=podman_service.url)
    second = build(tiny_env, oci_registry, base_image.local, podman_url=podman_service.url)
    assert first.built and not second.built
    assert (second.layers_pushed, second.bytes_pushed) == (0, 0)
    assert second.reference == first.reference
    assert "nothing built or pushed" in second.summary()
    third = build_image(
        f"http://{oci_registry.host}/",
        base_image=base_image.local,
        prefix=tiny_env.venv,
        podman_url=podman_service.url,
    )
    assert third.reference == first.reference
    assert not third.built


def test_rebuild_from_scratch_gives_the_same_digest(
    tiny_env: TinyEnv,
    oci_registry: RegistryServer,
    podman_service: PodmanService,
    base_image: BaseImage,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = build(
        tiny_env, oci_registry, base_image.local, podman_url=podman_service.url, repository="r1"
    )
    # No cached layer digests, another repository: everything is written again.
    monkeypatch.setenv("K8SX_CACHE_DIR", str(tmp_path / "fresh-cache"))
    second = build(
        tiny_env, oci_registry, base_image.local, podman_url=podman_service.url, repository="r2"
    )
    assert second.built and second.layers_pushed > 0
    assert second.digest == first.digest


def test_adding_a_small_package_pushes_only_its_layer(
    tiny_env: TinyEnv,
    oci_registry: RegistryServer,
    podman_service: PodmanService,
    base_image: BaseImage,
) -> None:
    first = build(tiny_env, oci_registry, base_image.local, podman_url=podman_service.url)
    wheel = make_wheel(tiny_env.wheels, "newpkg", "1.0", {"newpkg.py": "X = 1\n"})
    pip_install(tiny_env.venv, str(wheel))
    second = build(tiny_env, oci_registry, base_image.local, podman_url=podman_service.url)
    assert second.fingerprint != first.fingerprint
    assert second.layers_pushed == 1
    assert second.bytes_pushed < 50_000
    assert second.layers_reused > 3


@pytest.mark.timeout(300)
def test_base_image_from_a_registry(
    tiny_env: TinyEnv,
    oci_registry: RegistryServer,
    podman_service: PodmanService,
    base_image: BaseImage,
) -> None:
    ref = build(tiny_env, oci_registry, base_image.remote, repository="from-registry")
    assert ref.built
    probe = run_probe(podman_service, ref.reference)
    assert probe["hello"] == "hello from localpkg"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("chosen_by", ["argument", "environment"])
def test_push_through_podman(
    tiny_env: TinyEnv,
    oci_registry: RegistryServer,
    podman_service: PodmanService,
    base_image: BaseImage,
    monkeypatch: pytest.MonkeyPatch,
    chosen_by: str,
) -> None:
    repository = f"via-podman-{chosen_by}"
    kw: dict[str, Any] = {"method": "podman"}
    if chosen_by == "environment":
        monkeypatch.setenv("K8S_EXECUTOR_IMAGE_PUSH", "podman")
        kw = {}
    ref = build(
        tiny_env,
        oci_registry,
        base_image.local,
        podman_url=podman_service.url,
        repository=repository,
        **kw,
    )
    assert ref.built
    # The podman path leaves the tagged image in podman's store; the direct upload doesn't.
    assert podman_service.cli("image", "exists", ref.tag, check=False).returncode == 0
    assert run_probe(podman_service, ref.reference)["value"] == 42


def test_unknown_push_method_in_the_environment(
    tiny_env: TinyEnv, oci_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K8S_EXECUTOR_IMAGE_PUSH", "docker")
    with pytest.raises(ConfigError, match="K8S_EXECUTOR_IMAGE_PUSH='docker' is not allowed"):
        build(tiny_env, oci_registry, "localhost/unused:1")


# --- failures: each names the cause and the fix ----------------------------------------------


@pytest.fixture(scope="session")
def python312_base(podman_service: PodmanService) -> str:
    """A (non-runnable) image whose only Python is 3.12."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("usr/bin/python3.12")
        info.size = 4
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(b"#!/\n"))
    path = podman_service.socket.parent / "py312.tar"
    path.write_bytes(buf.getvalue())
    podman_service.cli("import", "--quiet", str(path), "localhost/k8sx-fake:py3.12")
    return "localhost/k8sx-fake:py3.12"


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_python_mismatch(
    tiny_env: TinyEnv,
    oci_registry: RegistryServer,
    podman_service: PodmanService,
    python312_base: str,
) -> None:
    with pytest.raises(PythonMismatchError) as info:
        build(tiny_env, oci_registry, python312_base, podman_url=podman_service.url)
    message = str(info.value)
    assert "has no Python 3.11 (found: /usr/bin/python3.12 (3.12))" in message
    assert "base_image=" in message


def test_base_image_missing_from_podman(
    tiny_env: TinyEnv, oci_registry: RegistryServer, podman_service: PodmanService
) -> None:
    with pytest.raises(BaseImageError, match=r"not in podman's store.*podman images"):
        build(tiny_env, oci_registry, "localhost/nope:1", podman_url=podman_service.url)


def test_podman_service_not_running(
    tiny_env: TinyEnv, oci_registry: RegistryServer, tmp_path: Path
) -> None:
    url = f"unix://{tmp_path}/nobody-listens.sock"
    with pytest.raises(PodmanUnavailableError) as info:
        build(tiny_env, oci_registry, "localhost/k8sx-base:py3.11", podman_url=url)
    assert f"does not answer at {url}" in str(info.value)
    assert "podman system service --time=0" in str(info.value)


def test_podman_not_installed(
    tiny_env: TinyEnv, oci_registry: RegistryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no podman binary on it
    with pytest.raises(PodmanUnavailableError, match=r"podman is not installed.*base_image="):
        build(tiny_env, oci_registry, "localhost/k8sx-base:py3.11", podman_url="unix:///x")


def test_registry_unreachable(tiny_env: TinyEnv, base_image: BaseImage) -> None:
    host = _closed_port()
    with pytest.raises(
        RegistryUnreachableError, match=f"cannot reach the registry at http://{host}"
    ):
        build_image(host, base_image=f"{host}/base:1", prefix=tiny_env.venv)


def test_registry_refuses_the_push(
    tiny_env: TinyEnv, auth_registry: AuthRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "none.json"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    host = auth_registry.server.host
    with pytest.raises(RegistryAuthError, match=f"podman login {host}"):
        build_image(host, base_image=f"{host}/base:1", prefix=tiny_env.venv)


def test_not_a_venv(tmp_path: Path, oci_registry: RegistryServer) -> None:
    with pytest.raises(EnvironmentSnapshotError, match="not a virtual environment"):
        build_image(oci_registry.host, prefix=tmp_path)


def test_importing_the_package_does_not_import_podman() -> None:
    import subprocess
    import sys

    code = "import sys, k8s_executor, k8s_executor.image; print('podman' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert os.environ.get("K8SX_CACHE_DIR")  # the session cache fixture is active


@pytest.mark.timeout(300)
def test_base_image_from_another_registry(
    tiny_env: TinyEnv, base_image: BaseImage, tmp_path: Path
) -> None:
    # The base's blobs are streamed from one registry into the other, once.
    other = start_registry(tmp_path / "other-registry")
    try:
        ref = build_image(
            other.host, base_image=base_image.remote, prefix=tiny_env.venv, compression="none"
        )
        assert ref.built
        assert ref.bytes_pushed > 50_000_000  # the base's compressed layer came along
    finally:
        stop_process(other.process)


def test_base_image_behind_a_multi_platform_index(
    tiny_env: TinyEnv, oci_registry: RegistryServer, base_image: BaseImage
) -> None:
    # Official images are indexes over platforms: the linux/amd64 manifest is used.
    from k8s_executor.image._registry import OCI_INDEX, Registry, split_reference

    _, repo, tag = split_reference(base_image.remote)
    with Registry(oci_registry.host) as registry:
        manifest, media_type, digest = registry.get_manifest(repo, tag)
        size = len(json.dumps(manifest))  # informational: registries check digests only
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": media_type,
                    "digest": digest,
                    "size": size,
                    "platform": {"os": "linux", "architecture": "arm64"},
                },
                {
                    "mediaType": media_type,
                    "digest": digest,
                    "size": size,
                    "platform": {"os": "linux", "architecture": "amd64"},
                },
            ],
        }
        body = json.dumps(index).encode()
        registry.put_manifest(repo, "multi", body, OCI_INDEX)
    ref = build(tiny_env, oci_registry, f"{oci_registry.host}/{repo}:multi", repository="multi")
    assert ref.built
