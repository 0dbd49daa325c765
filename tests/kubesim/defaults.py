"""Scheme defaulting and strategy preparation the apiserver applies to core objects.

The real apiserver defaults every decoded object (``pkg/apis/core/v1/defaults.go``) before any
admission plugin runs, and each registry strategy prepares new objects (``PrepareForCreate``:
pods start ``Pending``, namespaces ``Active``). Only the fields a client of this project can
observe are filled; everything is ``setdefault``-style, so applying it twice is harmless.
"""

from __future__ import annotations

from typing import Any

_NOT_READY_TOLERATIONS = (
    # DefaultTolerationSeconds admission adds these two to every pod.
    {
        "key": "node.kubernetes.io/not-ready",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    },
    {
        "key": "node.kubernetes.io/unreachable",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    },
)


def _image_pull_policy(image: str) -> str:
    # SetDefaults_Container: ":latest" or no tag means Always; digests and other tags IfNotPresent.
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last or last.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def _default_container(container: dict[str, Any]) -> None:
    if not isinstance(container, dict):
        return
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    if isinstance(container.get("image"), str):
        container.setdefault("imagePullPolicy", _image_pull_policy(container["image"]))
    container.setdefault("resources", {})
    for port in container.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
    for env in container.get("env") or []:
        field_ref = (env.get("valueFrom") or {}).get("fieldRef") if isinstance(env, dict) else None
        if isinstance(field_ref, dict):
            field_ref.setdefault("apiVersion", "v1")
    # Requests default to limits when only limits are given (SetDefaults_ResourceList logic).
    resources = container["resources"]
    if isinstance(resources, dict) and isinstance(resources.get("limits"), dict):
        requests = resources.setdefault("requests", {})
        if isinstance(requests, dict):
            for name, value in resources["limits"].items():
                requests.setdefault(name, value)


def default_pod_spec(spec: dict[str, Any]) -> None:
    """Fill the scheme defaults of a PodSpec (also used for Job pod templates)."""
    if not isinstance(spec, dict):
        return
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            _default_container(container)
    for volume in spec.get("volumes") or []:
        if not isinstance(volume, dict):
            continue
        for source in ("secret", "configMap"):
            if isinstance(volume.get(source), dict):
                volume[source].setdefault("defaultMode", 420)
        if set(volume) == {"name"}:
            # A volume with only a name gets an emptyDir source by default.
            volume["emptyDir"] = {}


def default_decoded(resource: str, obj: dict[str, Any]) -> None:
    """batch/v1 scheme defaults that the server applies while decoding, before validation
    (so validation never sees them missing): ``podFailurePolicy.rules[].onPodConditions[]
    .status`` → ``True`` (``SetDefaults_Job``). Malformed parts are left to validation."""
    if resource != "jobs":
        return
    spec = obj.get("spec")
    policy = spec.get("podFailurePolicy") if isinstance(spec, dict) else None
    rules = policy.get("rules") if isinstance(policy, dict) else None
    for rule in rules if isinstance(rules, list) else ():
        patterns = rule.get("onPodConditions") if isinstance(rule, dict) else None
        for pattern in patterns if isinstance(patterns, list) else ():
            if isinstance(pattern, dict) and pattern.get("status") in (None, ""):
                pattern["status"] = "True"


def default_object(resource: str, obj: dict[str, Any]) -> None:
    """Scheme defaults for one object of ``resource`` (in place)."""
    if resource == "pods":
        default_pod_spec(obj.setdefault("spec", {}))
    elif resource == "jobs":
        default_decoded(resource, obj)
        template = (obj.get("spec") or {}).get("template")
        if isinstance(template, dict):
            default_pod_spec(template.setdefault("spec", {}))
    elif resource == "secrets":
        obj.setdefault("type", "Opaque")


def prepare_pod_for_create(pod: dict[str, Any]) -> None:
    """Pod strategy ``PrepareForCreate`` plus the admission plugins every cluster runs."""
    spec = pod.setdefault("spec", {})
    # ServiceAccount admission; Priority admission; DefaultTolerationSeconds admission.
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    tolerations = spec.setdefault("tolerations", [])
    present = {t.get("key") for t in tolerations if isinstance(t, dict)}
    for toleration in _NOT_READY_TOLERATIONS:
        if toleration["key"] not in present:
            tolerations.append(dict(toleration))
    pod["status"] = {"phase": "Pending", "qosClass": qos_class(spec)}


def qos_class(spec: dict[str, Any]) -> str:
    """The pod QoS class (``pkg/apis/core/helper/qos``), reduced to cpu and memory."""
    containers = [c for c in (spec.get("containers") or []) if isinstance(c, dict)]
    containers += [c for c in (spec.get("initContainers") or []) if isinstance(c, dict)]
    any_set = False
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        requests = resources.get("requests") or {}
        limits = resources.get("limits") or {}
        if requests or limits:
            any_set = True
        for name in ("cpu", "memory"):
            if name not in limits or requests.get(name, limits.get(name)) != limits.get(name):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"
