"""The minimal Kueue through the official client: the CRDs served (discovery, CRUD, status),
queued Jobs suspended then admitted with the flavor's node labels, inadmissible Workloads,
preemption by priority with requeue and readmission, and a parallelism change."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import body_of, wait_for
from tests.kubesim_tests.job_helpers import NS, get_job, job_body, job_pods, phase

G, V = "kueue.x-k8s.io", "v1beta1"


@pytest.fixture
def apis(kubesim: Kubesim) -> Iterator[tuple[Any, Any, Any]]:
    with kubesim.api_client() as api:
        yield client.CoreV1Api(api), client.BatchV1Api(api), client.CustomObjectsApi(api)


def _setup(crd: Any, cpu: str = "2", preemption: str = "Never") -> None:
    crd.create_cluster_custom_object(
        G,
        V,
        "resourceflavors",
        {
            "apiVersion": f"{G}/{V}",
            "kind": "ResourceFlavor",
            "metadata": {"name": "default-flavor"},
            "spec": {"nodeLabels": {"kubernetes.io/arch": "amd64"}},
        },
    )
    crd.create_cluster_custom_object(
        G,
        V,
        "clusterqueues",
        {
            "apiVersion": f"{G}/{V}",
            "kind": "ClusterQueue",
            "metadata": {"name": "cq"},
            "spec": {
                "namespaceSelector": {},
                "preemption": {"withinClusterQueue": preemption},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu"],
                        "flavors": [
                            {
                                "name": "default-flavor",
                                "resources": [{"name": "cpu", "nominalQuota": cpu}],
                            }
                        ],
                    }
                ],
            },
        },
    )
    crd.create_namespaced_custom_object(
        G,
        V,
        NS,
        "localqueues",
        {
            "apiVersion": f"{G}/{V}",
            "kind": "LocalQueue",
            "metadata": {"name": "team-a"},
            "spec": {"clusterQueue": "cq"},
        },
    )


def _job(
    name: str, cpu: str, code: str = "pass", queue: str = "team-a", **spec: Any
) -> dict[str, Any]:
    body = job_body(
        name, code, grace=1, container={"resources": {"requests": {"cpu": cpu}}}, **spec
    )
    body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": queue}
    return body


def _workload(crd: Any, job: str) -> dict[str, Any]:
    def find() -> Any:
        items = crd.list_namespaced_custom_object(G, V, NS, "workloads")["items"]
        return next((w for w in items if w["metadata"]["ownerReferences"][0]["name"] == job), None)

    found: dict[str, Any] = wait_for(find, 10, f"workload of {job}")
    return found


def _cond(wl: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in wl.get("status", {}).get("conditions", []) if c["type"] == kind), {})


def _wait_cond(crd: Any, job: str, kind: str, status: str = "True") -> dict[str, Any]:
    def check() -> Any:
        wl = _workload(crd, job)
        return wl if _cond(wl, kind).get("status") == status else None

    found: dict[str, Any] = wait_for(check, 15, f"{kind}={status} on {job}")
    return found


def test_kueue_kinds_are_served_with_discovery_and_status(
    kubesim: Kubesim, apis: tuple[Any, Any, Any]
) -> None:
    _, _, crd = apis
    with kubesim.api_client() as api:
        groups = client.ApisApi(api).get_api_versions().groups
        assert any(
            g.name == G and g.preferred_version is not None and g.preferred_version.version == V
            for g in groups
        )
        names = {r.name for r in client.CustomObjectsApi(api).get_api_resources(G, V).resources}
    assert {
        "clusterqueues",
        "clusterqueues/status",
        "localqueues",
        "workloads",
        "resourceflavors",
        "workloadpriorityclasses",
    } <= names
    _setup(crd)
    cq = wait_for(
        lambda: (
            (q := crd.get_cluster_custom_object(G, V, "clusterqueues", "cq")).get("status") and q
        ),
        10,
        "cq status",
    )
    assert _cond(cq, "Active") | {"lastTransitionTime": None} == {
        "type": "Active",
        "status": "True",
        "reason": "Ready",
        "message": "Can admit new workloads",
        "lastTransitionTime": None,
        "observedGeneration": 1,
    }
    lq = wait_for(
        lambda: (
            (q := crd.get_namespaced_custom_object(G, V, NS, "localqueues", "team-a")).get("status")
            and q
        ),
        10,
        "lq status",
    )
    assert _cond(lq, "Active")["message"] == "Can submit new workloads to localQueue"
    with pytest.raises(ApiException) as caught:
        crd.create_namespaced_custom_object(
            G,
            V,
            NS,
            "localqueues",
            {
                "apiVersion": f"{G}/{V}",
                "kind": "LocalQueue",
                "metadata": {"name": "bad"},
                "spec": {},
            },
        )
    assert caught.value.status == 422
    assert (
        body_of(caught.value)["message"]
        == 'LocalQueue.kueue.x-k8s.io "bad" is invalid: spec.clusterQueue: Required value'
    )
    crd.delete_namespaced_custom_object(G, V, NS, "localqueues", "team-a")
    with pytest.raises(ApiException) as gone:
        crd.get_namespaced_custom_object(G, V, NS, "localqueues", "team-a")
    assert gone.value.status == 404


def test_queued_job_is_suspended_then_admitted_with_the_flavor_labels(
    apis: tuple[Any, Any, Any],
) -> None:
    core, batch, crd = apis
    _setup(crd)
    created = batch.create_namespaced_job(NS, _job("q1", "1"))
    assert created.spec.suspend is True  # Kueue's webhook
    wl = _wait_cond(crd, "q1", "Admitted")
    assert (
        wl["metadata"]["name"].startswith("job-q1-")
        and len(wl["metadata"]["name"]) == len("job-q1-") + 5
    )
    assert wl["spec"]["podSets"][0]["name"] == "main" and wl["spec"]["podSets"][0]["count"] == 1
    assert wl["status"]["admission"]["clusterQueue"] == "cq"
    assert wl["status"]["admission"]["podSetAssignments"][0]["flavors"] == {"cpu": "default-flavor"}
    assert _cond(wl, "QuotaReserved")["message"] == "Quota reserved in ClusterQueue cq"
    assert _cond(wl, "Admitted")["message"] == "The workload is admitted"
    job = wait_for(
        lambda: (j := get_job(batch, "q1")).get("status", {}).get("succeeded") and j, 20, "q1 done"
    )
    assert job["spec"]["suspend"] is False
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    finished = _wait_cond(crd, "q1", "Finished")
    assert _cond(finished, "Finished")["reason"] == "Succeeded"
    reasons = {
        e.reason
        for e in core.list_namespaced_event(NS, field_selector="involvedObject.name=q1").items
    }
    assert {"CreatedWorkload", "Started"} <= reasons


def test_missing_local_queue_and_too_large_workloads_are_inadmissible(
    apis: tuple[Any, Any, Any],
) -> None:
    _, batch, crd = apis
    _setup(crd)
    batch.create_namespaced_job(NS, _job("lost", "1", queue="team-b"))
    wl = _wait_cond(crd, "lost", "QuotaReserved", "False")
    assert (_cond(wl, "QuotaReserved")["reason"], _cond(wl, "QuotaReserved")["message"]) == (
        "Inadmissible",
        "LocalQueue team-b doesn't exist",
    )
    batch.create_namespaced_job(NS, _job("huge", "4"))
    wl = _wait_cond(crd, "huge", "QuotaReserved", "False")
    assert _cond(wl, "QuotaReserved")["reason"] == "Pending"
    assert _cond(wl, "QuotaReserved")["message"] == (
        "couldn't assign flavors to pod set main: insufficient quota for cpu in flavor "
        "default-flavor, request > maximum capacity (4 > 2)"
    )
    assert get_job(batch, "huge")["spec"]["suspend"] is True


def test_higher_priority_preempts_and_the_victim_is_readmitted(
    kubesim: Kubesim, apis: tuple[Any, Any, Any]
) -> None:
    core, batch, crd = apis
    _setup(crd, cpu="2", preemption="LowerPriority")
    crd.create_cluster_custom_object(
        G,
        V,
        "workloadpriorityclasses",
        {
            "apiVersion": f"{G}/{V}",
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": "high"},
            "value": 1000,
        },
    )
    batch.create_namespaced_job(NS, _job("low", "2", "import time; time.sleep(60)"))
    _wait_cond(crd, "low", "Admitted")
    wait_for(
        lambda: [p for p in job_pods(core, "low", batch) if phase(p) == "Running"],
        20,
        "low running",
    )
    urgent = _job("urgent", "2")
    urgent["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] = "high"
    batch.create_namespaced_job(NS, urgent)
    victim = _wait_cond(crd, "low", "Evicted")
    preemptor = _workload(crd, "urgent")
    assert preemptor["spec"]["priority"] == 1000
    message = (
        f"Preempted to accommodate a workload (UID: {preemptor['metadata']['uid']}, JobUID: "
        f"{preemptor['metadata']['labels']['kueue.x-k8s.io/job-uid']}) due to prioritization "
        "in the ClusterQueue"
    )
    assert (_cond(victim, "Evicted")["reason"], _cond(victim, "Evicted")["message"]) == (
        "Preempted",
        message,
    )
    assert _cond(victim, "Preempted")["reason"] == "InClusterQueue"
    requeued = _wait_cond(crd, "low", "Requeued")
    assert (
        _cond(requeued, "QuotaReserved")["status"],
        _cond(requeued, "QuotaReserved")["reason"],
    ) == ("False", "Pending")
    assert get_job(batch, "low")["spec"]["suspend"] is True
    _wait_cond(crd, "urgent", "Finished")
    readmitted = _wait_cond(crd, "low", "Admitted")
    assert _cond(readmitted, "Evicted")["status"] == "False"
    assert _cond(readmitted, "Evicted")["message"] == "Previously: " + message
    wait_for(lambda: get_job(batch, "low")["spec"]["suspend"] is False, 10, "low resumed")


def test_parallelism_change_of_a_running_job_requeues_a_new_workload(
    kubesim: Kubesim, apis: tuple[Any, Any, Any]
) -> None:
    core, batch, crd = apis
    _setup(crd, cpu="2")
    batch.create_namespaced_job(
        NS, _job("grow", "1", "import time; time.sleep(60)", completions=4, parallelism=1)
    )
    first = _wait_cond(crd, "grow", "Admitted")
    batch.patch_namespaced_job("grow", NS, {"spec": {"parallelism": 3}})

    def replaced() -> Any:
        items = crd.list_namespaced_custom_object(G, V, NS, "workloads")["items"]
        return [w for w in items if w["metadata"]["uid"] != first["metadata"]["uid"]]

    new = wait_for(replaced, 15, "new workload")[0]
    assert new["spec"]["podSets"][0]["count"] == 3
    new = _wait_cond(crd, "grow", "QuotaReserved", "False")
    assert "request > maximum capacity (3 > 2)" in _cond(new, "QuotaReserved")["message"]
    assert get_job(batch, "grow")["spec"]["suspend"] is True
    reasons = [
        e.reason
        for e in core.list_namespaced_event(NS, field_selector="involvedObject.name=grow").items
    ]
    assert "DeletedWorkload" in reasons and "Stopped" in reasons
