"""LimitRange: the object's defaulting and the ``LimitRanger`` admission plugin.

As kube-apiserver (``plugin/pkg/admission/limitranger``, ``SetDefaults_LimitRangeItem``):

* A ``Container`` item of a LimitRange is defaulted when stored: ``default`` (the limit)
  falls back to ``max``, ``defaultRequest`` to ``default`` and then to ``min``.
* Pod **creates** only (updates and subresources are not looked at): every container and init
  container without a limit / request for a resource gets the LimitRange's ``default`` /
  ``defaultRequest``, and the pod is annotated ``kubernetes.io/limit-ranger: LimitRanger plugin
  set: cpu, memory request for container main; cpu limit for container main``.
* Then ``min``, ``max`` and ``maxLimitRequestRatio`` are checked per container (type
  ``Container``) and on the pod's totals (type ``Pod``); a violation is 403 ``pods "NAME" is
  forbidden: maximum cpu usage per Container is 2, but limit is 4`` (several: ``[a, b]``, the
  apimachinery aggregate). The first LimitRange (by name) with a violation decides.

Registered by :class:`~tests.kubesim.kubeconfig.Kubesim` before the quota admission, so a
quota sees the defaulted requests, as LimitRanger (a mutating plugin) runs before
ResourceQuota (the last validating one) in a real apiserver.
"""

from __future__ import annotations

import copy
from fractions import Fraction
from typing import Any

from tests.kubesim.errors import ApiError
from tests.kubesim.quota import Quantity

__all__ = ["admit_pod", "default_limit_range", "register"]

Obj = dict[str, Any]
ANNOTATION = "kubernetes.io/limit-ranger"


def default_limit_range(op: str, old: Obj | None, new: Obj) -> Obj:
    """``SetDefaults_LimitRangeItem`` for every ``Container`` item."""
    for item in (new.get("spec") or {}).get("limits") or []:
        if not isinstance(item, dict) or item.get("type") != "Container":
            continue
        default = item.setdefault("default", {})
        request = item.setdefault("defaultRequest", {})
        for key, value in (item.get("max") or {}).items():
            default.setdefault(key, value)
        for key, value in default.items():
            request.setdefault(key, value)
        for key, value in (item.get("min") or {}).items():
            request.setdefault(key, value)
        if not default:
            item.pop("default")
        if not request:
            item.pop("defaultRequest")
    return new


def _containers(spec: Obj) -> list[tuple[str, Obj]]:
    found = [("container", c) for c in spec.get("containers") or []]
    found += [("init container", c) for c in spec.get("initContainers") or []]
    return [(label, c) for label, c in found if isinstance(c, dict)]


def _apply_defaults(pod: Obj, ranges: list[Obj]) -> None:
    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {}
    for limit_range in ranges:
        for item in (limit_range.get("spec") or {}).get("limits") or []:
            if item.get("type") == "Container":
                requests.update(item.get("defaultRequest") or {})
                limits.update(item.get("default") or {})
    if not limits and not requests:
        return
    notes: list[str] = []
    for label, container in _containers(pod.get("spec") or {}):
        resources = container.setdefault("resources", {})
        own_limits = resources.setdefault("limits", {})
        own_requests = resources.setdefault("requests", {})
        set_limits = sorted(k for k in limits if k not in own_limits)
        set_requests = sorted(k for k in requests if k not in own_requests)
        for key in set_limits:
            own_limits[key] = limits[key]
        for key in set_requests:
            own_requests[key] = requests[key]
        if not own_limits:
            resources.pop("limits")
        if not own_requests:
            resources.pop("requests")
        name = container.get("name", "")
        if set_requests:
            notes.append(f"{', '.join(set_requests)} request for {label} {name}")
        if set_limits:
            notes.append(f"{', '.join(set_limits)} limit for {label} {name}")
    if notes:
        annotations = pod.setdefault("metadata", {}).setdefault("annotations", {})
        annotations[ANNOTATION] = "LimitRanger plugin set: " + "; ".join(notes)


def _values(raw: Any) -> dict[str, Quantity]:
    return {k: Quantity.parse(v) for k, v in (raw or {}).items()}


