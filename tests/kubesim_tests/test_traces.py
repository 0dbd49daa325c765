"""traces.py without a cluster: what a summary keeps, and how scenarios are rebuilt."""

from __future__ import annotations

import threading
import time
from typing import Any

from tests.kubesim.clock import ScaledClock
from tests.kubesim.traces import (
    Scenario,
    differences,
    facts,
    job_as_sent,
    matches,
    scenario_from_trace,
    summarize,
)

FINALIZER = "batch.kubernetes.io/job-tracking"


def _pod(
    uid: str, index: int, phase: str, *, finalizer: bool = True, **extra: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": f"j-{index}-{uid}",
        "uid": uid,
        "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
    }
    if finalizer:
        meta["finalizers"] = [FINALIZER]
    meta.update(extra.pop("meta", {}))
    status: dict[str, Any] = {"phase": phase}
    status.update(extra)
    return {"metadata": meta, "status": status}


def _line(watch: str, kind: str, obj: dict[str, Any], t: float = 1.0) -> dict[str, Any]:
    return {"t": t, "watch": watch, "type": kind, "object": obj}


def _terminated(reason: str, code: int) -> list[dict[str, Any]]:
    return [{"name": "main", "state": {"terminated": {"reason": reason, "exitCode": code}}}]


def test_a_deleted_pod_was_untracked_even_if_its_last_state_lists_the_finalizer() -> None:
    # A real API server's DELETED event carries the state before the finalizer removal that
    # deleted the pod.
    failed = _pod("a", 0, "Failed", containerStatuses=_terminated("Error", 143))
    lines = [
        _line("pods", "ADDED", _pod("a", 0, "Pending")),
        _line("pods", "MODIFIED", _pod("a", 0, "Running")),
        _line("pods", "MODIFIED", failed),
        _line("pods", "DELETED", failed),
        _line("pods", "ADDED", _pod("b", 0, "Pending")),
    ]
    got = facts(summarize(lines))
    assert got["index.0.attempts"] == 2
    assert got["index.0.a0.phases"] == ["Pending", "Running", "Failed"]
    assert got["index.0.a0.terminated"] == {"main": "Error/143"}
    assert got["index.0.a0.finalizer_removed"] is True
    assert got["index.0.a1.finalizer_removed"] is False
    assert got["index.0.timeline"] == [
        "a0 created",
        "a0 Failed",
        "a0 untracked",
        "a0 deleted",
        "a1 created",
    ]


def test_waiting_reasons_in_first_seen_order_and_disruption() -> None:
    def waiting(reason: str) -> dict[str, Any]:
        return {"containerStatuses": [{"name": "main", "state": {"waiting": {"reason": reason}}}]}

    disrupted = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
    lines = [
        _line("pods", "ADDED", _pod("a", 1, "Pending", **waiting("ErrImagePull"))),
        _line("pods", "MODIFIED", _pod("a", 1, "Pending", **waiting("BackOff"))),
        _line("pods", "MODIFIED", _pod("a", 1, "Pending", **waiting("ErrImagePull"))),
        _line("pods", "MODIFIED", _pod("a", 1, "Pending", conditions=[disrupted])),
    ]
    got = facts(summarize(lines))
    assert got["index.1.a0.waiting"] == ["ErrImagePull", "BackOff"]
    assert got["index.1.a0.phases"] == ["Pending"]
    assert got["index.1.a0.disruption"] == "EvictionByEvictionAPI"


def test_condition_transitions_status_and_events() -> None:
    def job(*conditions: tuple[str, str, str], **status: Any) -> dict[str, Any]:
        conds = [{"type": t, "status": s, "reason": r} for t, s, r in conditions]
        return {"metadata": {"name": "j"}, "status": {"conditions": conds, **status}}

    def event(kind: str, reason: str) -> dict[str, Any]:
        return {"reason": reason, "involvedObject": {"kind": kind}}

    suspended = ("Suspended", "True", "JobSuspended")
    resumed = ("Suspended", "False", "JobResumed")
    lines = [
        _line("jobs", "ADDED", job()),
        _line("jobs", "MODIFIED", job(suspended)),
        _line("jobs", "MODIFIED", job(resumed)),
        _line("jobs", "MODIFIED", job(suspended)),
        _line("jobs", "MODIFIED", job(suspended, uncountedTerminatedPods={"failed": ["x"]})),
        _line("events", "ADDED", event("Pod", "MissingClusterDNS")),
        _line("events", "ADDED", event("Job", "Suspended")),
        _line("events", "MODIFIED", event("Job", "Suspended")),
        {"t": 2.0, "watch": "pods", "error": "(504) too large resource version"},
    ]
    summary = summarize(lines)
    got = facts(summary)
    assert got["job.conditions"] == [
        "Suspended=True/JobSuspended",
        "Suspended=False/JobResumed",
        "Suspended=True/JobSuspended",
    ]
    assert got["job.status.uncountedTerminatedPods"] == {"failed": 1}
    assert got["job.status.active"] is None
    assert got["events.Job"] == ["Suspended"]
    assert "events.Pod" not in got  # the recording cluster's artefact is ignored
    assert summary.errors == ["pods: (504) too large resource version"]


