"""The tracker's reading of pod and Job states, driven directly with the objects a real
API server sends (shapes per kubernetes-jobs.md §4-§5)."""

from __future__ import annotations

from typing import Any

import pytest

from k8s_executor.backends._tracker import (
    Finished,
    RunTracker,
    Started,
    Stuck,
    parse_indexes,
    pod_exit,
)


def pod(index: int, phase: str, batch: str = "b00000", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"k8sx-r-{batch}-{index}-abcde",
            "labels": {
                "k8s-executor.io/batch": batch,
                "batch.kubernetes.io/job-completion-index": str(index),
            },
        },
        "status": {"phase": phase, **status},
    }


def terminated(exit_code: int, reason: str, message: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "containerStatuses": [
            {
                "name": "worker",
                "state": {
                    "terminated": {"exitCode": exit_code, "reason": reason, "message": message}
                    | extra
                },
            }
        ]
    }


def job(batch: str = "b00000", **status: Any) -> dict[str, Any]:
    return {"metadata": {"labels": {"k8s-executor.io/batch": batch}}, "status": status}


@pytest.fixture
def tracker() -> RunTracker:
    t = RunTracker(startup_timeout=60)
    t.add_batch("b00000", 3)
    return t


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", set()), (None, set()), ("0,1,3-5,7", {0, 1, 3, 4, 5, 7}), ("2", {2}), ("0-2", {0, 1, 2})],
)
def test_parse_indexes(text: str | None, expected: set[int]) -> None:
    assert parse_indexes(text) == expected


def test_running_then_completed(tracker: RunTracker) -> None:
    assert tracker.on_pod("ADDED", pod(0, "Pending"), 0) == []
    assert tracker.on_pod("MODIFIED", pod(0, "Running"), 1) == [Started("b00000", 0)]
    assert tracker.on_pod("MODIFIED", pod(0, "Running"), 2) == []  # reported once
    # A succeeded pod settles its index without waiting for the Job's status ...
    events = tracker.on_pod("MODIFIED", pod(0, "Succeeded", **terminated(0, "Completed")), 3)
    assert [type(e) for e in events] == [Finished]
    assert events[0].exit.exit_code == 0  # type: ignore[union-attr]
    assert sorted(tracker.unfinished()) == [("b00000", 1), ("b00000", 2)]
    # ... which, when it comes, reports nothing twice.
    assert tracker.on_job("MODIFIED", job(completedIndexes="0", failedIndexes="")) == []
    assert tracker.on_pod("DELETED", pod(0, "Succeeded"), 4) == []


def test_late_succeeded_pods_report_nothing(tracker: RunTracker) -> None:
    # Index 1 failed for good, then the Job hit its deadline: a Succeeded pod seen after
    # that (a duplicate, or a relist's ADDED replaying old pods) changes nothing.
    tracker.on_pod("MODIFIED", pod(1, "Failed", **terminated(1, "Error")), 1)
    tracker.on_job("MODIFIED", job(failedIndexes="1"))
    deadline = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}
    finished = tracker.on_job("MODIFIED", job(failedIndexes="1", conditions=[deadline]))
    assert {e.index for e in finished if isinstance(e, Finished)} == {0, 2}
    for index in (0, 1, 2):
        assert tracker.on_pod("ADDED", pod(index, "Succeeded"), 2) == []
    assert list(tracker.unfinished()) == []


def test_relisted_succeeded_pod_is_reported_once(tracker: RunTracker) -> None:
    first = tracker.on_pod("MODIFIED", pod(2, "Succeeded"), 1)
    assert [type(e) for e in first] == [Started, Finished]
    assert tracker.on_pod("ADDED", pod(2, "Succeeded"), 2) == []  # after a 410 relist


def test_failed_pod_waits_for_the_job_controller(tracker: RunTracker) -> None:
    # A failed pod may be retried: only the Job's failedIndexes settles the index.
    failed = pod(1, "Failed", **terminated(1, "Error"))
    assert tracker.on_pod("MODIFIED", failed, 1) == [Started("b00000", 1)]
    assert ("b00000", 1) in set(tracker.unfinished())
    events = tracker.on_job("MODIFIED", job(failedIndexes="1"))
    assert [type(e) for e in events] == [Finished]
    assert events[0].exit.exit_code == 1  # type: ignore[union-attr]


