"""The Job controller of kubesim (kube-controller-manager's ``job`` controller, 1.31+ semantics).

Follows ``pkg/controller/job`` as summarised in kubernetes-jobs.md §3, §4 and §9.4-9.14:
pod creation (lowest pending indexes first, names, hostname, index label/annotation,
``JOB_COMPLETION_INDEX``, the tracking finalizer, the controller ownerReference), status with
its omission rules, ``uncountedTerminatedPods`` finalizer accounting, ``backoffLimit``,
``backoffLimitPerIndex``/``maxFailedIndexes``, ``podFailurePolicy``, ``podReplacementPolicy``,
replacement backoff, ``activeDeadlineSeconds``, ``successPolicy``, suspend/resume, elastic
scale-down and the two-step terminal conditions that only land once every pod is terminal.

Shape: pure functions (policy matching, index selection, backoff, status rendering, the pod
manifest) at the top, unit-testable without a store; :class:`JobController` below them does the
I/O. One worker thread syncs one Job at a time; store events enqueue syncs (pod events are
batched for ``sync_batch_s``, upstream's 1 s ``syncJobBatchPeriod`` shortened for tests) and
the injected clock wakes Jobs for backoff and deadlines. :meth:`JobController.settle` is the
tests' barrier: it returns once every sync requested so far has run, so a test can assert that
something did *not* happen (yet) without sleeping.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .clock import Clock, TimerHandle
from .errors import ApiError
from .events import record as record_event
from .indexes import IndexFormatError, format_indexes, parse_indexes
from .job_admission import CONTROLLER_UID_LABEL

__all__ = [
    "DEFAULT_BACKOFF_S",
    "FAILURE_COUNT_ANNOTATION",
    "IGNORED_FAILURE_COUNT_ANNOTATION",
    "INDEX_ANNOTATION",
    "MAX_BACKOFF_S",
    "TRACKING_FINALIZER",
    "BackoffRecord",
    "JobController",
    "PolicyMatch",
    "active_pods_for_removal",
    "backoff_duration",
    "build_pod",
    "first_pending_indexes",
    "format_time",
    "is_pod_failed",
    "match_pod_failure_policy",
    "normalize_status",
    "parse_time",
    "pod_generate_name",
    "pod_index",
]

_log = logging.getLogger(__name__)

TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
FAILURE_COUNT_ANNOTATION = "batch.kubernetes.io/job-index-failure-count"
IGNORED_FAILURE_COUNT_ANNOTATION = "batch.kubernetes.io/job-index-ignored-failure-count"
INDEX_ENV = "JOB_COMPLETION_INDEX"
CONTROLLER_NAME = "kubernetes.io/job-controller"
EVENT_SOURCE = "job-controller"  # the recorder's component (source and reportingComponent)

DEFAULT_BACKOFF_S = 10.0  # DefaultJobPodFailureBackOff
MAX_BACKOFF_S = 600.0  # MaxJobPodFailureBackOff (the docs say 6 min; the code says 10)
CREATE_RETRY_INITIAL_S = 1.0  # DefaultJobApiBackOff
CREATE_RETRY_MAX_S = 60.0  # MaxJobApiBackOff
MAX_UNCOUNTED_PODS = 500  # MaxUncountedPods
MAX_POD_CREATE_DELETE_PER_SYNC = 500
MAX_GENERATED_NAME_PREFIX = 58  # apiserver names.MaxGeneratedNameLength

_SUCCESS_TYPES = ("SuccessCriteriaMet", "Complete")

Obj = dict[str, Any]


# ------------------------------------------------------------------------------------ time


def format_time(moment: datetime) -> str:
    """``metav1.Time`` serialisation: RFC 3339, UTC, second precision."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ------------------------------------------------------------------------------ pod facts


def pod_index(pod: Obj) -> int | None:
    """The completion index of a pod (annotation first, as upstream ``getCompletionIndex``)."""
    meta = pod.get("metadata") or {}
    for source in (meta.get("annotations") or {}, meta.get("labels") or {}):
        value = source.get(INDEX_ANNOTATION)
        if value is not None:
            try:
                index = int(value)
            except ValueError:
                return None
            return index if index >= 0 else None
    return None


def _phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase", "Pending"))


def is_terminal(pod: Obj) -> bool:
    return _phase(pod) in ("Succeeded", "Failed")


def _deleting(pod: Obj) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def has_finalizer(pod: Obj) -> bool:
    return TRACKING_FINALIZER in ((pod.get("metadata") or {}).get("finalizers") or [])


def is_ready(pod: Obj) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def only_replace_failed(job: Obj) -> bool:
    spec = job.get("spec") or {}
    return spec.get("podReplacementPolicy") == "Failed" or spec.get("podFailurePolicy") is not None


def is_pod_failed(pod: Obj, job: Obj) -> bool:
    """JC ``isPodFailed``: Failed phase, or (TerminatingOrFailed) deleted and not Succeeded."""
    if _phase(pod) == "Failed":
        return True
    if only_replace_failed(job):
        return False
    # A deleted pod may never reach a terminal phase (orphans, force deletes): count it now.
    return _deleting(pod) and _phase(pod) != "Succeeded"


def finished_time(pod: Obj) -> datetime:
    """JC ``getFinishedTime``: containers' finishedAt, Ready=False, deletion, creation time."""
    status = pod.get("status") or {}
    latest: datetime | None = None
    for key in ("containerStatuses", "initContainerStatuses"):
        for cs in status.get(key) or []:
            finished = parse_time(
                ((cs.get("state") or {}).get("terminated") or {}).get("finishedAt")
            )
            if finished is not None and (latest is None or finished > latest):
                latest = finished
    if latest is not None:
        return latest
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") == "False":
            moment = parse_time(cond.get("lastTransitionTime"))
            if moment is not None:
                return moment
    meta = pod.get("metadata") or {}
    deleted = parse_time(meta.get("deletionTimestamp"))
    if deleted is not None:
        return deleted - timedelta(seconds=int(meta.get("deletionGracePeriodSeconds") or 0))
    created = parse_time(meta.get("creationTimestamp"))
    return created or datetime.now(UTC)


# --------------------------------------------------------------------- pod failure policy


