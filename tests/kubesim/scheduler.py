"""A one-node kube-scheduler for kubesim.

Binds a pending pod to the simulated :class:`Node` when its resource requests fit what the
node has left (requests of the non-terminal pods already bound are subtracted), its
``nodeSelector`` matches the node labels and it tolerates the node's NoSchedule/NoExecute
taints. Otherwise the pod gets ``PodScheduled=False`` reason ``Unschedulable`` with the
scheduler's message format (the unschedulable trace of a 1.36 cluster), e.g.::

    0/1 nodes are available: 1 Insufficient cpu. no new claims to deallocate, preemption:
    0/1 nodes are available: 1 Preemption is not helpful for scheduling.

(one line; "not helpful" when no eviction could make room: the request exceeds what the node
has at all, or the node selector/taints rule the node out; "No preemption victims found" when
only the other pods' usage is in the way, since kubesim's pods all have priority 0; the same
text is the ``FailedScheduling`` Event) — and stays Pending until something changes on the
node (a pod leaves), which makes the scheduler retry, as the real one does on cluster events.
Pods with ``schedulingGates`` get ``reason: SchedulingGated`` (and no Event). A bound pod gets
the ``Scheduled`` Event.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .clock import Clock
from .errors import ApiError
from .events import record as record_event

__all__ = ["Node", "Scheduler", "parse_quantity", "pod_requests", "unschedulable_reasons"]

_log = logging.getLogger(__name__)

Obj = dict[str, Any]

_SUFFIXES = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 1024.0,
    "Mi": 1024.0**2,
    "Gi": 1024.0**3,
    "Ti": 1024.0**4,
    "Pi": 1024.0**5,
    "Ei": 1024.0**6,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(value: Any) -> float:
    """A resource.Quantity (``500m``, ``1.5``, ``128Mi``, ``1e3``) in base units."""
    if isinstance(value, int | float):
        return float(value)
    match = _QUANTITY.match(str(value).strip())
    if match is None or match.group(2) not in _SUFFIXES:
        raise ValueError(f"quantities must match the regular expression: {value!r}")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def _default_allocatable() -> dict[str, str]:
    return {
        "cpu": "8",
        "memory": "32Gi",
        "ephemeral-storage": "100Gi",
        "nvidia.com/gpu": "0",
        "pods": "110",
    }


@dataclass
class Node:
    """The single simulated node."""

    name: str = "kubesim-node"
    allocatable: dict[str, str] = field(default_factory=_default_allocatable)
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.labels,
        }


def pod_requests(spec: Obj) -> dict[str, float]:
    """Effective requests: sum over containers, at least the largest init container."""
    total: dict[str, float] = {}
    for container in spec.get("containers") or []:
        resources = container.get("resources") or {}
        requests = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, value in requests.items():
            total[name] = total.get(name, 0.0) + parse_quantity(value)
    for container in spec.get("initContainers") or []:
        resources = container.get("resources") or {}
        requests = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for name, value in requests.items():
            total[name] = max(total.get(name, 0.0), parse_quantity(value))
    return total


def _tolerates(tolerations: list[Obj], taint: dict[str, str]) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol.get("effect") != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol.get("key") == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


def unschedulable_reasons(
    pod: Obj, node: Node, used: dict[str, float], pod_count: int
) -> list[str]:
    """Why ``pod`` does not fit ``node`` (empty list: it fits). Reasons use upstream wording."""
    spec = pod.get("spec") or {}
    reasons: list[str] = []
    selector = spec.get("nodeSelector") or {}
    if any(node.labels.get(k) != v for k, v in selector.items()):
        reasons.append("node(s) didn't match Pod's node affinity/selector")
    for taint in node.taints:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(
            spec.get("tolerations") or [], taint
        ):
            value = taint.get("value")
            shown = f"{taint['key']}: {value}" if value else taint["key"]
            reasons.append(f"node(s) had untolerated taint {{{shown}}}")
            break
    if pod_count + 1 > parse_quantity(node.allocatable.get("pods", "110")):
        reasons.append("Too many pods")
    for name, wanted in sorted(pod_requests(spec).items()):
        if wanted <= 0:
            continue
        capacity = parse_quantity(node.allocatable.get(name, "0"))
        if used.get(name, 0.0) + wanted > capacity:
            reasons.append(f"Insufficient {name}")
    return reasons


def _preemption_helps(pod: Obj, node: Node, reasons: list[str]) -> bool:
    """Whether evicting pods could make room (the Filter status was not Unresolvable)."""
    if not all(r.startswith("Insufficient") or r == "Too many pods" for r in reasons):
        return False  # node selector / taints: UnschedulableAndUnresolvable
    # NodeResourcesFit: a request above the node's allocatable is Unresolvable too.
    requests = pod_requests(pod.get("spec") or {})
    return all(
        requests.get(r.removeprefix("Insufficient "), 0.0)
        <= parse_quantity(node.allocatable.get(r.removeprefix("Insufficient "), "0"))
        for r in reasons
        if r.startswith("Insufficient")
    )


def _message(reasons: list[str], preemption_helps: bool = True) -> str:
    counted = ", ".join(f"1 {r}" for r in sorted(reasons))
    preemption = (
        "1 No preemption victims found for incoming pod"
        if preemption_helps
        else "1 Preemption is not helpful for scheduling"
    )
    # The DynamicResources PostFilter speaks first ("no new claims to deallocate" for a pod
    # without ResourceClaims), then DefaultPreemption.
    return (
        f"0/1 nodes are available: {counted}. no new claims to deallocate, preemption: "
        f"0/1 nodes are available: {preemption}."
    )


def _stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


class Scheduler:
    """Watches pods and binds the schedulable ones to the node (see the module docstring)."""

    def __init__(self, store: Any, clock: Clock, node: Node | None = None) -> None:
        self.store = store
        self.clock = clock
        self.node = node or Node()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Any = None

    def start(self) -> None:
        self._unsubscribe = self.store.subscribe(self._on_event)
        self._thread = threading.Thread(target=self._loop, name="kubesim-scheduler", daemon=True)
        self._thread.start()
        self._queue.put("schedule")

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _on_event(self, event_type: str, resource: str, obj: Obj) -> None:
        if resource != "pods":
            return
        spec = obj.get("spec") or {}
        if not spec.get("nodeName") or event_type == "DELETED":
            self._queue.put("schedule")
        elif (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            self._queue.put("schedule")  # capacity freed: retry unschedulable pods

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            # Coalesce a burst of events into one pass.
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    return
            try:
                self.schedule_pending()
            except Exception:
                _log.exception("scheduler pass crashed")

    def schedule_pending(self) -> None:
        pods, _ = self.store.list("pods")
        used: dict[str, float] = {}
        count = 0
        for pod in pods:
            if (pod.get("spec") or {}).get("nodeName") == self.node.name and (
                pod.get("status") or {}
            ).get("phase") not in ("Succeeded", "Failed"):
                count += 1
                for name, value in pod_requests(pod["spec"]).items():
                    used[name] = used.get(name, 0.0) + value
        pending = [
            p
            for p in pods
            if not (p.get("spec") or {}).get("nodeName")
            and not p["metadata"].get("deletionTimestamp")
            and (p.get("spec") or {}).get("schedulerName", "default-scheduler")
            == "default-scheduler"
        ]
        pending.sort(key=lambda p: p["metadata"].get("creationTimestamp", ""))
        for pod in pending:
            if (pod.get("spec") or {}).get("schedulingGates"):
                self._condition(
                    pod,
                    "SchedulingGated",
                    "Scheduling is blocked due to non-empty scheduling gates",
                )
                continue
            reasons = unschedulable_reasons(pod, self.node, used, count)
            if reasons:
                message = _message(reasons, _preemption_helps(pod, self.node, reasons))
                if self._condition(pod, "Unschedulable", message):
                    # Recorded when the verdict changes; kubesim retries far more often than
                    # the real scheduler's backoff queue, which would only bump the count.
                    self._event(pod, "Warning", "FailedScheduling", message)
                continue
            if self._bind(pod):
                count += 1
                for name, value in pod_requests(pod["spec"]).items():
                    used[name] = used.get(name, 0.0) + value

    def _event(self, pod: Obj, type_: str, reason: str, message: str) -> None:
        record_event(self.store, pod, type_, reason, message, "default-scheduler")

    def _condition(self, pod: Obj, reason: str, message: str) -> bool:
        """Set ``PodScheduled=False``; True when that changed the pod."""
        now = _stamp(self.clock.now())

        def apply(obj: Obj) -> bool:
            if (obj.get("spec") or {}).get("nodeName"):
                return False
            conditions = obj.setdefault("status", {}).setdefault("conditions", [])
            for cond in conditions:
                if cond.get("type") == "PodScheduled":
                    if (cond.get("status"), cond.get("reason"), cond.get("message")) == (
                        "False",
                        reason,
                        message,
                    ):
                        return False
                    cond.update(status="False", reason=reason, message=message)
                    cond["lastTransitionTime"] = now
                    return True
            conditions.append(
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "lastProbeTime": None,
                    "lastTransitionTime": now,
                    "reason": reason,
                    "message": message,
                }
            )
            return True

        try:
            meta = pod["metadata"]
            return self.store.mutate("pods", meta["namespace"], meta["name"], apply) is not None
        except ApiError:  # the pod went away meanwhile
            return False

    def _bind(self, pod: Obj) -> bool:
        now = _stamp(self.clock.now())
        bound = False

        def apply(obj: Obj) -> bool:
            nonlocal bound
            if (obj.get("spec") or {}).get("nodeName") or obj["metadata"].get("deletionTimestamp"):
                return False
            obj["spec"]["nodeName"] = self.node.name
            conditions = [
                c
                for c in (obj.setdefault("status", {}).get("conditions") or [])
                if c.get("type") != "PodScheduled"
            ]
            conditions.append(
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastProbeTime": None,
                    "lastTransitionTime": now,
                }
            )
            obj["status"]["conditions"] = conditions
            bound = True
            return True

        try:
            bound_pod = self.store.mutate(
                "pods", pod["metadata"]["namespace"], pod["metadata"]["name"], apply
            )
        except ApiError:
            return False
        if bound and bound_pod is not None:
            meta = bound_pod["metadata"]
            self._event(
                pod,
                "Normal",
                "Scheduled",
                f"Successfully assigned {meta['namespace']}/{meta['name']} to {self.node.name}",
            )
        return bound
