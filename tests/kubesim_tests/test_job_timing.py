"""§9.6 (index strings), §9.8 (backoff), §9.12 (deadline), §9.17 (TTL) on a FakeClock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.kubesim.clock import FakeClock
from tests.kubesim.controller import (
    backoff_duration,
    first_pending_indexes,
    match_pod_failure_policy,
)
from tests.kubesim.indexes import format_indexes, parse_indexes
from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import wait_for
from tests.kubesim_tests.job_helpers import (
    NS,
    assert_ended,
    condition,
    get_job,
    job_body,
    job_pods,
    phase,
    poke_and_settle,
)


@pytest.fixture
def fake(
    kubesim_factory: Callable[..., Kubesim],
) -> Iterator[tuple[Any, Any, Kubesim]]:
    sim = kubesim_factory(clock=FakeClock())
    with sim.api_client() as api:
        yield client.BatchV1Api(api), client.CoreV1Api(api), sim


def test_s9_06_index_string_format() -> None:
    assert format_indexes({0, 1, 3, 4, 5, 7}) == "0,1,3-5,7"
    assert format_indexes([]) == ""
    assert format_indexes([2, 1]) == "1,2"
    assert format_indexes(range(10)) == "0-9"
    assert parse_indexes("0,1,3-5,7") == {0, 1, 3, 4, 5, 7}
    assert first_pending_indexes(3, 8, {0, 2, 3}) == [1, 4, 5]


def test_s9_08_backoff_formula() -> None:
    assert [backoff_duration(n) for n in range(1, 8)] == [10, 20, 40, 80, 160, 320, 600]
    assert backoff_duration(30) == 600  # capped at 10 minutes (JC), not the docs' 6


def test_s9_09_policy_matching_unit() -> None:
    pod = {
        "metadata": {"namespace": "ns", "name": "p"},
        "status": {
            "phase": "Failed",
            "initContainerStatuses": [{"name": "init", "state": {"terminated": {"exitCode": 7}}}],
            "containerStatuses": [{"name": "main", "state": {"terminated": {"exitCode": 0}}}],
            "conditions": [{"type": "DisruptionTarget", "status": "True"}],
        },
    }
    policy = {
        "rules": [
            {"action": "Count", "onExitCodes": {"operator": "In", "values": [0, 9]}},
            {"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [1]}},
        ]
    }
    match = match_pod_failure_policy(policy, pod)  # exit code 0 never matches; init code 7 does
    assert match.action == "FailJob"
    assert match.message == (
        "Container init for pod ns/p failed with exit code 7 matching FailJob rule at index 1"
    )
    ignore = {
        "rules": [
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            }
        ]
    }
    assert match_pod_failure_policy(ignore, pod).count_failed is False


def _failing_pods(core: Any, job: dict[str, Any]) -> int:
    return len([p for p in job_pods(core, job) if phase(p) == "Failed"])


def test_s9_08_replacement_backoff_doubles(fake: Any) -> None:
    batch, core, sim = fake
    clock: FakeClock = sim.clock
    job = get_job(
        batch,
        batch.create_namespaced_job(
            NS, job_body("bo", "raise SystemExit(1)", backoffLimit=3)
        ).metadata.name,
    )
    for failures, delay in ((1, 10), (2, 20), (3, 40)):
        expected = failures
        wait_for(
            # wait_for calls it within this iteration, so the late binding is harmless.
            lambda: get_job(batch, "bo")["status"].get("failed") == expected,  # noqa: B023
            10,
            f"failed={failures}",
        )
        # No replacement before the delay has passed, even when the Job is synced then...
        clock.advance(delay - 1)
        poke_and_settle(batch, sim, "bo")
        assert len(job_pods(core, job)) == failures, "replaced before the backoff ended"
        clock.advance(1)
        wait_for(
            lambda: len(job_pods(core, job)) == expected + 1,  # noqa: B023
            10,
            "replacement created",
        )
    wait_for(lambda: condition(get_job(batch, "bo"), "Failed"), 10)
    assert get_job(batch, "bo")["status"]["failed"] == 4


def test_s9_12_active_deadline_and_reset_on_resume(fake: Any, tmp_path: Any) -> None:
    batch, core, sim = fake
    clock: FakeClock = sim.clock
    gate = tmp_path / "never"
    code = f"import os,time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
    batch.create_namespaced_job(NS, job_body("dl", code, activeDeadlineSeconds=100, suspend=True))
    wait_for(lambda: condition(get_job(batch, "dl"), "Suspended"), 10)
    assert "startTime" not in get_job(batch, "dl")["status"]
    clock.advance(500)  # suspended time does not count
    batch.patch_namespaced_job("dl", NS, {"spec": {"suspend": False}})
    wait_for(lambda: get_job(batch, "dl")["status"].get("ready") == 1, 10)
    started = get_job(batch, "dl")["status"]["startTime"]
    assert started == clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    clock.advance(99)
    poke_and_settle(batch, sim, "dl")
    early = get_job(batch, "dl")
    assert condition(early, "FailureTarget") is None and condition(early, "Failed") is None
    assert early["status"]["active"] == 1
    clock.advance(1)
    # The pod is deleted; its process has no SIGTERM handler (PID 1 ignores SIGTERM), so the
    # Job is Failed only once the pod's 30 s grace period ends and it is SIGKILLed.
    wait_for(
        lambda: all(p["metadata"].get("deletionTimestamp") for p in job_pods(core, "dl", batch)),
        10,
        "the pod deleted",
    )
    assert sim.store.sync()  # the kubelet has seen the deletion and set its grace timer
    assert condition(get_job(batch, "dl"), "Failed") is None
    clock.advance(30)
    job = wait_for(lambda: (j := get_job(batch, "dl")) and condition(j, "Failed") and j, 10)
    assert_ended(
        job,
        ("FailureTarget", "Failed"),
        "DeadlineExceeded",
        "Job was active longer than specified deadline",
    )
    assert job["status"]["failed"] == 1  # the running pod was killed and counted


def test_s9_17_ttl_after_finished(fake: Any) -> None:
    batch, core, sim = fake
    clock: FakeClock = sim.clock
    batch.create_namespaced_job(NS, job_body("ttl", "pass", ttlSecondsAfterFinished=60))
    job = wait_for(lambda: (j := get_job(batch, "ttl")) and condition(j, "Complete") and j, 10)
    clock.advance(59)
    assert batch.list_namespaced_job(NS).items
    clock.advance(1)
    wait_for(lambda: not batch.list_namespaced_job(NS).items, 10, "job deleted by TTL")
    # Background propagation: the pods go too.
    wait_for(lambda: not job_pods(core, job), 10, "pods collected")
