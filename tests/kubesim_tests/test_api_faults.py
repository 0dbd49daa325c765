"""Fault injection (kubernetes-jobs.md §9.20) and authn/authz, seen through the official client."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.kubesim.errors import ApiError
from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import (
    Watch,
    authz_api,
    batch_api,
    body_of,
    core_api,
    job_manifest,
    pod_manifest,
    wait_for,
)
from tests.kubesim_tests.test_api_crud import raw


def test_429_with_retry_after_raises_on_writes(sim: Kubesim, batch: Any) -> None:
    sim.faults.fail_next(1, 429, retry_after=3)
    with pytest.raises(ApiException) as caught:
        batch.create_namespaced_job("default", job_manifest("j"))
    assert caught.value.status == 429
    assert caught.value.headers is not None
    assert caught.value.headers["Retry-After"] == "3"
    body = body_of(caught.value)
    assert body["reason"] == "TooManyRequests"
    assert body["message"] == "Too many requests, please try again later."
    assert body["details"] == {"retryAfterSeconds": 3}
    assert batch.list_namespaced_job("default").items == []  # the refused create had no effect
    batch.create_namespaced_job("default", job_manifest("j"))  # only the next one failed


def test_429_on_reads_is_retried_by_urllib3(sim: Kubesim, batch: Any) -> None:
    # Worth knowing (true against a real apiserver too): urllib3's default Retry honours
    # Retry-After on 429/503 for idempotent methods, so a GET sleeps and retries by itself.
    sim.faults.fail_next(1, 429, retry_after=1, methods="GET")
    started = time.monotonic()
    assert batch.list_namespaced_job("default").items == []
    assert time.monotonic() - started >= 1
    gets = [r for r in sim.server.requests if r.method == "GET" and r.path.endswith("/jobs")]
    assert len(gets) == 2


@pytest.mark.parametrize(("code", "reason"), [(500, "InternalError"), (503, "ServiceUnavailable")])
def test_5xx_only_on_matching_requests(sim: Kubesim, batch: Any, code: int, reason: str) -> None:
    sim.faults.fail_next(2, code, methods="POST", path_regex=r"/jobs$")
    batch.list_namespaced_job("default")  # GET does not match
    for _ in range(2):
        with pytest.raises(ApiException) as caught:
            batch.create_namespaced_job("default", job_manifest("j"))
        assert caught.value.status == code
        assert body_of(caught.value)["reason"] == reason
    # A faulted request had no effect; the third one goes through.
    assert batch.list_namespaced_job("default").items == []
    batch.create_namespaced_job("default", job_manifest("j"))


def test_delay_slows_responses_and_trips_client_timeouts(sim: Kubesim, batch: Any) -> None:
    sim.faults.delay(0.4, path_regex=r"/jobs")
    started = time.monotonic()
    batch.list_namespaced_job("default")
    assert time.monotonic() - started >= 0.4
    # urllib3 retries the read timeout (its default Retry) and then gives up.
    with pytest.raises(urllib3.exceptions.MaxRetryError) as caught:
        batch.list_namespaced_job("default", _request_timeout=0.1)
    assert isinstance(caught.value.reason, urllib3.exceptions.ReadTimeoutError)
    sim.faults.clear()
    started = time.monotonic()
    batch.list_namespaced_job("default")
    assert time.monotonic() - started < 0.4


def test_drop_watches_cuts_the_connection(sim: Kubesim, batch: Any) -> None:
    outcome: list[BaseException] = []

    def consume() -> None:
        try:
            for _ in Watch().stream(batch.list_namespaced_job, namespace="default"):
                pass
        except BaseException as exc:  # the point of the test is what is raised
            outcome.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        wait_for(lambda: sim.server.open_watches == 1, what="the watch to open")
        assert sim.faults.drop_watches() == 1
    finally:
        consumer.join(timeout=10)
    assert not consumer.is_alive()
    # No terminating chunk: the client sees a broken response, not a clean end.
    assert len(outcome) == 1
    assert isinstance(outcome[0], urllib3.exceptions.ProtocolError)


def test_wrong_token_is_401(sim: Kubesim, api: Any) -> None:
    # The kubeconfig loader installs a hook that re-reads the token before each call.
    api.configuration.refresh_api_key_hook = None
    api.configuration.api_key["BearerToken"] = "Bearer wrong"
    with pytest.raises(ApiException) as caught:
        core_api(api).list_namespace()
    assert caught.value.status == 401
    assert body_of(caught.value)["reason"] == "Unauthorized"


def test_rbac_deny_and_access_review(sim: Kubesim, api: Any) -> None:
    batch = batch_api(api)
    authz = authz_api(api)

    def allowed(verb: str, resource: str, group: str = "batch") -> bool:
        review = authz.create_self_subject_access_review(
            {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {
                    "resourceAttributes": {
                        "namespace": "default",
                        "verb": verb,
                        "group": group,
                        "resource": resource,
                    }
                },
            }
        )
        return bool(review.status.allowed)

    assert allowed("create", "jobs")
    sim.faults.deny("create", "jobs")
    assert not allowed("create", "jobs")
    assert allowed("list", "jobs")
    with pytest.raises(ApiException) as caught:
        batch.create_namespaced_job("default", job_manifest("j"))
    assert caught.value.status == 403
    body = body_of(caught.value)
    assert body["reason"] == "Forbidden"
    assert body["message"] == (
        'jobs.batch is forbidden: User "kubesim-admin" cannot create resource "jobs" in API '
        'group "batch" in the namespace "default"'
    )
    batch.list_namespaced_job("default")
    sim.faults.deny("get", "pods/log")
    code, body, _ = raw(api, "GET", "/api/v1/namespaces/default/pods/p/log")
    assert code == 403
    assert body["message"] == (
        'pods "p" is forbidden: User "kubesim-admin" cannot get resource "pods/log" in API '
        'group "" in the namespace "default"'
    )


def test_discovery_and_version(api: Any) -> None:
    version = client.VersionApi(api).get_code()
    assert (version.major, version.minor) == ("1", "33")
    groups = client.ApisApi(api).get_api_versions()
    assert {g.name for g in groups.groups} >= {"batch"}
    resources = batch_api(api).get_api_resources()
    assert {r.name for r in resources.resources} >= {"jobs", "jobs/status"}
    core = core_api(api).get_api_resources()
    assert {r.name for r in core.resources} >= {
        "pods",
        "pods/log",
        "secrets",
        "configmaps",
        "events",
        "namespaces",
    }


# --- logs: the server's half, with a stand-in kubelet ----------------------------------------


class _StubKubelet:
    """Plays the kubelet's ``read_log`` contract so the server's streaming can be tested alone."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.release = threading.Event()

    def read_log(self, namespace: str, pod: str, **options: Any) -> Iterator[bytes]:
        self.calls.append({"namespace": namespace, "pod": pod, **options})
        if options["container"] is None:
            raise ApiError(
                400,
                "BadRequest",
                f"a container name must be specified for pod {pod}, choose one of: [a b]",
            )
        return self._lines(options["follow"])

    def _lines(self, follow: bool) -> Iterator[bytes]:
        yield b"line 1\n"
        if follow:
            self.release.wait(10)
        yield b"line 2\n"