def test_fast_pod_gets_started_before_finished(tracker: RunTracker) -> None:
    # Pending -> Succeeded between two watch events: the start must still be reported.
    events = tracker.on_job("MODIFIED", job(completedIndexes="1"))
    assert events[0] == Started("b00000", 1)
    assert isinstance(events[1], Finished)


def test_oom_killed_pod_reason_and_log_tail(tracker: RunTracker) -> None:
    failed = pod(2, "Failed", **terminated(137, "OOMKilled", "allocating 8 GiB\nKilled"))
    tracker.on_pod("MODIFIED", failed, 5)
    events = tracker.on_job("MODIFIED", job(failedIndexes="2"))
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.exit.reason == "OOMKilled"
    assert finished.exit.exit_code == 137
    assert finished.exit.signal == 9
    assert "allocating 8 GiB" in finished.exit.log_tail


def test_evicted_pod_reason_from_disruption_condition() -> None:
    evicted = pod(
        0,
        "Failed",
        conditions=[
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "EvictionByEvictionAPI",
                "message": "Eviction API: evicting",
            }
        ],
        **terminated(137, "Error"),
    )
    exit = pod_exit(evicted)
    assert exit.reason == "EvictionByEvictionAPI"
    assert exit.message == "Eviction API: evicting"


def test_pod_level_reason_wins_over_generic_container_error() -> None:
    exit = pod_exit(pod(0, "Failed", reason="DeadlineExceeded", message="Pod was active too long"))
    assert (exit.reason, exit.message) == ("DeadlineExceeded", "Pod was active too long")


def test_retried_failure_is_not_finished(tracker: RunTracker) -> None:
    # A failed pod whose index the controller retries: not in failedIndexes, not finished.
    tracker.on_pod("MODIFIED", pod(1, "Failed", **terminated(1, "Error")), 1)
    assert tracker.on_job("MODIFIED", job(failedIndexes="")) == []
    assert ("b00000", 1) in set(tracker.unfinished())


def test_job_deadline_finishes_every_remaining_index(tracker: RunTracker) -> None:
    tracker.on_job("MODIFIED", job(completedIndexes="0"))
    conditions = [
        {
            "type": "FailureTarget",
            "status": "True",
            "reason": "DeadlineExceeded",
            "message": "Job was active longer than specified deadline",
        },
    ]
    events = tracker.on_job("MODIFIED", job(completedIndexes="0", conditions=conditions))
    finished = [e for e in events if isinstance(e, Finished)]
    assert [e.index for e in finished] == [1, 2]
    assert {e.exit.reason for e in finished} == {"DeadlineExceeded"}
    assert list(tracker.unfinished()) == []
    assert tracker.on_job("MODIFIED", job(conditions=conditions)) == []  # once only


def test_failed_indexes_condition_is_not_a_job_failure(tracker: RunTracker) -> None:
    conditions = [{"type": "Failed", "status": "True", "reason": "FailedIndexes"}]
    tracker.on_pod("MODIFIED", pod(1, "Failed", **terminated(3, "Error")), 1)
    events = tracker.on_job(
        "MODIFIED", job(completedIndexes="0,2", failedIndexes="1", conditions=conditions)
    )
    reasons = {e.index: e.exit.reason for e in events if isinstance(e, Finished)}
    assert reasons == {0: None, 1: "Error", 2: None}


def test_deleted_job_finishes_remaining(tracker: RunTracker) -> None:
    events = tracker.on_job("DELETED", job())
    assert {e.exit.reason for e in events if isinstance(e, Finished)} == {"JobDeleted"}


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (
            {
                "containerStatuses": [
                    {
                        "name": "worker",
                        "state": {
                            "waiting": {
                                "reason": "ImagePullBackOff",
                                "message": "Back-off pulling image",
                            }
                        },
                    }
                ]
            },
            "ImagePullBackOff",
        ),
        (
            {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/1 nodes are available: 1 Insufficient cpu.",
                    }
                ]
            },
            "Unschedulable",
        ),
        (
            {
                "containerStatuses": [
                    {
                        "name": "worker",
                        "state": {
                            "waiting": {
                                "reason": "CreateContainerConfigError",
                                "message": 'secret "x" not found',
                            }
                        },
                    }
                ]
            },
            "CreateContainerConfigError",
        ),
    ],
)
def test_stuck_after_startup_timeout(
    tracker: RunTracker, status: dict[str, Any], reason: str
) -> None:
    assert tracker.on_pod("MODIFIED", pod(0, "Pending", **status), now=100) == []
    assert tracker.tick(now=159) == []
    events = tracker.tick(now=161)
    assert len(events) == 1
    assert isinstance(events[0], Stuck)
    assert events[0].reason == reason
    assert tracker.tick(now=500) == []  # reported once


