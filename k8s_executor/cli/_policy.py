"""Pure: what a namespace's admission would say about the executor's worker pod, for
``k8s-executor doctor``.

Read from the objects as the API returns them, in the order the API server admits a pod:
LimitRange defaults and bounds (``LimitRanger``), the Pod Security Standards of the
namespace's ``pod-security.kubernetes.io/enforce`` label (``PodSecurity``), then each
ResourceQuota's headroom (``ResourceQuota``). A refusal by any of them fails every worker
pod at once; a quota that is full only because pods use it makes them wait.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .._admin import parse_quantity

Obj = dict[str, Any]

# -- LimitRange ---------------------------------------------------------------------------


def _containers(spec: Mapping[str, Any]) -> list[Obj]:
    return [
        c
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        if isinstance(c, dict)
    ]


def _item_defaults(item: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """A ``Container`` item's default limits and requests, as the API server stores them
    (``SetDefaults_LimitRangeItem``): the limit falls back to ``max``, the request to the
    limit, then to ``min``."""
    limits = dict(item.get("default") or {})
    for key, value in (item.get("max") or {}).items():
        limits.setdefault(key, value)
    requests = dict(item.get("defaultRequest") or {})
    for key, value in limits.items():
        requests.setdefault(key, value)
    for key, value in (item.get("min") or {}).items():
        requests.setdefault(key, value)
    return limits, requests


def _items(limit_ranges: Iterable[Mapping[str, Any]], kind: str) -> list[tuple[str, Obj]]:
    found = []
    for lr in sorted(limit_ranges, key=lambda o: str((o.get("metadata") or {}).get("name"))):
        name = str((lr.get("metadata") or {}).get("name") or "")
        found += [
            (name, item)
            for item in (lr.get("spec") or {}).get("limits") or []
            if isinstance(item, dict) and item.get("type") == kind
        ]
    return found


def with_defaults(pod: Mapping[str, Any], limit_ranges: Iterable[Mapping[str, Any]]) -> Obj:
    """The pod as admitted: a container's request defaults to its limit (pod defaulting),
    then what it still lacks comes from the LimitRanges' ``Container`` defaults."""
    admitted: Obj = copy.deepcopy(dict(pod))
    items = _items(limit_ranges, "Container")
    for container in _containers(admitted.get("spec") or {}):
        resources = container.setdefault("resources", {})
        limits = resources.setdefault("limits", {})
        requests = resources.setdefault("requests", {})
        for key, value in limits.items():
            requests.setdefault(key, value)
        for _, item in items:
            default_limits, default_requests = _item_defaults(item)
            for key, value in default_limits.items():
                limits.setdefault(key, value)
            for key, value in default_requests.items():
                requests.setdefault(key, value)
    return admitted


def limit_range_violations(
    pod: Mapping[str, Any], limit_ranges: Iterable[Mapping[str, Any]]
) -> list[str]:
    """Why the LimitRanges refuse the pod (``with_defaults`` applied), in the API server's
    words: ``maximum cpu usage per Container is 2, but limit is 4``."""
    limit_ranges = list(limit_ranges)
    containers = _containers(with_defaults(pod, limit_ranges).get("spec") or {})
    found: list[str] = []
    for _, item in _items(limit_ranges, "Container"):
        for container in containers:
            resources = container.get("resources") or {}
            found += _bounds(item, "Container", resources.get("requests"), resources.get("limits"))
    for _, item in _items(limit_ranges, "Pod"):
        totals: list[dict[str, Fraction]] = [{}, {}]
        for container in containers:
            for total, part in zip(totals, ("requests", "limits"), strict=True):
                for key, value in ((container.get("resources") or {}).get(part) or {}).items():
                    total[key] = total.get(key, Fraction(0)) + parse_quantity(value)
        found += _bounds(item, "Pod", *totals)
    return found


