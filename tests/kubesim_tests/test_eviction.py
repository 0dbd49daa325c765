"""The Eviction API (``pods/NAME/eviction``) through the official client; see the trace
evicted.jsonl: DisruptionTarget first, then the graceful delete, the process gets SIGTERM."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.kubesim.clock import FakeClock
from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import Watch, body_of, pod_manifest, wait_for
from tests.kubesim_tests.job_helpers import NS, condition, get_job, job_body, job_pods, phase, raw


def _eviction(name: str, **delete_options: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": NS},
    }
    if delete_options:
        body["deleteOptions"] = delete_options
    return body


def _evict(core: Any, name: str, **delete_options: Any) -> tuple[int, dict[str, Any]]:
    response = core.create_namespaced_pod_eviction(
        name, NS, _eviction(name, **delete_options), _preload_content=False
    )
    return response.status, json.loads(response.data)


def _target(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond["type"] == "DisruptionTarget":
            return dict(cond)
    return None


def _get(core: Any, name: str) -> dict[str, Any]:
    return raw(core.read_namespaced_pod(name, NS, _preload_content=False))


# --- the API alone (no kubelet: a pod bound to a node stays terminating) ---------------------


def test_eviction_marks_then_deletes_gracefully(sim: Kubesim, core: Any) -> None:
    core.create_namespaced_pod(NS, pod_manifest("p", node="kubesim-node"))
    events: list[dict[str, Any]] = []
    rv = core.list_namespaced_pod(NS).metadata.resource_version
    stop = threading.Event()

    def watch() -> None:
        stream = Watch()
        for event in stream.stream(
            core.list_namespaced_pod, NS, resource_version=rv, timeout_seconds=10
        ):
            events.append(event["raw_object"])
            if len(events) == 2 or stop.is_set():
                stream.stop()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        wait_for(lambda: sim.server.open_watches == 1, what="the watch")
        status, body = _evict(core, "p")
    finally:
        watcher.join(timeout=15)
        stop.set()
    assert status == 201
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    # As in evicted.jsonl: the condition comes first (no deletionTimestamp yet), then the delete.
    marked, deleting = events
    assert _target(marked) is not None and "deletionTimestamp" not in marked["metadata"]
    target = _target(deleting)
    assert target is not None
    assert (target["status"], target["reason"], target["message"]) == (
        "True",
        "EvictionByEvictionAPI",
        "Eviction API: evicting",
    )
    assert target["lastProbeTime"] is None and target["lastTransitionTime"]
    assert deleting["metadata"]["deletionTimestamp"]
    assert deleting["metadata"]["deletionGracePeriodSeconds"] == 30


def test_eviction_honours_delete_options(sim: Kubesim, core: Any) -> None:
    core.create_namespaced_pod(NS, pod_manifest("now", node="kubesim-node"))
    assert _evict(core, "now", gracePeriodSeconds=0)[0] == 201
    assert [p.metadata.name for p in core.list_namespaced_pod(NS).items] == []
    # A failed precondition is a 409 and leaves the pod untouched (no condition either).
    core.create_namespaced_pod(NS, pod_manifest("pre", node="kubesim-node"))
    with pytest.raises(ApiException) as caught:
        _evict(core, "pre", preconditions={"uid": "not-the-uid"})
    assert caught.value.status == 409
    assert body_of(caught.value)["message"] == (
        'Operation cannot be fulfilled on Pod "pre": the UID in the precondition (not-the-uid) '
        "does not match the UID in record ("
        + _get(core, "pre")["metadata"]["uid"]
        + "). The object might have been deleted and then recreated"
    )
    pod = _get(core, "pre")
    assert _target(pod) is None and "deletionTimestamp" not in pod["metadata"]
    # A matching resourceVersion precondition holds although the condition write moves it on.
    rv = pod["metadata"]["resourceVersion"]
    assert _evict(core, "pre", preconditions={"resourceVersion": rv}, gracePeriodSeconds=5)[0] == (
        201
    )
    assert _get(core, "pre")["metadata"]["deletionGracePeriodSeconds"] == 5
    # Dry run: the answer of a real eviction, no change.
    core.create_namespaced_pod(NS, pod_manifest("dry", node="kubesim-node"))
    assert _evict(core, "dry", dryRun=["All"])[0] == 201
    pod = _get(core, "dry")
    assert _target(pod) is None and "deletionTimestamp" not in pod["metadata"]


def test_eviction_errors(sim: Kubesim, core: Any, api: Any) -> None:
    with pytest.raises(ApiException) as caught:
        _evict(core, "missing")
    assert caught.value.status == 404
    assert body_of(caught.value)["message"] == 'pods "missing" not found'
    core.create_namespaced_pod(NS, pod_manifest("p"))
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_pod_eviction("p", NS, _eviction("other"))
    assert caught.value.status == 400
    assert body_of(caught.value)["message"] == "name in URL does not match name in Eviction object"
    # Only create exists on the subresource.
    url = f"{api.configuration.host}/api/v1/namespaces/{NS}/pods/p/eviction"
    assert api.call_api("GET", url).status == 405
    # RBAC: the subresource is authorised on its own.
    sim.faults.deny("create", "pods/eviction")
    with pytest.raises(ApiException) as caught:
        _evict(core, "p")
    assert caught.value.status == 403
    sim.faults.clear()
    # A pod not bound to a node goes at once.
    assert _evict(core, "p")[0] == 201
    assert core.list_namespaced_pod(NS).items == []


def test_discovery_lists_the_eviction_subresource(core: Any) -> None:
    resources = {r.name: r for r in core.get_api_resources().resources}
    eviction = resources["pods/eviction"]
    assert (eviction.group, eviction.version, eviction.kind) == ("policy", "v1", "Eviction")
    assert eviction.verbs == ["create"]


# --- with the kubelet and the Job controller -------------------------------------------------


@pytest.fixture
def live(kubesim_factory: Any) -> Iterator[tuple[Any, Any, FakeClock]]:
    clock = FakeClock()
    sim = kubesim_factory(clock=clock)
    with sim.api_client() as api:
        yield client.BatchV1Api(api), client.CoreV1Api(api), clock


def test_evicted_job_pod_gets_sigterm_and_is_not_counted(live: Any, tmp_path: Any) -> None:
    batch, core, clock = live
    ready = tmp_path / "ready"
    # The trace's scenario: a SIGTERM handler exiting 143, podFailurePolicy Ignore on
    # DisruptionTarget, backoffLimitPerIndex 0.
    code = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    rules = [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]
    body = job_body("ev", code, backoffLimitPerIndex=0, podFailurePolicy={"rules": rules})
    batch.create_namespaced_job(NS, body)
    job = get_job(batch, "ev")
    wait_for(ready.exists, 15, "the handler installed")
    pod = next(p for p in job_pods(core, job) if phase(p) == "Running")
    name = pod["metadata"]["name"]
    assert _evict(core, name)[0] == 201

    def evicted() -> dict[str, Any] | None:
        found = [p for p in job_pods(core, job) if p["metadata"]["name"] == name]
        return found[0] if found and phase(found[0]) == "Failed" else None

    gone = wait_for(evicted, 15, "the evicted pod Failed")
    term = gone["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 143
    assert _target(gone) is not None
    # Once the controller has accounted for it (it keeps the pod until the index's replacement
    # is due, 10 s of pod-failure backoff, then drops its finalizer and the pod goes): ignored
    # by the pod failure policy, no failure counted, no failed index.

    def accounted() -> bool:
        if name in {p["metadata"]["name"] for p in job_pods(core, job)}:
            clock.advance(2)
            return False
        return True

    wait_for(accounted, 15, "the evicted pod accounted for and removed")
    status = get_job(batch, "ev")["status"]
    assert "failed" not in status and status.get("failedIndexes", "") == ""
    assert condition(get_job(batch, "ev"), "Failed") is None