@dataclass(frozen=True)
class PolicyMatch:
    """JC ``matchPodFailurePolicy`` result: FailJob message, whether it counts, the action."""

    message: str | None
    count_failed: bool
    action: str | None


def _exit_code_matches(code: int, req: Obj) -> bool:
    values = req.get("values") or []
    if req.get("operator") == "In":
        return code in values
    if req.get("operator") == "NotIn":
        return code not in values
    return False


def _matching_container(statuses: list[Obj], req: Obj) -> Obj | None:
    for cs in statuses:
        if req.get("containerName") is not None and req["containerName"] != cs.get("name"):
            continue
        terminated = (cs.get("state") or {}).get("terminated")
        # Exit code 0 never matches: a container that succeeded did not cause the failure.
        if terminated is None or int(terminated.get("exitCode", 0)) == 0:
            continue
        if _exit_code_matches(int(terminated["exitCode"]), req):
            return cs
    return None


def match_pod_failure_policy(policy: Obj | None, pod: Obj) -> PolicyMatch:
    """Rules in order, first match wins; no policy or no match → the failure counts."""
    if policy is None:
        return PolicyMatch(None, True, None)
    status = pod.get("status") or {}
    meta = pod.get("metadata") or {}
    pod_ref = f"{meta.get('namespace')}/{meta.get('name')}"
    for index, rule in enumerate(policy.get("rules") or []):
        action = rule.get("action")
        on_exit = rule.get("onExitCodes")
        message: str | None = None
        if on_exit is not None:
            cs = _matching_container(status.get("containerStatuses") or [], on_exit)
            if cs is None:
                cs = _matching_container(status.get("initContainerStatuses") or [], on_exit)
            if cs is None:
                continue
            code = cs["state"]["terminated"]["exitCode"]
            message = (
                f"Container {cs.get('name')} for pod {pod_ref} failed with exit code {code} "
                f"matching {action} rule at index {index}"
            )
        elif rule.get("onPodConditions"):
            matched: Obj | None = None
            for pattern in rule["onPodConditions"]:
                for cond in status.get("conditions") or []:
                    if cond.get("type") == pattern.get("type") and cond.get("status") == (
                        pattern.get("status") or "True"
                    ):
                        matched = cond
                        break
                if matched is not None:
                    break
            if matched is None:
                continue
            message = (
                f"Pod {pod_ref} has condition {matched.get('type')} matching {action} rule "
                f"at index {index}"
            )
        else:
            continue
        if action == "Ignore":
            return PolicyMatch(None, False, "Ignore")
        if action == "FailIndex":
            return PolicyMatch(None, True, "FailIndex")
        if action == "Count":
            return PolicyMatch(None, True, "Count")
        if action == "FailJob":
            return PolicyMatch(message, True, "FailJob")
    return PolicyMatch(None, True, None)


def _annotation_int(pod: Obj, key: str) -> int:
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(key)
    try:
        return max(0, int(value)) if value is not None else 0
    except ValueError:
        return 0


def is_index_failed(job: Obj, pod: Obj) -> bool:
    """JC ``isIndexFailed``: FailIndex matched, or a counted failure at the per-index limit."""
    if not is_pod_failed(pod, job):
        return False
    spec = job.get("spec") or {}
    counted = True
    if spec.get("podFailurePolicy") is not None:
        match = match_pod_failure_policy(spec["podFailurePolicy"], pod)
        if match.action == "FailIndex":
            return True
        counted = match.count_failed
    # The annotation holds the failures *before* this pod, so limit 1 allows one retry.
    limit = int(spec.get("backoffLimitPerIndex") or 0)
    return counted and _annotation_int(pod, FAILURE_COUNT_ANNOTATION) >= limit


# ------------------------------------------------------------------------------- backoff


def backoff_duration(failures: int) -> float:
    """10 s * 2^(failures-1), capped at 10 min; 0 without failures."""
    if failures <= 0:
        return 0.0
    duration = DEFAULT_BACKOFF_S
    for _ in range(1, failures):
        duration *= 2
        if duration >= MAX_BACKOFF_S:
            return MAX_BACKOFF_S
    return duration


def remaining_backoff(failures: int, last_failure: datetime | None, now: datetime) -> float:
    if failures <= 0 or last_failure is None:
        return 0.0
    elapsed = (now - last_failure).total_seconds()
    duration = backoff_duration(failures)
    return 0.0 if duration < elapsed else duration - elapsed


@dataclass(frozen=True)
class BackoffRecord:
    """JC ``backoffRecord``: failures since the last success, and when the last one happened."""

    failures_after_last_success: int = 0
    last_failure_time: datetime | None = None

    def updated(self, new_succeeded: list[Obj], new_failed: list[Obj]) -> BackoffRecord:
        failed = sorted(new_failed, key=finished_time)
        if not new_succeeded:
            if not failed:
                return self
            return BackoffRecord(
                self.failures_after_last_success + len(failed), finished_time(failed[-1])
            )
        last_success = max(finished_time(p) for p in new_succeeded)
        count = 0
        last_failure: datetime | None = None
        for pod in reversed(failed):
            moment = finished_time(pod)
            if moment <= last_success:
                break
            if last_failure is None:
                last_failure = moment
            count += 1
        return BackoffRecord(count, last_failure)

    def remaining(self, now: datetime) -> float:
        return remaining_backoff(self.failures_after_last_success, self.last_failure_time, now)


# --------------------------------------------------------------------------- index logic


def first_pending_indexes(count: int, completions: int, non_pending: Iterable[int]) -> list[int]:
    """The ``count`` lowest indexes below ``completions`` that are not in ``non_pending``."""
    taken = set(non_pending)
    result: list[int] = []
    candidate = 0
    while candidate < completions and len(result) < count:
        if candidate not in taken:
            result.append(candidate)
        candidate += 1
    return result


def _active_pod_rank(pod: Obj) -> tuple[int, int, int, float]:
    """``controller.ActivePods`` order: the pods sorted first are the first to delete."""
    assigned = 1 if (pod.get("spec") or {}).get("nodeName") else 0
    phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}.get(_phase(pod), 0)
    created = parse_time((pod.get("metadata") or {}).get("creationTimestamp"))
    # Newer pods go first, hence the negated timestamp.
    return (
        assigned,
        phase_rank,
        1 if is_ready(pod) else 0,
        -(created.timestamp() if created else 0),
    )


