"""Processes for container tests and benchmarks: an OCI registry and podman's service.

Plain functions (no pytest), shared by ``conftest.py`` and ``benchmarks/image_build.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class Missing(Exception):
    """A tool or file that .ci/containers.sh provides is not there."""


def containers_dir() -> Path:
    """Where .ci/containers.sh wrote its configuration (same default as the script)."""
    explicit = os.environ.get("K8SX_CONTAINERS_DIR")
    return Path(explicit) if explicit else Path.home() / ".cache/k8s-executor/containers"


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Missing(f"{name} is not installed")
    return path


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` until truthy; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        threading.Event().wait(delay)
        delay = min(delay * 2, 0.25)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: nothing may outlive the session."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class RegistryServer:
    host: str
    """``127.0.0.1:<port>``, also the image name prefix."""
    storage: Path
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}"


def start_registry(
    directory: Path, *, htpasswd: Path | None = None, extra: str = ""
) -> RegistryServer:
    """Start docker-registry on a random loopback port; the caller stops it."""
    binary = need_tool("docker-registry")
    directory.mkdir(parents=True, exist_ok=True)
    storage = directory / "data"
    auth = ""
    if htpasswd is not None:
        auth = f"auth:\n  htpasswd:\n    realm: k8sx-test\n    path: {htpasswd}\n"
    config = directory / "config.yml"
    # Port 0: the kernel picks a free port, which the registry logs; no bind/close race.
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:0\n  secret: k8sx-test-secret\n{auth}{extra}"
    )
    log = directory / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    port: list[str] = []

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())
        if found:
            port.append(found.group(1))
        return bool(found)

    try:
        wait_until(listening, 30, "docker-registry to listen")
    except BaseException:
        stop_process(proc)
        raise
    return RegistryServer(f"127.0.0.1:{port[0]}", storage, proc, log)


BASE_IMAGE = "localhost/k8sx-base:py3.11"
"""The base image .ci/containers.sh imports into the private podman store."""


@dataclass
class PodmanService:
    socket: Path
    env: dict[str, str]
    """The CONTAINERS_* variables (podman CLI calls need them as well)."""
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def cli(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run the podman CLI on the same storage and configuration as the service."""
        return subprocess.run(
            ["podman", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )


def podman_env(
    directory: Path, config_dir: Path | None = None, insecure_registries: tuple[str, ...] = ()
) -> dict[str, str]:
    """The CONTAINERS_* variables for podman on these machines (see machine.md).

    The private containers.conf and storage.conf of ``config_dir`` (default:
    :func:`containers_dir`), and a copy of its registries.conf, written into ``directory``,
    with ``insecure_registries`` added: plain-HTTP loopback registries on random ports, so
    that pulls by name just work (for these tests and for kubesim's podman kubelet).
    """
    config_dir = config_dir or containers_dir()
    if not (config_dir / "containers.conf").is_file():
        raise Missing(f"no podman configuration in {config_dir}")
    directory.mkdir(parents=True, exist_ok=True)
    registries = directory / "registries.conf"
    extra = "".join(
        f'\n[[registry]]\nlocation = "{r}"\ninsecure = true\n' for r in insecure_registries
    )
    registries.write_text((config_dir / "registries.conf").read_text() + extra)
    return {
        "CONTAINERS_CONF": str(config_dir / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(config_dir / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(registries),
    }


def start_podman_service(
    directory: Path, config_dir: Path | None = None, insecure_registries: tuple[str, ...] = ()
) -> PodmanService:
    """``podman system service`` on ``directory``/podman.sock; the caller stops it.

    Configured by :func:`podman_env` (these variables must be in the service's own
    environment, not only the client's).
    """
    binary = need_tool("podman")
    env = podman_env(directory, config_dir, insecure_registries)
    socket = directory / "podman.sock"
    log = directory / "service.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "system", "service", "--time=0", f"unix://{socket}"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = PodmanService(socket, env, proc)

    def answering() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"podman system service exited: {log.read_text()[-2000:]}")
        if not socket.exists():
            return False
        from podman import PodmanClient

        with PodmanClient(base_url=service.url) as client:
            try:
                return bool(client.ping())
            except Exception:
                return False

    try:
        wait_until(answering, 60, "the podman service to answer")
    except BaseException:
        stop_process(proc)
        raise
    return service
