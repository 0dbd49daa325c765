"""Recorded Job scenarios (real cluster or kubesim) reduced to facts that can be compared.

A trace is what ``tests/kubesim/recorder.py`` writes, one JSON object a line (the format of
``/work/shared/real-cluster/README.md``)::

    {"t": 2.11, "watch": "pods"|"jobs"|"events", "type": "ADDED"|..., "object": {...}}
    {"t": 8.0, "action": "delete-pods"|"evict"|"suspend"|"resume"|"delete-job"}
    {"t": 3.0, "watch": "pods", "error": "..."}          # a broken watch, resumed

:func:`summarize` keeps what a cluster must get right and drops what only depends on timing,
names or the machine: the Job's condition transitions (and messages), its startTime coming
and going, its final status counters; per completion index, each pod attempt (what the Job
controller wrote into it, phases, container waiting reasons, termination and its message,
pod conditions and the Ready reasons in order, disruption, tracking finalizer) and the order
of the attempts' milestones; the Event reasons (and types) per kind of involved object.
:func:`facts` flattens a summary into ``{"dotted.key": value}``, and :func:`differences`
lists the keys on which two summaries disagree.

:func:`scenario_from_trace` rebuilds the scenario that produced a trace: the Job as the user
sent it (server-set fields stripped), the timed actions and the duration.

Pure: no I/O beyond :func:`load_trace` reading a file.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

__all__ = [
    "ARTEFACT_EVENT_REASONS",
    "SETUP_OBJECTS",
    "STATUS_COUNTERS",
    "Attempt",
    "Scenario",
    "Summary",
    "differences",
    "facts",
    "job_as_sent",
    "load_trace",
    "matches",
    "scenario_from_trace",
    "summarize",
]

Obj = dict[str, Any]

TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"

#: Event reasons that come from the recording cluster's set-up, not from Kubernetes (README).
ARTEFACT_EVENT_REASONS = frozenset({"MissingClusterDNS"})

#: The Job status fields compared at the end of a scenario (absent and 0 are told apart).
STATUS_COUNTERS = (
    "succeeded",
    "failed",
    "active",
    "ready",
    "terminating",
    "completedIndexes",
    "failedIndexes",
    "uncountedTerminatedPods",
)

_TERMINAL = ("Succeeded", "Failed")

# Labels the API server adds to a Job and its template (generated selector, §2).
_GENERATED_LABELS = frozenset(
    {
        "batch.kubernetes.io/controller-uid",
        "batch.kubernetes.io/job-name",
        "controller-uid",
        "job-name",
    }
)
_SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "namespace",
    "selfLink",
    "finalizers",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)

#: Objects a scenario needs in its namespace before the Job, which a trace does not record.
SETUP_OBJECTS: dict[str, tuple[Obj, ...]] = {
    "quota-refused": (
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "tight"},
            "spec": {"hard": {"pods": "0"}},
        },
    ),
}


def load_trace(path: str | Path) -> list[Obj]:
    """The lines of a trace file, in file order."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# ------------------------------------------------------------------------------ summary


@dataclass
class Attempt:
    """One pod of a completion index, from creation to its last recorded state."""

    name: str
    created: dict[str, Any] = field(default_factory=dict)
    phases: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    terminated: dict[str, tuple[str, int]] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    ready: list[str] = field(default_factory=list)
    conditions: set[str] = field(default_factory=set)
    reason: str | None = None
    disruption: str | None = None
    not_scheduled: str | None = None
    finalizer_removed: bool = False
    had_finalizer: bool = False
    deleting: bool = False
    deleted: bool = False