def active_pods_for_removal(job: Obj, active: list[Obj], rm_at_least: int) -> list[Obj]:
    """JC ``activePodsForRemoval``: out-of-range and duplicate indexes first, then by rank."""
    spec = job.get("spec") or {}
    remove: list[Obj] = []
    left: list[Obj] = []
    if spec.get("completionMode") == "Indexed":
        completions = int(spec.get("completions") or 0)
        by_index: dict[int, list[Obj]] = {}
        for pod in active:
            ix = pod_index(pod)
            if ix is None or ix >= completions:
                remove.append(pod)
            else:
                by_index.setdefault(ix, []).append(pod)
        for ix in sorted(by_index):
            group = sorted(by_index[ix], key=_active_pod_rank)
            # Keep the most advanced pod of an index; the others are duplicates.
            remove.extend(group[:-1])
            left.append(group[-1])
    else:
        left = list(active)
    if len(remove) < rm_at_least:
        left.sort(key=_active_pod_rank)
        remove.extend(left[: rm_at_least - len(remove)])
    return remove


# ---------------------------------------------------------------------------- pod manifest


def pod_generate_name(job_name: str, index: int | None) -> str:
    """``<job>-<index>-`` (JC ``podGenerateNameWithIndex``), or ``<job>-`` for NonIndexed."""
    if index is None:
        return f"{job_name}-"
    suffix = f"-{index}-"
    prefix = job_name + suffix
    if len(prefix) > MAX_GENERATED_NAME_PREFIX:
        prefix = job_name[: MAX_GENERATED_NAME_PREFIX - len(suffix)] + suffix
    return prefix


