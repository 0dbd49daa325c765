"""The Eviction API: ``POST /api/v1/namespaces/NS/pods/NAME/eviction`` (``policy/v1`` Eviction).

What the apiserver's ``EvictionREST.Create`` does when no PodDisruptionBudget selects the pod
(kubesim has none): it adds the ``DisruptionTarget`` condition (reason
``EvictionByEvictionAPI``, message ``Eviction API: evicting``) to the latest pod, then deletes
it with the Eviction's ``deleteOptions`` (grace period, preconditions, dry run). The answer is
``201`` with ``Status{status: Success}``. The kubelet then stops the pod as for any graceful
delete. A pod that does not exist is the usual 404.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.kubesim.errors import ApiError
from tests.kubesim.store import FieldError, format_time, invalid

__all__ = ["REASON", "evict", "success"]

Obj = dict[str, Any]

REASON = "EvictionByEvictionAPI"
MESSAGE = "Eviction API: evicting"
_POLICIES = ("Foreground", "Background", "Orphan")


def success() -> Obj:
    """The body of a successful eviction (a ``metav1.Status`` without details)."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}


def evict(
    store: Any,
    namespace: str,
    name: str,
    delete_options: Obj | None = None,
    *,
    dry_run: bool = False,
) -> Obj:
    """Evict pod ``namespace/name``; returns the answer body (raises ``ApiError``)."""
    options = copy.deepcopy(delete_options or {})
    if options.get("dryRun"):
        dry_run = True
    grace = options.get("gracePeriodSeconds")
    if grace is not None and not isinstance(grace, int):
        raise ApiError(400, "BadRequest", "deleteOptions.gracePeriodSeconds must be an integer")
    policy = options.get("propagationPolicy")
    if policy is not None and policy not in _POLICIES:
        # Checked before anything is written, so a refused eviction leaves no condition.
        raise invalid(
            "pods",
            name,
            [
                FieldError(
                    "propagationPolicy",
                    "NotSupported",
                    value=policy,
                    supported=(*_POLICIES, "nil"),
                )
            ],
        )
    preconditions: Obj = dict(options.get("preconditions") or {})
    if dry_run:
        store.get("pods", namespace, name)  # 404 as the real one
        return success()
    now = format_time(store.now())

    def mark(pod: Obj) -> bool:
        # The precondition is checked against the latest pod before the condition goes in.
        _check(pod, preconditions)
        conditions = pod.setdefault("status", {}).setdefault("conditions", [])
        for cond in conditions:
            if cond.get("type") == "DisruptionTarget":
                if cond.get("status") != "True":
                    cond["lastTransitionTime"] = now
                cond.update(status="True", reason=REASON, message=MESSAGE)
                return True
        conditions.append(
            {
                "type": "DisruptionTarget",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": now,
                "reason": REASON,
                "message": MESSAGE,
            }
        )
        return True

    updated = store.mutate("pods", namespace, name, mark)
    if preconditions.get("resourceVersion") and updated is not None:
        # Our own write moved the resourceVersion on; the caller's precondition held before it.
        preconditions["resourceVersion"] = updated["metadata"]["resourceVersion"]
    store.delete(
        "pods",
        namespace,
        name,
        grace_period_seconds=grace,
        propagation_policy=policy,
        preconditions=preconditions or None,
    )
    return success()


def _check(pod: Obj, preconditions: Obj) -> None:
    meta = pod["metadata"]
    uid = preconditions.get("uid")
    if uid and uid != meta.get("uid"):
        raise _conflict(
            meta["name"],
            f"the UID in the precondition ({uid}) does not match the UID in record "
            f"({meta.get('uid')}). The object might have been deleted and then recreated",
        )
    rv = preconditions.get("resourceVersion")
    if rv and rv != meta.get("resourceVersion"):
        raise _conflict(
            meta["name"],
            f"the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion "
            f"in record ({meta.get('resourceVersion')}). The object might have been modified",
        )


def _conflict(name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on Pod "{name}": {why}',
        details={"name": name, "kind": "Pod"},
    )
