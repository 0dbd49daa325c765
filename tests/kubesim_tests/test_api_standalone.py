"""kubesim as a standalone process and as seen by kubectl; teardown leaves nothing behind."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import (
    Watch,
    batch_api,
    core_api,
    job_manifest,
    pod_manifest,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is required under CI=true (the CI image must install it)")
        pytest.skip("kubectl not installed")
    return path


def _run_kubectl(kubeconfig: str, home: Path, *args: str) -> str:
    result = subprocess.run(
        [_kubectl(), "--kubeconfig", kubeconfig, *args],
        capture_output=True,
        text=True,
        timeout=30,
        # kubectl caches discovery under $HOME/.kube: keep it in the test's directory.
        env={**os.environ, "HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[str]:
    """``python -m tests.kubesim`` in a child process; yields the kubeconfig path."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.kubesim", "--no-controllers"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        kubeconfig = process.stdout.readline().strip()
        assert Path(kubeconfig).is_file(), process.stderr.read() if process.stderr else ""
        yield kubeconfig
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert not Path(kubeconfig).exists()  # its temporary directory is removed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_standalone_serves_client_and_kubectl(standalone: str, tmp_path: Path) -> None:
    _kubectl()
    configuration = client.Configuration()
    from kubernetes import config

    load: Any = config.load_kube_config  # untyped in the client
    load(config_file=standalone, client_configuration=configuration)
    assert configuration.host.startswith("http://127.0.0.1:")
    with client.ApiClient(configuration) as api:
        batch = batch_api(api)
        batch.create_namespaced_job("default", job_manifest("demo", parallelism=2, completions=4))
        core_api(api).create_namespaced_pod("default", pod_manifest("p1"))

        table = _run_kubectl(standalone, tmp_path, "get", "jobs")
        header, row = table.strip().splitlines()
        assert header.split() == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
        assert row.split()[:3] == ["demo", "Running", "0/4"]
        pods = _run_kubectl(standalone, tmp_path, "get", "pods")
        assert pods.splitlines()[1].split()[:3] == ["p1", "0/1", "Pending"]
        described = _run_kubectl(standalone, tmp_path, "describe", "job", "demo")
        assert "Completions:      4" in described
        assert "batch.kubernetes.io/job-name=demo" in described
        as_json = _run_kubectl(
            standalone, tmp_path, "get", "job", "demo", "-o", "jsonpath={.spec.parallelism}"
        )
        assert as_json == "2"
        deleted = _run_kubectl(standalone, tmp_path, "delete", "job", "demo")
        # kubectl >= 1.35 adds " from <namespace> namespace".
        assert deleted.strip() in (
            'job.batch "demo" deleted',
            'job.batch "demo" deleted from default namespace',
        )
        assert batch.list_namespaced_job("default").items == []


@pytest.mark.skipif(
    importlib.util.find_spec("tests.kubesim.kubelet") is None, reason="kubelet not built yet"
)
def test_kubectl_logs(kubesim: Kubesim, tmp_path: Path) -> None:
    _kubectl()
    with kubesim.api_client() as api:
        core = core_api(api)
        pod = pod_manifest("hello")
        pod["spec"]["containers"][0]["command"] = [
            sys.executable,
            "-c",
            "print('hello from kubesim')",
        ]
        core.create_namespaced_pod("default", pod)
        wait_for(
            lambda: core.read_namespaced_pod("hello", "default").status.phase == "Succeeded",
            timeout=30,
            what="the pod to succeed",
        )
    logs = _run_kubectl(kubesim.kubeconfig_path, tmp_path, "logs", "hello")
    assert logs == "hello from kubesim\n"


def _kubesim_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("kubesim")]


def _server_side_sockets(port: int) -> list[int]:
    """Descriptors of this process bound to ``port`` (the listener and accepted connections)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with sock:
            try:
                if sock.getsockname()[1] == port:
                    found.append(int(name))
            except (OSError, IndexError):
                pass
    return found


def _children() -> list[int]:
    me = str(os.getpid())
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            children.append(int(entry.name))
    return children


def test_close_leaves_no_thread_socket_or_process(kubesim_factory: Callable[..., Kubesim]) -> None:
    threads_before = _kubesim_threads()
    children_before = _children()
    sim = kubesim_factory()
    port = sim.server.port
    with sim.api_client() as api:
        batch = batch_api(api)
        batch.create_namespaced_job("default", job_manifest("j"))
        # A watch left open by a client must not keep the server alive.
        response = batch.list_namespaced_job("default", watch=True, _preload_content=False)
        stream = Watch()
        ended = threading.Event()

        def consume() -> None:
            try:
                for _ in stream.stream(
                    batch.list_namespaced_job, namespace="default", timeout_seconds=30
                ):
                    pass
            finally:
                ended.set()

        consumer = threading.Thread(target=consume)
        consumer.start()
        wait_for(lambda: sim.server.open_watches == 2, what="two open watches")
        sim.close()
        consumer.join(timeout=10)
        assert ended.is_set()
        response.release_conn()
    assert _kubesim_threads() == threads_before
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert _server_side_sockets(port) == []
    assert _children() == children_before
    assert not Path(sim.kubeconfig_path).exists()