def build_pod(
    job: Obj, index: int | None, failure_count: int = 0, ignored_failure_count: int = 0
) -> Obj:
    """The pod the controller creates for ``index`` (``None`` for NonIndexed Jobs)."""
    meta = job["metadata"]
    spec = job["spec"]
    template = copy.deepcopy(spec.get("template") or {})
    tmeta = template.get("metadata") or {}
    pod_spec = template.get("spec") or {}
    labels = dict(tmeta.get("labels") or {})
    annotations = dict(tmeta.get("annotations") or {})
    finalizers = list(tmeta.get("finalizers") or [])
    if TRACKING_FINALIZER not in finalizers:
        finalizers.append(TRACKING_FINALIZER)
    if index is not None:
        annotations[INDEX_ANNOTATION] = str(index)
        labels[INDEX_ANNOTATION] = str(index)  # PodIndexLabel, GA in 1.32
        pod_spec["hostname"] = f"{meta['name']}-{index}"
        if spec.get("backoffLimitPerIndex") is not None:
            annotations[FAILURE_COUNT_ANNOTATION] = str(failure_count)
            if ignored_failure_count > 0:
                annotations[IGNORED_FAILURE_COUNT_ANNOTATION] = str(ignored_failure_count)
        for key in ("initContainers", "containers"):
            for container in pod_spec.get(key) or []:
                env = container.setdefault("env", [])
                if not any(e.get("name") == INDEX_ENV for e in env):
                    env.append(
                        {
                            "name": INDEX_ENV,
                            "valueFrom": {
                                "fieldRef": {
                                    "apiVersion": "v1",
                                    "fieldPath": f"metadata.labels['{INDEX_ANNOTATION}']",
                                }
                            },
                        }
                    )
    pod_meta: Obj = {
        "generateName": pod_generate_name(meta["name"], index),
        "namespace": meta.get("namespace", "default"),
        "labels": labels,
        "finalizers": finalizers,
        "ownerReferences": [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if annotations:
        pod_meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": pod_spec}


# ------------------------------------------------------------------------------ status


def new_condition(ctype: str, status: str, reason: str, message: str, now: datetime) -> Obj:
    stamp = format_time(now)
    return {
        "type": ctype,
        "status": status,
        "lastProbeTime": stamp,
        "lastTransitionTime": stamp,
        "reason": reason,
        "message": message,
    }


def find_condition(conditions: list[Obj], ctype: str) -> Obj | None:
    for cond in conditions:
        if cond.get("type") == ctype:
            return cond
    return None


def condition_true(conditions: list[Obj], ctype: str) -> bool:
    cond = find_condition(conditions, ctype)
    return cond is not None and cond.get("status") == "True"


def ensure_condition(
    conditions: list[Obj], ctype: str, status: str, reason: str, message: str, now: datetime
) -> bool:
    """JC ``ensureJobConditionStatus``: a False condition is never added, only flipped to."""
    cond = find_condition(conditions, ctype)
    if cond is not None:
        if (cond.get("status"), cond.get("reason"), cond.get("message")) != (
            status,
            reason,
            message,
        ):
            cond.clear()
            cond.update(new_condition(ctype, status, reason, message, now))
            return True
        return False
    if status != "False":
        conditions.append(new_condition(ctype, status, reason, message, now))
        return True
    return False


def is_finished(job: Obj) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return condition_true(conditions, "Complete") or condition_true(conditions, "Failed")


def normalize_status(status: Obj, job: Obj) -> Obj:
    """Apply the JSON presence rules of §4: what Go's ``omitempty`` drops and what it keeps."""
    out: Obj = {}
    for key in ("conditions",):
        if status.get(key):
            out[key] = status[key]
    for key in ("startTime", "completionTime"):
        if status.get(key):
            out[key] = status[key]
    for key in ("active", "succeeded", "failed"):
        if status.get(key):
            out[key] = int(status[key])
    if status.get("completedIndexes"):
        out["completedIndexes"] = status["completedIndexes"]
    if (job.get("spec") or {}).get("backoffLimitPerIndex") is not None:
        out["failedIndexes"] = status.get("failedIndexes") or ""
    uncounted = status.get("uncountedTerminatedPods") or {}
    out["uncountedTerminatedPods"] = {k: list(v) for k, v in uncounted.items() if v}
    out["ready"] = int(status.get("ready") or 0)
    out["terminating"] = int(status.get("terminating") or 0)
    return out


def _indexes_below(text: str | None, completions: int) -> set[int]:
    """``parseIndexesFromString``: indexes at or above ``completions`` are dropped (scale-down)."""
    try:
        return {ix for ix in parse_indexes(text) if ix < completions}
    except IndexFormatError:
        return set()


def match_success_policy(policy: Obj | None, succeeded: set[int]) -> str | None:
    """SP ``matchSuccessPolicy``: the message of the first rule the succeeded indexes meet."""
    if policy is None:
        return None
    for index, rule in enumerate(policy.get("rules") or []):
        wanted_text = rule.get("succeededIndexes")
        count = rule.get("succeededCount")
        if wanted_text is not None:
            wanted = parse_indexes(wanted_text)
            have = len(wanted & succeeded)
            if (count is None and have == len(wanted)) or (count is not None and have >= count):
                return f"Matched rules at index {index}"
        elif count is not None and len(succeeded) >= count:
            return f"Matched rules at index {index}"
    return None


# ------------------------------------------------------------------------------ controller


def _controller_uid(pod: Obj) -> str | None:
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "Job":
            return str(ref.get("uid"))
    return None


def _controller_name(pod: Obj) -> str | None:
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "Job":
            return str(ref.get("name"))
    return None


_Key = tuple[str, str, str]  # (kind, namespace, name-or-uid)


class JobController:
    """Reconciles every Job of the store; see the module docstring."""

    def __init__(self, store: Any, clock: Clock, *, sync_batch_s: float = 0.05) -> None:
        self.store = store
        self.clock = clock
        self.sync_batch_s = sync_batch_s
        self._cond = threading.Condition()
        self._due: dict[_Key, float] = {}
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._unsubscribe: Any = None
        self._backoff: dict[tuple[str, str], BackoffRecord] = {}
        self._create_failures: dict[tuple[str, str], int] = {}
        self._timers: dict[tuple[str, str], TimerHandle] = {}
        self._timer_when: dict[tuple[str, str], float] = {}
        self._busy = False
        # Barrier bookkeeping for settle(): every accepted enqueue gets a number; a queued key
        # remembers the number of the oldest request it still stands for, and so does the sync
        # in progress (the one sync reading the store after the request covers it).
        self._seq = 0
        self._due_seq: dict[_Key, int] = {}
        self._running: tuple[_Key, int] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._unsubscribe = self.store.subscribe(self._on_event)
        self._thread = threading.Thread(
            target=self._loop, name="kubesim-job-controller", daemon=True
        )
        self._thread.start()
        jobs, _ = self.store.list("jobs")
        for job in jobs:
            self._enqueue(("job", job["metadata"]["namespace"], job["metadata"]["name"]))

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            for handle in self._timers.values():
                handle.cancel()
            self._timers.clear()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def idle(self) -> bool:
        """True when no sync is queued or running (tests use it with a wait)."""
        with self._cond:
            return not self._busy and not self._due

    def settle(self, timeout: float = 30.0) -> bool:
        """Wait until every sync requested so far has run; ``False`` on timeout.

        "So far" includes the store events committed before the call (delivered first, so they
        are enqueued) and the clock timers already fired (a ``FakeClock.advance`` that returned
        has enqueued its wake-ups). Syncs those syncs cause (their own writes' events) are not
        waited for, nor delayed wake-ups that are still pending on the clock, nor work of the
        kubelet or scheduler. That is what a "this must not have happened" check needs: after
        ``settle()`` the controller has seen the current state and acted on it.
        """
        deadline = time.monotonic() + timeout
        if not self.store.sync(timeout):
            return False
        with self._cond:
            target = self._seq

            def done() -> bool:
                if self._running is not None and self._running[1] <= target:
                    return False
                return all(seq > target for seq in self._due_seq.values())

            self._cond.wait_for(
                lambda: self._stopped or done(), max(0.0, deadline - time.monotonic())
            )
            # A stopped controller will never run what is queued: that is no barrier.
            return not self._stopped and done()

    # --- queue -----------------------------------------------------------------------------

    def _enqueue(self, key: _Key, delay: float = 0.0) -> None:
        with self._cond:
            if self._stopped:
                return
            self._seq += 1
            seq = self._seq
            running = self._running
            if (
                running is not None
                and running[0] == key
                and threading.current_thread() is self._thread
            ):
                # A sync requeueing itself (an error retry) still owes the requests it stood for.
                seq = running[1]
            self._due_seq[key] = min(seq, self._due_seq.get(key, seq))
            due = time.monotonic() + delay
            if key not in self._due or self._due[key] > due:
                self._due[key] = due
                # notify_all: settle() waiters share the condition with the worker.
                self._cond.notify_all()

    def _wake_after(self, namespace: str, name: str, delay_s: float) -> None:
        """Sync the Job again after ``delay_s`` seconds of *clock* time (backoff, deadline)."""
        job_key = (namespace, name)
        when = self.clock.monotonic() + max(0.0, delay_s)
        with self._cond:
            if self._stopped:
                return
            current = self._timer_when.get(job_key)
            handle = self._timers.get(job_key)
            if current is not None and handle is not None and not handle.cancelled:
                if current <= when + 1e-6:
                    return
                handle.cancel()
            self._timer_when[job_key] = when

            def fire() -> None:
                with self._cond:
                    if self._timers.get(job_key) is new_handle:
                        self._timers.pop(job_key, None)
                        self._timer_when.pop(job_key, None)
                self._enqueue(("job", namespace, name))

            new_handle = self.clock.call_later(delay_s, fire)
            self._timers[job_key] = new_handle

    def _create_retry_delay(self, namespace: str, name: str) -> float:
        """The next retry after a failed pod create: the JC workqueue's per-item exponential
        rate limiter (1 s doubling to 60 s; the quota-refused trace retries at 1, 2, 4, 8 s)."""
        failures = self._create_failures.get((namespace, name), 0)
        self._create_failures[(namespace, name)] = failures + 1
        return float(min(CREATE_RETRY_INITIAL_S * 2**failures, CREATE_RETRY_MAX_S))

    def _forget(self, namespace: str, name: str) -> None:
        job_key = (namespace, name)
        self._create_failures.pop(job_key, None)
        self._backoff.pop(job_key, None)
        with self._cond:
            handle = self._timers.pop(job_key, None)
            self._timer_when.pop(job_key, None)
        if handle is not None:
            handle.cancel()

    def _loop(self) -> None:
        while True:
            with self._cond:
                key: _Key | None = None
                while not self._stopped:
                    if self._due:
                        key, due = min(self._due.items(), key=lambda kv: kv[1])
                        wait = due - time.monotonic()
                        if wait <= 0:
                            del self._due[key]
                            self._running = (key, self._due_seq.pop(key))
                            self._busy = True
                            break
                        key = None
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                if self._stopped:
                    return
            assert key is not None
            try:
                self._process(key)
            except ApiError as exc:
                # Conflicts and races with user writes: retry shortly, as the workqueue does.
                _log.debug("job sync %s failed: %s", key, exc)
                self._enqueue(key, 0.2)
            except Exception:
                _log.exception("job sync %s crashed", key)
                self._enqueue(key, 1.0)
            finally:
                with self._cond:
                    self._busy = False
                    self._running = None
                    self._cond.notify_all()  # settle() waiters

    def _on_event(self, event_type: str, resource: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace", "default")
        if resource == "jobs":
            if event_type == "DELETED":
                self._enqueue(("deleted", namespace, str(meta.get("uid"))))
            else:
                self._enqueue(("job", namespace, meta["name"]))
        elif resource == "pods":
            owner = _controller_name(obj)
            if owner is not None:
                self._enqueue(("job", namespace, owner), self.sync_batch_s)
            elif has_finalizer(obj) and event_type != "DELETED":
                self._enqueue(("orphan", namespace, meta["name"]), self.sync_batch_s)

    def _process(self, key: _Key) -> None:
        kind, namespace, name = key
        if kind == "job":
            self.sync_job(namespace, name)
        elif kind == "deleted":
            self._strip_finalizers_of_deleted_job(namespace, name)
        elif kind == "orphan":
            self._strip_orphan(namespace, name)

    # --- finalizer helpers -----------------------------------------------------------------

    def _remove_finalizer(self, namespace: str, name: str) -> bool:
        def strip(pod: Obj) -> bool:
            finalizers = pod["metadata"].get("finalizers") or []
            if TRACKING_FINALIZER not in finalizers:
                return False
            kept = [f for f in finalizers if f != TRACKING_FINALIZER]
            if kept:
                pod["metadata"]["finalizers"] = kept
            else:
                pod["metadata"].pop("finalizers", None)
            return True

        try:
            self.store.mutate("pods", namespace, name, strip)
        except ApiError as exc:
            if exc.code != 404:
                raise
        return True

    def _strip_finalizers_of_deleted_job(self, namespace: str, uid: str) -> None:
        # JC deleteJob → cleanupPodFinalizers: with Orphan the pods live on untracked.
        pods, _ = self.store.list("pods", namespace, label_selector=f"{CONTROLLER_UID_LABEL}={uid}")
        for pod in pods:
            if has_finalizer(pod):
                self._remove_finalizer(namespace, pod["metadata"]["name"])
        for job_key in [k for k in self._backoff if k[0] == namespace]:
            try:
                self.store.get("jobs", *job_key)
            except ApiError:
                self._forget(*job_key)

    def _strip_orphan(self, namespace: str, name: str) -> None:
        try:
            pod = self.store.get("pods", namespace, name)
        except ApiError:
            return
        if has_finalizer(pod) and _controller_uid(pod) is None:
            self._remove_finalizer(namespace, name)

    def _event(self, job: Obj, type_: str, reason: str, message: str) -> None:
        record_event(self.store, job, type_, reason, message, EVENT_SOURCE)

    def _delete_pod(self, pod: Obj, *, keep_finalizer: bool, job: Obj) -> bool:
        meta = pod["metadata"]
        if not keep_finalizer and has_finalizer(pod):
            # JC deleteJobPods: untrack first so suspend/scale-down pods are not counted failed.
            self._remove_finalizer(meta["namespace"], meta["name"])
        try:
            self.store.delete("pods", meta["namespace"], meta["name"])
        except ApiError as exc:
            if exc.code != 404:
                # RealPodControl.DeletePod: no event for a pod that is already gone.
                self._event(job, "Warning", "FailedDelete", f"Error deleting: {exc.message}")
                raise
            return True
        self._event(job, "Normal", "SuccessfulDelete", f"Deleted pod: {meta['name']}")
        return True

    def _write_status(self, namespace: str, name: str, status: Obj, job: Obj) -> None:
        rendered = normalize_status(status, job)

        def apply(obj: Obj) -> bool:
            if obj["metadata"].get("uid") != job["metadata"]["uid"]:
                return False
            if obj.get("status") == rendered:
                return False
            obj["status"] = copy.deepcopy(rendered)
            return True

        self.store.mutate("jobs", namespace, name, apply)

    # --- the sync --------------------------------------------------------------------------

    def sync_job(self, namespace: str, name: str) -> None:
        try:
            job = self.store.get("jobs", namespace, name)
        except ApiError as exc:
            if exc.code == 404:
                self._forget(namespace, name)
                return
            raise
        spec = job.get("spec") or {}
        managed_by = spec.get("managedBy")
        if managed_by is not None and managed_by != CONTROLLER_NAME:
            return  # another controller owns this Job (managedBy, §2)
        uid = job["metadata"]["uid"]
        all_pods, _ = self.store.list("pods", namespace)
        pods = [p for p in all_pods if _controller_uid(p) == uid]
        if is_finished(job):
            for pod in pods:
                if has_finalizer(pod):
                    self._remove_finalizer(namespace, pod["metadata"]["name"])
            self._forget(namespace, name)
            return
        _Sync(self, job, pods).run()


class _Sync:
    """One pass of JC ``syncJob`` over a snapshot of a Job and its pods."""

    def __init__(self, ctl: JobController, job: Obj, pods: list[Obj]) -> None:
        self.ctl = ctl
        self.job = job
        self.pods = pods
        self.meta = job["metadata"]
        self.ns = self.meta["namespace"]
        self.name = self.meta["name"]
        self.spec = job.get("spec") or {}
        self.status: Obj = copy.deepcopy(job.get("status") or {})
        self.status.setdefault("conditions", [])
        self.now = ctl.clock.now()
        self.indexed = self.spec.get("completionMode") == "Indexed"
        self.completions: int | None = self.spec.get("completions")
        self.parallelism = int(self.spec.get("parallelism", 1) or 0)
        self.suspended = bool(self.spec.get("suspend"))
        self.per_index = self.spec.get("backoffLimitPerIndex")
        self.policy = self.spec.get("podFailurePolicy")
        self.deleting = bool(self.meta.get("deletionTimestamp"))
        uncounted = self.status.get("uncountedTerminatedPods") or {}
        self.unc_succeeded: list[str] = list(uncounted.get("succeeded") or [])
        self.unc_failed: list[str] = list(uncounted.get("failed") or [])
        self.active_pods = [p for p in pods if not is_terminal(p) and not _deleting(p)]
        self.terminating = sum(1 for p in pods if _deleting(p) and not is_terminal(p))
        self.ready = sum(1 for p in self.active_pods if is_ready(p))
        self.finished: Obj | None = None
        self.succeeded_indexes: set[int] = set()
        self.failed_indexes: set[int] | None = None
        self.delayed: dict[int, Obj] = {}

    # Pods whose outcome is not yet in the counters: they still carry the finalizer.
    def _new_finished(self) -> tuple[list[Obj], list[Obj]]:
        counted = set(self.unc_succeeded) | set(self.unc_failed)
        tracked = [p for p in self.pods if has_finalizer(p) and p["metadata"]["uid"] not in counted]
        succeeded = [p for p in tracked if _phase(p) == "Succeeded"]
        failed = [p for p in tracked if is_pod_failed(p, self.job)]
        return succeeded, failed

    def _valid_index(self, pod: Obj) -> int | None:
        ix = pod_index(pod)
        if ix is None or self.completions is None or ix >= self.completions:
            return None
        return ix

    def run(self) -> None:
        ctl, job, spec, now = self.ctl, self.job, self.spec, self.now
        new_succeeded, new_failed = self._new_finished()
        failed_total = int(self.status.get("failed") or 0) + len(self.unc_failed)
        for pod in new_failed:
            if match_pod_failure_policy(self.policy, pod).count_failed:
                failed_total += 1
        succeeded_total = (
            int(self.status.get("succeeded") or 0) + len(self.unc_succeeded) + len(new_succeeded)
        )
        if not self.status.get("startTime") and not self.suspended:
            self.status["startTime"] = format_time(now)
        job_key = (self.ns, self.name)
        self.backoff = ctl._backoff.get(job_key, BackoffRecord()).updated(new_succeeded, new_failed)

        conditions: list[Obj] = self.status["conditions"]
        target = find_condition(conditions, "FailureTarget")
        criteria = find_condition(conditions, "SuccessCriteriaMet")
        if target is not None and target.get("status") == "True":
            # An earlier sync already decided: only the final condition is still missing.
            self.finished = new_condition(
                "Failed", "True", target["reason"], target["message"], now
            )
        elif criteria is not None and criteria.get("status") == "True":
            self.finished = new_condition(
                "Complete", "True", criteria["reason"], criteria["message"], now
            )
        elif self.policy is not None:
            for pod in self.pods:
                if has_finalizer(pod) and is_pod_failed(pod, job):
                    message = match_pod_failure_policy(self.policy, pod).message
                    if message is not None:
                        self.finished = new_condition(
                            "FailureTarget", "True", "PodFailurePolicy", message, now
                        )
                        break
        if self.finished is None:
            if failed_total > int(spec.get("backoffLimit", 6)) or self._past_backoff_on_failure():
                self.finished = new_condition(
                    "FailureTarget",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    now,
                )
            elif self._past_deadline():
                self.finished = new_condition(
                    "FailureTarget",
                    "True",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                    now,
                )
            elif spec.get("activeDeadlineSeconds") is not None and not self.suspended:
                started = parse_time(self.status.get("startTime")) or now
                left = int(spec["activeDeadlineSeconds"]) - (now - started).total_seconds()
                ctl._wake_after(self.ns, self.name, max(0.0, left))

        if self.indexed:
            completions = int(self.completions or 0)
            self.succeeded_indexes = _indexes_below(
                self.status.get("completedIndexes"), completions
            )
            for pod in self.pods:
                ix = self._valid_index(pod)
                if ix is not None and _phase(pod) == "Succeeded" and has_finalizer(pod):
                    self.succeeded_indexes.add(ix)
            if self.per_index is not None:
                failed = _indexes_below(self.status.get("failedIndexes"), completions)
                for pod in self.pods:
                    ix = self._valid_index(pod)
                    if ix is not None and has_finalizer(pod) and is_index_failed(job, pod):
                        failed.add(ix)
                self.failed_indexes = failed - self.succeeded_indexes
                if self.finished is None:
                    max_failed = spec.get("maxFailedIndexes")
                    total_failed = len(self.failed_indexes)
                    if max_failed is not None and total_failed > int(max_failed):
                        self.finished = new_condition(
                            "FailureTarget",
                            "True",
                            "MaxFailedIndexesExceeded",
                            "Job has exceeded the specified maximal number of failed indexes",
                            now,
                        )
                    elif (
                        total_failed > 0
                        and total_failed + len(self.succeeded_indexes) >= completions
                    ):
                        self.finished = new_condition(
                            "FailureTarget", "True", "FailedIndexes", "Job has failed indexes", now
                        )
                self.delayed = self._pods_with_delayed_deletion()
            if self.finished is None:
                message = match_success_policy(spec.get("successPolicy"), self.succeeded_indexes)
                if message is not None:
                    self.finished = new_condition(
                        "SuccessCriteriaMet", "True", "SuccessPolicy", message, now
                    )
            succeeded_total = len(self.succeeded_indexes)

        active = len(self.active_pods)
        if self.finished is not None:
            # Failure or success policy: stop what still runs. Kept finalizers let the flush
            # count killed pods as failed (not on success).
            for pod in self.active_pods:
                ctl._delete_pod(pod, keep_finalizer=True, job=job)
                self.terminating += 1
            active = 0
            self.ready = 0
        else:
            manage_called = False
            if not self.deleting:
                active = self._manage(succeeded_total)
                manage_called = True
            if self.completions is None:
                complete = succeeded_total > 0 and active == 0
            else:
                complete = succeeded_total >= self.completions and active == 0
            if complete:
                self.finished = new_condition(
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    now,
                )
            elif manage_called:
                if self.suspended:
                    if ensure_condition(
                        conditions, "Suspended", "True", "JobSuspended", "Job suspended", now
                    ):
                        ctl._event(job, "Normal", "Suspended", "Job suspended")
                    # A suspended Job has no startTime (the real-cluster trace suspend-resume):
                    # resuming sets a new one, and the pod template may change meanwhile.
                    self.status.pop("startTime", None)
                elif ensure_condition(
                    conditions, "Suspended", "False", "JobResumed", "Job resumed", now
                ):
                    ctl._event(job, "Normal", "Resumed", "Job resumed")
                    # The deadline counts continuous activity: resuming restarts it.
                    self.status["startTime"] = format_time(now)
                    if spec.get("activeDeadlineSeconds") is not None:
                        ctl._wake_after(self.ns, self.name, int(spec["activeDeadlineSeconds"]))
        self.status["active"] = active
        self.status["ready"] = self.ready
        self.status["terminating"] = self.terminating
        self._flush()
        ctl._backoff[job_key] = self.backoff
        if is_finished({"status": self.status}):
            ctl._forget(self.ns, self.name)

    # --- pieces of syncJob -----------------------------------------------------------------

    def _past_deadline(self) -> bool:
        deadline = self.spec.get("activeDeadlineSeconds")
        started = parse_time(self.status.get("startTime"))
        if deadline is None or started is None or self.suspended:
            return False
        return (self.now - started).total_seconds() >= int(deadline)

    def _past_backoff_on_failure(self) -> bool:
        # JC pastBackoffLimitOnFailure: container restarts count against backoffLimit.
        template_spec = (self.spec.get("template") or {}).get("spec") or {}
        if template_spec.get("restartPolicy") != "OnFailure":
            return False
        restarts = 0
        for pod in self.pods:
            if _phase(pod) in ("Running", "Pending"):
                status = pod.get("status") or {}
                for key in ("initContainerStatuses", "containerStatuses"):
                    restarts += sum(int(cs.get("restartCount", 0)) for cs in status.get(key) or [])
        limit = int(self.spec.get("backoffLimit", 6))
        return restarts > 0 if limit == 0 else restarts >= limit

    def _pods_with_delayed_deletion(self) -> dict[int, Obj]:
        """The last failed pod of each index that waits for its replacement (per-index backoff).

        It keeps its finalizer until the replacement exists, since the replacement inherits its
        failure count (JC ``getPodsWithDelayedDeletionPerIndex``).
        """
        active_indexes = {pod_index(p) for p in self.active_pods}
        failed = self.failed_indexes or set()
        result: dict[int, Obj] = {}
        for pod in self.pods:
            ix = self._valid_index(pod)
            if ix is None or not is_pod_failed(pod, self.job):
                continue
            if ix in self.succeeded_indexes or ix in failed or ix in active_indexes:
                continue
            current = result.get(ix)
            if current is None or (
                _absolute_failures(current) <= _absolute_failures(pod)
                and finished_time(pod) >= finished_time(current)
            ):
                result[ix] = pod
        return result

    def _manage(self, succeeded_total: int) -> int:
        ctl = self.ctl
        active = len(self.active_pods)
        if self.suspended:
            removed = 0
            for pod in active_pods_for_removal(self.job, self.active_pods, active):
                if is_ready(pod):
                    self.ready -= 1
                ctl._delete_pod(pod, keep_finalizer=False, job=self.job)
                removed += 1
            self.terminating += removed
            return active - removed
        if self.completions is None:
            want = active if succeeded_total > 0 else self.parallelism
        else:
            want = max(0, min(self.completions - succeeded_total, self.parallelism))
        to_delete = active_pods_for_removal(self.job, self.active_pods, max(0, active - want))
        to_delete = to_delete[:MAX_POD_CREATE_DELETE_PER_SYNC]
        if to_delete:
            # Deletion wins over creation within one sync (JC manageJob).
            for pod in to_delete:
                if is_ready(pod):
                    self.ready -= 1
                ctl._delete_pod(pod, keep_finalizer=False, job=self.job)
            self.terminating += len(to_delete)
            return active - len(to_delete)
        terminating = self.terminating if only_replace_failed(self.job) else 0
        diff = min(want - terminating - active, MAX_POD_CREATE_DELETE_PER_SYNC)
        if diff <= 0:
            return active
        if self.per_index is None:
            remaining = self.backoff.remaining(self.now)
            if remaining > 0:
                ctl._wake_after(self.ns, self.name, remaining)
                return active
        indexes: list[int | None] = [None] * diff
        if self.indexed:
            non_pending = set(self.succeeded_indexes)
            non_pending |= {ix for p in self.active_pods if (ix := pod_index(p)) is not None}
            if only_replace_failed(self.job):
                non_pending |= {
                    ix
                    for p in self.pods
                    if _deleting(p) and not is_terminal(p) and (ix := pod_index(p)) is not None
                }
            non_pending |= self.failed_indexes or set()
            pending = first_pending_indexes(diff, int(self.completions or 0), non_pending)
            if self.per_index is not None:
                ready_now: list[int] = []
                soonest: float | None = None
                for ix in pending:
                    last = self.delayed.get(ix)
                    left = 0.0
                    if last is not None:
                        left = remaining_backoff(
                            _absolute_failures(last) + 1, finished_time(last), self.now
                        )
                    if left <= 0:
                        ready_now.append(ix)
                    elif soonest is None or left < soonest:
                        soonest = left
                if not ready_now and soonest is not None:
                    ctl._wake_after(self.ns, self.name, soonest)
                pending = ready_now
            indexes = list(pending)
        created = 0
        for ix in indexes:
            failure_count = ignored = 0
            if ix is not None and self.per_index is not None:
                failure_count, ignored = self._inherited_counts(self.delayed.get(ix))
            pod = build_pod(self.job, ix, failure_count, ignored)
            try:
                created_pod = ctl.store.create("pods", self.ns, pod)
            except ApiError as exc:
                # RealPodControl: no event when the namespace is being terminated.
                if "because it is being terminated" not in exc.message:
                    ctl._event(
                        self.job, "Warning", "FailedCreate", f"Error creating: {exc.message}"
                    )
                # Stop the batch on the first error, as the slow-start creation loop does.
                # exc.message is the apiserver's text (the FailedCreate event's "Error
                # creating: ..."), e.g. a quota refusal.
                _log.debug("creating a pod for %s/%s failed: %s", self.ns, self.name, exc.message)
                ctl._enqueue(
                    ("job", self.ns, self.name), ctl._create_retry_delay(self.ns, self.name)
                )
                break
            ctl._event(
                self.job,
                "Normal",
                "SuccessfulCreate",
                f"Created pod: {created_pod['metadata']['name']}",
            )
            ctl._create_failures.pop((self.ns, self.name), None)
            created += 1
        return active + created

    def _inherited_counts(self, replaced: Obj | None) -> tuple[int, int]:
        """JC ``getNewIndexFailureCounts``: the replaced pod's counts plus its own failure."""
        if replaced is None:
            return 0, 0
        failures = _annotation_int(replaced, FAILURE_COUNT_ANNOTATION)
        ignored = _annotation_int(replaced, IGNORED_FAILURE_COUNT_ANNOTATION)
        if match_pod_failure_policy(self.policy, replaced).count_failed:
            failures += 1
        else:
            ignored += 1
        return failures, ignored

    def _can_remove_finalizer(self, pod: Obj, considered_failed: bool) -> bool:
        if self.deleting or self.finished is not None or _phase(pod) == "Succeeded":
            return True
        if not considered_failed:
            return False
        if self.per_index is not None:
            ix = pod_index(pod)
            delayed = self.delayed.get(ix) if ix is not None else None
            if delayed is not None and delayed["metadata"]["uid"] == pod["metadata"]["uid"]:
                return False
        return True

    def _flush(self) -> None:
        """JC ``trackJobStatusAndRemoveFinalizers`` + ``flushUncountedAndRemoveFinalizers``."""
        ctl, status, job = self.ctl, self.status, self.job
        release: list[Obj] = []
        failing = self.finished is not None and self.finished["type"] not in _SUCCESS_TYPES
        uncounted = set(self.unc_succeeded) | set(self.unc_failed)
        added = 0
        for pod in self.pods:
            if not has_finalizer(pod):
                continue
            uid = pod["metadata"]["uid"]
            if uid in uncounted:
                release.append(pod)
                continue
            considered_failed = is_pod_failed(pod, job)
            if not self._can_remove_finalizer(pod, considered_failed):
                continue
            release.append(pod)
            if _phase(pod) == "Succeeded":
                if not self.indexed:
                    self.unc_succeeded.append(uid)
                    added += 1
            elif (
                (considered_failed or failing)
                # When the Job fails, every pod still running counts as failed.
                and (not self.indexed or self._valid_index(pod) is not None)
                and match_pod_failure_policy(self.policy, pod).count_failed
            ):
                self.unc_failed.append(uid)
                added += 1
            if added >= MAX_UNCOUNTED_PODS:
                break
        if self.indexed:
            status["completedIndexes"] = format_indexes(self.succeeded_indexes)
            status["succeeded"] = len(self.succeeded_indexes)
        if self.failed_indexes is not None:
            status["failedIndexes"] = format_indexes(self.failed_indexes)
        conditions: list[Obj] = status["conditions"]
        if self.finished is not None and self.finished["type"] == "FailureTarget":
            # The interim condition is recorded before any finalizer goes (JC order).
            conditions.append(self.finished)
            f = self.finished
            self.finished = new_condition("Failed", "True", f["reason"], f["message"], self.now)
        if self.finished is not None and self.finished["type"] == "SuccessCriteriaMet":
            if find_condition(conditions, "SuccessCriteriaMet") is None:
                conditions.append(self.finished)
            f = self.finished
            self.finished = new_condition("Complete", "True", f["reason"], f["message"], self.now)
        status["uncountedTerminatedPods"] = {
            "succeeded": list(self.unc_succeeded),
            "failed": list(self.unc_failed),
        }
        if release:
            ctl._write_status(self.ns, self.name, status, job)
            for pod in release:
                ctl._remove_finalizer(self.ns, pod["metadata"]["name"])
            if not self.indexed:
                status["succeeded"] = int(status.get("succeeded") or 0) + len(self.unc_succeeded)
            status["failed"] = int(status.get("failed") or 0) + len(self.unc_failed)
            self.unc_succeeded, self.unc_failed = [], []
            status["uncountedTerminatedPods"] = {}
        enacted = self._enact_finished()
        ctl._write_status(self.ns, self.name, status, job)
        if enacted and self.finished is not None:
            self._record_finished(self.finished)

    def _enact_finished(self) -> bool:
        """JC ``enactJobFinished``: the terminal condition waits for every pod to be terminal.

        True when this sync added the terminal condition.
        """
        if self.finished is None or self.unc_succeeded or self.unc_failed:
            return False
        if self.terminating > 0:
            return False
        conditions: list[Obj] = self.status["conditions"]
        f = self.finished
        added = ensure_condition(
            conditions, f["type"], f["status"], f["reason"], f["message"], self.now
        )
        if f["type"] == "Complete" and not self.status.get("completionTime"):
            self.status["completionTime"] = format_time(self.now)
        return added

    def _record_finished(self, finished: Obj) -> None:
        """JC ``recordJobFinished``, once the terminal condition is stored."""
        ctl = self.ctl
        if finished["type"] != "Complete":
            ctl._event(self.job, "Warning", finished["reason"], finished["message"])
            return
        succeeded = int(self.status.get("succeeded") or 0)
        if self.completions is not None and succeeded > self.completions:
            ctl._event(
                self.job,
                "Warning",
                "TooManySucceededPods",
                "Too many succeeded pods running after completion count reached",
            )
        ctl._event(self.job, "Normal", "Completed", "Job completed")


def _absolute_failures(pod: Obj) -> int:
    return _annotation_int(pod, FAILURE_COUNT_ANNOTATION) + _annotation_int(
        pod, IGNORED_FAILURE_COUNT_ANNOTATION
    )
