"""``GET pods/NAME/log?follow=true`` with the process kubelet: lines arrive as the container
writes them, and the stream ends when the container does (what ``kubectl logs -f`` and
``k8s-executor logs -f`` rely on)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import wait_for
from tests.kubesim_tests.job_helpers import NS, phase, raw

# Prints, waits for a release file the test creates, prints again, exits with argv[2].
_WORKER = """
import os, sys, threading
print("before", flush=True)
while not os.path.exists(sys.argv[1]):
    threading.Event().wait(0.01)
print("after", flush=True)
sys.exit(int(sys.argv[2]))
"""


@pytest.fixture
def core(kubesim: Kubesim) -> Iterator[Any]:
    with kubesim.api_client() as api:
        yield client.CoreV1Api(api)


def _start(core: Any, name: str, release: Path, code: int = 0) -> None:
    container = {
        "name": "main",
        "image": "python:3.12-slim",
        "command": [sys.executable, "-c", _WORKER, str(release), str(code)],
    }
    core.create_namespaced_pod(
        NS,
        {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [container]}},
    )


def _log_so_far(core: Any, name: str) -> str | None:
    """The log without following, or None while the container has not started."""
    try:
        return str(core.read_namespaced_pod_log(name, NS))
    except ApiException as exc:
        if exc.status != 400:
            raise
        return None


def _open_follow(core: Any, name: str, **options: Any) -> Any:
    """The follow response, once the container has started (before, the API answers 400)."""

    def opened() -> Any:
        try:
            return core.read_namespaced_pod_log(
                name, NS, follow=True, _preload_content=False, _request_timeout=30, **options
            )
        except ApiException as exc:
            if exc.status != 400:  # 400: "... is waiting to start: ContainerCreating"
                raise
            return None

    return wait_for(opened, 15, f"{name} to start")


def _phase(core: Any, name: str) -> str:
    return phase(raw(core.read_namespaced_pod(name, NS, _preload_content=False)))


def test_follow_streams_lines_as_written_and_ends_with_the_container(
    core: Any, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    _start(core, "follow", release)
    response = _open_follow(core, "follow")
    try:
        assert response.headers["Transfer-Encoding"] == "chunked"
        chunks = response.stream(64)
        assert next(chunks) == b"before\n"  # delivered while the container still runs
        assert _phase(core, "follow") == "Running"
        release.touch()
        # The rest, then the end of the stream: the iteration stops by itself.
        assert b"".join(chunks) == b"after\n"
    finally:
        response.release_conn()
    wait_for(lambda: _phase(core, "follow") == "Succeeded", 15, "the pod to succeed")


def test_follow_a_finished_container_returns_everything(core: Any, tmp_path: Path) -> None:
    release = tmp_path / "release"
    release.touch()
    _start(core, "done", release, code=3)
    wait_for(lambda: _phase(core, "done") == "Failed", 15, "the pod to fail")
    response = core.read_namespaced_pod_log(
        "done", NS, follow=True, _preload_content=False, _request_timeout=30
    )
    try:
        assert response.data == b"before\nafter\n"
    finally:
        response.release_conn()


def test_follow_with_tail_then_new_lines(core: Any, tmp_path: Path) -> None:
    release = tmp_path / "release"
    _start(core, "tail", release)
    # "before" must be in the log before the follow opens, or it is a new line for tail 0.
    wait_for(lambda: _log_so_far(core, "tail") == "before\n", 20, "first line logged")
    response = _open_follow(core, "tail", tail_lines=0)
    try:
        chunks = response.stream(64)
        release.touch()
        assert b"".join(chunks) == b"after\n"  # tail 0: only what comes from now on
    finally:
        response.release_conn()


def test_follow_ends_when_the_pod_is_deleted(kubesim: Kubesim, core: Any, tmp_path: Path) -> None:
    release = tmp_path / "release"  # never created: the container runs until killed
    _start(core, "gone", release)
    response = _open_follow(core, "gone")
    try:
        chunks = response.stream(64)
        assert next(chunks) == b"before\n"
        core.delete_namespaced_pod("gone", NS, grace_period_seconds=0)
        assert b"".join(chunks) == b""
    finally:
        response.release_conn()