def test_recovering_pod_is_not_stuck(tracker: RunTracker) -> None:
    waiting: dict[str, Any] = {
        "containerStatuses": [
            {
                "name": "worker",
                "state": {"waiting": {"reason": "ErrImagePull", "message": "timeout"}},
            }
        ]
    }
    tracker.on_pod("MODIFIED", pod(0, "Pending", **waiting), now=0)
    tracker.on_pod("MODIFIED", pod(0, "Pending", containerStatuses=[]), now=10)
    assert tracker.tick(now=1000) == []


def test_foreign_pods_ignored(tracker: RunTracker) -> None:
    assert tracker.on_pod("ADDED", pod(0, "Running", batch="b99999"), 0) == []
    assert tracker.on_pod("ADDED", pod(7, "Running"), 0) == []


UNSCHEDULABLE_TEXT = "0/1 nodes are available: 1 Insufficient cpu."
UNSCHEDULABLE: dict[str, Any] = {
    "conditions": [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": UNSCHEDULABLE_TEXT,
        }
    ]
}


def test_pending_pod_beside_running_ones_waits_for_room(tracker: RunTracker) -> None:
    # Index 0 runs; index 1 cannot be scheduled: the cluster is full, not the spec wrong.
    tracker.on_pod("MODIFIED", pod(0, "Running"), now=0)
    tracker.on_pod("MODIFIED", pod(1, "Pending", **UNSCHEDULABLE), now=0)
    assert tracker.tick(now=1000) == []
    # Index 0 ends; from then on nothing of the run runs, and the clock counts.
    tracker.on_pod("MODIFIED", pod(0, "Succeeded"), now=1001)
    assert tracker.tick(now=1059) == []
    assert tracker.tick(now=1062) == [Stuck("b00000", 1, "Unschedulable", UNSCHEDULABLE_TEXT)]


def test_index_whose_own_pod_was_replaced_can_still_be_stuck(tracker: RunTracker) -> None:
    # It ran once (started), its pod was lost, and the replacement cannot be scheduled:
    # no pod is running any more, so the replacement is stuck.
    tracker.on_pod("MODIFIED", pod(0, "Running"), now=0)
    tracker.on_pod("MODIFIED", pod(0, "Failed"), now=5)
    tracker.on_pod("ADDED", pod(0, "Pending", **UNSCHEDULABLE), now=10)
    events = tracker.tick(now=71)
    assert [type(e) for e in events] == [Stuck]


def test_deleted_running_pod_does_not_count_as_running(tracker: RunTracker) -> None:
    tracker.on_pod("MODIFIED", pod(0, "Running"), now=0)
    tracker.on_pod("DELETED", pod(0, "Running"), now=1)
    tracker.on_pod("MODIFIED", pod(1, "Pending", **UNSCHEDULABLE), now=1)
    assert [type(e) for e in tracker.tick(now=62)] == [Stuck]


def running_job(batch: str = "b00000", *, suspend: bool = False, parallelism: int = 3) -> Any:
    return {
        "metadata": {"labels": {"k8s-executor.io/batch": batch}},
        "spec": {"suspend": suspend, "parallelism": parallelism},
        "status": {},
    }


def test_job_that_never_gets_a_pod_is_stuck_after_startup_timeout(tracker: RunTracker) -> None:
    # A ResourceQuota (say) refuses every pod: no pod ever appears to be stuck itself.
    assert tracker.on_job("ADDED", running_job(), now=100.0) == []
    assert tracker.tick(159.0) == []
    (event,) = tracker.tick(160.0)
    assert isinstance(event, Stuck)
    assert (event.batch_id, event.reason) == ("b00000", "NoPodCreated")
    assert tracker.tick(200.0) == []  # reported once


