"""Server-side printing (``meta.k8s.io/v1`` Table), which ``kubectl get`` asks for.

Columns follow ``pkg/printers/internalversion/printers.go`` for the resources kubesim serves,
reduced to what can be computed from the stored objects.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

Obj = dict[str, Any]


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def human_duration(seconds: float) -> str:
    """apimachinery ``duration.HumanDuration``."""
    s = int(seconds)
    if s < 0:
        return "<invalid>"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y"


def _age(obj: Obj, now: datetime) -> str:
    created = _parse(obj["metadata"].get("creationTimestamp"))
    return human_duration((now - created).total_seconds()) if created else "<unknown>"


def _has_condition(obj: Obj, kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def _job_row(obj: Obj, now: datetime) -> list[Any]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    succeeded = int(status.get("succeeded") or 0)
    if spec.get("completions") is not None:
        completions = f"{succeeded}/{spec['completions']}"
    elif int(spec.get("parallelism") or 0) > 1:
        completions = f"{succeeded}/1 of {spec['parallelism']}"
    else:
        completions = f"{succeeded}/1"
    if _has_condition(obj, "Complete"):
        state = "Complete"
    elif _has_condition(obj, "Failed"):
        state = "Failed"
    elif obj["metadata"].get("deletionTimestamp"):
        state = "Terminating"
    elif _has_condition(obj, "Suspended"):
        state = "Suspended"
    elif _has_condition(obj, "FailureTarget"):
        state = "FailureTarget"
    elif _has_condition(obj, "SuccessCriteriaMet"):
        state = "SuccessCriteriaMet"
    else:
        state = "Running"
    start = _parse(status.get("startTime"))
    end = _parse(status.get("completionTime"))
    duration = ""
    if start is not None:
        duration = human_duration(((end or now) - start).total_seconds())
    containers = list(((spec.get("template") or {}).get("spec") or {}).get("containers") or [])
    return [
        obj["metadata"]["name"],
        state,
        completions,
        duration,
        _age(obj, now),
        ",".join(str(c.get("name", "")) for c in containers),
        ",".join(str(c.get("image", "")) for c in containers),
        format_label_selector(spec.get("selector")),
    ]


def format_label_selector(selector: Any) -> str:
    """``metav1.FormatLabelSelector``: requirements sorted by key, ``<none>`` when empty."""
    if not isinstance(selector, dict):
        return "<none>"
    parts: list[tuple[str, str]] = []
    for key, value in (selector.get("matchLabels") or {}).items():
        parts.append((key, f"{key}={value}"))
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key", ""), expression.get("operator", "")
        values = ",".join(sorted(expression.get("values") or []))
        text = {
            "In": f"{key} in ({values})",
            "NotIn": f"{key} notin ({values})",
            "Exists": key,
            "DoesNotExist": f"!{key}",
        }.get(operator, f"{key} {operator}")
        parts.append((key, text))
    return ",".join(text for _, text in sorted(parts)) or "<none>"


def _pod_row(obj: Obj, now: datetime) -> list[Any]:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    statuses = status.get("containerStatuses") or []
    total = len(spec.get("containers") or [])
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount") or 0) for s in statuses)
    reason = status.get("reason") or status.get("phase") or "Unknown"
    running = False
    for container in reversed(statuses):
        state = container.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            terminated = state["terminated"] or {}
            if terminated.get("reason"):
                reason = terminated["reason"]
            elif terminated.get("signal"):
                reason = f"Signal:{terminated['signal']}"
            else:
                reason = f"ExitCode:{terminated.get('exitCode', 0)}"
        elif "running" in state and container.get("ready"):
            running = True
    if reason == "Completed" and running:
        reason = "Running"
    if obj["metadata"].get("deletionTimestamp") and status.get("phase") not in (
        "Succeeded",
        "Failed",
    ):
        reason = "Terminating"
    gates = spec.get("readinessGates") or []
    gates_text = "<none>"
    if gates:
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        true = sum(1 for g in gates if conditions.get(g.get("conditionType")) == "True")
        gates_text = f"{true}/{len(gates)}"
    return [
        obj["metadata"]["name"],
        f"{ready}/{total}",
        reason,
        restarts,
        _age(obj, now),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        gates_text,
    ]


def _namespace_row(obj: Obj, now: datetime) -> list[Any]:
    phase = (obj.get("status") or {}).get("phase", "")
    return [obj["metadata"]["name"], phase, _age(obj, now)]


def _secret_row(obj: Obj, now: datetime) -> list[Any]:
    data = len(obj.get("data") or {})
    return [obj["metadata"]["name"], obj.get("type", "Opaque"), data, _age(obj, now)]


def _configmap_row(obj: Obj, now: datetime) -> list[Any]:
    data = len(obj.get("data") or {}) + len(obj.get("binaryData") or {})
    return [obj["metadata"]["name"], data, _age(obj, now)]


def _event_row(obj: Obj, now: datetime) -> list[Any]:
    last = _parse(obj.get("lastTimestamp") or obj.get("eventTime"))
    seen = human_duration((now - last).total_seconds()) if last else "<unknown>"
    involved = obj.get("involvedObject") or {}
    target = f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}"
    return [seen, obj.get("type", ""), obj.get("reason", ""), target, obj.get("message", "")]


def _quota_row(obj: Obj, now: datetime) -> list[Any]:
    # printResourceQuota: "resource: used/hard" pairs, the limits.* ones in their own column.
    status = obj.get("status") or {}
    hard, used = status.get("hard") or {}, status.get("used") or {}
    request: list[str] = []
    limit: list[str] = []
    for name in sorted(hard):
        column = limit if name.split(".")[0] == "limits" and "." in name else request
        column.append(f"{name}: {used.get(name, '0')}/{hard[name]}")
    return [obj["metadata"]["name"], _age(obj, now), ", ".join(request), ", ".join(limit)]


def _serviceaccount_row(obj: Obj, now: datetime) -> list[Any]:
    return [obj["metadata"]["name"], len(obj.get("secrets") or []), _age(obj, now)]


def _limitrange_row(obj: Obj, now: datetime) -> list[Any]:
    return [obj["metadata"]["name"], obj["metadata"].get("creationTimestamp", "")]


def _kueue_cond(obj: Obj, kind: str) -> str:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return str(condition.get("status", ""))
    return ""


# Kueue's CRDs: their additionalPrinterColumns (no Age column unless the CRD declares one).
def _cq_row(obj: Obj, now: datetime) -> list[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    return [
        obj["metadata"]["name"],
        spec.get("cohort"),
        spec.get("queueingStrategy"),
        status.get("pendingWorkloads"),
        status.get("admittedWorkloads"),
    ]


def _lq_row(obj: Obj, now: datetime) -> list[Any]:
    status = obj.get("status") or {}
    return [
        obj["metadata"]["name"],
        (obj.get("spec") or {}).get("clusterQueue"),
        status.get("pendingWorkloads"),
        status.get("admittedWorkloads"),
    ]


def _wl_row(obj: Obj, now: datetime) -> list[Any]:
    admission = (obj.get("status") or {}).get("admission") or {}
    return [
        obj["metadata"]["name"],
        (obj.get("spec") or {}).get("queueName"),
        admission.get("clusterQueue"),
        _kueue_cond(obj, "Admitted"),
        _kueue_cond(obj, "Finished"),
        _age(obj, now),
    ]


def _col(name: str, kind: str = "string", priority: int = 0, fmt: str = "") -> dict[str, Any]:
    column: dict[str, Any] = {
        "name": name,
        "type": kind,
        "format": fmt,
        "description": "",
        "priority": priority,
    }
    return column


_COLUMNS = {
    "jobs": (
        [
            _col("Name", fmt="name"),
            _col("Status"),
            _col("Completions"),
            _col("Duration"),
            _col("Age"),
            # -o wide: the columns of priority 1 (printers.go jobColumnDefinitions).
            _col("Containers", priority=1),
            _col("Images", priority=1),
            _col("Selector", priority=1),
        ],
        _job_row,
    ),
    "pods": (
        [
            _col("Name", fmt="name"),
            _col("Ready"),
            _col("Status"),
            _col("Restarts", "string"),
            _col("Age"),
            _col("IP", priority=1),
            _col("Node", priority=1),
            _col("Nominated Node", priority=1),
            _col("Readiness Gates", priority=1),
        ],
        _pod_row,
    ),
    "namespaces": ([_col("Name", fmt="name"), _col("Status"), _col("Age")], _namespace_row),
    "secrets": (
        [_col("Name", fmt="name"), _col("Type"), _col("Data", "integer"), _col("Age")],
        _secret_row,
    ),
    "configmaps": (
        [_col("Name", fmt="name"), _col("Data", "integer"), _col("Age")],
        _configmap_row,
    ),
    "resourcequotas": (
        [_col("Name", fmt="name"), _col("Age"), _col("Request"), _col("Limit")],
        _quota_row,
    ),
    "serviceaccounts": (
        [_col("Name", fmt="name"), _col("Secrets", "integer"), _col("Age")],
        _serviceaccount_row,
    ),
    "limitranges": ([_col("Name", fmt="name"), _col("Created At", fmt="date")], _limitrange_row),
    "resourceflavors": (
        [_col("Name", fmt="name"), _col("Age", "date")],
        lambda o, n: [o["metadata"]["name"], _age(o, n)],
    ),
    "workloadpriorityclasses": (
        [_col("Name", fmt="name"), _col("Value", "integer")],
        lambda o, n: [o["metadata"]["name"], o.get("value")],
    ),
    "clusterqueues": (
        [
            _col("Name", fmt="name"),
            _col("Cohort"),
            _col("Strategy", priority=1),
            _col("Pending Workloads", "integer"),
            _col("Admitted Workloads", "integer", priority=1),
        ],
        _cq_row,
    ),
    "localqueues": (
        [
            _col("Name", fmt="name"),
            _col("ClusterQueue"),
            _col("Pending Workloads", "integer"),
            _col("Admitted Workloads", "integer"),
        ],
        _lq_row,
    ),
    "workloads": (
        [
            _col("Name", fmt="name"),
            _col("Queue"),
            _col("Reserved in"),
            _col("Admitted"),
            _col("Finished"),
            _col("Age", "date"),
        ],
        _wl_row,
    ),
    "events": (
        [_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message")],
        _event_row,
    ),
}


def to_table(resource: str, items: list[Obj], list_meta: dict[str, Any], now: datetime) -> Obj:
    columns, row = _COLUMNS[resource]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns,
        "rows": [
            {
                "cells": row(obj, now),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                },
            }
            for obj in items
        ],
    }
