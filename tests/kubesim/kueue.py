"""A minimal Kueue (``kueue.x-k8s.io/v1beta1``), modelled on Kueue v0.14's behaviour.

Served kinds (store.RESOURCES): ResourceFlavor, ClusterQueue, WorkloadPriorityClass (cluster
scoped), LocalQueue, Workload (namespaced); status subresource on the queues and Workloads.
Creates and replaces are checked by :func:`validate` (the few required fields), not by the
CRDs' OpenAPI schemas, which kubesim does not bundle.

Admission webhook (:func:`admit_job`): a Job created with the label
``kueue.x-k8s.io/queue-name`` gets ``spec.suspend: true``.

:class:`KueueController` (one thread, woken by every change of Jobs and Kueue objects, each pass
level-triggered over the whole store):

* Job reconciler: one Workload per queued Job, named ``job-<name>-<5 hex of sha1>``, owned by
  the Job (controller ownerReference), label ``kueue.x-k8s.io/job-uid``, ``spec.podSets``
  ``[{name: main, count: min(parallelism, completions), template}]``, ``priority`` from the
  ``kueue.x-k8s.io/priority-class`` label's WorkloadPriorityClass. Event ``CreatedWorkload``.
  An admitted Workload starts its Job (``suspend: false``, the flavors' ``nodeLabels`` merged
  into the template's ``nodeSelector``; event ``Started`` "Admitted by clusterQueue Q"). An
  evicted one stops it (``suspend: true``, the template restored; the Job controller deletes
  the pods; event ``Stopped``) and, once the Job has no active pod, gets ``Requeued``
  (True for Preempted) and ``QuotaReserved=False`` reason ``Pending`` with the eviction message.
  A finished Job finishes its Workload (``Finished``, reason ``Succeeded``/``Failed``), which
  frees the quota. A Job whose pod sets no longer match its Workload (a parallelism change)
  is handled as Kueue does: running → stopped ("No matching Workload; restoring pod templates
  according to existent Workload"), the Workload deleted (``DeletedWorkload``) and a new one
  created that queues again; suspended and not reserving quota → the Workload is updated.
* Scheduler (BestEffortFIFO: priority, then creation or requeue time): a Workload whose
  LocalQueue / ClusterQueue is missing gets ``QuotaReserved=False`` reason ``Inadmissible``
  ("LocalQueue team-a doesn't exist"); one that fits the first flavor with room
  (``nominalQuota`` minus the reservations of unfinished admitted Workloads) gets
  ``status.admission``, ``QuotaReserved`` ("Quota reserved in ClusterQueue Q") and
  ``Admitted`` ("The workload is admitted"), events ``QuotaReserved`` and ``Admitted``. One
  that cannot fit ("couldn't assign flavors to pod set main: insufficient quota for cpu in
  flavor F, request > maximum capacity (4 > 2)") or must wait ("insufficient unused quota for
  cpu in flavor F, 1 more needed") is ``QuotaReserved=False`` reason ``Pending`` (event
  ``Pending``). With ``preemption.withinClusterQueue: LowerPriority`` it evicts the
  lower-priority admitted Workloads it needs (``Evicted`` reason ``Preempted`` and
  ``Preempted`` reason ``InClusterQueue``: "Preempted to accommodate a workload (UID: U,
  JobUID: J) due to prioritization in the ClusterQueue"), and waits ("... Pending the
  preemption of 1 workload(s)") until their Jobs stopped.
* Queue status: ClusterQueue ``pendingWorkloads``/``reservingWorkloads``/``admittedWorkloads``,
  ``flavorsReservation``/``flavorsUsage``, ``Active`` (Ready / FlavorNotFound); LocalQueue the
  same counts and ``Active`` (Ready / ClusterQueueDoesNotExist).

Knowingly left out: cohorts and borrowing, fair sharing, admission checks, partial admission,
waitForPodsReady, topology-aware scheduling, MultiKueue, StrictFIFO's head-of-line blocking,
requeue back-off, flavor matching against node selectors/affinity, taints/tolerations of
flavors, integrations other than batch/v1 Job, the Workload finalizer, stop policies.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import threading
from typing import Any

from tests.kubesim import events
from tests.kubesim import limitrange as klimitrange
from tests.kubesim.errors import ApiError
from tests.kubesim.quota import Quantity
from tests.kubesim.store import FieldError, format_time, invalid

__all__ = ["GROUP", "QUEUE_LABEL", "VERSION", "KueueController", "admit_job", "validate"]

Obj = dict[str, Any]
GROUP = "kueue.x-k8s.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
POD_SET = "main"
ADMISSION = "kueue-admission"
JOB_CONTROLLER = "kueue-job-controller"
_KINDS = ("resourceflavors", "clusterqueues", "localqueues", "workloads", "workloadpriorityclasses")


# --- API side ----------------------------------------------------------------------------------


def validate(resource: str, name: str, obj: Obj) -> Obj:
    """The CRD's required fields (what a structural schema would refuse with 422)."""
    errors: list[FieldError] = []
    spec = obj.get("spec")
    if resource == "clusterqueues":
        for i, group in enumerate((spec or {}).get("resourceGroups") or []):
            if not group.get("coveredResources"):
                errors.append(FieldError(f"spec.resourceGroups[{i}].coveredResources", "Required"))
            if not group.get("flavors"):
                errors.append(FieldError(f"spec.resourceGroups[{i}].flavors", "Required"))
    elif resource == "localqueues":
        if not (spec or {}).get("clusterQueue"):
            errors.append(FieldError("spec.clusterQueue", "Required"))
    elif resource == "workloadpriorityclasses":
        if not isinstance(obj.get("value"), int) or isinstance(obj.get("value"), bool):
            errors.append(FieldError("value", "Required"))
    elif resource == "workloads" and not (spec or {}).get("podSets"):
        errors.append(FieldError("spec.podSets", "Required"))
    if errors:
        raise invalid(resource, name, errors)
    return obj