def test_logs_parameters_and_errors(sim: Kubesim, core: Any) -> None:
    kubelet = _StubKubelet()
    sim.kubelet = kubelet
    core.create_namespaced_pod("default", pod_manifest("p"))
    text = core.read_namespaced_pod_log(
        "p",
        "default",
        container="main",
        tail_lines=5,
        since_seconds=60,
        timestamps=True,
        limit_bytes=100,
    )
    assert text == "line 1\nline 2\n"
    assert kubelet.calls[-1] == {
        "namespace": "default",
        "pod": "p",
        "container": "main",
        "follow": False,
        "tail_lines": 5,
        "since_seconds": 60,
        "timestamps": True,
        "limit_bytes": 100,
        "previous": False,
    }
    with pytest.raises(ApiException) as caught:
        core.read_namespaced_pod_log("p", "default")
    assert caught.value.status == 400
    assert "a container name must be specified" in body_of(caught.value)["message"]
    with pytest.raises(ApiException) as caught:
        core.read_namespaced_pod_log("nope", "default", container="main")
    assert caught.value.status == 404
    with pytest.raises(ApiException) as caught:
        core.read_namespaced_pod_log("p", "default", container="main", tail_lines=-1)
    assert caught.value.status == 422


def test_logs_follow_streams_chunks_as_they_come(sim: Kubesim, core: Any) -> None:
    kubelet = _StubKubelet()
    sim.kubelet = kubelet
    core.create_namespaced_pod("default", pod_manifest("p"))
    response = core.read_namespaced_pod_log(
        "p", "default", container="main", follow=True, _preload_content=False
    )
    try:
        assert response.headers["Transfer-Encoding"] == "chunked"
        chunks = response.stream(64, decode_content=False)
        assert next(chunks) == b"line 1\n"  # delivered before the kubelet has more
        kubelet.release.set()
        assert b"".join(chunks) == b"line 2\n"
    finally:
        response.release_conn()