def test_waiting_for_a_slot_stops_the_no_pod_clock(tracker: RunTracker) -> None:
    tracker.on_job("ADDED", running_job(suspend=True, parallelism=0), now=0.0)
    assert tracker.tick(1000.0) == []  # suspended: waiting for room is not being stuck
    tracker.on_job("MODIFIED", running_job(), now=1000.0)  # resumed: the clock starts
    assert tracker.tick(1059.0) == []
    assert [e.reason for e in tracker.tick(1060.0) if isinstance(e, Stuck)] == ["NoPodCreated"]


def test_a_pod_of_the_job_stops_the_no_pod_clock(tracker: RunTracker) -> None:
    tracker.on_job("ADDED", running_job(), now=0.0)
    tracker.on_pod("ADDED", pod(0, "Pending"), 10.0)
    assert tracker.tick(500.0) == []
    # Its pod finished and no other came: the clock starts again from then.
    tracker.on_pod("MODIFIED", pod(0, "Succeeded"), 500.0)
    assert tracker.tick(559.0) == []
    (event,) = tracker.tick(560.0)
    assert isinstance(event, Stuck) and event.reason == "NoPodCreated" and event.index == 1


def test_no_pod_clock_waits_while_the_run_is_busy(tracker: RunTracker) -> None:
    tracker.add_batch("b00001", 1)
    tracker.on_job("ADDED", running_job(), now=0.0)
    tracker.on_pod("ADDED", pod(0, "Running", batch="b00001"), 0.0)
    assert tracker.tick(500.0) == []  # another batch of the run is running: room, not refusal
    tracker.on_pod("MODIFIED", pod(0, "Succeeded", batch="b00001"), 500.0)
    assert tracker.tick(559.0) == []
    assert [e.reason for e in tracker.tick(561.0) if isinstance(e, Stuck)] == ["NoPodCreated"]


def _waiting(reason: str) -> dict[str, Any]:
    return {
        "containerStatuses": [
            {"name": "worker", "state": {"waiting": {"reason": reason, "message": "..."}}}
        ]
    }


@pytest.mark.parametrize(
    ("status", "limit"),
    [
        (_waiting("CreateContainerConfigError"), 10),  # a missing Secret: no waiting it out
        (_waiting("ImagePullBackOff"), 10),
        (
            {
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
                ]
            },
            60,  # an autoscaler may still add a node: the whole startup timeout
        ),
    ],
    ids=["config error", "image", "unschedulable"],
)
def test_errors_that_do_not_resolve_fail_after_the_shorter_bound(
    status: dict[str, Any], limit: float
) -> None:
    tracker = RunTracker(startup_timeout=60, error_timeout=10)
    tracker.add_batch("b00000", 1)
    tracker.on_pod("MODIFIED", pod(0, "Pending", **status), now=0)
    assert tracker.tick(now=limit - 1) == []
    (event,) = tracker.tick(now=limit + 1)
    assert isinstance(event, Stuck)
    assert tracker.limit(event.reason) == limit


@pytest.mark.parametrize(
    ("message", "meaning"),
    [
        # One pod asks more than the quota will ever allow.
        (
            'Error creating: pods "j-0-x" is forbidden: exceeded quota: tight, requested: '
            "pods=1, used: pods=0, limited: pods=0",
            "fail",
        ),
        (
            'pods "j-0-x" is forbidden: exceeded quota: q, requested: requests.memory=4Gi, '
            "used: requests.memory=0, limited: requests.memory=2Gi",
            "fail",
        ),
        # Full only because pods use it: room will come.
        (
            'pods "j-0-x" is forbidden: exceeded quota: q, requested: pods=1,requests.cpu=500m, '
            "used: pods=3,requests.cpu=1800m, limited: pods=10,requests.cpu=2",
            "wait",
        ),
        (
            'pods "j-0-x" is forbidden: violates PodSecurity "restricted:latest": '
            "allowPrivilegeEscalation != false",
            "fail",
        ),
        ('pods "j-0-x" is forbidden: maximum cpu usage per Container is 2, but limit is 4', "fail"),
        ("Internal error occurred: etcdserver: request timed out", None),
    ],
    ids=["quota 0", "bigger than quota", "quota full", "podsecurity", "limitrange", "transient"],
)
def test_refusal_meaning(message: str, meaning: str | None) -> None:
    from k8s_executor.backends._tracker import refusal

    assert refusal(message) == meaning


