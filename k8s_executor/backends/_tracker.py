"""What the pods and Jobs of a run say about its indexes: a pure state machine.

The Kubernetes backend feeds it pod and Job objects (plain dicts, as watched) and gets
back what happened to each index: it started, it finished (and how), or it is stuck
before starting. Keeping this free of I/O lets the tests drive every Kubernetes state
directly, and keeps the backend a thin layer of API calls.

When is an index finished? A pod that Succeeded settles its index at once: the worker
exits 0 only after its outcome is stored, and the Job controller never retries a
succeeded index (kubernetes-jobs.md §3: only its first success counts), so there is
nothing to wait for — and waiting for ``status.completedIndexes`` would cost the
controller's status batching (about a second per update on a real cluster). Every
failure is the Job controller's to decide (retries, pod failure policy, disruptions): it
says so in ``status.failedIndexes`` and in the Job's terminal conditions; the pods say
why (exit code, OOMKilled, evicted, logs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .._contract import LABEL_INDEX
from . import _manifest as m
from ._base import QUOTA_WAIT, IndexExit

# Waiting reasons after which a container will not start without outside help.
IMAGE_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
INDEX_LABEL = LABEL_INDEX


@dataclass(frozen=True)
class Started:
    """An index's worker is running."""

    batch_id: str
    index: int


@dataclass(frozen=True)
class Finished:
    """An index is done for good (succeeded, or failed with no retry left)."""

    batch_id: str
    index: int
    exit: IndexExit


@dataclass(frozen=True)
class Stuck:
    """A worker pod has been unable to start for longer than the startup timeout."""

    batch_id: str
    index: int
    reason: str
    message: str


Event = Started | Finished | Stuck


def parse_indexes(text: str | None) -> set[int]:
    """Parse a Job status index set such as ``"0,1,3-5,7"``."""
    result: set[int] = set()
    for part in (text or "").split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        result.update(range(int(low), int(high or low) + 1))
    return result


def pod_exit(pod: Mapping[str, Any]) -> IndexExit:
    """How a pod's worker ended, from its status."""
    status = pod.get("status") or {}
    terminated: Mapping[str, Any] = {}
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") == m.CONTAINER:
            terminated = (cs.get("state") or {}).get("terminated") or {}
    disruption = next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") == "DisruptionTarget" and c.get("status") == "True"
        ),
        None,
    )
    reason = terminated.get("reason")
    message = ""
    if reason in (None, "Error", "Completed") and status.get("reason"):
        reason, message = status.get("reason"), status.get("message") or ""
    if disruption is not None and reason in (None, "Error", "Completed", "ContainerStatusUnknown"):
        reason = disruption.get("reason")
        message = disruption.get("message") or ""
    exit_code = terminated.get("exitCode")
    signal = terminated.get("signal")
    if signal is None and isinstance(exit_code, int) and exit_code > 128:
        signal = exit_code - 128  # the shell convention containerd follows
    return IndexExit(
        exit_code=exit_code,
        signal=signal,
        reason=reason,
        message=message,
        log_tail=terminated.get("message") or "",
    )