def _bounds(item: Mapping[str, Any], kind: str, requests: Any, limits: Any) -> list[str]:
    requests, limits = dict(requests or {}), dict(limits or {})
    found = []
    for key, bound in (item.get("min") or {}).items():
        if key not in requests:
            found.append(f"minimum {key} usage per {kind} is {bound}.  No request is specified")
        elif parse_quantity(requests[key]) < parse_quantity(bound):
            found.append(
                f"minimum {key} usage per {kind} is {bound}, but request is {requests[key]}"
            )
    for key, bound in (item.get("max") or {}).items():
        if key not in limits:
            found.append(f"maximum {key} usage per {kind} is {bound}.  No limit is specified")
        elif parse_quantity(limits[key]) > parse_quantity(bound):
            found.append(f"maximum {key} usage per {kind} is {bound}, but limit is {limits[key]}")
    for key, bound in (item.get("maxLimitRequestRatio") or {}).items():
        if key in limits and key in requests and parse_quantity(requests[key]) > 0:
            ratio = parse_quantity(limits[key]) / parse_quantity(requests[key])
            if ratio > parse_quantity(bound):
                found.append(
                    f"{key} max limit to request ratio per {kind} is {bound}, but provided "
                    f"ratio is {float(ratio):f}"
                )
    return found


# -- PodSecurity --------------------------------------------------------------------------

ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
LEVELS = ("privileged", "baseline", "restricted")

_BASELINE_CAPABILITIES = frozenset(
    {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
     "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
)  # fmt: skip
_SAFE_SYSCTLS = frozenset(
    {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
     "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start",
     "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
     "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
     "net.ipv4.tcp_keepalive_probes"}
)  # fmt: skip
_SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
_RESTRICTED_VOLUMES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
     "projected", "secret"}
)  # fmt: skip


def enforce_level(labels: Mapping[str, str]) -> str:
    """The namespace's enforced level: ``privileged`` without the label; a value that is
    no level enforces ``restricted``, as the admission plugin fails closed."""
    value = labels.get(ENFORCE_LABEL)
    if value is None:
        return "privileged"
    return value if value in LEVELS else "restricted"


def _names(containers: list[Obj]) -> str:
    noun = "container" if len(containers) == 1 else "containers"
    return f"{noun} " + ", ".join(f'"{c.get("name", "")}"' for c in containers)