def admit_job(op: str, old: Obj | None, new: Obj) -> Obj:
    """Kueue's Job webhook default: a queued Job is created suspended."""
    labels = (new.get("metadata") or {}).get("labels") or {}
    if op == "CREATE" and labels.get(QUEUE_LABEL):
        new.setdefault("spec", {})["suspend"] = True
    return new


# --- helpers -----------------------------------------------------------------------------------


def _cond(obj: Obj, kind: str) -> Obj | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition  # type: ignore[no-any-return]
    return None


def _true(obj: Obj, kind: str) -> bool:
    condition = _cond(obj, kind)
    return condition is not None and condition.get("status") == "True"


def _set_cond(obj: Obj, kind: str, status: str, reason: str, message: str, now: str) -> None:
    """``meta.SetStatusCondition``: lastTransitionTime moves only when the status changes."""
    conditions = obj.setdefault("status", {}).setdefault("conditions", [])
    generation = (obj.get("metadata") or {}).get("generation", 1)
    for condition in conditions:
        if condition.get("type") == kind:
            if condition.get("status") != status:
                condition["lastTransitionTime"] = now
            condition.update(
                status=status, reason=reason, message=message, observedGeneration=generation
            )
            return
    conditions.append(
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now,
            "observedGeneration": generation,
        }
    )


def workload_name(job: Obj) -> str:
    meta = job["metadata"]
    digest = hashlib.sha1(f"Job\nbatch\n{meta['name']}\n{meta['uid']}".encode()).hexdigest()
    return f"job-{meta['name']}"[:247] + "-" + digest[:5]


def _job_finished(job: Obj) -> tuple[str, str] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            reason = "Succeeded" if condition["type"] == "Complete" else "Failed"
            return reason, condition.get("message") or ""
    return None


def _pod_count(job: Obj) -> int:
    spec = job.get("spec") or {}
    count = int(spec.get("parallelism", 1))
    if spec.get("completions") is not None:
        count = min(count, int(spec["completions"]))
    return count


