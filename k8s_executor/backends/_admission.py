"""Why a batch's pods do not appear: the cluster's admission, watched and explained.

Two optional watches of the Kubernetes backend: the Job controller's ``FailedCreate``
events (a quota, PodSecurity, a LimitRange refuses the pods at once) and, with a Kueue
queue, the run's Kueue Workloads (queued: no startup clock; never admissible: the batch
fails at once). Either may be refused (older Roles lack them); the run then works on, and
only reports such batches later. The pure message builders say what a batch that could
not start means, and what to do.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from ..errors import ClusterError
from ._kubeapi import KubeApi
from ._tracker import NO_POD, REFUSED, Event, RunTracker, Stuck

__all__ = ["Admission", "TrackerUpdate", "start_failure"]

TrackerUpdate = Callable[[RunTracker, str], list[Event]]
"""What a watched object means for the batch it concerns: ``(tracker, batch_id) -> events``."""


class Admission:
    """The ``FailedCreate`` events and Kueue Workloads of a run's Jobs, fed to its tracker.

    Args:
        api: the connected API boundary.
        stop: set when the run closes; both watches end then.
        update: ``update(job_names, fn)`` runs ``fn(tracker, batch_id)`` under the
            backend's lock for the batch whose Job has one of ``job_names`` (if any is
            known) and returns its events (none for an unknown Job).
        deliver: hands events on to the run, outside the lock.
    """

    def __init__(
        self,
        api: KubeApi,
        stop: threading.Event,
        update: Callable[[Collection[Any], TrackerUpdate], list[Event]],
        deliver: Callable[[list[Event]], None],
    ) -> None:
        self._api = api
        self._stop = stop
        self._update = update
        self._deliver = deliver

    def watch_events(self) -> None:
        """The Job controller's ``FailedCreate`` events say at once why no pod appears
        (a quota, PodSecurity, a LimitRange): without them, only Timeouts.startup would."""
        api = self._api
        try:
            api.watch(
                api.core.list_namespaced_event,
                "",
                self._on_event,
                self._stop,
                field_selector="involvedObject.kind=Job,reason=FailedCreate",
            )
        except ClusterError as error:
            # Optional (older Roles lack it): refusals then surface after Timeouts.startup.
            print(
                f"k8s_executor: {error}; without Events, pods the cluster refuses to create "
                "are reported only after Timeouts.startup",
                file=sys.stderr,
            )

    def watch_workloads(self) -> None:
        """Kueue's Workloads of the run's Jobs: queued (no startup clock), or never
        admissible (the batch fails at once)."""
        api = self._api

        def list_namespaced_workload(namespace: str, **kwargs: Any) -> Any:
            return api.custom.list_namespaced_custom_object(
                "kueue.x-k8s.io", "v1beta1", namespace, "workloads", **kwargs
            )

        try:
            api.watch(list_namespaced_workload, "", self._on_workload, self._stop)
        except ClusterError as error:
            print(
                f"k8s_executor: {error}; without Kueue's Workloads, a batch Kueue cannot "
                "admit waits for ever: check `kubectl get workloads`",
                file=sys.stderr,
            )

    def _on_workload(self, kind: str, workload: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        owners = (workload.get("metadata") or {}).get("ownerReferences") or []
        names = {o.get("name") for o in owners if o.get("kind") == "Job"}
        events = self._update(
            names, lambda tracker, batch_id: tracker.on_workload(batch_id, workload)
        )
        self._deliver(events)

    def _on_event(self, kind: str, event: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        name = (event.get("involvedObject") or {}).get("name")
        message = str(event.get("message") or "")
        events = self._update(
            {name},
            lambda tracker, batch_id: tracker.on_refusal(batch_id, message, time.monotonic()),
        )
        self._deliver(events)


def start_failure(event: Stuck, seconds: float, namespace: str, job_name: str) -> str:
    """Why the calls of a batch whose pods could not start fail, and what to do."""
    if event.reason == REFUSED:
        return (
            f"the cluster refuses to create the worker pods of batch {event.batch_id}: "
            f"{event.message.removeprefix('Error creating: ')}{refusal_hint(event.message)}"
        )
    hint = {
        "Unschedulable": "; ask for less (Resources) or check Scheduling: "
        "node_selector, tolerations, affinity",
        "CreateContainerConfigError": "; a Secret or ConfigMap it needs is missing "
        "(PodOptions.secrets?)",
        NO_POD: f" (a ResourceQuota, a LimitRange, PodSecurity admission or an admission "
        f"webhook); `kubectl describe job -n {namespace} {job_name}` shows the "
        "FailedCreate events that say why",
    }.get(event.reason, "")
    return (
        f"a worker pod of batch {event.batch_id} could not start for {seconds:g}s: "
        f"{event.reason}: {event.message}{hint}"
    )


def refusal_hint(message: str) -> str:
    """What to do about pods the API server refuses for good (docs/troubleshooting.md)."""
    if "exceeded quota" in message or "must specify" in message:
        return (
            "; one worker pod asks for more than the namespace's ResourceQuota allows: ask "
            "for less (Resources) or for more quota (`kubectl describe resourcequota`)"
        )
    if "PodSecurity" in message:
        return (
            "; the namespace's PodSecurity level forbids the pod: drop what pod_template or "
            "PodOptions(run_as_root=True) adds, or use a namespace whose level allows it"
        )
    if "per Container" in message or "per Pod" in message:
        return "; a LimitRange of the namespace bounds it: ask for resources within its bounds"
    return "; an admission policy of the cluster refuses it"
