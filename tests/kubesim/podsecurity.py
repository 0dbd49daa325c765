"""PodSecurity admission: the Pod Security Standards per namespace label.

As the built-in ``PodSecurity`` plugin with its default configuration (every mode
``privileged:latest`` unless a namespace label says otherwise; no exemptions):

* Labels ``pod-security.kubernetes.io/<mode>`` (``baseline`` | ``restricted`` |
  ``privileged``) and ``.../<mode>-version`` (``latest`` | ``v1.N``) for the modes ``enforce``,
  ``warn`` and ``audit``. A label that does not parse enforces ``restricted:latest`` (fail
  closed) and leaves warn/audit ``privileged`` (fail open), as ``api.PolicyToEvaluate``.
* Pod **creates** (and updates that change an image or the containers) are checked against the
  enforce level: a violation is 403 ``pods "x" is forbidden: violates PodSecurity
  "restricted:latest": allowPrivilegeEscalation != false (container "worker" must set
  securityContext.allowPrivilegeEscalation=false), ...``. An admitted pod that violates the
  ``warn`` level gets a ``Warning: would violate PodSecurity "baseline:latest": ...`` header.
* Jobs (pod controllers) are never refused: only the ``warn`` level is checked on their
  template, giving the same warning. Their pods are refused when the Job controller creates
  them, which the Job controller reports as ``FailedCreate`` events.
* The ``audit`` mode writes audit annotations only, which kubesim does not keep.

The checks and their messages are those of ``k8s.io/pod-security-admission/policy`` (1.33):
baseline = appArmorProfile, hostNamespaces, hostPorts, privileged, procMount,
seLinuxOptions, sysctls, plus (baseline only, restricted has stronger ones)
capabilities_baseline, hostPathVolumes, seccompProfile_baseline; restricted adds
allowPrivilegeEscalation, capabilities_restricted, restrictedVolumes, runAsNonRoot,
runAsUser, seccompProfile_restricted. Not modelled: Windows hostProcess, host probes/lifecycle
hosts, the user-namespace (``hostUsers: false``) relaxations, ``EvaluatePodsInNamespace``
warnings when a namespace's label changes.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

from tests.kubesim.errors import ApiError

__all__ = ["collect_warnings", "evaluate", "policy", "register"]

Obj = dict[str, Any]
Result = tuple[str, str] | None  # (forbidden reason, detail) or None when allowed
LABEL = "pod-security.kubernetes.io/"
LEVELS = ("privileged", "baseline", "restricted")
_VERSION = re.compile(r"^v1\.(0|[1-9][0-9]*)$")

_local = threading.local()


@contextlib.contextmanager
def collect_warnings() -> Iterator[list[str]]:
    """Warnings the admission gives during the block (the server sends them as headers)."""
    previous = getattr(_local, "warnings", None)
    collected: list[str] = []
    _local.warnings = collected
    try:
        yield collected
    finally:
        _local.warnings = previous


def _warn(text: str) -> None:
    sink = getattr(_local, "warnings", None)
    if sink is not None:
        sink.append(text)


# --- policy ------------------------------------------------------------------------------------


def policy(labels: dict[str, str] | None) -> dict[str, tuple[str, int | None]]:
    """``{"enforce": (level, minor or None for latest), "warn": ..., "audit": ...}``."""
    labels = labels or {}
    found: dict[str, tuple[str, int | None]] = {}
    for mode in ("enforce", "warn", "audit"):
        level = "privileged"
        version: int | None = None
        if LABEL + mode in labels:
            value = labels[LABEL + mode]
            if value in LEVELS:
                level = value
            else:
                level = "restricted" if mode == "enforce" else "privileged"
        raw = labels.get(f"{LABEL}{mode}-version")
        if raw is not None and raw != "latest":
            match = _VERSION.match(raw)
            version = int(match.group(1)) if match else None
        found[mode] = (level, version)
    return found


def _name(level: str, version: int | None) -> str:
    return f"{level}:{'latest' if version is None else f'v1.{version}'}"


# --- helpers (as the library's pluralize / joinQuote) ------------------------------------------


def _plural(singular: str, plural: str, count: int) -> str:
    return singular if count == 1 else plural


def _quote(items: list[str] | set[str]) -> str:
    return ", ".join(f'"{item}"' for item in items)


def _containers(spec: Obj) -> list[Obj]:
    found = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    found += spec.get("ephemeralContainers") or []
    return [c for c in found if isinstance(c, dict)]


def _sc(container: Obj) -> Obj:
    return container.get("securityContext") or {}


def _psc(spec: Obj) -> Obj:
    return spec.get("securityContext") or {}


def _setters(pod_bad: bool, containers: list[str]) -> list[str]:
    setters = ["pod"] if pod_bad else []
    if containers:
        setters.append(
            f"{_plural('container', 'containers', len(containers))} {_quote(containers)}"
        )
    return setters


# --- baseline checks ---------------------------------------------------------------------------


def _app_armor(meta: Obj, spec: Obj) -> Result:
    prefix = "container.apparmor.security.beta.kubernetes.io/"
    values = sorted(
        f'{k}="{v}"'
        for k, v in (meta.get("annotations") or {}).items()
        if k.startswith(prefix) and v and v != "runtime/default" and not v.startswith("localhost/")
    )
    pod_bad = (_psc(spec).get("appArmorProfile") or {}).get("type") == "Unconfined"
    bad = [
        c.get("name", "")
        for c in _containers(spec)
        if (_sc(c).get("appArmorProfile") or {}).get("type") == "Unconfined"
    ]
    details = list(values)
    setters = _setters(pod_bad, bad)
    if setters:
        details.append(
            f'{" and ".join(setters)} must not set AppArmor profile type to "Unconfined"'
        )
    if not details:
        return None
    return _plural(
        "forbidden AppArmor profile", "forbidden AppArmor profiles", len(details)
    ), ", ".join(details)


def _host_namespaces(meta: Obj, spec: Obj) -> Result:
    used = sorted(k for k in ("hostIPC", "hostNetwork", "hostPID") if spec.get(k))
    return ("host namespaces", ", ".join(used)) if used else None


def _host_ports(meta: Obj, spec: Obj) -> Result:
    bad: list[str] = []
    ports: set[str] = set()
    for c in _containers(spec):
        own = {str(p.get("hostPort")) for p in c.get("ports") or [] if p.get("hostPort")}
        if own:
            bad.append(c.get("name", ""))
            ports |= own
    if not bad:
        return None
    return "hostPort", (
        f"{_plural('container', 'containers', len(bad))} {_quote(bad)} "
        f"{_plural('uses', 'use', len(bad))} {_plural('hostPort', 'hostPorts', len(ports))} "
        + ", ".join(sorted(ports))
    )


def _privileged(meta: Obj, spec: Obj) -> Result:
    bad = [c.get("name", "") for c in _containers(spec) if _sc(c).get("privileged") is True]
    if not bad:
        return None
    return "privileged", (
        f"{_plural('container', 'containers', len(bad))} {_quote(bad)} must not set "
        "securityContext.privileged=true"
    )


def _proc_mount(meta: Obj, spec: Obj) -> Result:
    bad: list[str] = []
    kinds: set[str] = set()
    for c in _containers(spec):
        value = _sc(c).get("procMount")
        if value is not None and value != "Default":
            bad.append(c.get("name", ""))
            kinds.add(value)
    if not bad:
        return None
    return "procMount", (
        f"{_plural('container', 'containers', len(bad))} {_quote(bad)} must not set "
        f"securityContext.procMount to {_quote(sorted(kinds))}"
    )


def _se_linux(meta: Obj, spec: Obj) -> Result:
    allowed = ("", "container_t", "container_init_t", "container_kvm_t")
    bad_types: set[str] = set()
    flags = {"user": False, "role": False}

    def valid(options: Obj) -> bool:
        ok = True
        if options.get("type", "") not in allowed:
            bad_types.add(options.get("type", ""))
            ok = False
        for key in ("user", "role"):
            if options.get(key):
                flags[key] = ok = False
        return ok

    pod_options = _psc(spec).get("seLinuxOptions")
    pod_bad = pod_options is not None and not valid(pod_options)
    bad = [
        c.get("name", "")
        for c in _containers(spec)
        if _sc(c).get("seLinuxOptions") is not None and not valid(_sc(c)["seLinuxOptions"])
    ]
    setters = _setters(pod_bad, bad)
    if not setters:
        return None
    data: list[str] = []
    if bad_types:  # upstream reports user/role only next to a bad type
        data.append(f"{_plural('type', 'types', len(bad_types))} {_quote(sorted(bad_types))}")
        data += [f"{key} may not be set" for key in ("user", "role") if flags[key]]
    return "seLinuxOptions", (
        f"{' and '.join(setters)} set forbidden securityContext.seLinuxOptions: {'; '.join(data)}"
    )


_SAFE_SYSCTLS = {
    0: {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_unprivileged_port_start",
    },
    27: {"net.ipv4.ip_local_reserved_ports"},
    29: {
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    },
    32: {"net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"},
}


def _sysctls(version: int) -> Callable[[Obj, Obj], Result]:
    safe = set().union(*(names for since, names in _SAFE_SYSCTLS.items() if since <= version))

    def check(meta: Obj, spec: Obj) -> Result:
        bad = [
            s.get("name", "") for s in _psc(spec).get("sysctls") or [] if s.get("name") not in safe
        ]
        return ("forbidden sysctls", ", ".join(bad)) if bad else None

    return check


_BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}


def _capabilities_baseline(meta: Obj, spec: Obj) -> Result:
    bad: list[str] = []
    caps: set[str] = set()
    for c in _containers(spec):
        added = set((_sc(c).get("capabilities") or {}).get("add") or [])
        extra = added - _BASELINE_CAPABILITIES
        if extra:
            bad.append(c.get("name", ""))
            caps |= extra
    if not bad:
        return None
    return "non-default capabilities", (
        f"{_plural('container', 'containers', len(bad))} {_quote(bad)} must not include "
        f"{_quote(sorted(caps))} in securityContext.capabilities.add"
    )


def _host_path(meta: Obj, spec: Obj) -> Result:
    names = [v.get("name", "") for v in spec.get("volumes") or [] if "hostPath" in v]
    if not names:
        return None
    return "hostPath volumes", f"{_plural('volume', 'volumes', len(names))} {_quote(names)}"


def _seccomp_values(spec: Obj) -> tuple[bool, bool, list[str], list[str], set[str]]:
    """(pod set a valid profile, pod set a bad one, bad containers, unset containers, bad types)."""
    valid = ("RuntimeDefault", "Localhost")
    bad_types: set[str] = set()
    profile = _psc(spec).get("seccompProfile")
    pod_valid = profile is not None and profile.get("type") in valid
    pod_bad = profile is not None and not pod_valid
    if profile is not None and pod_bad:
        bad_types.add(str(profile.get("type", "")))
    bad: list[str] = []
    unset: list[str] = []
    for c in _containers(spec):
        own = _sc(c).get("seccompProfile")
        if own is None:
            unset.append(c.get("name", ""))
        elif own.get("type") not in valid:
            bad.append(c.get("name", ""))
            bad_types.add(str(own.get("type", "")))
    return pod_valid, pod_bad, bad, unset, bad_types


def _seccomp_baseline(meta: Obj, spec: Obj) -> Result:
    _, pod_bad, bad, _, bad_types = _seccomp_values(spec)
    setters = _setters(pod_bad, bad)
    if not setters:
        return None
    return "seccompProfile", (
        f"{' and '.join(setters)} must not set securityContext.seccompProfile.type to "
        f"{_quote(sorted(bad_types))}"
    )


# --- restricted checks -------------------------------------------------------------------------


def _privilege_escalation(meta: Obj, spec: Obj) -> Result:
    bad = [
        c.get("name", "")
        for c in _containers(spec)
        if _sc(c).get("allowPrivilegeEscalation") is not False
    ]
    if not bad:
        return None
    return "allowPrivilegeEscalation != false", (
        f"{_plural('container', 'containers', len(bad))} {_quote(bad)} must set "
        "securityContext.allowPrivilegeEscalation=false"
    )


def _capabilities_restricted(meta: Obj, spec: Obj) -> Result:
    missing: list[str] = []
    adding: list[str] = []
    caps: set[str] = set()
    for c in _containers(spec):
        capabilities = _sc(c).get("capabilities")
        if capabilities is None:
            missing.append(c.get("name", ""))
            continue
        if "ALL" not in (capabilities.get("drop") or []):
            missing.append(c.get("name", ""))
        extra = {a for a in capabilities.get("add") or [] if a != "NET_BIND_SERVICE"}
        if extra:
            adding.append(c.get("name", ""))
            caps |= extra
    details: list[str] = []
    if missing:
        details.append(
            f"{_plural('container', 'containers', len(missing))} {_quote(missing)} must set "
            'securityContext.capabilities.drop=["ALL"]'
        )
    if adding:
        details.append(
            f"{_plural('container', 'containers', len(adding))} {_quote(adding)} must not include "
            f"{_quote(sorted(caps))} in securityContext.capabilities.add"
        )
    return ("unrestricted capabilities", "; ".join(details)) if details else None


_ALLOWED_VOLUMES = (
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
)


def _restricted_volumes(meta: Obj, spec: Obj) -> Result:
    names: list[str] = []
    kinds: set[str] = set()
    for volume in spec.get("volumes") or []:
        sources = [k for k in volume if k != "name"]
        if any(k in _ALLOWED_VOLUMES for k in sources):
            continue
        names.append(volume.get("name", ""))
        kinds |= set(sources) or {"unknown"}
    if not names:
        return None
    return "restricted volume types", (
        f"{_plural('volume', 'volumes', len(names))} {_quote(names)} "
        f"{_plural('uses', 'use', len(names))} "
        f"{_plural('restricted volume type', 'restricted volume types', len(kinds))} "
        f"{_quote(sorted(kinds))}"
    )


def _run_as_non_root(meta: Obj, spec: Obj) -> Result:
    pod_value = _psc(spec).get("runAsNonRoot")
    pod_bad = pod_value is False
    explicit: list[str] = []
    implicit: list[str] = []
    for c in _containers(spec):
        value = _sc(c).get("runAsNonRoot")
        if value is None:
            if pod_value is not True:
                implicit.append(c.get("name", ""))
        elif value is False:
            explicit.append(c.get("name", ""))
    setters = _setters(pod_bad, explicit)
    if setters:
        return "runAsNonRoot != true", (
            f"{' and '.join(setters)} must not set securityContext.runAsNonRoot=false"
        )
    if implicit:
        return "runAsNonRoot != true", (
            f"pod or {_plural('container', 'containers', len(implicit))} {_quote(implicit)} "
            "must set securityContext.runAsNonRoot=true"
        )
    return None


def _run_as_user(meta: Obj, spec: Obj) -> Result:
    pod_bad = _psc(spec).get("runAsUser") == 0
    bad = [c.get("name", "") for c in _containers(spec) if _sc(c).get("runAsUser") == 0]
    setters = _setters(pod_bad, bad)
    if not setters:
        return None
    return "runAsUser=0", f"{' and '.join(setters)} must not set runAsUser=0"


def _seccomp_restricted(meta: Obj, spec: Obj) -> Result:
    pod_valid, pod_bad, bad, unset, bad_types = _seccomp_values(spec)
    setters = _setters(pod_bad, bad)
    if setters:
        return "seccompProfile", (
            f"{' and '.join(setters)} must not set securityContext.seccompProfile.type to "
            f"{_quote(sorted(bad_types))}"
        )
    if unset and not pod_valid:
        return "seccompProfile", (
            f"pod or {_plural('container', 'containers', len(unset))} {_quote(unset)} must set "
            'securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost"'
        )
    return None


def _checks(level: str, version: int) -> list[Callable[[Obj, Obj], Result]]:
    """The checks of a level at a version, in the library's (file name) order."""
    checks: list[Callable[[Obj, Obj], Result]] = [
        _app_armor,
        _host_namespaces,
        _host_ports,
        _privileged,
        _proc_mount,
        _se_linux,
        _sysctls(version),
    ]
    if level == "baseline":
        return [*checks, _capabilities_baseline, _host_path, _seccomp_baseline]
    restricted: list[tuple[int, Callable[[Obj, Obj], Result]]] = [
        (8, _privilege_escalation),
        (22, _capabilities_restricted),
        (0, _restricted_volumes),
        (0, _run_as_non_root),
        (23, _run_as_user),
        (19, _seccomp_restricted),
    ]
    return checks + [check for since, check in restricted if since <= version]