def test_watch_too_large_resource_version(sim: Kubesim, core: Any, batch: Any) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    sim.faults.watch_too_large_rv(2, path_regex=r"/pods$")
    # The raw answer: 200, one ERROR event with the watch cache's Status, the end.
    response = core.list_namespaced_pod(
        "default", watch=True, resource_version=rv, _preload_content=False
    )
    assert response.status == 200
    lines = [line for line in response.data.decode().splitlines() if line]
    assert [json.loads(line) for line in lines] == [
        {
            "type": "ERROR",
            "object": {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"Timeout: Too large resource version: {rv}, current: {int(rv) - 1}",
                "reason": "Timeout",
                "details": {
                    "causes": [
                        {
                            "reason": "ResourceVersionTooLarge",
                            "message": "Too large resource version",
                        }
                    ],
                    "retryAfterSeconds": 1,
                },
                "code": 504,
            },
        }
    ]
    # Through the client's Watch: the exception of the traces' "error" lines.
    with pytest.raises(ApiException) as caught:
        for _ in Watch().stream(core.list_namespaced_pod, "default", resource_version=rv):
            pass
    assert str(caught.value) == (
        f"(504)\nReason: Timeout: Timeout: Too large resource version: {rv}, "
        f"current: {int(rv) - 1}\n"
    )
    # Other paths were never affected, and the two faults are spent: the next watch works.
    batch.create_namespaced_job("default", job_manifest("after"))
    jobs = Watch().stream(
        batch.list_namespaced_job, "default", resource_version=rv, timeout_seconds=1
    )
    assert [e["object"].metadata.name for e in jobs] == ["after"]
    core.create_namespaced_pod("default", pod_manifest("p"))
    pods = Watch().stream(
        core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=1
    )
    assert [(e["type"], e["object"].metadata.name) for e in pods] == [("ADDED", "p")]


def _raw_watch(sim: Kubesim, path: str) -> socket.socket:
    """Send a watch request on a socket of our own, so the test decides when it closes."""
    sock = socket.create_connection((sim.server.host, sim.server.port), timeout=10)
    request = (
        f"GET {path}?watch=true HTTP/1.1\r\nHost: {sim.server.host}\r\n"
        f"Authorization: Bearer {sim.token}\r\n\r\n"
    )
    sock.sendall(request.encode())
    return sock


def test_delay_holds_a_watch_until_released(sim: Kubesim, batch: Any) -> None:
    hold = sim.faults.delay(60, path_regex=r"/jobs$", watch=True, count=1)
    assert batch.list_namespaced_job("default").items == []  # the client's connection is open
    before = sim.server.handler_threads
    sock = _raw_watch(sim, "/apis/batch/v1/namespaces/default/jobs")
    try:
        assert hold.wait_held(1)
        (handler,) = sim.server.handler_threads - before
        # Only the watch is held: a list of the same path is answered at once.
        assert batch.list_namespaced_job("default").items == []
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # not even the response headers
        assert sim.server.open_watches == 0
    finally:
        sock.close()  # the client gives up while the answer is held
    hold.release()
    wait_for(lambda: hold.held == 0, what="the held request to go on")
    assert hold.hits == 1
    # The server notices the closed client and ends that watch; nothing stays behind.
    handler.join(timeout=10)
    assert not handler.is_alive() and sim.server.open_watches == 0
    # count=1 is spent and released: later watches are not held.
    events = Watch().stream(batch.list_namespaced_job, "default", timeout_seconds=1)
    assert list(events) == []


def test_stopping_server_releases_held_requests(
    kubesim_factory: Callable[..., Kubesim],
) -> None:
    sim = kubesim_factory(controllers=False)
    hold = sim.faults.delay(120, watch=True)
    sock = _raw_watch(sim, "/api/v1/namespaces/default/pods")
    try:
        assert hold.wait_held(1)
        started = time.monotonic()
        sim.close()
        assert time.monotonic() - started < 10
        assert hold.held == 0
    finally:
        sock.close()