def test_differences_and_declared_patterns() -> None:
    one = summarize([_line("pods", "ADDED", _pod("a", 0, "Pending"))])
    two = summarize([_line("pods", "ADDED", _pod("a", 0, "Running"))])
    assert differences(one, two) == {"index.0.a0.phases": (["Pending"], ["Running"])}
    # What one side lacks (here: the whole index) is None there.
    missing = differences(one, summarize([]))
    present = {k for k, v in facts(one).items() if v is not None}
    assert set(missing) == {k for k in present if k.startswith("index.")}
    assert missing["index.0.attempts"] == (1, None)
    assert matches("index.0", "index.0.a1.phases")
    assert matches("index.*.a0.terminated", "index.2.a0.terminated")
    assert matches("events.Pod", "events.Pod")
    assert not matches("events.Pod", "events.Job")
    assert not matches("index.0.a0.phases.x", "index.0.a0.phases")


def test_scenario_is_the_job_as_sent_its_actions_and_duration() -> None:
    uid = "0f9b"
    generated = {"batch.kubernetes.io/controller-uid": uid, "job-name": "j", "team": "a"}
    job = {
        "kind": "Job",
        "apiVersion": "batch/v1",
        "metadata": {"name": "j", "uid": uid, "resourceVersion": "7", "labels": generated},
        "spec": {
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}},
            "manualSelector": False,
            "template": {"metadata": {"labels": generated}, "spec": {"containers": []}},
        },
        "status": {"active": 1},
    }
    lines = [
        _line("jobs", "ADDED", job, 0.5),
        {"t": 8.0, "action": "delete-pods"},
        {"t": 8.1, "action": "delete-pods", "error": "(404)"},
        _line("jobs", "MODIFIED", job, 12.5),
    ]
    scenario = scenario_from_trace("s", lines)
    assert scenario.actions == ((8.0, "delete-pods"),)
    assert scenario.duration == 12.5
    assert scenario.job == job_as_sent(job)
    assert scenario.job["metadata"] == {"name": "j", "labels": {"team": "a"}}
    assert "selector" not in scenario.job["spec"] and "status" not in scenario.job
    assert scenario.job["spec"]["template"]["metadata"] == {"labels": {"team": "a"}}
    assert Scenario.from_json(scenario.to_json()) == scenario


def test_scaled_clock_runs_its_timers_faster() -> None:
    clock = ScaledClock(50.0)
    fired = threading.Event()
    start = time.monotonic()
    clock.call_later(10.0, fired.set)  # 0.2 s of real time
    try:
        assert fired.wait(5)
        assert time.monotonic() - start < 2.0
        assert clock.monotonic() >= 10.0
    finally:
        clock.stop()


def test_what_the_controller_wrote_into_a_pod_is_kept_without_names() -> None:
    pod = _pod("p1", 0, "Pending")
    pod["metadata"].update(
        generateName="jo-0-",
        labels={"batch.kubernetes.io/job-name": "jo", "controller-uid": "u-1", "app": "jo-x"},
        ownerReferences=[{"kind": "Job", "name": "jo", "uid": "u-1", "controller": True}],
    )
    pod["spec"] = {"hostname": "jo-0", "containers": [{"name": "main", "env": []}]}
    created = facts(summarize([_line("pods", "ADDED", pod)]))["index.0.a0.created"]
    assert created["generateName"] == "JOB-0-"
    assert created["hostname"] == "JOB-0"
    assert created["labels"] == {
        "batch.kubernetes.io/job-name": "JOB",
        "controller-uid": "UID",
        "app": "JOB-x",
    }
    assert created["owner"] == {
        "apiVersion": None,
        "kind": "Job",
        "controller": True,
        "blockOwnerDeletion": None,
    }
    assert created["finalizers"] == [FINALIZER]


def test_start_time_comes_and_goes_with_suspension() -> None:
    def job(**status: Any) -> dict[str, Any]:
        return {"metadata": {"name": "j"}, "status": status}

    lines = [
        _line("jobs", "ADDED", job()),
        _line("jobs", "MODIFIED", job(startTime="2026-01-01T00:00:00Z")),
        _line("jobs", "MODIFIED", job(startTime="2026-01-01T00:00:00Z", active=1)),
        _line("jobs", "MODIFIED", job()),
    ]
    got = facts(summarize(lines))
    assert got["job.start_time"] == ["unset", "set", "unset"]
    assert got["job.status.startTime"] is None


def test_event_messages_without_the_names_of_one_recording() -> None:
    pod = _pod("u-7", 0, "Pending", meta={"name": "ok-0-abcde", "namespace": "ns-1"})
    pod["spec"] = {"nodeName": "node1", "containers": [{"name": "main", "image": "reg/img:1"}]}

    def event(reason: str, message: str) -> dict[str, Any]:
        return {"reason": reason, "message": message, "involvedObject": {"kind": "Pod"}}

    lines = [
        # The Event comes before the pod on its own watch: names are taken out at the end.
        _line(
            "events", "ADDED", event("Scheduled", "Successfully assigned ns-1/ok-0-abcde to node1")
        ),
        _line("events", "ADDED", event("Pulled", 'Container image "reg/img:1" already present')),
        _line("events", "ADDED", event("Failed", 'pods "ok-0-zzzzz" is forbidden: ok-0-abcdef')),
        _line("pods", "ADDED", pod),
    ]
    assert facts(summarize(lines))["event_messages.Pod"] == [
        'Failed: pods "POD" is forbidden: ok-0-abcdef',
        'Pulled: Container image "IMAGE" already present',
        "Scheduled: Successfully assigned NS/POD to NODE",
    ]