def test_refused_for_good_is_stuck_at_once_and_full_quota_stops_the_clock() -> None:
    tracker = RunTracker(startup_timeout=60)
    tracker.add_batch("b00000", 2)
    tracker.on_job("ADDED", running_job(parallelism=2), now=0.0)
    full = (
        'pods "p" is forbidden: exceeded quota: q, requested: pods=1, used: pods=4, limited: pods=4'
    )
    assert tracker.on_refusal("b00000", full, now=1.0) == []
    assert tracker.tick(now=1000.0) == []  # waiting for room: no clock
    tracker.on_pod("ADDED", pod(0, "Pending"), 1001.0)  # room came: a pod
    tracker.on_pod("MODIFIED", pod(0, "Succeeded"), 1002.0)
    assert tracker.tick(now=1063.0) != []  # the clock runs again once room came
    tracker2 = RunTracker(startup_timeout=60)
    tracker2.add_batch("b00000", 1)
    never = 'pods "p" is forbidden: violates PodSecurity "baseline:latest": privileged'
    (event,) = tracker2.on_refusal("b00000", never, now=0.0)
    assert isinstance(event, Stuck) and event.reason == "FailedCreate"
    assert tracker2.on_refusal("b00000", never, now=1.0) == []  # reported once


@pytest.mark.parametrize(
    ("condition", "verdict"),
    [
        ({"status": "True", "reason": "QuotaReserved"}, None),
        (
            {"status": "False", "reason": "Inadmissible", "message": "LocalQueue q doesn't exist"},
            ("fail", "LocalQueue q doesn't exist"),
        ),
        (
            {
                "status": "False",
                "reason": "Pending",
                "message": "couldn't assign flavors to pod set main: resource memory "
                "unavailable in ClusterQueue",
            },
            "fail",
        ),
        (
            {
                "status": "False",
                "reason": "Pending",
                "message": "couldn't assign flavors to pod set main: insufficient quota for "
                "cpu in flavor f, request > maximum capacity (4 > 2)",
            },
            "fail",
        ),
        (
            {
                "status": "False",
                "reason": "Pending",
                "message": "couldn't assign flavors to pod set main: insufficient unused quota "
                "for cpu in flavor f, 1 more needed",
            },
            "wait",
        ),
    ],
    ids=["admitted", "no local queue", "resource not covered", "too large", "queued"],
)
def test_workload_verdict(condition: dict[str, Any], verdict: Any) -> None:
    from k8s_executor.backends._tracker import workload_verdict

    workload = {"status": {"conditions": [{"type": "QuotaReserved", **condition}]}}
    found = workload_verdict(workload)
    assert (found[0] if found and isinstance(verdict, str) else found) == verdict


# -- what progress shows while calls wait (issue 14 item 12, issue 16) -------------------


def _waiting_with(reason: str, message: str) -> dict[str, Any]:
    return {
        "containerStatuses": [
            {"name": "worker", "state": {"waiting": {"reason": reason, "message": message}}}
        ]
    }


def test_waiting_reason_names_a_pod_that_cannot_start(tracker: RunTracker) -> None:
    tracker.add_batch("b00001", 1)
    assert tracker.waiting_note() == ""
    tracker.on_pod("ADDED", pod(0, "Pending"), now=0.0)  # on its way: nothing to say
    assert tracker.waiting_reason("b00000") == ""
    missing = _waiting_with("CreateContainerConfigError", 'secret "s3-credentials" not found')
    tracker.on_pod("MODIFIED", pod(0, "Pending", **missing), now=1.0)
    expected = 'CreateContainerConfigError: secret "s3-credentials" not found'
    assert tracker.waiting_reason("b00000") == expected
    assert tracker.waiting_reason("b00001") == ""
    assert tracker.waiting_note() == expected
    tracker.on_pod("MODIFIED", pod(0, "Running"), now=2.0)  # the Secret appeared
    assert tracker.waiting_note() == ""


def test_waiting_reason_of_an_unschedulable_pod_ends_with_its_pod(tracker: RunTracker) -> None:
    unschedulable: dict[str, Any] = {
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient cpu.",
            }
        ]
    }
    tracker.on_pod("ADDED", pod(1, "Pending", **unschedulable), now=0.0)
    assert tracker.waiting_note() == "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu."
    tracker.on_pod("DELETED", pod(1, "Pending", **unschedulable), now=1.0)
    assert tracker.waiting_note() == ""