@dataclass
class Summary:
    """What :func:`summarize` keeps of a trace (see the module docstring)."""

    conditions: list[str] = field(default_factory=list)
    condition_messages: dict[str, str] = field(default_factory=dict)
    start_time: list[str] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    job_deleted: bool = False
    indexes: dict[int, list[Attempt]] = field(default_factory=dict)
    timelines: dict[int, list[str]] = field(default_factory=dict)
    events: dict[str, set[str]] = field(default_factory=dict)
    event_types: dict[str, set[str]] = field(default_factory=dict)
    event_messages: dict[str, set[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def _condition_keys(job: Obj) -> list[str]:
    conditions = (job.get("status") or {}).get("conditions") or []
    return [f"{c.get('type')}={c.get('status')}/{c.get('reason') or ''}" for c in conditions]


def _final_status(job: Obj) -> dict[str, Any]:
    status = job.get("status") or {}
    result: dict[str, Any] = {}
    for key in STATUS_COUNTERS:
        value = status.get(key)
        if key == "uncountedTerminatedPods" and isinstance(value, dict):
            value = {k: len(v or []) for k, v in sorted(value.items())}
        result[key] = value
    for key in ("startTime", "completionTime"):
        result[key] = "set" if status.get(key) else None
    return result


def _pod_index(pod: Obj) -> int | None:
    meta = pod.get("metadata") or {}
    for source in (meta.get("annotations") or {}, meta.get("labels") or {}):
        value = source.get(INDEX_ANNOTATION)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _condition(pod: Obj, ctype: str) -> Obj | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def _as_created(pod: Obj) -> dict[str, Any]:
    """What the Job controller wrote into a pod it created, with the Job's name and uid as
    ``JOB`` and ``UID`` (annotations and labels with their values: the index and its failure
    counts matter)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    owners: list[Obj] = meta.get("ownerReferences") or []
    owner: Obj = next((o for o in owners if o.get("controller")), {})
    job, uid = str(owner.get("name", "")), str(owner.get("uid", ""))

    def plain(value: Obj) -> Obj:
        text = json.dumps(value, sort_keys=True)
        if uid:
            text = text.replace(uid, "UID")
        if job:
            text = re.sub(rf'(?<![\w-]){re.escape(job)}(?=-|"|$)', "JOB", text)
        result: Obj = json.loads(text)
        return result

    return plain(
        {
            "generateName": meta.get("generateName"),
            "labels": meta.get("labels") or {},
            "annotations": meta.get("annotations") or {},
            "owner": {
                k: owner.get(k) for k in ("apiVersion", "kind", "controller", "blockOwnerDeletion")
            },
            "finalizers": meta.get("finalizers") or [],
            "hostname": spec.get("hostname"),
            "subdomain": spec.get("subdomain"),
            "env": {
                str(c.get("name")): c.get("env") or []
                for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
            },
        }
    )


class _PodTracker:
    def __init__(self, summary: Summary) -> None:
        self.summary = summary
        self.by_uid: dict[str, tuple[int, int]] = {}

    def _milestone(self, index: int, number: int, what: str) -> None:
        entry = f"a{number} {what}"
        timeline = self.summary.timelines.setdefault(index, [])
        if entry not in timeline:
            timeline.append(entry)

    def observe(self, event_type: str, pod: Obj) -> None:
        index = _pod_index(pod)
        if index is None:
            return
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or meta.get("name"))
        attempts = self.summary.indexes.setdefault(index, [])
        if uid not in self.by_uid:
            self.by_uid[uid] = (index, len(attempts))
            attempts.append(Attempt(name=str(meta.get("name")), created=_as_created(pod)))
            self._milestone(index, len(attempts) - 1, "created")
        index, number = self.by_uid[uid]
        attempt = self.summary.indexes[index][number]
        status = pod.get("status") or {}

        phase = status.get("phase") or "Pending"
        if not attempt.phases or attempt.phases[-1] != phase:
            attempt.phases.append(phase)
        if meta.get("deletionTimestamp") and not attempt.deleting:
            attempt.deleting = True
            self._milestone(index, number, "deleting")
        if phase in _TERMINAL:
            self._milestone(index, number, phase)

        statuses = (status.get("initContainerStatuses") or []) + (
            status.get("containerStatuses") or []
        )
        for cs in statuses:
            state = cs.get("state") or {}
            waiting = state.get("waiting")
            if waiting and waiting.get("reason") and waiting["reason"] not in attempt.waiting:
                attempt.waiting.append(waiting["reason"])
            terminated = state.get("terminated")
            if terminated:
                attempt.terminated[str(cs.get("name"))] = (
                    str(terminated.get("reason")),
                    int(terminated.get("exitCode", 0)),
                )
                attempt.messages[str(cs.get("name"))] = str(terminated.get("message") or "")
        if status.get("reason") and attempt.reason is None:
            attempt.reason = str(status["reason"])
        for cond in status.get("conditions") or []:
            attempt.conditions.add(
                f"{cond.get('type')}={cond.get('status')}/{cond.get('reason') or ''}"
            )
        ready = _condition(pod, "Ready")
        if ready is not None:
            entry = f"{ready.get('status')}/{ready.get('reason') or ''}"
            if entry not in attempt.ready:
                attempt.ready.append(entry)

        disruption = _condition(pod, "DisruptionTarget")
        if disruption and disruption.get("status") == "True" and attempt.disruption is None:
            attempt.disruption = str(disruption.get("reason"))
        scheduled = _condition(pod, "PodScheduled")
        if scheduled and scheduled.get("status") == "False" and attempt.not_scheduled is None:
            attempt.not_scheduled = str(scheduled.get("reason"))

        # A pod cannot be removed while it has a finalizer: its DELETED event ends the
        # tracking too, whether or not the object it carries still lists the finalizer (a real
        # API server sends the last stored state when the finalizer removal deletes it).
        has_finalizer = TRACKING_FINALIZER in (meta.get("finalizers") or [])
        attempt.had_finalizer = attempt.had_finalizer or has_finalizer
        gone = event_type == "DELETED"
        if attempt.had_finalizer and (gone or not has_finalizer) and not attempt.finalizer_removed:
            attempt.finalizer_removed = True
            self._milestone(index, number, "untracked")
        if gone:
            attempt.deleted = True
            self._milestone(index, number, "deleted")


class _Names:
    """The names a trace's objects carry, to take out of Event messages: what remains is the
    text a cluster must get right (pod, Job, namespace, node and image names, uids differ
    from one recording to the next)."""

    def __init__(self) -> None:
        self.found: dict[str, str] = {}

    def see(self, watch: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        if watch == "events":
            return
        kind = "POD" if watch == "pods" else "JOB"
        self.found[str(meta.get("name"))] = kind
        self.found[str(meta.get("uid"))] = "UID"
        self.found[str(meta.get("namespace"))] = "NS"
        spec = obj.get("spec") or {}
        if watch == "jobs":
            spec = (spec.get("template") or {}).get("spec") or {}
        if spec.get("nodeName"):
            self.found[str(spec["nodeName"])] = "NODE"
        for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            self.found[str(container.get("image"))] = "IMAGE"

    def plain(self, text: str) -> str:
        for name in sorted(self.found, key=len, reverse=True):
            if name and name != "None":
                text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", self.found[name], text)
        # Pods the API refused were never seen: their generated names.
        return re.sub(r'pods "[a-z0-9.-]+"', 'pods "POD"', text)


def summarize(lines: Iterable[Mapping[str, Any]]) -> Summary:
    """Reduce a trace (file lines, or events recorded from kubesim) to a :class:`Summary`."""
    summary = Summary()
    pods = _PodTracker(summary)
    shown: set[str] = set()
    last_job: Obj | None = None
    names = _Names()
    messages: list[tuple[str, str, str]] = []
    for line in lines:
        if "error" in line:
            summary.errors.append(f"{line.get('watch')}: {line['error']}".strip())
            continue
        watch = line.get("watch")
        obj = line.get("object")
        if watch is None or not isinstance(obj, dict):
            continue
        event_type = str(line.get("type"))
        names.see(watch, obj)
        if watch == "jobs":
            keys = _condition_keys(obj)
            for key in keys:
                if key not in shown:
                    summary.conditions.append(key)
            shown = set(keys)
            for cond in (obj.get("status") or {}).get("conditions") or []:
                key = f"{cond.get('type')}/{cond.get('reason') or ''}"
                summary.condition_messages[key] = str(cond.get("message") or "")
            started = "set" if (obj.get("status") or {}).get("startTime") else "unset"
            if not summary.start_time or summary.start_time[-1] != started:
                summary.start_time.append(started)
            last_job = obj
            summary.job_deleted = event_type == "DELETED"
        elif watch == "pods":
            pods.observe(event_type, obj)
        elif watch == "events":
            reason = obj.get("reason")
            if not reason or reason in ARTEFACT_EVENT_REASONS:
                continue
            kind = str((obj.get("involvedObject") or {}).get("kind"))
            summary.events.setdefault(kind, set()).add(str(reason))
            summary.event_types.setdefault(kind, set()).add(f"{reason}/{obj.get('type')}")
            messages.append((kind, str(reason), str(obj.get("message") or "")))
    # Names only known by the end (an Event may name a pod before its watch shows it).
    for kind, reason, message in messages:
        summary.event_messages.setdefault(kind, set()).add(f"{reason}: {names.plain(message)}")
    if last_job is not None:
        summary.status = _final_status(last_job)
    return summary


def facts(summary: Summary) -> dict[str, Any]:
    """The summary as ``{"dotted.key": JSON-like value}`` (what :func:`differences` compares)."""
    result: dict[str, Any] = {
        "job.conditions": list(summary.conditions),
        "job.condition_messages": dict(sorted(summary.condition_messages.items())),
        "job.start_time": list(summary.start_time),
    }
    for key, value in summary.status.items():
        result[f"job.status.{key}"] = value
    result["job.deleted"] = summary.job_deleted
    for kind in sorted(summary.events):
        result[f"events.{kind}"] = sorted(summary.events[kind])
        result[f"event_types.{kind}"] = sorted(summary.event_types[kind])
        result[f"event_messages.{kind}"] = sorted(summary.event_messages[kind])
    for index in sorted(summary.indexes):
        attempts = summary.indexes[index]
        result[f"index.{index}.attempts"] = len(attempts)
        result[f"index.{index}.timeline"] = list(summary.timelines.get(index, []))
        for number, attempt in enumerate(attempts):
            prefix = f"index.{index}.a{number}"
            result[f"{prefix}.created"] = attempt.created
            result[f"{prefix}.phases"] = list(attempt.phases)
            result[f"{prefix}.waiting"] = list(attempt.waiting)
            result[f"{prefix}.terminated"] = {
                name: f"{reason}/{code}"
                for name, (reason, code) in sorted(attempt.terminated.items())
            }
            result[f"{prefix}.termination_messages"] = dict(sorted(attempt.messages.items()))
            result[f"{prefix}.ready"] = list(attempt.ready)
            result[f"{prefix}.conditions"] = sorted(attempt.conditions)
            result[f"{prefix}.reason"] = attempt.reason
            result[f"{prefix}.disruption"] = attempt.disruption
            result[f"{prefix}.not_scheduled"] = attempt.not_scheduled
            result[f"{prefix}.finalizer_removed"] = attempt.finalizer_removed
    return result


def differences(expected: Summary, observed: Summary) -> dict[str, tuple[Any, Any]]:
    """``{key: (expected value, observed value)}`` for every fact on which they differ.

    A fact one side lacks (an attempt or an Event kind the other never had) is ``None`` there.
    """
    left, right = facts(expected), facts(observed)
    keys = sorted(set(left) | set(right))
    return {k: (left.get(k), right.get(k)) for k in keys if left.get(k) != right.get(k)}


def matches(pattern: str, key: str) -> bool:
    """Whether a declared ``pattern`` covers the fact ``key``: the key itself, a dotted prefix
    of it (``index.0`` covers ``index.0.a1.phases``), with ``*`` matching within a segment."""
    parts, pattern_parts = key.split("."), pattern.split(".")
    if len(pattern_parts) > len(parts):
        return False
    return all(fnmatchcase(p, q) for p, q in zip(parts, pattern_parts, strict=False))


# ----------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """A Job, what is done to it and when, and how long it is watched (scenario seconds)."""

    name: str
    job: Obj
    actions: tuple[tuple[float, str], ...] = ()
    duration: float = 0.0
    setup: tuple[Obj, ...] = ()

    def to_json(self) -> Obj:
        return {
            "name": self.name,
            "job": self.job,
            "actions": [{"t": t, "action": a} for t, a in self.actions],
            "duration": self.duration,
            "setup": list(self.setup),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Scenario:
        return cls(
            name=str(data["name"]),
            job=dict(data["job"]),
            actions=tuple((float(a["t"]), str(a["action"])) for a in data.get("actions") or []),
            duration=float(data.get("duration") or 0.0),
            setup=tuple(dict(o) for o in data.get("setup") or []),
        )


def _user_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (labels or {}).items() if k not in _GENERATED_LABELS}


def job_as_sent(job: Mapping[str, Any]) -> Obj:
    """The Job as a user would create it: server-set metadata, status and the generated
    selector and labels removed (defaulted spec fields are kept: sending them is harmless)."""
    body = copy.deepcopy(dict(job))
    body.pop("status", None)
    meta = body.setdefault("metadata", {})
    for key in _SERVER_METADATA:
        meta.pop(key, None)
    labels = _user_labels(meta.pop("labels", None))
    if labels:
        meta["labels"] = labels
    spec = body.setdefault("spec", {})
    if not spec.get("manualSelector"):
        spec.pop("selector", None)
        spec.pop("manualSelector", None)
    template_meta = (spec.get("template") or {}).get("metadata") or {}
    template_labels = _user_labels(template_meta.pop("labels", None))
    if template_labels:
        template_meta["labels"] = template_labels
    body.setdefault("apiVersion", "batch/v1")
    body.setdefault("kind", "Job")
    return body


def scenario_from_trace(name: str, lines: Iterable[Mapping[str, Any]]) -> Scenario:
    """The scenario that produced a trace: its first ADDED Job, its actions, its last ``t``."""
    job: Obj | None = None
    actions: list[tuple[float, str]] = []
    duration = 0.0
    for line in lines:
        duration = max(duration, float(line.get("t") or 0.0))
        if "action" in line and "error" not in line:
            actions.append((float(line["t"]), str(line["action"])))
        elif job is None and line.get("watch") == "jobs" and line.get("type") == "ADDED":
            job = job_as_sent(line["object"])
    if job is None:
        raise ValueError(f"trace {name!r} has no ADDED Job: nothing to replay")
    return Scenario(
        name=name,
        job=job,
        actions=tuple(actions),
        duration=duration,
        setup=tuple(copy.deepcopy(SETUP_OBJECTS.get(name, ()))),
    )
