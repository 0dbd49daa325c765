"""Watch semantics (kubernetes-jobs.md §6, §9.18), observed through the official client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import Watch, batch_api, job_manifest, pod_manifest, wait_for


def _events(func: Callable[..., Any], **kwargs: Any) -> list[dict[str, Any]]:
    """All events of one bounded watch (``timeout_seconds`` makes the server end it)."""
    kwargs.setdefault("timeout_seconds", 1)
    return list(Watch().stream(func, **kwargs))


def _summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [
        (e["type"], e["raw_object"]["metadata"].get("name", ""))
        for e in events
        if e["type"] != "BOOKMARK"
    ]


def test_watch_from_list_rv_gets_only_later_events_in_order(batch: Any) -> None:
    batch.create_namespaced_job("default", job_manifest("before"))
    rv = batch.list_namespaced_job("default").metadata.resource_version
    batch.create_namespaced_job("default", job_manifest("after"))
    batch.patch_namespaced_job("after", "default", {"metadata": {"labels": {"x": "1"}}})
    batch.delete_namespaced_job("after", "default", propagation_policy="Background")
    events = _events(batch.list_namespaced_job, namespace="default", resource_version=rv)
    assert _summary(events) == [("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "after")]
    versions = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)
    assert versions[0] > int(rv)


@pytest.mark.parametrize("rv", [None, "0"])
def test_watch_without_rv_starts_with_synthetic_added(batch: Any, rv: str | None) -> None:
    batch.create_namespaced_job("default", job_manifest("a"))
    batch.create_namespaced_job("default", job_manifest("b"))
    kwargs = {"resource_version": rv} if rv is not None else {}
    events = _events(batch.list_namespaced_job, namespace="default", **kwargs)
    assert _summary(events) == [("ADDED", "a"), ("ADDED", "b")]


def test_watch_is_namespaced(core: Any, batch: Any) -> None:
    core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    rv = batch.list_namespaced_job("default").metadata.resource_version
    batch.create_namespaced_job("other", job_manifest("elsewhere"))
    batch.create_namespaced_job("default", job_manifest("here"))
    events = _events(batch.list_namespaced_job, namespace="default", resource_version=rv)
    assert _summary(events) == [("ADDED", "here")]
    everywhere = _events(batch.list_job_for_all_namespaces, resource_version=rv)
    assert _summary(everywhere) == [("ADDED", "elsewhere"), ("ADDED", "here")]


def test_bookmarks_only_when_requested(batch: Any) -> None:
    # The fixture's kubesim sends a bookmark after 0.2 s of idle.
    rv = batch.list_namespaced_job("default").metadata.resource_version
    stream = Watch()
    events = list(
        stream.stream(
            batch.list_namespaced_job,
            namespace="default",
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=1,
        )
    )
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks
    assert bookmarks[0]["raw_object"] == {
        "kind": "Job",
        "apiVersion": "batch/v1",
        "metadata": {"resourceVersion": rv, "creationTimestamp": None},
    }
    assert stream.resource_version == rv
    plain = _events(batch.list_namespaced_job, namespace="default", resource_version=rv)
    assert plain == []


def test_timeout_seconds_ends_the_stream(batch: Any) -> None:
    started = time.monotonic()
    _events(batch.list_namespaced_job, namespace="default", timeout_seconds=1)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 3


def test_compacted_rv_gives_200_then_error_410(sim: Kubesim, batch: Any) -> None:
    old_rv = batch.list_namespaced_job("default").metadata.resource_version
    batch.create_namespaced_job("default", job_manifest("a"))
    sim.faults.compact()
    response = batch.list_namespaced_job(
        "default", watch=True, resource_version=old_rv, _preload_content=False
    )
    try:
        assert response.status == 200
        lines = [line for line in response.read().decode().splitlines() if line]
    finally:
        response.release_conn()
    assert len(lines) == 1
    import json

    event = json.loads(lines[0])
    assert event["type"] == "ERROR"
    status = event["object"]
    assert status["kind"] == "Status"
    assert status["code"] == 410
    assert status["reason"] == "Expired"
    assert status["message"].startswith(f"too old resource version: {old_rv} (")


def test_client_raises_410_then_relist_recovers(sim: Kubesim, batch: Any) -> None:
    old_rv = batch.list_namespaced_job("default").metadata.resource_version
    sim.faults.compact()
    # Without timeout_seconds the client retries once with the same RV, then raises.
    with pytest.raises(ApiException) as caught:
        list(
            Watch().stream(batch.list_namespaced_job, namespace="default", resource_version=old_rv)
        )
    assert caught.value.status == 410
    assert "Expired: too old resource version" in caught.value.reason
    watch_requests = [r for r in sim.server.requests if r.query.get("watch") == "true"]
    assert [r.query.get("resourceVersion") for r in watch_requests] == [old_rv, old_rv]
    # The relist path: a fresh list gives an RV that can be watched.
    fresh = batch.list_namespaced_job("default").metadata.resource_version
    batch.create_namespaced_job("default", job_manifest("after"))
    events = _events(batch.list_namespaced_job, namespace="default", resource_version=fresh)
    assert _summary(events) == [("ADDED", "after")]


def test_history_window_expires_old_versions(kubesim_factory: Callable[..., Kubesim]) -> None:
    sim = kubesim_factory(controllers=False, history_events=3)
    with sim.api_client() as api:
        batch = batch_api(api)
        old_rv = batch.list_namespaced_job("default").metadata.resource_version
        for n in range(5):
            batch.create_namespaced_job("default", job_manifest(f"j{n}"))
        with pytest.raises(ApiException) as caught:
            _events(batch.list_namespaced_job, namespace="default", resource_version=old_rv)
        assert caught.value.status == 410


def test_client_resumes_from_last_rv_when_server_closes(
    kubesim_factory: Callable[..., Kubesim],
) -> None:
    # The server ends each watch after 0.3 s; the client re-watches from the last RV it saw,
    # so nothing is lost or repeated across reconnects.
    sim = kubesim_factory(controllers=False, watch_max_seconds=0.3)
    with sim.api_client() as api:
        batch = batch_api(api)
        rv = batch.list_namespaced_job("default").metadata.resource_version
        stream = Watch()
        seen: list[str] = []

        def watches() -> int:
            return len([r for r in sim.server.requests if r.query.get("watch") == "true"])

        def consume() -> None:
            for event in stream.stream(
                batch.list_namespaced_job, namespace="default", resource_version=rv
            ):
                seen.append(event["raw_object"]["metadata"]["name"])
                if seen[-1] == "last":
                    stream.stop()

        consumer = threading.Thread(target=consume)
        consumer.start()
        try:
            for n in range(4):
                batch.create_namespaced_job("default", job_manifest(f"j{n}"))
                count = watches()
                # Let at least one server-side close happen between creates.
                wait_for(lambda c=count: watches() > c, what="a re-watch")  # type: ignore[misc]
            batch.create_namespaced_job("default", job_manifest("last"))
        finally:
            consumer.join(timeout=10)
        assert seen == ["j0", "j1", "j2", "j3", "last"]
        resumed = [
            r.query.get("resourceVersion")
            for r in sim.server.requests
            if r.query.get("watch") == "true"
        ]
        assert resumed[0] == rv
        assert len(set(resumed)) > 1  # later watches resumed from newer RVs


def test_label_selector_watch_sends_deleted_when_object_leaves(batch: Any) -> None:
    batch.create_namespaced_job("default", job_manifest("j"))
    rv = batch.list_namespaced_job("default").metadata.resource_version
    batch.patch_namespaced_job("j", "default", {"metadata": {"labels": {"team": "a"}}})
    batch.patch_namespaced_job("j", "default", {"metadata": {"labels": {"extra": "1"}}})
    leave = batch.patch_namespaced_job("j", "default", {"metadata": {"labels": {"team": "b"}}})
    events = _events(
        batch.list_namespaced_job, namespace="default", resource_version=rv, label_selector="team=a"
    )
    assert _summary(events) == [("ADDED", "j"), ("MODIFIED", "j"), ("DELETED", "j")]
    gone = events[-1]["raw_object"]
    # The DELETED event carries the last matching state with the new resourceVersion.
    assert gone["metadata"]["labels"]["team"] == "a"
    assert gone["metadata"]["resourceVersion"] == leave.metadata.resource_version


def test_field_selector_watch_on_pod_phase(sim: Kubesim, core: Any) -> None:
    core.create_namespaced_pod("default", pod_manifest("p", node="kubesim-node"))
    rv = core.list_namespaced_pod("default").metadata.resource_version
    sim.store.mutate("pods", "default", "p", lambda p: p["status"].update(phase="Running"))
    sim.store.mutate("pods", "default", "p", lambda p: p["status"].update(phase="Succeeded"))
    events = _events(
        core.list_namespaced_pod,
        namespace="default",
        resource_version=rv,
        field_selector="status.phase=Running",
    )
    assert _summary(events) == [("ADDED", "p"), ("DELETED", "p")]


def test_watch_with_unsupported_field_selector_is_400(batch: Any) -> None:
    with pytest.raises(ApiException) as caught:
        _events(batch.list_namespaced_job, namespace="default", field_selector="spec.x=1")
    assert caught.value.status == 400


def test_live_events_arrive_while_watching(batch: Any) -> None:
    rv = batch.list_namespaced_job("default").metadata.resource_version
    stream = Watch()
    received: list[str] = []

    def consume() -> None:
        for event in stream.stream(
            batch.list_namespaced_job, namespace="default", resource_version=rv, timeout_seconds=10
        ):
            received.append(event["type"])
            if event["type"] == "DELETED":
                stream.stop()

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        batch.create_namespaced_job("default", job_manifest("live"))
        wait_for(lambda: received == ["ADDED"], what="ADDED")
        batch.delete_namespaced_job("live", "default", propagation_policy="Background")
    finally:
        consumer.join(timeout=10)
    assert received == ["ADDED", "DELETED"]