def test_waiting_for_quota_lasts_until_a_new_pod_gets_in() -> None:
    tracker = RunTracker(startup_timeout=60)
    tracker.add_batch("b00000", 2)
    tracker.on_job("ADDED", running_job(parallelism=2), now=0.0)
    tracker.on_pod("ADDED", pod(0, "Pending"), now=0.5)  # got in before the quota filled
    full = (
        'Error creating: pods "k8sx-r-b00000-1-x" is forbidden: exceeded quota: tight, '
        "requested: pods=1, used: pods=1, limited: pods=1"
    )
    tracker.on_refusal("b00000", full, now=1.0)
    note = "waiting for quota: tight, requested: pods=1, used: pods=1, limited: pods=1"
    assert tracker.waiting_note() == note
    # The pod that got in goes on running: that is no room for the refused one.
    tracker.on_pod("MODIFIED", pod(0, "Running"), now=2.0)
    assert tracker.waiting_note() == note
    tracker.on_pod("MODIFIED", pod(0, "Succeeded"), now=3.0)
    assert tracker.waiting_note() == note
    tracker.on_pod("ADDED", pod(1, "Pending"), now=4.0)  # room came
    assert tracker.waiting_note() == ""


def test_queued_by_kueue_until_admitted(tracker: RunTracker) -> None:
    message = "couldn't assign flavors to pod set main: insufficient unused quota for cpu"
    pending = {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": message}
    tracker.on_workload("b00000", {"status": {"conditions": [pending]}})
    assert tracker.waiting_note() == f"queued: {message}"
    admitted = {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved"}
    tracker.on_workload("b00000", {"status": {"conditions": [admitted]}})
    assert tracker.waiting_note() == ""


def test_a_finished_batch_has_no_waiting_reason(tracker: RunTracker) -> None:
    image = _waiting_with("ImagePullBackOff", 'Back-off pulling image "registry.example/x:1"')
    tracker.on_pod("ADDED", pod(0, "Pending", **image), now=0.0)
    assert tracker.waiting_note().startswith("ImagePullBackOff: Back-off pulling")
    tracker.on_job("MODIFIED", job(conditions=[{"type": "Failed", "status": "True"}]), now=1.0)
    assert tracker.waiting_note() == ""


def test_failed_index_waits_for_its_pods_final_state(tracker: RunTracker) -> None:
    # The Jobs watch may deliver failedIndexes before the pods watch delivers the pod's
    # end: the index is reported with the pod's reason once it comes, not as "Unknown".
    assert tracker.on_job("MODIFIED", job(failedIndexes="2"), now=10.0) == []
    failed = pod(2, "Failed", **terminated(137, "OOMKilled", "Killed"))
    finished = tracker.on_pod("MODIFIED", failed, 10.5)[-1]
    assert isinstance(finished, Finished)
    assert finished.exit.reason == "OOMKilled"


def test_failed_index_whose_pod_end_never_comes_is_reported_after_a_bound(
    tracker: RunTracker,
) -> None:
    from k8s_executor.backends._tracker import FINAL_STATE_WAIT

    assert tracker.on_job("MODIFIED", job(failedIndexes="2"), now=10.0) == []
    assert not [e for e in tracker.tick(10.0 + FINAL_STATE_WAIT / 2) if isinstance(e, Finished)]
    finished = [e for e in tracker.tick(10.0 + FINAL_STATE_WAIT + 1) if isinstance(e, Finished)]
    assert len(finished) == 1
    assert finished[0].exit.reason == "Unknown"


def test_failed_job_still_waits_for_its_failed_pods_final_state(tracker: RunTracker) -> None:
    # The Job's Failed condition (all indexes accounted for) may come with failedIndexes, in
    # the same update, before the pod's end: the pod's reason still wins over "JobFinished".
    failed_job = job(
        failedIndexes="2",
        completedIndexes="0-1",
        conditions=[{"type": "Failed", "status": "True", "reason": "FailedIndexes"}],
    )
    events = tracker.on_job("MODIFIED", failed_job, now=10.0)
    assert [e.index for e in events if isinstance(e, Finished)] == [0, 1]
    failed = pod(2, "Failed", **terminated(1, "Error", "boom"))
    finished = tracker.on_pod("MODIFIED", failed, 10.5)[-1]
    assert isinstance(finished, Finished)
    assert finished.exit.exit_code == 1
