"""Runs on a namespace whose Jobs Kueue admits (``Scheduling(queue=...)``), on kubesim's
minimal Kueue (tests/kubesim/kueue.py): a queued batch waits for quota and then runs, a
Workload that can never be admitted fails its batch at once, and a batch preempted by a
higher-priority Workload runs again when readmitted, no call failed (issue 16)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from k8s_executor import KubernetesExecutor, PodStartError, Resources, Scheduling
from tests import helpers
from tests.helpers import SharedPath
from tests.kube_helpers import cold, kubesim_kwargs
from tests.kubesim_tests.job_helpers import job_body

G, V, NS = "kueue.x-k8s.io", "v1beta1", "default"


@pytest.fixture
def crd(kubesim: Any) -> Iterator[Any]:
    with kubesim.api_client() as api:
        yield client.CustomObjectsApi(api)


def _queues(crd: Any, cpu: str, preemption: str = "Never") -> None:
    def create(plural: str, kind: str, name: str, spec: dict[str, Any], ns: bool = False) -> None:
        body = {"apiVersion": f"{G}/{V}", "kind": kind, "metadata": {"name": name}, "spec": spec}
        if ns:
            crd.create_namespaced_custom_object(G, V, NS, plural, body)
        else:
            crd.create_cluster_custom_object(G, V, plural, body)

    create("resourceflavors", "ResourceFlavor", "default-flavor", {})
    flavor = {
        "name": "default-flavor",
        "resources": [
            {"name": "cpu", "nominalQuota": cpu},
            {"name": "memory", "nominalQuota": "64Gi"},
        ],
    }
    create(
        "clusterqueues",
        "ClusterQueue",
        "cq",
        {
            "namespaceSelector": {},
            "preemption": {"withinClusterQueue": preemption},
            "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [flavor]}],
        },
    )
    create("localqueues", "LocalQueue", "team-a", {"clusterQueue": "cq"}, ns=True)


def _kw(kubesim: Any, shared_dir: SharedPath, queue: str = "team-a") -> dict[str, Any]:
    # Kueue admits Jobs: warm workers would take the later batches without one.
    kw = cold(kubesim_kwargs(kubesim, Path((shared_dir / "storage").url)))
    kw["scheduling"] = Scheduling(queue=queue)
    kw["resources"] = Resources(cpu="1", memory="256Mi")
    # Queued time is never a startup failure, however long.
    kw["timeouts"] = dataclasses.replace(kw["timeouts"], startup=2)
    return kw


def _suspended(kubesim: Any, run_id: str, batch: str) -> bool:
    jobs = kubesim.store.list("jobs", NS, label_selector=f"k8s-executor.io/batch={batch}")[0]
    return any(
        j["metadata"]["labels"]["k8s-executor.io/run"] == run_id and j["spec"]["suspend"]
        for j in jobs
    )


def test_queued_batch_waits_for_quota_then_runs(
    kubesim: Any, crd: Any, shared_dir: SharedPath
) -> None:
    _queues(crd, cpu="1")
    started, release = shared_dir / "started", shared_dir / "release"
    with KubernetesExecutor(max_workers=1, **_kw(kubesim, shared_dir)) as ex:
        first = ex.submit(helpers.touch_then_wait, started, release)
        helpers.wait_for(first.running, 60, "the first batch to be admitted and run")
        second = ex.submit(helpers.square, 6)
        helpers.wait_for(
            lambda: _suspended(kubesim, ex.run_id, "b00001"), 60, "the second batch to be queued"
        )
        job = kubesim.store.list("jobs", NS, label_selector="k8s-executor.io/batch=b00001")[0][0]
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        assert not second.done()
        release.touch()
        assert second.result(timeout=60) == 36
        assert first.result(timeout=60) > 0


def test_missing_local_queue_fails_the_batch_at_once(
    kubesim: Any, crd: Any, shared_dir: SharedPath
) -> None:
    _queues(crd, cpu="1")
    kw = _kw(kubesim, shared_dir, queue="team-b")
    kw["timeouts"] = dataclasses.replace(kw["timeouts"], startup=60)
    with KubernetesExecutor(**kw) as ex:
        future = ex.submit(helpers.square, 2)
        with pytest.raises(PodStartError, match="LocalQueue team-b doesn't exist") as info:
            future.result(timeout=30)  # well inside the startup timeout
        assert info.value.reason == "Inadmissible"


def test_preempted_batch_runs_again_and_no_call_fails(
    kubesim: Any, crd: Any, shared_dir: SharedPath
) -> None:
    _queues(crd, cpu="1", preemption="LowerPriority")
    crd.create_cluster_custom_object(
        G,
        V,
        "workloadpriorityclasses",
        {
            "apiVersion": f"{G}/{V}",
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": "urgent"},
            "value": 1000,
        },
    )
    calls, release = shared_dir / "calls", shared_dir / "release"
    calls.mkdir()
    with KubernetesExecutor(max_workers=1, **_kw(kubesim, shared_dir)) as ex:
        future = ex.submit(helpers.record_then_wait, calls, release)
        helpers.wait_for(lambda: len(calls.listdir()) == 1, 60, "the first attempt")
        # Someone else's urgent Job takes the quota: ours is preempted (suspended, its pod
        # stopped) and requeued.
        urgent: Any = job_body(
            "urgent", "pass", grace=1, container={"resources": {"requests": {"cpu": "1"}}}
        )
        urgent["metadata"]["labels"] = {
            "kueue.x-k8s.io/queue-name": "team-a",
            "kueue.x-k8s.io/priority-class": "urgent",
        }
        with kubesim.api_client() as api:
            client.BatchV1Api(api).create_namespaced_job(NS, urgent)

        def urgent_done() -> bool:
            job = kubesim.store.get("jobs", NS, "urgent")
            return bool((job.get("status") or {}).get("succeeded"))

        helpers.wait_for(urgent_done, 60, "the urgent Job to run")
        release.touch()
        # Readmitted once the urgent Job freed the quota: the call ran again and finished.
        assert future.result(timeout=60) > 0
    assert len(calls.listdir()) == 2