def _min(kind: str, name: str, bound: Quantity, req: Obj, lim: Obj) -> str | None:
    if name not in req:
        return f"minimum {name} usage per {kind} is {bound}.  No request is specified"
    if req[name].value < bound.value:
        return f"minimum {name} usage per {kind} is {bound}, but request is {req[name]}"
    if name in lim and lim[name].value < bound.value:
        return f"minimum {name} usage per {kind} is {bound}, but limit is {lim[name]}"
    return None


def _max(kind: str, name: str, bound: Quantity, req: Obj, lim: Obj) -> str | None:
    if name not in lim:
        return f"maximum {name} usage per {kind} is {bound}.  No limit is specified"
    if lim[name].value > bound.value:
        return f"maximum {name} usage per {kind} is {bound}, but limit is {lim[name]}"
    if name in req and req[name].value > bound.value:
        return f"maximum {name} usage per {kind} is {bound}, but request is {req[name]}"
    return None


def _ratio(kind: str, name: str, bound: Quantity, req: Obj, lim: Obj) -> str | None:
    prefix = f"{name} max limit to request ratio per {kind} is {bound}"
    if name not in req or req[name].value == 0:
        return f"{prefix}, but no request is specified or request is 0"
    if name not in lim or lim[name].value == 0:
        return f"{prefix}, but no limit is specified or limit is 0"
    ratio = Fraction(lim[name].value) / Fraction(req[name].value)
    if ratio > bound.value:
        return f"{prefix}, but provided ratio is {float(ratio):f}"
    return None


def _pod_totals(spec: Obj, kind: str) -> dict[str, Quantity]:
    """Sum of the containers; an init container's own value when larger (podRequests)."""
    total: dict[str, Quantity] = {}
    for container in spec.get("containers") or []:
        for key, value in _values((container.get("resources") or {}).get(kind)).items():
            total[key] = total[key] + value if key in total else value
    for container in spec.get("initContainers") or []:
        for key, value in _values((container.get("resources") or {}).get(kind)).items():
            if key not in total or value.value > total[key].value:
                total[key] = value
    return total


def _violations(limit_range: Obj, pod: Obj) -> list[str]:
    spec = pod.get("spec") or {}
    found: list[str] = []
    for item in (limit_range.get("spec") or {}).get("limits") or []:
        kind = item.get("type")
        subjects: list[tuple[dict[str, Quantity], dict[str, Quantity]]] = []
        if kind == "Container":
            for _, container in _containers(spec):
                resources = container.get("resources") or {}
                subjects.append(
                    (_values(resources.get("requests")), _values(resources.get("limits")))
                )
        elif kind == "Pod":
            subjects.append((_pod_totals(spec, "requests"), _pod_totals(spec, "limits")))
        for requests, limits in subjects:
            for check, field in ((_min, "min"), (_max, "max"), (_ratio, "maxLimitRequestRatio")):
                for name, bound in sorted(_values(item.get(field)).items()):
                    problem = check(kind, name, bound, requests, limits)
                    if problem:
                        found.append(problem)
    return found


def admit_pod(store: Any, op: str, old: Obj | None, new: Obj) -> Obj:
    """LimitRanger on one pod create: defaults first, then the bounds (see the module doc)."""
    if op != "CREATE":
        return new
    namespace = (new.get("metadata") or {}).get("namespace", "default")
    ranges, _ = store.list("limitranges", namespace)
    if not ranges:
        return new
    ranges.sort(key=lambda r: r["metadata"]["name"])
    pod = copy.deepcopy(new)
    _apply_defaults(pod, ranges)
    for limit_range in ranges:
        problems = _violations(limit_range, pod)
        if problems:
            name = (pod.get("metadata") or {}).get("name", "")
            why = problems[0] if len(problems) == 1 else "[" + ", ".join(problems) + "]"
            raise ApiError(
                403,
                "Forbidden",
                f'pods "{name}" is forbidden: {why}',
                details={"name": name, "kind": "pods"},
            )
    return pod


def register(store: Any) -> None:
    """Install the LimitRange defaulting and the pod admission on ``store``."""
    store.register_admission("limitranges", default_limit_range)

    def fn(op: str, old: Obj | None, new: Obj) -> Obj:
        return admit_pod(store, op, old, new)

    store.register_admission("pods", fn)