def _clean_template(job: Obj) -> Obj:
    template = copy.deepcopy((job.get("spec") or {}).get("template") or {})
    labels = (template.get("metadata") or {}).get("labels") or {}
    for key in (
        "job-name",
        "controller-uid",
        "batch.kubernetes.io/job-name",
        "batch.kubernetes.io/controller-uid",
    ):
        labels.pop(key, None)
    return template


def _pod_sets(job: Obj) -> list[Obj]:
    return [{"name": POD_SET, "count": _pod_count(job), "template": _clean_template(job)}]


def _per_pod(store: Any, namespace: str, template: Obj) -> dict[str, Quantity]:
    """A pod's requests, LimitRange defaults applied and limits standing in for requests."""
    pod = {"metadata": {}, "spec": copy.deepcopy(template.get("spec") or {})}
    ranges, _ = store.list("limitranges", namespace)
    if ranges:
        klimitrange._apply_defaults(pod, sorted(ranges, key=lambda r: r["metadata"]["name"]))
    total: dict[str, Quantity] = {}
    for container in pod["spec"].get("containers") or []:
        resources = container.get("resources") or {}
        wanted = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for key, value in wanted.items():
            quantity = Quantity.parse(value)
            total[key] = total[key] + quantity if key in total else quantity
    return total


def _requests(store: Any, wl: Obj) -> dict[str, Quantity]:
    namespace = wl["metadata"]["namespace"]
    total: dict[str, Quantity] = {}
    for pod_set in wl["spec"].get("podSets") or []:
        count = int(pod_set.get("count", 1))
        for key, value in _per_pod(store, namespace, pod_set.get("template") or {}).items():
            scaled = Quantity(value.value * count, value.format)
            total[key] = total[key] + scaled if key in total else scaled
    return total


def _evict_conditions(wl: Obj, message: str, now: str) -> None:
    _set_cond(wl, "Evicted", "True", "Preempted", message, now)
    _set_cond(wl, "Preempted", "True", "InClusterQueue", message, now)


# --- the controller ----------------------------------------------------------------------------