def waiting_problem(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """Why a pending pod cannot start, if it is a reason that will not resolve itself."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return "Unschedulable", cond.get("message") or ""
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_REASONS | CONFIG_REASONS:
            return str(waiting["reason"]), waiting.get("message") or ""
    return None


@dataclass
class _Index:
    started: bool = False
    running: bool = False  # its current pod is Running
    finished: bool = False
    last_exit: IndexExit | None = None
    stuck_since: float | None = None
    stuck: tuple[str, str] | None = None
    has_pod: bool = False  # a pod of it exists, not yet terminal
    failed_at: float | None = None  # in the Job's failedIndexes, its pod's end not seen yet


FINAL_STATE_WAIT = 5.0
"""Seconds an index the Job lists failed waits for its pod's final state (the reason: OOM,
a signal, an exit code) on the pods watch before it is reported without one."""

NO_POD = "NoPodCreated"
"""The reason of a batch whose Job, free to run, got no pod for the startup timeout."""
REFUSED = "FailedCreate"
"""The reason of a batch whose pods the API server refuses for good (a quota smaller than
one pod, PodSecurity, a LimitRange bound, an admission webhook): known from the Job's
``FailedCreate`` events, so reported at once."""

_BINARY_SUFFIXES = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL_SUFFIXES = {
    "n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18,
}  # fmt: skip
_QUANTITY = re.compile(
    r"([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?"
)


def parse_quantity(text: str | int | float) -> Fraction:
    """A Kubernetes quantity, exactly (``"500m"`` → 1/2, ``"2Gi"`` → 2147483648, ``"1e3"``).

    Raises:
        ValueError: not a quantity.
    """
    match = _QUANTITY.fullmatch(str(text).strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number, suffix = Fraction(match.group(1)), match.group(2) or ""
    if suffix in _BINARY_SUFFIXES:
        return number * (1 << 10 * _BINARY_SUFFIXES[suffix])
    exponent = _DECIMAL_SUFFIXES[suffix] if suffix in _DECIMAL_SUFFIXES else int(suffix[1:])
    return number * (10**exponent if exponent >= 0 else Fraction(1, 10**-exponent))


def _quantity(text: str) -> float:
    """A Kubernetes quantity as a number (``"500m"`` → 0.5, ``"2Gi"`` → 2147483648)."""
    return float(parse_quantity(text))


def _amounts(text: str) -> dict[str, float]:
    """``"pods=1,requests.cpu=500m"`` → ``{"pods": 1.0, "requests.cpu": 0.5}``."""
    found = {}
    for part in text.split(","):
        name, _, value = part.strip().partition("=")
        if name and value:
            found[name] = _quantity(value)
    return found


QUEUED = "queued: "
"""How a batch whose Kueue Workload waits for quota is described (then Kueue's message)."""


def quota_note(message: str) -> str:
    """``waiting for quota: NAME, requested: ..., used: ..., limited: ...`` from the API
    server's refusal of a pod by a full ResourceQuota."""
    _, found, rest = message.partition("exceeded quota: ")
    return f"{QUOTA_WAIT}: {rest if found else message}"


INADMISSIBLE = "Inadmissible"
"""The reason of a batch whose Kueue Workload can never be admitted."""


def workload_verdict(workload: Mapping[str, Any]) -> tuple[str, str] | None:
    """What a Kueue Workload's conditions mean for its batch: ``("fail", why)`` when it
    can never be admitted (no such LocalQueue or ClusterQueue, larger than the queue's
    whole quota), ``("wait", why)`` while it is queued, None once it holds quota."""
    for cond in (workload.get("status") or {}).get("conditions") or []:
        if cond.get("type") != "QuotaReserved":
            continue
        if cond.get("status") == "True":
            return None
        message = str(cond.get("message") or cond.get("reason") or "queued")
        never = ("> maximum capacity", "unavailable in ClusterQueue")
        if cond.get("reason") == "Inadmissible" or any(n in message for n in never):
            return "fail", message
        return "wait", message
    return None


def refusal(message: str) -> str | None:
    """What a Job's ``FailedCreate`` message means for its batch.

    ``"wait"``: a ResourceQuota is full only because pods use it (this run's or others'):
    room will come as they end. ``"fail"``: it will never fit (one pod asks more than the
    quota's limit, or the quota wants limits the pod lacks), or PodSecurity, a LimitRange
    or an admission webhook forbids the pod. None: not a refusal (an API error the Job
    controller will retry).
    """
    if "exceeded quota:" in message:
        parts = {
            key.strip(): value
            for key, _, value in (
                p.partition(":") for p in message.split("exceeded quota:", 1)[1].split(", ")
            )
        }
        try:
            requested = _amounts(parts.get("requested", ""))
            limited = _amounts(parts.get("limited", ""))
        except ValueError:
            return "fail"
        too_big = any(amount > limited.get(name, amount) for name, amount in requested.items())
        return "fail" if too_big else "wait"
    if " is forbidden: " in message or "denied the request" in message:
        return "fail"
    return None


@dataclass
class _Job:
    batch_id: str
    indexes: list[_Index]
    done: bool = False
    # Since when the Job has been free to run (not suspended, parallelism > 0) with no
    # pod of it alive; None while it waits for a worker slot or has a pod. A quota, a
    # LimitRange or an admission webhook that refuses its pods leaves no pod to be stuck:
    # this is the startup clock of that case.
    podless_since: float | None = None
    active: bool = False
    waiting_for: str = ""  # a full quota's refusal, or QUEUED + Kueue's message (progress)
    refused: bool = False  # reported as refused for good


@dataclass
class RunTracker:
    """The state of every index of a run, updated from pod and Job objects."""

    startup_timeout: float
    # For start-up errors that do not resolve by themselves (IMAGE_REASONS, CONFIG_REASONS):
    # a shorter bound (None: startup_timeout).
    error_timeout: float | None = None
    jobs: dict[str, _Job] = field(default_factory=dict)  # by batch id
    # When a pod of the run was last seen running (refreshed by every tick while one is).
    # Pods of a run share spec, image and Secrets: a pending pod beside running ones waits
    # for room (a full cluster, an autoscaler, one node's pull trouble), not for a fix, so
    # its startup clock counts from here at the latest.
    last_busy: float | None = None

    def add_batch(self, batch_id: str, indexes: int) -> None:
        """Start tracking a batch's Job."""
        self.jobs[batch_id] = _Job(batch_id, [_Index() for _ in range(indexes)])

    def unfinished(self) -> Iterable[tuple[str, int]]:
        """(batch, index) of every index not finished yet."""
        for job in self.jobs.values():
            for i, entry in enumerate(job.indexes):
                if not entry.finished:
                    yield job.batch_id, i

    def _entry(self, obj: Mapping[str, Any]) -> tuple[_Job, int, _Index] | None:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        job = self.jobs.get(labels.get(m.LABEL_BATCH, ""))
        index_text = labels.get(INDEX_LABEL) or (meta.get("annotations") or {}).get(INDEX_LABEL)
        if job is None or index_text is None or not str(index_text).isdigit():
            return None
        index = int(index_text)
        if index >= len(job.indexes):
            return None
        return job, index, job.indexes[index]

    def on_pod(self, event_type: str, pod: Mapping[str, Any], now: float) -> list[Event]:
        """Digest a pod event."""
        found = self._entry(pod)
        if found is None:
            return []
        job, index, entry = found
        if entry.finished:
            return []
        events: list[Event] = []
        phase = (pod.get("status") or {}).get("phase")
        was_running, had_pod = entry.running, entry.has_pod
        entry.running = phase == "Running" and event_type != "DELETED"
        entry.has_pod = phase in ("Pending", "Running") and event_type != "DELETED"
        if entry.has_pod:
            job.podless_since = None
            if not had_pod:
                # A new pod: room came. (An update of a pod that got in before the quota
                # filled says nothing about room for the ones still refused.)
                job.waiting_for = ""
        elif job.active and job.podless_since is None:
            job.podless_since = now
        if entry.running or was_running:
            self.last_busy = now
        if phase in ("Running", "Succeeded", "Failed") and not entry.started:
            entry.started = True
            events.append(Started(job.batch_id, index))
        if phase == "Succeeded":
            events.extend(self._finish(job, index, entry, IndexExit(exit_code=0)))
        elif phase == "Failed":
            entry.last_exit = pod_exit(pod)
            entry.stuck_since = entry.stuck = None
            if entry.failed_at is not None:
                # The Job said it failed first (another watch): now its reason is known.
                events.extend(self._finish(job, index, entry, entry.last_exit))
        elif phase == "Running":
            entry.stuck_since = entry.stuck = None  # it got over it
        elif phase == "Pending" and event_type != "DELETED":
            problem = waiting_problem(pod)
            if problem is None:
                entry.stuck_since = entry.stuck = None
            else:
                if entry.stuck_since is None:
                    entry.stuck_since = now
                entry.stuck = problem
                events.extend(self._check_stuck(job, index, entry, now))
        return events

    def on_job(
        self, event_type: str, job_obj: Mapping[str, Any], now: float | None = None
    ) -> list[Event]:
        """Digest a Job event: indexes the controller declared done, terminal states,
        and whether it is free to run (``now``: when it was seen, for the startup clock)."""
        labels = (job_obj.get("metadata") or {}).get("labels") or {}
        job = self.jobs.get(labels.get(m.LABEL_BATCH, ""))
        if job is None or job.done:
            return []
        spec = job_obj.get("spec") or {}
        active = not spec.get("suspend") and (spec.get("parallelism") or 0) > 0
        if now is not None and active != job.active:
            job.active = active
            alive = any(e.has_pod for e in job.indexes)
            job.podless_since = now if active and not alive else None
        status = job_obj.get("status") or {}
        completed = parse_indexes(status.get("completedIndexes"))
        failed = parse_indexes(status.get("failedIndexes"))
        events: list[Event] = []
        for i, entry in enumerate(job.indexes):
            if entry.finished:
                continue
            if i in completed:
                events.extend(self._finish(job, i, entry, IndexExit(exit_code=0)))
            elif i in failed:
                if entry.last_exit is None and now is not None:
                    # The pods watch may not have delivered the pod's end yet (two
                    # watches, no order between them): wait for it, a bounded while (tick).
                    if entry.failed_at is None:
                        entry.failed_at = now
                    continue
                events.extend(self._finish(job, i, entry, entry.last_exit or _unknown_exit()))
        terminal = _terminal_condition(status)
        if event_type == "DELETED" and terminal is None:
            terminal = ("JobDeleted", "the Job was deleted before this index finished")
        if terminal is not None:
            reason, message = terminal
            for i, entry in enumerate(job.indexes):
                if entry.failed_at is not None and reason == "JobFinished":
                    continue  # its pod's end is still to come: tick() bounds the wait
                if not entry.finished:
                    last = entry.last_exit
                    exit = IndexExit(
                        exit_code=last.exit_code if last else None,
                        signal=last.signal if last else None,
                        reason=reason,
                        message=message,
                        log_tail=last.log_tail if last else "",
                    )
                    events.extend(self._finish(job, i, entry, exit))
            job.done = True
        return events

    def tick(self, now: float) -> list[Event]:
        """Report pods stuck for longer than the startup timeout."""
        if any(e.running and not e.finished for j in self.jobs.values() for e in j.indexes):
            self.last_busy = now
        events: list[Event] = []
        for job in self.jobs.values():
            for i, entry in enumerate(job.indexes):
                events.extend(self._check_stuck(job, i, entry, now))
                failed_at = entry.failed_at
                if (
                    not entry.finished
                    and failed_at is not None
                    and now - failed_at > FINAL_STATE_WAIT
                ):
                    events.extend(self._finish(job, i, entry, entry.last_exit or _unknown_exit()))
            events.extend(self._check_podless(job, now))
        return events

    def on_refusal(self, batch_id: str, message: str, now: float) -> list[Event]:
        """Digest a ``FailedCreate`` event of a batch's Job (see :func:`refusal`)."""
        job = self.jobs.get(batch_id)
        if job is None or job.done or job.refused:
            return []
        meaning = refusal(message)
        if meaning == "wait":
            # Waiting for room is not being stuck: no startup clock until a pod appears.
            job.waiting_for = message
            return []
        if meaning != "fail":
            return []
        waiting = [i for i, e in enumerate(job.indexes) if not e.finished and not e.has_pod]
        if not waiting:
            return []
        job.refused = True
        return [Stuck(batch_id, waiting[0], REFUSED, message)]

    def on_workload(self, batch_id: str, workload: Mapping[str, Any]) -> list[Event]:
        """Digest a Kueue Workload of a batch's Job (see :func:`workload_verdict`)."""
        job = self.jobs.get(batch_id)
        if job is None or job.done or job.refused:
            return []
        verdict = workload_verdict(workload)
        if verdict is None:
            job.waiting_for = ""
            return []
        meaning, message = verdict
        if meaning == "wait":
            job.waiting_for = f"{QUEUED}{message}"
            return []
        waiting = [i for i, e in enumerate(job.indexes) if not e.finished and not e.has_pod]
        if not waiting:
            return []
        job.refused = True
        return [Stuck(batch_id, waiting[0], INADMISSIBLE, message)]

    def waiting_reason(self, batch_id: str) -> str:
        """Why a batch's calls that have not started wait, as progress shows it.

        A pod's start-up problem (``CreateContainerConfigError: secret "x" not found``,
        ``ImagePullBackOff: ...``, ``Unschedulable: 0/3 nodes are available: ...``), then
        ``waiting for quota: NAME, requested: ..., used: ..., limited: ...`` while a
        ResourceQuota full of running pods refuses its pods, then ``queued: <Kueue's
        message>`` while its Workload waits. "" when nothing is known to hold it up: its
        pods are on their way, or it waits for one of the executor's own worker slots.
        """
        job = self.jobs.get(batch_id)
        if job is None or job.done:
            return ""
        for entry in job.indexes:
            if not entry.finished and entry.has_pod and entry.stuck is not None:
                reason, message = entry.stuck
                return f"{reason}: {message}" if message else reason
        if job.waiting_for.startswith(QUEUED):
            return job.waiting_for
        if job.waiting_for:
            return quota_note(job.waiting_for)
        return ""

    def waiting_note(self) -> str:
        """The run's note for progress: the first :meth:`waiting_reason`, in launch order,
        of a batch that has one ("" when none has). Batches of one run share their pod
        spec, so the first reason is usually everyone's."""
        for batch_id in self.jobs:
            reason = self.waiting_reason(batch_id)
            if reason:
                return reason
        return ""

    def limit(self, reason: str) -> float:
        """Seconds a pod may stay unable to start for ``reason``."""
        if self.error_timeout is not None and reason in IMAGE_REASONS | CONFIG_REASONS:
            return min(self.error_timeout, self.startup_timeout)
        return self.startup_timeout

    def _check_podless(self, job: _Job, now: float) -> list[Event]:
        if job.done or not job.active or job.podless_since is None or job.waiting_for:
            # Refused for a full quota: waiting for room (pods of this run or others ending,
            # then the Job controller's next try, which backs off up to minutes), no clock.
            return []
        since = job.podless_since
        if self.last_busy is not None:
            since = max(since, self.last_busy)
        if now - since < self.startup_timeout:
            return []
        job.podless_since = None  # report once
        waiting = [i for i, e in enumerate(job.indexes) if not e.finished and not e.has_pod]
        if not waiting:
            return []
        # One event: the backend fails every unfinished index of the batch with it.
        message = "its Job got no pod: the cluster refused to create them"
        return [Stuck(job.batch_id, waiting[0], NO_POD, message)]

    def forget(self, batch_id: str) -> None:
        """Stop tracking a batch (its Job is gone and every index reported)."""
        self.jobs.pop(batch_id, None)

    def _check_stuck(self, job: _Job, index: int, entry: _Index, now: float) -> list[Event]:
        if entry.finished or entry.stuck is None or entry.stuck_since is None:
            return []
        # It fails only after `startup_timeout` in which nothing of the run ran: never
        # killing work that is making progress (see `last_busy`).
        since = entry.stuck_since
        if self.last_busy is not None:
            since = max(since, self.last_busy)
        if now - since < self.limit(entry.stuck[0]):
            return []
        reason, message = entry.stuck
        entry.stuck = entry.stuck_since = None  # report once
        return [Stuck(job.batch_id, index, reason, message)]

    def _finish(self, job: _Job, index: int, entry: _Index, exit: IndexExit) -> list[Event]:
        events: list[Event] = []
        if not entry.started and exit.exit_code is not None:
            # It ran (it has an exit code) between two events we saw: report the start.
            entry.started = True
            events.append(Started(job.batch_id, index))
        entry.finished = True
        events.append(Finished(job.batch_id, index, exit))
        return events


def _unknown_exit() -> IndexExit:
    return IndexExit(exit_code=None, reason="Unknown", message="the pod's final state was not seen")


def _terminal_condition(status: Mapping[str, Any]) -> tuple[str, str] | None:
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if (
            cond.get("type") in ("Failed", "FailureTarget")
            and cond.get("reason") != "FailedIndexes"
        ):
            return str(cond.get("reason") or "Failed"), str(cond.get("message") or "")
        if cond.get("type") in ("Complete", "SuccessCriteriaMet", "Failed"):
            return "JobFinished", "the Job finished before this index reported"
    return None