def pod_security_violations(level: str, pod: Mapping[str, Any]) -> list[str]:
    """What the Pod Security Standards of ``level`` forbid in the pod, each as the
    admission plugin words it (``allowPrivilegeEscalation != false (container "worker"
    must set securityContext.allowPrivilegeEscalation=false)``); empty when admitted."""
    if level == "privileged":
        return []
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    containers = _containers(spec) + [
        c for c in spec.get("ephemeralContainers") or [] if isinstance(c, dict)
    ]
    pod_sc = spec.get("securityContext") or {}

    def sc(c: Obj) -> Obj:
        return c.get("securityContext") or {}

    found: list[str] = []
    # baseline
    host = [f"{k}=true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    if host:
        found.append(f"host namespaces ({', '.join(host)})")
    privileged = [c for c in containers if sc(c).get("privileged")]
    if privileged:
        found.append(
            f"privileged ({_names(privileged)} must not set securityContext.privileged=true)"
        )
    if level == "baseline":
        adding = [
            c
            for c in containers
            if set((sc(c).get("capabilities") or {}).get("add") or []) - _BASELINE_CAPABILITIES
        ]
        if adding:
            found.append(f"non-default capabilities ({_names(adding)} must not add them)")
    host_path = [v.get("name", "") for v in spec.get("volumes") or [] if "hostPath" in v]
    if host_path:
        found.append(f"hostPath volumes ({', '.join(host_path)})")
    ports = [c for c in containers if any(p.get("hostPort") for p in c.get("ports") or [])]
    if ports:
        found.append(f"hostPort ({_names(ports)} use hostPorts)")
    armor = [pod_sc, *(sc(c) for c in containers)]
    annotations = meta.get("annotations") or {}
    if any((s.get("appArmorProfile") or {}).get("type") == "Unconfined" for s in armor) or any(
        k.startswith("container.apparmor.security.beta.kubernetes.io/")
        and v not in ("runtime/default", "")
        and not str(v).startswith("localhost/")
        for k, v in annotations.items()
    ):
        found.append('forbidden AppArmor profile (must not be "Unconfined")')
    if any(
        (s.get("seLinuxOptions") or {}).get("type", "") not in _SELINUX_TYPES
        or (s.get("seLinuxOptions") or {}).get("user")
        or (s.get("seLinuxOptions") or {}).get("role")
        for s in armor
    ):
        found.append("seLinuxOptions (forbidden type, user or role)")
    proc = [c for c in containers if sc(c).get("procMount") not in (None, "Default")]
    if proc:
        found.append(f"procMount ({_names(proc)} must not set securityContext.procMount)")
    sysctls = [s.get("name", "") for s in pod_sc.get("sysctls") or []]
    unsafe = [name for name in sysctls if name not in _SAFE_SYSCTLS]
    if unsafe:
        found.append(f"forbidden sysctls ({', '.join(unsafe)})")
    if any((s.get("seccompProfile") or {}).get("type") == "Unconfined" for s in armor):
        found.append('seccompProfile (must not set type to "Unconfined")')
    if level != "restricted":
        return found
    # restricted
    volumes = [
        v.get("name", "")
        for v in spec.get("volumes") or []
        if not (set(v) - {"name"}) <= _RESTRICTED_VOLUMES
    ]
    if volumes:
        found.append(f"restricted volume types ({', '.join(volumes)})")
    escalating = [c for c in containers if sc(c).get("allowPrivilegeEscalation") is not False]
    if escalating:
        found.append(
            f"allowPrivilegeEscalation != false ({_names(escalating)} must set "
            "securityContext.allowPrivilegeEscalation=false)"
        )
    undropped = [
        c for c in containers if "ALL" not in ((sc(c).get("capabilities") or {}).get("drop") or [])
    ]
    added = [
        c
        for c in containers
        if set((sc(c).get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}
    ]
    parts = []
    if undropped:
        parts.append(f'{_names(undropped)} must set securityContext.capabilities.drop=["ALL"]')
    if added:
        parts.append(f"{_names(added)} must not add capabilities other than NET_BIND_SERVICE")
    if parts:
        found.append(f"unrestricted capabilities ({'; '.join(parts)})")
    root = [c for c in containers if sc(c).get("runAsNonRoot") is False]
    unset = [c for c in containers if sc(c).get("runAsNonRoot") is None]
    if pod_sc.get("runAsNonRoot") is False or root:
        found.append("runAsNonRoot != true (must not set securityContext.runAsNonRoot=false)")
    elif pod_sc.get("runAsNonRoot") is not True and unset:
        found.append(
            f"runAsNonRoot != true (pod or {_names(unset)} must set "
            "securityContext.runAsNonRoot=true)"
        )
    if pod_sc.get("runAsUser") == 0 or any(sc(c).get("runAsUser") == 0 for c in containers):
        found.append("runAsUser=0 (must not set runAsUser=0)")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    unconfined = [
        c
        for c in containers
        if (sc(c).get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost")
        and not (
            (sc(c).get("seccompProfile") or {}).get("type") is None
            and pod_seccomp in ("RuntimeDefault", "Localhost")
        )
    ]
    if unconfined:
        found.append(
            f"seccompProfile (pod or {_names(unconfined)} must set "
            'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")'
        )
    return found


# -- ResourceQuota ------------------------------------------------------------------------

# Quota on these makes every container name them (the quota's pod evaluator).
_MUST_SPECIFY = {
    "cpu": ("requests", "cpu"),
    "requests.cpu": ("requests", "cpu"),
    "memory": ("requests", "memory"),
    "requests.memory": ("requests", "memory"),
    "limits.cpu": ("limits", "cpu"),
    "limits.memory": ("limits", "memory"),
}


def pod_usage(pod: Mapping[str, Any]) -> dict[str, Fraction]:
    """What one pod (``with_defaults`` applied) counts against a ResourceQuota."""
    spec = pod.get("spec") or {}
    usage: dict[str, Fraction] = {"pods": Fraction(1), "count/pods": Fraction(1)}

    def total(part: str, containers: list[Obj]) -> dict[str, Fraction]:
        sums: dict[str, Fraction] = {}
        for c in containers:
            for key, value in ((c.get("resources") or {}).get(part) or {}).items():
                sums[key] = sums.get(key, Fraction(0)) + parse_quantity(value)
        return sums

    main = [c for c in spec.get("containers") or [] if isinstance(c, dict)]
    init = [c for c in spec.get("initContainers") or [] if isinstance(c, dict)]
    for part in ("requests", "limits"):
        sums = total(part, main)
        for c in init:  # an init container runs alone: the larger of the two counts
            for key, value in total(part, [c]).items():
                sums[key] = max(sums.get(key, Fraction(0)), value)
        for key, value in sums.items():
            usage[f"{part}.{key}"] = value
            if part == "requests" and key in ("cpu", "memory", "ephemeral-storage"):
                usage[key] = value
    return usage


def _applies(quota: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    """Whether the quota's scopes select the pod."""
    spec = quota.get("spec") or {}
    pod_spec = pod.get("spec") or {}
    best_effort = not any(
        (c.get("resources") or {}).get(part) for c in _containers(pod_spec) for part in
        ("requests", "limits")
    )  # fmt: skip
    terminating = pod_spec.get("activeDeadlineSeconds") is not None
    priority = pod_spec.get("priorityClassName")
    scopes = [{"scopeName": s, "operator": "Exists"} for s in spec.get("scopes") or []]
    scopes += (spec.get("scopeSelector") or {}).get("matchExpressions") or []
    for scope in scopes:
        name = scope.get("scopeName")
        if name == "BestEffort" and not best_effort:
            return False
        if name == "NotBestEffort" and best_effort:
            return False
        if name == "Terminating" and not terminating:
            return False
        if name == "NotTerminating" and terminating:
            return False
        if name == "PriorityClass":
            operator, values = scope.get("operator"), scope.get("values") or []
            if (
                (operator == "In" and priority not in values)
                or (operator == "NotIn" and priority in values)
                or (operator == "Exists" and priority is None)
                or (operator == "DoesNotExist" and priority is not None)
            ):
                return False
        if name == "CrossNamespacePodAffinity":
            return False  # the executor's pods never have cross-namespace affinity terms
    return True


@dataclass
class QuotaFit:
    """One ResourceQuota against the worker pod."""

    name: str
    rows: list[tuple[str, Fraction, Fraction, Fraction]] = field(default_factory=list)
    """(resource, hard, used, per worker) of each resource it bounds that a worker uses."""
    must_specify: list[str] = field(default_factory=list)
    """Resources it bounds that the worker pod does not name: every pod is refused."""
    run_objects: list[str] = field(default_factory=list)
    """Object counts (the run's Secret, a batch's Job) with no room left."""

    @property
    def too_big(self) -> list[str]:
        """Resources one worker asks more of than the quota's whole limit."""
        return [name for name, hard, _, each in self.rows if each > hard]

    def room_now(self) -> int | None:
        """Workers that fit in what is free now (None: it bounds nothing a worker uses)."""
        room = [
            math.floor(max(hard - used, Fraction(0)) / each) for _, hard, used, each in self.rows
        ]
        return min(room) if room else None

    def room_idle(self) -> int | None:
        """Workers that fit when nothing else uses the quota."""
        room = [math.floor(hard / each) for _, hard, _, each in self.rows]
        return min(room) if room else None


def quota_fit(quota: Mapping[str, Any], pod: Mapping[str, Any]) -> QuotaFit | None:
    """How the worker pod (``with_defaults`` applied) fits a ResourceQuota; None when the
    quota's scopes do not select it."""
    if not _applies(quota, pod):
        return None
    name = str((quota.get("metadata") or {}).get("name") or "")
    status = quota.get("status") or {}
    hard = status.get("hard") or (quota.get("spec") or {}).get("hard") or {}
    used = status.get("used") or {}
    usage = pod_usage(pod)
    fit = QuotaFit(name)
    containers = _containers(pod.get("spec") or {})
    for key in sorted(hard):
        limit = parse_quantity(hard[key])
        taken = parse_quantity(used.get(key, "0"))
        if key in _MUST_SPECIFY:
            part, resource = _MUST_SPECIFY[key]
            if any(
                resource not in ((c.get("resources") or {}).get(part) or {}) for c in containers
            ):
                fit.must_specify.append(key)
                continue
        if key in ("secrets", "count/secrets", "count/jobs.batch"):
            if limit - taken < 1:
                fit.run_objects.append(f"{key}: {used.get(key, '0')} of {hard[key]} used")
            continue
        each = usage.get(key, Fraction(0))
        if each > 0:
            fit.rows.append((key, limit, taken, each))
    return fit


def format_quantity(value: Fraction, like: str = "") -> str:
    """A quantity in the units of ``like`` (``"8Gi"`` → binary suffixes): ``"6Gi"``,
    ``"1536Mi"``, ``"500m"``, ``"3"``."""
    if any(like.endswith(s) for s in ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei")) and value >= 1024:
        for suffix, power in (("Ei", 6), ("Pi", 5), ("Ti", 4), ("Gi", 3), ("Mi", 2), ("Ki", 1)):
            scaled = value / (1 << 10 * power)
            if scaled >= 1 and scaled.denominator == 1:
                return f"{scaled}{suffix}"
    if value.denominator == 1:
        return str(value.numerator)
    millis = value * 1000
    if millis.denominator == 1:
        return f"{millis.numerator}m"
    return f"{float(value):g}"