class KueueController:
    """Kueue's job reconciler, scheduler and queue status writers (see the module doc)."""

    def __init__(self, store: Any, clock: Any = None) -> None:
        self.store = store
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Any = None

    def start(self) -> None:
        self._unsubscribe = self.store.subscribe(self._on_event)
        self._thread = threading.Thread(target=self._run, name="kubesim-kueue", daemon=True)
        self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def _on_event(self, event_type: str, resource: str, obj: Obj) -> None:
        if resource in _KINDS or resource in ("jobs", "limitranges"):
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sync()
            except ApiError:
                self._wake.set()  # a write raced another one: look again
            except Exception:  # pragma: no cover - a bug: keep serving, report it
                import traceback

                traceback.print_exc()

    def _now(self) -> str:
        return format_time(self.store.now())

    # --- one pass ------------------------------------------------------------------------------

    def sync(self) -> None:
        """One level-triggered pass: Jobs ↔ Workloads, then admission, then queue status."""
        jobs, _ = self.store.list("jobs")
        workloads, _ = self.store.list("workloads")
        by_owner: dict[str, list[Obj]] = {}
        for wl in workloads:
            for ref in wl["metadata"].get("ownerReferences") or []:
                if ref.get("controller") and ref.get("kind") == "Job":
                    by_owner.setdefault(ref["uid"], []).append(wl)
        for job in jobs:
            if ((job["metadata"].get("labels") or {}).get(QUEUE_LABEL)) and not job["metadata"].get(
                "deletionTimestamp"
            ):
                self._reconcile_job(job, by_owner.get(job["metadata"]["uid"], []))
        self._schedule()
        self._queue_status()

    def _record(self, obj: Obj, type_: str, reason: str, message: str, component: str) -> None:
        events.record(self.store, obj, type_, reason, message, component)

    def _reconcile_job(self, job: Obj, owned: list[Obj]) -> None:
        ns = job["metadata"]["namespace"]
        spec = job.get("spec") or {}
        suspended = bool(spec.get("suspend"))
        wanted = _pod_sets(job)
        finished = _job_finished(job)
        match = next(
            (
                wl
                for wl in owned
                if [(p["name"], p["count"]) for p in wl["spec"]["podSets"]]
                == [(p["name"], p["count"]) for p in wanted]
            ),
            None,
        )
        if finished is not None:
            for wl in owned:
                if not _true(wl, "Finished"):
                    reason, message = finished
                    self._mutate_wl(
                        wl,
                        lambda w, r=reason, m=message: _set_cond(
                            w, "Finished", "True", r, m, self._now()
                        ),
                    )
            return
        if match is None and owned:
            old = owned[0]
            if suspended and not _true(old, "QuotaReserved"):

                def update(w: Obj) -> None:
                    w["spec"]["podSets"] = wanted

                self.store.mutate("workloads", ns, old["metadata"]["name"], update)
                return
            if not suspended:
                self._stop_job(
                    job,
                    old,
                    "No matching Workload; restoring pod templates according to existent Workload",
                )
            for wl in owned:
                try:
                    self.store.delete("workloads", ns, wl["metadata"]["name"])
                except ApiError:
                    continue
                self._record(
                    job,
                    "Normal",
                    "DeletedWorkload",
                    f"Deleted not matching Workload: {ns}/{wl['metadata']['name']}",
                    JOB_CONTROLLER,
                )
            return
        if match is None:
            self._create_workload(job, wanted)
            return
        wl = match
        if _true(wl, "Evicted"):
            evicted = _cond(wl, "Evicted") or {}
            if not suspended:
                self._stop_job(job, wl, evicted.get("message", ""))
                return
            if _true(wl, "QuotaReserved") and not (job.get("status") or {}).get("active"):

                def requeue(w: Obj, ev: Obj = evicted) -> None:
                    now = self._now()
                    status = "True" if ev.get("reason") == "Preempted" else "False"
                    _set_cond(
                        w, "Requeued", status, ev.get("reason", ""), ev.get("message", ""), now
                    )
                    _set_cond(w, "QuotaReserved", "False", "Pending", ev.get("message", ""), now)
                    w["status"].pop("admission", None)
                    _set_cond(
                        w,
                        "Admitted",
                        "False",
                        "NoReservation",
                        "The workload has no reservation",
                        now,
                    )

                self._mutate_wl(wl, requeue)
            return
        admitted = _true(wl, "Admitted")
        if admitted and suspended:
            self._start_job(job, wl)
        elif not admitted and not suspended:
            self._stop_job(job, wl, "Not admitted by cluster queue")

    def _mutate_wl(self, wl: Obj, fn: Any) -> None:
        def apply(w: Obj) -> None:
            fn(w)

        self.store.mutate("workloads", wl["metadata"]["namespace"], wl["metadata"]["name"], apply)

    def _create_workload(self, job: Obj, pod_sets: list[Obj]) -> None:
        meta = job["metadata"]
        labels = meta.get("labels") or {}
        spec: Obj = {
            "queueName": labels[QUEUE_LABEL],
            "podSets": pod_sets,
            "active": True,
            "priority": 0,
        }
        priority_class = labels.get(PRIORITY_LABEL)
        if priority_class:
            try:
                wpc = self.store.get("workloadpriorityclasses", None, priority_class)
            except ApiError:
                wpc = None
            if wpc is not None:
                spec["priorityClassName"] = priority_class
                spec["priorityClassSource"] = "kueue.x-k8s.io/workloadpriorityclass"
                spec["priority"] = int(wpc.get("value", 0))
        body = {
            "apiVersion": API_VERSION,
            "kind": "Workload",
            "metadata": {
                "name": workload_name(job),
                "namespace": meta["namespace"],
                "labels": {JOB_UID_LABEL: meta["uid"]},
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
            },
            "spec": spec,
        }
        try:
            created = self.store.create("workloads", meta["namespace"], body, admission=False)
        except ApiError:
            return  # already there (a previous pass) or the namespace is going away
        self._record(
            job,
            "Normal",
            "CreatedWorkload",
            f"Created Workload: {meta['namespace']}/{created['metadata']['name']}",
            JOB_CONTROLLER,
        )

    def _start_job(self, job: Obj, wl: Obj) -> None:
        admission = (wl.get("status") or {}).get("admission") or {}
        node_labels: dict[str, str] = {}
        for assignment in admission.get("podSetAssignments") or []:
            for flavor in sorted(set((assignment.get("flavors") or {}).values())):
                try:
                    rf = self.store.get("resourceflavors", None, flavor)
                except ApiError:
                    continue
                node_labels.update((rf.get("spec") or {}).get("nodeLabels") or {})

        def start(j: Obj) -> None:
            j["spec"]["suspend"] = False
            if node_labels:
                pod_spec = j["spec"]["template"].setdefault("spec", {})
                pod_spec["nodeSelector"] = {**(pod_spec.get("nodeSelector") or {}), **node_labels}

        job = self.store.mutate(
            "jobs", job["metadata"]["namespace"], job["metadata"]["name"], start
        )
        self._record(
            job,
            "Normal",
            "Started",
            f"Admitted by clusterQueue {admission.get('clusterQueue', '')}",
            JOB_CONTROLLER,
        )

    def _stop_job(self, job: Obj, wl: Obj, message: str) -> None:
        original = (wl["spec"]["podSets"][0].get("template") or {}).get("spec") or {}

        def stop(j: Obj) -> None:
            j["spec"]["suspend"] = True
            pod_spec = j["spec"]["template"].setdefault("spec", {})
            if original.get("nodeSelector"):
                pod_spec["nodeSelector"] = copy.deepcopy(original["nodeSelector"])
            else:
                pod_spec.pop("nodeSelector", None)

        job = self.store.mutate("jobs", job["metadata"]["namespace"], job["metadata"]["name"], stop)
        self._record(job, "Normal", "Stopped", message, JOB_CONTROLLER)

    # --- scheduler -----------------------------------------------------------------------------

    def _schedule(self) -> None:
        workloads, _ = self.store.list("workloads")
        queues = {
            (q["metadata"]["namespace"], q["metadata"]["name"]): q
            for q in self.store.list("localqueues")[0]
        }
        cqs = {q["metadata"]["name"]: q for q in self.store.list("clusterqueues")[0]}
        usage: dict[str, dict[tuple[str, str], Any]] = {name: {} for name in cqs}
        admitted: dict[str, list[Obj]] = {name: [] for name in cqs}
        for wl in workloads:
            admission = (wl.get("status") or {}).get("admission")
            if admission and _true(wl, "QuotaReserved") and not _true(wl, "Finished"):
                cq = admission.get("clusterQueue", "")
                if cq in usage:
                    admitted[cq].append(wl)
                    for assignment in admission.get("podSetAssignments") or []:
                        for res, flavor in (assignment.get("flavors") or {}).items():
                            amount = Quantity.parse(
                                (assignment.get("resourceUsage") or {}).get(res, "0")
                            )
                            key = (flavor, res)
                            usage[cq][key] = usage[cq].get(key, 0) + amount.value

        def order(wl: Obj) -> tuple[int, str]:
            requeued = _cond(wl, "Requeued")
            stamp = (requeued or {}).get("lastTransitionTime") or wl["metadata"][
                "creationTimestamp"
            ]
            return (-int(wl["spec"].get("priority", 0)), stamp)

        pending = [
            wl
            for wl in workloads
            if not _true(wl, "QuotaReserved")
            and not _true(wl, "Finished")
            and wl["spec"].get("active", True)
        ]
        for wl in sorted(pending, key=order):
            ns = wl["metadata"]["namespace"]
            lq = queues.get((ns, wl["spec"].get("queueName", "")))
            if lq is None:
                self._pending(
                    wl,
                    "Inadmissible",
                    f"LocalQueue {wl['spec'].get('queueName', '')} doesn't exist",
                    event=False,
                )
                continue
            cq_name = (lq.get("spec") or {}).get("clusterQueue", "")
            cq = cqs.get(cq_name)
            if cq is None:
                self._pending(
                    wl, "Inadmissible", f"ClusterQueue {cq_name} doesn't exist", event=False
                )
                continue
            missing = self._missing_flavors(cq)
            if missing:
                self._pending(
                    wl, "Inadmissible", f"ClusterQueue {cq_name} is inactive", event=False
                )
                continue
            self._try_admit(wl, cq, usage[cq_name], admitted[cq_name])

    def _missing_flavors(self, cq: Obj) -> list[str]:
        names = {
            f.get("name", "")
            for group in (cq.get("spec") or {}).get("resourceGroups") or []
            for f in group.get("flavors") or []
        }
        existing = {rf["metadata"]["name"] for rf in self.store.list("resourceflavors")[0]}
        return sorted(names - existing)

    def _assign(
        self, cq: Obj, requests: dict[str, Quantity], used: dict[tuple[str, str], Any]
    ) -> tuple[dict[str, str] | None, list[str], bool]:
        """(flavors per resource or None, reasons, whether freeing quota could make it fit)."""
        groups = (cq.get("spec") or {}).get("resourceGroups") or []
        chosen: dict[str, str] = {}
        reasons: list[str] = []
        could_fit = True
        for res in sorted(requests):
            if requests[res].value == 0:
                continue
            if not any(res in (g.get("coveredResources") or []) for g in groups):
                return None, [f"resource {res} unavailable in ClusterQueue"], False
        for group in groups:
            wanted = [
                r
                for r in group.get("coveredResources") or []
                if r in requests and requests[r].value
            ]
            if not wanted:
                continue
            group_reasons: list[str] = []
            group_could = False
            for flavor in group.get("flavors") or []:
                quota = {
                    r.get("name"): Quantity.parse(r.get("nominalQuota", "0"))
                    for r in flavor.get("resources") or []
                }
                fits = True
                flavor_could = True
                for res in wanted:
                    nominal = quota.get(res, Quantity(0))
                    need = requests[res]
                    if need.value > nominal.value:
                        group_reasons.append(
                            f"insufficient quota for {res} in flavor {flavor['name']}, request > "
                            f"maximum capacity ({need} > {nominal})"
                        )
                        fits = flavor_could = False
                    elif used.get((flavor["name"], res), 0) + need.value > nominal.value:
                        more = Quantity(
                            used.get((flavor["name"], res), 0) + need.value - nominal.value,
                            need.format,
                        )
                        group_reasons.append(
                            f"insufficient unused quota for {res} in flavor {flavor['name']}, "
                            f"{more} more needed"
                        )
                        fits = False
                if fits:
                    for res in wanted:
                        chosen[res] = flavor["name"]
                    group_reasons = []
                    break
                group_could = group_could or flavor_could
            if group_reasons:
                reasons += group_reasons
                could_fit = could_fit and group_could
        if reasons:
            return None, sorted(reasons), could_fit
        return chosen, [], True

    def _try_admit(
        self, wl: Obj, cq: Obj, used: dict[tuple[str, str], Any], admitted: list[Obj]
    ) -> None:
        requests = _requests(self.store, wl)
        flavors, reasons, could_fit = self._assign(cq, requests, used)
        prefix = f"couldn't assign flavors to pod set {POD_SET}: "
        if flavors is not None:
            self._admit(wl, cq, flavors, requests)
            admitted.append(wl)
            for res, flavor in flavors.items():
                used[(flavor, res)] = used.get((flavor, res), 0) + requests[res].value
            return
        message = prefix + ", ".join(reasons)
        policy = ((cq.get("spec") or {}).get("preemption") or {}).get("withinClusterQueue", "Never")
        if could_fit and policy == "LowerPriority":
            targets = self._targets(wl, cq, requests, used, admitted)
            if targets:
                for target in targets:
                    if not _true(target, "Evicted"):
                        self._preempt(target, wl)
                message += f". Pending the preemption of {len(targets)} workload(s)"
        self._pending(wl, "Pending", message, event=True)

    def _targets(
        self,
        wl: Obj,
        cq: Obj,
        requests: dict[str, Quantity],
        used: dict[tuple[str, str], Any],
        admitted: list[Obj],
    ) -> list[Obj]:
        priority = int(wl["spec"].get("priority", 0))

        def admitted_at(w: Obj) -> str:
            return str((_cond(w, "QuotaReserved") or {}).get("lastTransitionTime", ""))

        candidates = sorted(
            (w for w in admitted if int(w["spec"].get("priority", 0)) < priority),
            key=lambda w: (int(w["spec"].get("priority", 0)), _neg(admitted_at(w))),
        )
        remaining = dict(used)
        chosen: list[Obj] = []
        for candidate in candidates:
            admission = candidate["status"]["admission"]
            for assignment in admission.get("podSetAssignments") or []:
                for res, flavor in (assignment.get("flavors") or {}).items():
                    amount = Quantity.parse((assignment.get("resourceUsage") or {}).get(res, "0"))
                    remaining[(flavor, res)] = remaining.get((flavor, res), 0) - amount.value
            chosen.append(candidate)
            if self._assign(cq, requests, remaining)[0] is not None:
                return chosen
        return []

    def _preempt(self, target: Obj, preemptor: Obj) -> None:
        job_uid = (preemptor["metadata"].get("labels") or {}).get(JOB_UID_LABEL) or "UNKNOWN"
        message = (
            f"Preempted to accommodate a workload (UID: {preemptor['metadata']['uid']}, "
            f"JobUID: {job_uid}) due to prioritization in the ClusterQueue"
        )
        self._mutate_wl(target, lambda w: _evict_conditions(w, message, self._now()))
        self._record(target, "Normal", "Preempted", message, ADMISSION)

    def _pending(self, wl: Obj, reason: str, message: str, *, event: bool) -> None:
        current = _cond(wl, "QuotaReserved")
        if current and (current.get("status"), current.get("reason"), current.get("message")) == (
            "False",
            reason,
            message,
        ):
            return

        def pend(w: Obj) -> None:
            now = self._now()
            _set_cond(w, "QuotaReserved", "False", reason, message, now)
            w.setdefault("status", {}).pop("admission", None)

        self._mutate_wl(wl, pend)
        if event:
            self._record(wl, "Warning", "Pending", message, ADMISSION)

    def _admit(
        self, wl: Obj, cq: Obj, flavors: dict[str, str], requests: dict[str, Quantity]
    ) -> None:
        cq_name = cq["metadata"]["name"]
        count = sum(int(p.get("count", 1)) for p in wl["spec"]["podSets"])
        admission = {
            "clusterQueue": cq_name,
            "podSetAssignments": [
                {
                    "name": POD_SET,
                    "flavors": dict(sorted(flavors.items())),
                    "resourceUsage": {res: str(requests[res]) for res in sorted(flavors)},
                    "count": count,
                }
            ],
        }

        def admit(w: Obj) -> None:
            now = self._now()
            w.setdefault("status", {})["admission"] = admission
            _set_cond(
                w,
                "QuotaReserved",
                "True",
                "QuotaReserved",
                f"Quota reserved in ClusterQueue {cq_name}",
                now,
            )
            for kind in ("Evicted", "Preempted"):
                previous = _cond(w, kind)
                if previous and previous.get("status") == "True":
                    _set_cond(
                        w,
                        kind,
                        "False",
                        "QuotaReserved",
                        "Previously: " + previous.get("message", ""),
                        now,
                    )
            _set_cond(w, "Admitted", "True", "Admitted", "The workload is admitted", now)

        self._mutate_wl(wl, admit)
        self._record(
            wl,
            "Normal",
            "QuotaReserved",
            f"Quota reserved in ClusterQueue {cq_name}, wait time since queued was 0s",
            ADMISSION,
        )
        self._record(
            wl,
            "Normal",
            "Admitted",
            f"Admitted by ClusterQueue {cq_name}, wait time since reservation was 0s",
            ADMISSION,
        )

    # --- queue status --------------------------------------------------------------------------

    def _queue_status(self) -> None:
        workloads, _ = self.store.list("workloads")
        live = [w for w in workloads if not _true(w, "Finished")]
        lqs, _ = self.store.list("localqueues")
        cq_of = {
            (q["metadata"]["namespace"], q["metadata"]["name"]): (q.get("spec") or {}).get(
                "clusterQueue"
            )
            for q in lqs
        }
        for cq in self.store.list("clusterqueues")[0]:
            name = cq["metadata"]["name"]
            mine = [
                w
                for w in live
                if cq_of.get((w["metadata"]["namespace"], w["spec"].get("queueName"))) == name
            ]
            reserving = [w for w in mine if _true(w, "QuotaReserved")]
            totals: dict[tuple[str, str], Quantity] = {}
            for w in reserving:
                for assignment in (w["status"].get("admission") or {}).get(
                    "podSetAssignments"
                ) or []:
                    for res, flavor in (assignment.get("flavors") or {}).items():
                        amount = Quantity.parse(
                            (assignment.get("resourceUsage") or {}).get(res, "0")
                        )
                        key = (flavor, res)
                        totals[key] = totals[key] + amount if key in totals else amount
            flavors_usage = []
            for group in (cq.get("spec") or {}).get("resourceGroups") or []:
                for flavor in group.get("flavors") or []:
                    flavors_usage.append(
                        {
                            "name": flavor["name"],
                            "resources": [
                                {
                                    "name": r["name"],
                                    "total": str(
                                        totals.get((flavor["name"], r["name"]), Quantity(0))
                                    ),
                                    "borrowed": "0",
                                }
                                for r in flavor.get("resources") or []
                            ],
                        }
                    )
            missing = self._missing_flavors(cq)
            counts = {
                "pendingWorkloads": len(mine) - len(reserving),
                "reservingWorkloads": len(reserving),
                "admittedWorkloads": sum(1 for w in reserving if _true(w, "Admitted")),
                "flavorsReservation": flavors_usage,
                "flavorsUsage": flavors_usage,
            }
            active = (
                (
                    "False",
                    "FlavorNotFound",
                    "Can't admit new workloads: references missing ResourceFlavor(s): "
                    f"{','.join(missing)}.",
                )
                if missing
                else ("True", "Ready", "Can admit new workloads")
            )
            self._write_status("clusterqueues", None, name, counts, active)
        cq_names = {q["metadata"]["name"] for q in self.store.list("clusterqueues")[0]}
        for lq in lqs:
            ns, name = lq["metadata"]["namespace"], lq["metadata"]["name"]
            mine = [
                w
                for w in live
                if w["metadata"]["namespace"] == ns and w["spec"].get("queueName") == name
            ]
            reserving = [w for w in mine if _true(w, "QuotaReserved")]
            counts = {
                "pendingWorkloads": len(mine) - len(reserving),
                "reservingWorkloads": len(reserving),
                "admittedWorkloads": sum(1 for w in reserving if _true(w, "Admitted")),
            }
            active = (
                ("True", "Ready", "Can submit new workloads to localQueue")
                if (lq.get("spec") or {}).get("clusterQueue") in cq_names
                else (
                    "False",
                    "ClusterQueueDoesNotExist",
                    "Can't submit new workloads to clusterQueue",
                )
            )
            self._write_status("localqueues", ns, name, counts, active)

    def _write_status(
        self, resource: str, ns: str | None, name: str, counts: Obj, active: tuple[str, str, str]
    ) -> None:
        def write(q: Obj) -> bool:
            before = copy.deepcopy(q.get("status"))
            status = q.setdefault("status", {})
            status.update(counts)
            current = _cond(q, "Active")
            if (
                current is None
                or (current.get("status"), current.get("reason"), current.get("message")) != active
            ):
                _set_cond(q, "Active", *active, self._now())
            return q.get("status") != before

        with contextlib.suppress(ApiError):  # deleted meanwhile
            self.store.mutate(resource, ns, name, write)


def _neg(stamp: str) -> tuple[int, ...]:
    """Sort key putting the latest RFC 3339 stamp first."""
    return tuple(-ord(ch) for ch in stamp)
