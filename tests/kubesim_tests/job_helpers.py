"""Shared helpers of the Job-controller and kubelet fidelity tests (raw JSON through the client).

Reading ``_preload_content=False`` bodies keeps what the server really sent (omitted vs zero
fields), which the official client's models would blur.
"""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any

from kubernetes import client

from tests.kubesim_tests.conftest import wait_for

NS = "default"

_POKES = itertools.count(1)


def py(code: str) -> list[str]:
    """A container command running ``code`` with this interpreter."""
    return [sys.executable, "-c", code]


def job_body(
    name: str, code: str = "pass", *, indexed: bool = True, grace: int | None = None, **spec: Any
) -> dict[str, Any]:
    """A Job running ``code``; ``grace``: the pods' ``terminationGracePeriodSeconds``.

    The code runs as PID 1 of its container: without a SIGTERM handler a deleted pod lives on
    until its grace period ends (30 s by default), so tests that kill running pods on a wall
    clock give them a short one.
    """
    container: dict[str, Any] = {"name": "task", "image": "python:3.12-slim", "command": py(code)}
    container.update(spec.pop("container", {}))
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if grace is not None:
        pod_spec["terminationGracePeriodSeconds"] = grace
    body: dict[str, Any] = {"template": {"spec": pod_spec}}
    if indexed:
        body["completionMode"] = "Indexed"
        body.setdefault("completions", 1)
    body.update(spec)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": body}


def raw(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


def get_job(batch: client.BatchV1Api, name: str) -> dict[str, Any]:
    return raw(batch.read_namespaced_job(name, NS, _preload_content=False))


def job_pods(
    core: client.CoreV1Api, job: dict[str, Any] | str, batch: Any = None
) -> list[dict[str, Any]]:
    if isinstance(job, str):
        job = get_job(batch, job)
    uid = job["metadata"]["uid"]
    items: list[dict[str, Any]] = raw(
        core.list_namespaced_pod(
            NS,
            label_selector=f"batch.kubernetes.io/controller-uid={uid}",
            _preload_content=False,
        )
    )["items"]
    return items


def condition(job: dict[str, Any], ctype: str) -> Any:
    """The condition of ``ctype`` (a dict) or ``None``."""
    for cond in job.get("status", {}).get("conditions") or []:
        if cond["type"] == ctype:
            return dict(cond)
    return None


def wait_job(
    batch: client.BatchV1Api, name: str, ctype: str = "Complete", timeout: float = 20.0
) -> dict[str, Any]:
    """Wait for a True condition of ``ctype``; return the Job."""

    def check() -> dict[str, Any] | None:
        job = get_job(batch, name)
        cond = condition(job, ctype)
        return job if cond is not None and cond["status"] == "True" else None

    result: dict[str, Any] = wait_for(check, timeout, f"job {name} condition {ctype}")
    return result


def assert_ended(job: dict[str, Any], types: tuple[str, str], reason: str, message: str) -> None:
    """Both conditions of a two-step ending (FailureTarget → Failed, SuccessCriteriaMet →
    Complete) are True with the reason and message of kubernetes-jobs.md §4."""
    for ctype in types:
        cond = condition(job, ctype)
        assert cond is not None, f"no {ctype} condition"
        assert (cond["status"], cond["reason"], cond["message"]) == ("True", reason, message)


def phase(pod: dict[str, Any]) -> str:
    return str(pod.get("status", {}).get("phase"))


def index_of(pod: dict[str, Any]) -> int:
    return int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])


def poke_and_settle(batch: client.BatchV1Api, sim: Any, name: str) -> None:
    """Make the Job controller sync ``name`` now and wait until it (and all queued work) ran.

    A "must not have happened" check made right after a ``FakeClock.advance`` or an event
    proves nothing if the controller simply has not run yet. The poke (a metadata-only write,
    an event like any other) forces a sync at the current clock time; ``sim.settle()`` waits
    until that sync, every timer wake-up the advance fired and every event so far are processed.
    """
    # A new value each time: a write that changes nothing emits no event.
    patch = {"metadata": {"annotations": {"kubesim.test/poke": str(next(_POKES))}}}
    batch.patch_namespaced_job(name, NS, patch)
    assert sim.settle(), "the job controller did not settle"
