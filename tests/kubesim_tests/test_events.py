"""Events: what the Job controller, the scheduler and the kubelet record, the two Event APIs,
the recorder's correlator, the default ServiceAccount, and what kubectl shows of them.

Reasons and message shapes are those of the real-cluster traces
(/work/shared/real-cluster/traces, ``"watch": "events"``). Bodies are read raw
(``_preload_content=False``): the official client cannot even deserialise a legacy Event read
through ``events.k8s.io/v1`` (its model requires ``eventTime``, which a real apiserver sends as
``null`` for such Events; kubernetes-client/python#1616), and raw JSON keeps what was omitted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.kubesim.clock import FakeClock
from tests.kubesim.events import record
from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import body_of, wait_for
from tests.kubesim_tests.job_helpers import NS, job_body, py, raw, wait_job

Obj = dict[str, Any]
NAME_RE = r"\.[0-9a-f]{16}$"
SLEEP = "import time\ntime.sleep(60)"


@pytest.fixture
def live(kubesim: Kubesim) -> Iterator[tuple[Any, Any, Any]]:
    with kubesim.api_client() as api:
        yield client.BatchV1Api(api), client.CoreV1Api(api), client.EventsV1Api(api)


def core_events(core: Any, namespace: str = NS, selector: str = "") -> list[Obj]:
    items: list[Obj] = raw(
        core.list_namespaced_event(namespace, field_selector=selector, _preload_content=False)
    )["items"]
    return items


def about(core: Any, kind: str, name: str, namespace: str = NS) -> list[Obj]:
    """The Events about one object, oldest first."""
    found = core_events(core, namespace, f"involvedObject.kind={kind},involvedObject.name={name}")
    return sorted(found, key=lambda e: int(e["metadata"]["resourceVersion"]))


def wait_reasons(
    core: Any, kind: str, name: str, *reasons: str, namespace: str = NS, timeout: float = 20
) -> list[Obj]:
    """Wait until the object has Events of every reason listed; return all of its Events."""

    def check() -> list[Obj] | None:
        found = about(core, kind, name, namespace)
        return found if set(reasons) <= {e["reason"] for e in found} else None

    result: list[Obj] = wait_for(check, timeout, f"{reasons} about {kind} {name}")
    return result


def only(events: list[Obj], reason: str, message: str | None = None) -> Obj:
    matching = [e for e in events if e["reason"] == reason and message in (None, e.get("message"))]
    assert len(matching) == 1, [(e["reason"], e.get("message")) for e in events]
    return matching[0]


def bare_pod(name: str, code: str = "print('hi')", **spec: Any) -> Obj:
    container: Obj = {"name": "main", "image": "python:3.12-slim", "command": py(code)}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def pod_names(core: Any, job: str) -> list[str]:
    pods = raw(
        core.list_namespaced_pod(NS, label_selector=f"job-name={job}", _preload_content=False)
    )["items"]
    return sorted(p["metadata"]["name"] for p in pods)


# --- emitters: the Job controller ------------------------------------------------------------


def test_success_job_and_pod_events(live: Any) -> None:
    batch, core, _ = live
    job = raw(
        batch.create_namespaced_job(
            NS, job_body("ok", "print(1)", completions=2, parallelism=2), _preload_content=False
        )
    )
    wait_job(batch, "ok")
    events = wait_reasons(core, "Job", "ok", "SuccessfulCreate", "Completed")
    pods = pod_names(core, "ok")
    assert sorted(e["message"] for e in events if e["reason"] == "SuccessfulCreate") == [
        f"Created pod: {p}" for p in pods
    ]
    completed = only(events, "Completed", "Job completed")
    assert completed["type"] == "Normal"
    # The whole object, as the trace's kcm Events are.
    assert re.fullmatch(r"ok" + NAME_RE, completed["metadata"]["name"])
    assert completed["involvedObject"] == {
        "kind": "Job",
        "namespace": NS,
        "name": "ok",
        "uid": job["metadata"]["uid"],
        "apiVersion": "batch/v1",
        "resourceVersion": completed["involvedObject"]["resourceVersion"],
    }
    assert completed["source"] == {"component": "job-controller"}
    assert (completed["reportingComponent"], completed["reportingInstance"]) == (
        "job-controller",
        "",
    )
    assert completed["count"] == 1
    assert completed["firstTimestamp"] == completed["lastTimestamp"]
    assert completed["eventTime"] is None
    for pod in pods:
        pod_events = wait_reasons(core, "Pod", pod, "Scheduled", "Pulled", "Created", "Started")
        # One kubelet worker records these three in order (Scheduled may race with them).
        kubelet_reasons = [e["reason"] for e in pod_events if e["reason"] != "Scheduled"]
        assert kubelet_reasons == ["Pulled", "Created", "Started"]
        scheduled = only(pod_events, "Scheduled")
        pulled, created, started = (only(pod_events, r) for r in kubelet_reasons)
        assert scheduled["message"] == f"Successfully assigned {NS}/{pod} to kubesim-node"
        assert scheduled["source"] == {"component": "default-scheduler"}
        assert "fieldPath" not in scheduled["involvedObject"]
        assert pulled["message"] == (
            'Container image "python:3.12-slim" already present on machine and can be '
            "accessed by the pod"
        )
        assert (created["message"], started["message"]) == (
            "Container created",
            "Container started",
        )
        for event in (pulled, created, started):
            assert event["involvedObject"]["fieldPath"] == "spec.containers{task}"
            assert event["source"] == {"component": "kubelet", "host": "kubesim-node"}
            assert event["reportingInstance"] == "kubesim-node"
            assert re.fullmatch(re.escape(pod) + NAME_RE, event["metadata"]["name"])


@pytest.mark.parametrize(
    ("spec", "reason", "message"),
    [
        (
            {"completions": 2, "backoffLimitPerIndex": 0},
            "FailedIndexes",
            "Job has failed indexes",
        ),
        (
            {"indexed": False, "backoffLimit": 0},
            "BackoffLimitExceeded",
            "Job has reached the specified backoff limit",
        ),
    ],
)
def test_job_failure_is_a_warning_with_the_condition_reason(
    live: Any, spec: Obj, reason: str, message: str
) -> None:
    batch, core, _ = live
    code = "import os,sys\nsys.exit(42 if os.environ.get('JOB_COMPLETION_INDEX') != '0' else 0)"
    batch.create_namespaced_job(NS, job_body("bad", code, **spec))
    wait_job(batch, "bad", "Failed")
    events = wait_reasons(core, "Job", "bad", reason)
    failure = only(events, reason)
    assert (failure["type"], failure["message"]) == ("Warning", message)
    assert "Completed" not in {e["reason"] for e in events}


def test_deadline_exceeded_deletes_and_warns(live: Any) -> None:
    batch, core, _ = live
    body = job_body("late", SLEEP, activeDeadlineSeconds=1)
    body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 1
    batch.create_namespaced_job(NS, body)
    wait_job(batch, "late", "Failed", timeout=30)
    events = wait_reasons(core, "Job", "late", "DeadlineExceeded", "SuccessfulDelete")
    deadline = only(events, "DeadlineExceeded")
    assert (deadline["type"], deadline["message"]) == (
        "Warning",
        "Job was active longer than specified deadline",
    )
    created = only(events, "SuccessfulCreate")["message"].removeprefix("Created pod: ")
    assert only(events, "SuccessfulDelete")["message"] == f"Deleted pod: {created}"


def test_suspend_resume_and_the_repeat_count(live: Any) -> None:
    batch, core, _ = live
    batch.create_namespaced_job(
        NS, job_body("sr", SLEEP, completions=2, parallelism=2, suspend=True)
    )
    first = only(wait_reasons(core, "Job", "sr", "Suspended"), "Suspended", "Job suspended")
    assert first["count"] == 1
    batch.patch_namespaced_job("sr", NS, {"spec": {"suspend": False}})
    events = wait_reasons(core, "Job", "sr", "Resumed")
    assert only(events, "Resumed", "Job resumed")["type"] == "Normal"
    pods = pod_names(core, "sr")
    assert len(pods) == 2
    # The order of one sync: the pods first, then the condition (suspend-resume trace).
    reasons = [e["reason"] for e in events]
    assert reasons.index("Resumed") > max(
        i for i, r in enumerate(reasons) if r == "SuccessfulCreate"
    )
    for pod in pods:
        wait_reasons(core, "Pod", pod, "Started")
    batch.patch_namespaced_job("sr", NS, {"spec": {"suspend": True}})

    def suspended_twice() -> list[Obj] | None:
        found = about(core, "Job", "sr")
        again = [e for e in found if e["reason"] == "Suspended"]
        return found if again and again[0]["count"] == 2 else None

    events = wait_for(suspended_twice, 20, "a second Suspended")
    again = only(events, "Suspended")
    # The correlator patched the first Event: same name, count 2, lastTimestamp moved on.
    assert again["metadata"]["name"] == first["metadata"]["name"]
    assert again["firstTimestamp"] == first["firstTimestamp"]
    assert sorted(e["message"] for e in events if e["reason"] == "SuccessfulDelete") == [
        f"Deleted pod: {p}" for p in pods
    ]
    for pod in pods:
        killing = only(wait_reasons(core, "Pod", pod, "Killing"), "Killing")
        assert (killing["type"], killing["message"]) == ("Normal", "Stopping container task")
        assert killing["involvedObject"]["fieldPath"] == "spec.containers{task}"


def test_quota_refusal_is_failed_create_with_the_api_error(live: Any) -> None:
    batch, core, _ = live
    core.create_namespace({"metadata": {"name": "quota"}})
    core.create_namespaced_resource_quota(
        "quota", {"metadata": {"name": "tight"}, "spec": {"hard": {"pods": "0"}}}
    )
    wait_for(lambda: core.read_namespaced_resource_quota("tight", "quota").status.hard, 10, "quota")
    batch.create_namespaced_job("quota", job_body("qr"))
    events = wait_reasons(core, "Job", "qr", "FailedCreate", namespace="quota")
    failed = events[0]
    assert failed["type"] == "Warning"
    assert re.fullmatch(
        r'Error creating: pods "qr-0-[bcdfghjklmnpqrstvwxz2456789]{5}" is forbidden: exceeded '
        r"quota: tight, requested: pods=1, used: pods=0, limited: pods=0",
        failed["message"],
    ), failed["message"]
    assert "SuccessfulCreate" not in {e["reason"] for e in events}


# --- emitters: the scheduler and the kubelet ---------------------------------------------------


def test_unschedulable_pod_gets_failed_scheduling(live: Any) -> None:
    _, core, _ = live
    core.create_namespaced_pod(
        NS, bare_pod("big", container={"resources": {"requests": {"cpu": "1000"}}})
    )
    events = wait_reasons(core, "Pod", "big", "FailedScheduling")
    failed = only(events, "FailedScheduling")
    message = (
        "0/1 nodes are available: 1 Insufficient cpu. no new claims to deallocate, preemption: "
        "0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    )
    assert (failed["type"], failed["message"]) == ("Warning", message)
    assert failed["source"] == {"component": "default-scheduler"}
    pod = raw(core.read_namespaced_pod("big", NS, _preload_content=False))
    [scheduled] = [c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled"]
    assert scheduled["message"] == message
    assert "Scheduled" not in {e["reason"] for e in about(core, "Pod", "big")}


def test_image_pull_failure_events(live: Any) -> None:
    _, core, _ = live
    image = "127.0.0.1:5000/nope/does-not-exist:1"
    core.create_namespaced_pod(NS, bare_pod("pull", container={"image": image}))
    events = wait_reasons(core, "Pod", "pull", "Pulling", "Failed", "BackOff")
    by_message = {e["message"]: e for e in events}
    assert by_message[f'Pulling image "{image}"']["type"] == "Normal"
    pull_error = (
        f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to pull and '
        f'unpack image "{image}": failed to resolve reference "{image}": {image}: not found'
    )
    assert by_message[pull_error]["type"] == "Warning"
    assert by_message["Error: ErrImagePull"]["reason"] == "Failed"
    backoff = by_message[f'Back-off pulling image "{image}"']
    assert (backoff["reason"], backoff["type"]) == ("BackOff", "Normal")
    wait_for(
        lambda: "Error: ImagePullBackOff" in {e["message"] for e in about(core, "Pod", "pull")}
    )
    assert not {"Created", "Started"} & {e["reason"] for e in about(core, "Pod", "pull")}


@pytest.fixture
def fake(kubesim_factory: Callable[..., Kubesim]) -> Iterator[tuple[Any, Kubesim]]:
    sim = kubesim_factory(clock=FakeClock())
    with sim.api_client() as api:
        yield client.CoreV1Api(api), sim


def test_missing_secret_retries_count_up(fake: tuple[Any, Kubesim]) -> None:
    core, sim = fake
    clock: FakeClock = sim.clock
    pod = bare_pod("ms", container={"envFrom": [{"secretRef": {"name": "no-such-secret"}}]})
    core.create_namespaced_pod(NS, pod)
    first = wait_reasons(core, "Pod", "ms", "Pulled", "Failed")
    failed = only(first, "Failed", 'Error: secret "no-such-secret" not found')
    assert failed["type"] == "Warning"
    assert failed["involvedObject"]["fieldPath"] == "spec.containers{main}"

    def retried() -> list[Obj] | None:
        # The kubelet retries every 10 s of clock time; move the clock until it has.
        found = about(core, "Pod", "ms")
        if all(e["count"] >= 2 for e in found if e["reason"] != "Scheduled"):
            return found
        clock.advance(10)
        return None

    again = wait_for(retried, 20, "the retry's Events")
    # The correlator patched the same two Events: same names, count up, lastTimestamp later.
    assert sorted(e["metadata"]["name"] for e in again) == sorted(
        e["metadata"]["name"] for e in first
    )
    repeated = only(again, "Failed")
    assert repeated["firstTimestamp"] == failed["firstTimestamp"]
    assert _time(repeated["lastTimestamp"]) >= _time(failed["lastTimestamp"]) + timedelta(
        seconds=10
    )
    assert not {"Created", "Started"} & {e["reason"] for e in again}


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_deleting_a_running_pod_records_killing(live: Any) -> None:
    _, core, _ = live
    core.create_namespaced_pod(NS, bare_pod("doomed", SLEEP))
    wait_reasons(core, "Pod", "doomed", "Started")
    core.delete_namespaced_pod("doomed", NS, grace_period_seconds=1)
    killing = only(wait_reasons(core, "Pod", "doomed", "Killing"), "Killing")
    assert (killing["type"], killing["message"]) == ("Normal", "Stopping container main")
    assert killing["source"] == {"component": "kubelet", "host": "kubesim-node"}


# --- the two APIs -------------------------------------------------------------------------------


def test_events_k8s_io_is_the_same_event_with_selectors(live: Any) -> None:
    _, core, events_v1 = live
    core.create_namespaced_pod(NS, bare_pod("seen"))
    events = wait_reasons(core, "Pod", "seen", "Scheduled", "Started")
    scheduled = only(events, "Scheduled")
    listed = raw(
        events_v1.list_namespaced_event(
            NS, field_selector="regarding.name=seen,reason=Scheduled", _preload_content=False
        )
    )
    assert (listed["kind"], listed["apiVersion"]) == ("EventList", "events.k8s.io/v1")
    [item] = listed["items"]
    assert item == {
        "kind": "Event",
        "apiVersion": "events.k8s.io/v1",
        "metadata": scheduled["metadata"],
        "eventTime": None,
        "reportingController": "default-scheduler",
        "reason": "Scheduled",
        "regarding": scheduled["involvedObject"],
        "note": scheduled["message"],
        "type": "Normal",
        "deprecatedSource": {"component": "default-scheduler"},
        "deprecatedFirstTimestamp": scheduled["firstTimestamp"],
        "deprecatedLastTimestamp": scheduled["lastTimestamp"],
        "deprecatedCount": 1,
    }
    one = raw(
        events_v1.read_namespaced_event(scheduled["metadata"]["name"], NS, _preload_content=False)
    )
    assert one == item
    uid = scheduled["involvedObject"]["uid"]
    by_kubelet = core_events(core, NS, f"involvedObject.uid={uid},source=kubelet")
    assert {e["reason"] for e in by_kubelet} == {"Pulled", "Created", "Started"}
    by_kubelet_v1 = raw(
        events_v1.list_namespaced_event(
            NS,
            field_selector=f"regarding.uid={uid},reportingController=kubelet",
            _preload_content=False,
        )
    )["items"]
    assert {e["metadata"]["name"] for e in by_kubelet_v1} == {
        e["metadata"]["name"] for e in by_kubelet
    }
    assert core_events(core, NS, f"involvedObject.uid={uid},type=Warning") == []
    # Each group accepts only its own field labels.
    with pytest.raises(ApiException) as caught:
        events_v1.list_namespaced_event(NS, field_selector="involvedObject.name=seen")
    assert (caught.value.status, body_of(caught.value)["message"]) == (
        400,
        "field label not supported: involvedObject.name",
    )
    with pytest.raises(ApiException) as caught:
        core.list_namespaced_event(NS, field_selector="regarding.name=seen")
    assert body_of(caught.value)["message"] == "field label not supported: regarding.name"
    with pytest.raises(ApiException) as caught:
        events_v1.read_namespaced_event("nope", NS)
    assert (caught.value.status, body_of(caught.value)["message"]) == (
        404,
        'events.events.k8s.io "nope" not found',
    )


def test_an_event_made_through_events_k8s_io_reads_through_core(live: Any) -> None:
    _, core, events_v1 = live
    at = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    body = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "made.1"},
        "eventTime": at.isoformat(),
        "reportingController": "example.com/tool",
        "reportingInstance": "tool-1",
        "action": "Checking",
        "reason": "Checked",
        "regarding": {"kind": "Pod", "namespace": NS, "name": "p", "apiVersion": "v1"},
        "note": "all good",
        "type": "Normal",
    }
    created = raw(events_v1.create_namespaced_event(NS, body, _preload_content=False))
    assert created["eventTime"] == "2026-03-01T12:00:00.123456Z"
    assert created["deprecatedSource"] == {}
    assert created["deprecatedFirstTimestamp"] is None
    assert "deprecatedCount" not in created
    as_core = raw(core.read_namespaced_event("made.1", NS, _preload_content=False))
    assert {k: as_core[k] for k in as_core if k != "metadata"} == {
        "apiVersion": "v1",
        "kind": "Event",
        "involvedObject": body["regarding"],
        "reason": "Checked",
        "message": "all good",
        "source": {},
        "firstTimestamp": None,
        "lastTimestamp": None,
        "type": "Normal",
        "eventTime": "2026-03-01T12:00:00.123456Z",
        "action": "Checking",
        "reportingComponent": "example.com/tool",
        "reportingInstance": "tool-1",
    }
    # The source selector falls back to the reporting controller, as the event strategy does.
    assert [e["metadata"]["name"] for e in core_events(core, NS, "source=example.com/tool")] == [
        "made.1"
    ]
    # events.k8s.io/v1 validates strictly; core/v1 keeps the legacy rules.
    with pytest.raises(ApiException) as caught:
        events_v1.create_namespaced_event(
            NS, {**body, "metadata": {"name": "x"}, "type": "Odd", "deprecatedCount": 3}
        )
    failure = body_of(caught.value)
    assert caught.value.status == 422
    assert failure["message"] == (
        'Event.events.k8s.io "x" is invalid: [type: Invalid value: "": has invalid value: Odd, '
        'count: Invalid value: "": needs to be unset]'
    )
    assert failure["details"]["group"] == "events.k8s.io"
    legacy = {
        "metadata": {"name": "bad"},
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "elsewhere"},
        "reason": "R",
        "message": "m",
    }
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_event(NS, legacy)
    assert body_of(caught.value)["message"] == (
        'Event "bad" is invalid: involvedObject.namespace: Invalid value: "elsewhere": does not '
        "match event.namespace"
    )
    events_v1.delete_namespaced_event("made.1", NS)
    assert core_events(core, NS, "metadata.name=made.1") == []


def _watch_lines(response: Any, count: int) -> list[Obj]:
    lines: list[Obj] = []
    buffer = b""
    for chunk in response.stream(4096):
        buffer += chunk
        while b"\n" in buffer and len(lines) < count:
            line, buffer = buffer.split(b"\n", 1)
            lines.append(json.loads(line))
        if len(lines) >= count:
            break
    response.close()  # not back to the pool: the watch response is still open
    return lines


def test_watch_both_apis_with_field_selectors(kubesim_factory: Callable[..., Kubesim]) -> None:
    sim = kubesim_factory(controllers=False, clock=FakeClock())
    with sim.api_client() as api:
        core: Any = client.CoreV1Api(api)
        events_v1: Any = client.EventsV1Api(api)
        start = core.list_namespaced_event(NS).metadata.resource_version
        for name in ("a", "b"):
            core.create_namespaced_pod(NS, bare_pod(name))
        pods = {
            name: raw(core.read_namespaced_pod(name, NS, _preload_content=False))
            for name in ("a", "b")
        }
        for name in ("a", "b", "a"):
            record(sim.store, pods[name], "Warning", "Odd", f"about {name}", "tester")
        common = {"resource_version": start, "timeout_seconds": 5, "_preload_content": False}
        seen_core = _watch_lines(
            core.list_namespaced_event(
                NS, watch=True, field_selector="involvedObject.name=a", **common
            ),
            2,
        )
        assert [(w["type"], w["object"]["count"]) for w in seen_core] == [
            ("ADDED", 1),
            ("MODIFIED", 2),
        ]
        assert {w["object"]["message"] for w in seen_core} == {"about a"}
        seen_v1 = _watch_lines(
            events_v1.list_namespaced_event(
                NS, watch=True, field_selector="regarding.name=b,type=Warning", **common
            ),
            1,
        )
        [added] = seen_v1
        assert added["type"] == "ADDED"
        assert (added["object"]["apiVersion"], added["object"]["note"]) == (
            "events.k8s.io/v1",
            "about b",
        )
        assert added["object"]["regarding"]["name"] == "b"


# --- the recorder's correlator -------------------------------------------------------------------


def test_correlator_counts_combines_and_rate_limits(
    kubesim_factory: Callable[..., Kubesim],
) -> None:
    sim = kubesim_factory(controllers=False, clock=FakeClock())
    clock: FakeClock = sim.clock
    with sim.api_client() as api:
        core: Any = client.CoreV1Api(api)
        core.create_namespaced_pod(NS, bare_pod("p"))
        pod = raw(core.read_namespaced_pod("p", NS, _preload_content=False))
        firsts = [record(sim.store, pod, "Normal", "Same", "again", "tester") for _ in range(2)]
        clock.advance(5)
        third = record(sim.store, pod, "Normal", "Same", "again", "tester")
        assert firsts[0] is not None and third is not None
        assert third["metadata"]["name"] == firsts[0]["metadata"]["name"]
        [same] = core_events(core, NS, "reason=Same")
        assert (same["count"], same["firstTimestamp"]) == (3, firsts[0]["firstTimestamp"])
        assert same["lastTimestamp"] != same["firstTimestamp"]
        # Ten messages of one reason about one object within 10 minutes: the tenth on is one
        # combined Event.
        for i in range(11):
            record(sim.store, pod, "Warning", "Varied", f"message {i}", "tester")
        varied = core_events(core, NS, "reason=Varied")
        plain = sorted(e["message"] for e in varied if not e["message"].startswith("("))
        assert plain == sorted(f"message {i}" for i in range(9))
        [combined] = [e for e in varied if e["message"].startswith("(")]
        assert combined["message"] == "(combined from similar events): message 10"
        assert combined["count"] == 2
        # 3 + 11 Events so far; the source/object bucket holds 25.
        accepted = [record(sim.store, pod, "Normal", "Spam", f"n{i}", "tester") for i in range(12)]
        assert [e is not None for e in accepted] == [True] * 11 + [False]
        # Another component has its own budget; time refills this one (1 per 5 minutes).
        assert record(sim.store, pod, "Normal", "Spam", "other", "someone-else") is not None
        clock.advance(300)
        assert record(sim.store, pod, "Normal", "Spam", "later", "tester") is not None
        assert record(sim.store, pod, "Normal", "Spam", "later again", "tester") is None


# --- the default ServiceAccount ------------------------------------------------------------------


def test_default_service_account_in_every_namespace(live: Any) -> None:
    _, core, _ = live
    assert core.read_namespaced_service_account("default", NS).metadata.name == "default"
    core.create_namespace({"metadata": {"name": "team"}})
    made = wait_for(lambda: core.list_namespaced_service_account("team").items, 10, "the team SA")
    assert [sa.metadata.name for sa in made] == ["default"]
    assert made[0].secrets is None  # no token Secret since 1.24
    core.delete_namespaced_service_account("default", "team")

    def recreated() -> Any:
        found = core.list_namespaced_service_account("team").items
        return found if found and found[0].metadata.uid != made[0].metadata.uid else None

    wait_for(recreated, 10, "the SA re-created")
    core.delete_namespace("team")
    wait_for(lambda: not core.list_namespace(field_selector="metadata.name=team").items, 10)


# --- kubectl ------------------------------------------------------------------------------


def _kubectl(sim: Kubesim, home: Path, *args: str) -> str:
    path = shutil.which("kubectl") or str(Path(".venv/bin/kubectl").resolve())
    result = subprocess.run(
        [path, "--kubeconfig", sim.kubeconfig_path, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(home)},  # kubectl's discovery cache stays in the test
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_kubectl_get_events_and_describe_pod(live: Any, kubesim: Kubesim, tmp_path: Path) -> None:
    _, core, _ = live
    core.create_namespaced_pod(NS, bare_pod("shown"))
    wait_reasons(core, "Pod", "shown", "Started")
    table = _kubectl(
        kubesim, tmp_path, "get", "events", "--field-selector", "involvedObject.name=shown"
    )
    header, *rows = table.strip().splitlines()
    assert header.split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    cells = [row.split(None, 4) for row in rows]
    assert {(c[1], c[2], c[3]) for c in cells} == {
        ("Normal", reason, "pod/shown") for reason in ("Scheduled", "Pulled", "Created", "Started")
    }
    described = _kubectl(kubesim, tmp_path, "describe", "pod", "shown")
    events_part = described.split("\nEvents:\n", 1)[1]
    lines = events_part.strip().splitlines()
    assert lines[0].split() == ["Type", "Reason", "Age", "From", "Message"]
    scheduled = next(line for line in lines if "Scheduled" in line)
    assert "default-scheduler" in scheduled
    assert f"Successfully assigned {NS}/shown to kubesim-node" in scheduled
    started = next(line for line in lines if " Started " in line)
    assert "kubelet" in started and "Container started" in started
    accounts = _kubectl(kubesim, tmp_path, "get", "serviceaccounts")
    assert accounts.splitlines()[0].split() == ["NAME", "SECRETS", "AGE"]
    assert accounts.splitlines()[1].split()[:2] == ["default", "0"]
