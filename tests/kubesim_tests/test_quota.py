"""ResourceQuota through the official client: CRUD, status kept by the quota controller, the
quota admission's refusals (the trace quota-refused.jsonl) and the Job controller's retries."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim.quota import Quantity
from tests.kubesim_tests.conftest import Watch, body_of, wait_for
from tests.kubesim_tests.job_helpers import NS, get_job, job_body, job_pods, phase, raw


@pytest.fixture
def apis(kubesim: Kubesim) -> Iterator[tuple[Any, Any, Kubesim]]:
    with kubesim.api_client() as api:
        yield client.CoreV1Api(api), client.BatchV1Api(api), kubesim


def _quota(name: str, **hard: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"hard": hard}}


def _status(core: Any, name: str) -> dict[str, Any]:
    status: dict[str, Any] = raw(
        core.read_namespaced_resource_quota(name, NS, _preload_content=False)
    ).get("status", {})
    return status


def _in_force(core: Any, name: str) -> dict[str, Any]:
    """Wait until the quota controller has filled the status (before, nothing is enforced)."""
    found: dict[str, Any] = wait_for(
        lambda: (s := _status(core, name)).get("used") is not None and s, 10, f"quota {name}"
    )
    return found


def _pod(name: str, code: str = "pass", **resources: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "python:3.12-slim",
        "command": [sys.executable, "-c", code],
    }
    if resources:
        container["resources"] = resources
    return {
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container]},
    }


def _refused(call: Any, *args: Any) -> str:
    with pytest.raises(ApiException) as caught:
        call(*args)
    assert caught.value.status == 403
    body = body_of(caught.value)
    assert body["reason"] == "Forbidden"
    message: str = body["message"]
    return message


def test_quantities_print_in_canonical_form() -> None:
    cases = {"500m": "500m", "0.5": "500m", "1000m": "1", "2000": "2k", "1.5Gi": "1536Mi"}
    for text, canonical in cases.items():
        assert str(Quantity.parse(text)) == canonical
    assert str(Quantity.parse("64Mi") + Quantity.parse("64Mi")) == "128Mi"
    # A zero takes the other's format (Go's Quantity.Add): a quota's used "0" charged 512Mi
    # is 512Mi at once, as the controller's recompute later prints it (CI saw 536870912).
    assert str(Quantity.parse("0") + Quantity.parse("512Mi")) == "512Mi"
    assert str(Quantity.parse("1") + Quantity.parse("1Ki")) == "1025"
    with pytest.raises(ValueError):
        Quantity.parse("lots")


def test_crud_list_watch_and_status(apis: Any) -> None:
    core, _, _ = apis
    created = raw(
        core.create_namespaced_resource_quota(
            NS, _quota("q", pods="2", **{"requests.cpu": "1000m"}), _preload_content=False
        )
    )
    # Quantities are stored canonical; the status is the controller's to fill.
    assert created["spec"]["hard"] == {"pods": "2", "requests.cpu": "1"}
    assert created["status"] == {}
    status = _in_force(core, "q")
    assert status == {
        "hard": {"pods": "2", "requests.cpu": "1"},
        "used": {"pods": "0", "requests.cpu": "0"},
    }
    assert [q.metadata.name for q in core.list_namespaced_resource_quota(NS).items] == ["q"]
    assert [q.metadata.name for q in core.list_resource_quota_for_all_namespaces().items] == ["q"]
    rv = core.list_namespaced_resource_quota(NS).metadata.resource_version
    core.patch_namespaced_resource_quota("q", NS, {"spec": {"hard": {"pods": "3"}}})
    seen = []
    for event in Watch().stream(
        core.list_namespaced_resource_quota, NS, resource_version=rv, timeout_seconds=5
    ):
        seen.append(event["raw_object"])
        if event["raw_object"].get("status", {}).get("hard", {}).get("pods") == "3":
            break
    assert seen[0]["spec"]["hard"]["pods"] == "3"
    assert seen[-1]["status"]["hard"] == {"pods": "3", "requests.cpu": "1"}
    # The status subresource.
    current = raw(core.read_namespaced_resource_quota_status("q", NS, _preload_content=False))
    assert current["status"]["hard"]["pods"] == "3"
    # kubectl's table.
    table = raw(
        core.list_namespaced_resource_quota(
            NS,
            _preload_content=False,
            _headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        )
    )
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Age", "Request", "Limit"]
    assert table["rows"][0]["cells"][2] == "pods: 0/3, requests.cpu: 0/1"
    core.delete_namespaced_resource_quota("q", NS)
    assert core.list_namespaced_resource_quota(NS).items == []


def test_quota_validation(apis: Any) -> None:
    core, _, _ = apis
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_resource_quota(NS, _quota("neg", pods="-1"))
    assert caught.value.status == 422
    assert body_of(caught.value)["message"] == (
        'ResourceQuota "neg" is invalid: spec.hard[pods]: Invalid value: "-1": '
        "must be greater than or equal to 0"
    )
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_resource_quota(NS, _quota("bad", pods="lots"))
    assert caught.value.status == 400
    assert "quantities must match the regular expression" in body_of(caught.value)["message"]


def test_pods_quota_refuses_and_frees_on_termination(apis: Any, tmp_path: Any) -> None:
    core, _, _ = apis
    core.create_namespaced_resource_quota(NS, _quota("tight", pods="1"))
    _in_force(core, "tight")
    gate = tmp_path / "go"
    code = f"import os,time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
    core.create_namespaced_pod(NS, _pod("first", code))
    # Charged at admission: the status counts the pod at once.
    assert _status(core, "tight")["used"] == {"pods": "1"}
    message = _refused(core.create_namespaced_pod, NS, _pod("second"))
    assert message == (
        'pods "second" is forbidden: exceeded quota: tight, requested: pods=1, used: pods=1, '
        "limited: pods=1"
    )
    # generateName: the name in the message is the generated one (the store names before
    # admission), as in the trace's FailedCreate events.
    named = _pod("x")
    named["metadata"] = {"generateName": "gen-"}
    message = _refused(core.create_namespaced_pod, NS, named)
    assert message.startswith('pods "gen-') and '" is forbidden: exceeded quota: tight' in message
    assert len(message.split('"')[1]) == len("gen-") + 5
    # A terminal pod no longer counts.
    gate.write_text("")
    wait_for(
        lambda: (
            phase(raw(core.read_namespaced_pod("first", NS, _preload_content=False))) == "Succeeded"
        ),
        15,
        "first Succeeded",
    )
    wait_for(lambda: _status(core, "tight")["used"] == {"pods": "0"}, 10, "pods freed")
    core.create_namespaced_pod(NS, _pod("second"))


def test_compute_quota_must_specify_and_sums(apis: Any) -> None:
    core, _, _ = apis
    hard = {"requests.cpu": "1", "limits.memory": "1Gi"}
    core.create_namespaced_resource_quota(NS, _quota("compute", **hard))
    _in_force(core, "compute")
    message = _refused(core.create_namespaced_pod, NS, _pod("bare"))
    assert message == (
        'pods "bare" is forbidden: failed quota: compute: must specify limits.memory for: main; '
        "requests.cpu for: main"
    )
    sized: dict[str, Any] = {"requests": {"cpu": "600m"}, "limits": {"memory": "512Mi"}}
    core.create_namespaced_pod(NS, _pod("a", "import time; time.sleep(30)", **sized))
    assert _status(core, "compute")["used"] == {"limits.memory": "512Mi", "requests.cpu": "600m"}
    message = _refused(core.create_namespaced_pod, NS, _pod("b", **sized))
    assert message == (
        'pods "b" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, '
        "used: requests.cpu=600m, limited: requests.cpu=1"
    )
    # Requests default to limits: a pod with limits only names both.
    small: dict[str, Any] = {"limits": {"cpu": "400m", "memory": "512Mi"}}
    core.create_namespaced_pod(NS, _pod("c", **small))
    assert _status(core, "compute")["used"]["limits.memory"] == "1Gi"


def test_job_count_quota(apis: Any) -> None:
    core, batch, _ = apis
    core.create_namespaced_resource_quota(NS, _quota("jobs", **{"count/jobs.batch": "1"}))
    _in_force(core, "jobs")
    batch.create_namespaced_job(NS, job_body("j1"))
    message = _refused(batch.create_namespaced_job, NS, job_body("j2"))
    assert message == (
        'jobs.batch "j2" is forbidden: exceeded quota: jobs, requested: count/jobs.batch=1, '
        "used: count/jobs.batch=1, limited: count/jobs.batch=1"
    )
    # Finished Jobs still count (object count); a deleted one does not.
    batch.delete_namespaced_job("j1", NS, propagation_policy="Background")
    wait_for(lambda: _status(core, "jobs")["used"] == {"count/jobs.batch": "0"}, 10, "freed")
    batch.create_namespaced_job(NS, job_body("j2"))


def test_job_in_a_zero_pod_namespace_never_gets_a_pod(apis: Any) -> None:
    core, batch, sim = apis
    core.create_namespaced_resource_quota(NS, _quota("tight", pods="0"))
    _in_force(core, "tight")
    job = raw(batch.create_namespaced_job(NS, job_body("qr"), _preload_content=False))
    # The controller fails to create the pod and retries with its API back-off (1 s, 2 s, ...).
    key = (NS, "qr")
    wait_for(lambda: sim.controller._create_failures.get(key, 0) >= 2, 10, "two refusals")
    assert job_pods(core, job) == []
    assert get_job(batch, "qr")["status"].get("active") is None
    # Raising the quota lets the next retry through.
    core.patch_namespaced_resource_quota("tight", NS, {"spec": {"hard": {"pods": "1"}}})
    wait_for(lambda: job_pods(core, job), 15, "a pod once the quota allows it")
    wait_for(lambda: key not in sim.controller._create_failures, 5, "the back-off reset")