def evaluate(level: str, version: int | None, meta: Obj, spec: Obj) -> str | None:
    """The aggregated forbidden detail (``reason (detail), ...``), or None when allowed."""
    if level == "privileged":
        return None
    failures = [r for r in (check(meta, spec) for check in _checks(level, version or 10_000)) if r]
    if not failures:
        return None
    return ", ".join(f"{reason} ({detail})" if detail else reason for reason, detail in failures)


def _significant_update(old: Obj, new: Obj) -> bool:
    def images(pod: Obj, key: str) -> list[Any]:
        return [c.get("image") for c in (pod.get("spec") or {}).get(key) or []]

    return any(images(old, k) != images(new, k) for k in ("containers", "initContainers")) or len(
        (new.get("spec") or {}).get("ephemeralContainers") or []
    ) != len((old.get("spec") or {}).get("ephemeralContainers") or [])


def admit(store: Any, resource: str, op: str, old: Obj | None, new: Obj) -> Obj:
    """PodSecurity on a pod (enforce + warn) or a Job (warn only): see the module doc."""
    meta = new.get("metadata") or {}
    namespace = meta.get("namespace", "default")
    try:
        labels = store.get("namespaces", None, namespace)["metadata"].get("labels") or {}
    except ApiError:
        return new
    modes = policy(labels)
    if resource == "pods":
        if op == "UPDATE" and old is not None and not _significant_update(old, new):
            return new
        pod_meta, spec = meta, new.get("spec") or {}
    else:
        template = (new.get("spec") or {}).get("template") or {}
        pod_meta, spec = template.get("metadata") or {}, template.get("spec") or {}
    if resource == "pods":
        level, version = modes["enforce"]
        detail = evaluate(level, version, pod_meta, spec)
        if detail is not None:
            name = meta.get("name", "")
            raise ApiError(
                403,
                "Forbidden",
                f'pods "{name}" is forbidden: violates PodSecurity '
                f'"{_name(level, version)}": {detail}',
                details={"name": name, "kind": "pods"},
            )
    level, version = modes["warn"]
    detail = evaluate(level, version, pod_meta, spec)
    if detail is not None:
        _warn(f'would violate PodSecurity "{_name(level, version)}": {detail}')
    return new


def register(store: Any) -> None:
    """Install the PodSecurity admission for pods and Jobs on ``store``."""
    for resource in ("pods", "jobs"):

        def fn(op: str, old: Obj | None, new: Obj, resource: str = resource) -> Obj:
            return admit(store, resource, op, old, new)

        store.register_admission(resource, fn)
