"""Kubernetes objects as plain data: pure functions from options to manifests.

Nothing here talks to a server; tests assert on these dicts directly and validate them
against the official OpenAPI schema.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from .. import _contract as c
from .._contract import (
    ANNOTATION_DEADLINE,
    ANNOTATION_OWNER,
    ANNOTATION_STORAGE,
    CONTAINER,
    LABEL_BATCH,
    LABEL_INDEX,
    LABEL_MANAGED_BY,
    LABEL_NAMED,
    LABEL_QUEUE,
    LABEL_RUN,
    MANAGED_BY,
)
from .._options import PodOptions, Resources, Scheduling, StorageRetry, Timeouts

__all__ = [  # the contract's names, re-exported for the modules that build on manifests
    "ANNOTATION_DEADLINE",
    "ANNOTATION_OWNER",
    "ANNOTATION_STORAGE",
    "CONTAINER",
    "LABEL_BATCH",
    "LABEL_INDEX",
    "LABEL_MANAGED_BY",
    "LABEL_NAMED",
    "LABEL_QUEUE",
    "LABEL_RUN",
    "MANAGED_BY",
]

ENTRY_KEY: Final = "key"
ENTRY_STORAGE_OPTIONS: Final = "storage-options"

# Worker exit codes: the outcome is written, or the index cannot run at all (retrying
# would only repeat it); or the worker found its client gone (the whole Job should stop).
EXIT_NOT_RETRIED: Final = c.NOT_RETRIED
EXIT_ABANDONED: Final = c.ABANDONED


def job_name(run_id: str, batch_id: str) -> str:
    """The name of a batch's Job (≤ 63 characters, a DNS label)."""
    return f"k8sx-{run_id}-{batch_id}"


def secret_name(run_id: str) -> str:
    """The name of a run's Secret (signing key, and storage options when opted in)."""
    return f"k8sx-{run_id}"


def run_labels(run_id: str) -> dict[str, str]:
    """Labels every object of a run carries; ``k8s-executor cleanup`` selects by them."""
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_RUN: run_id}


def run_selector(run_id: str) -> str:
    """A label selector for every object of a run."""
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_RUN}={run_id}"


@dataclass(frozen=True)
class JobParams:
    """Everything a batch's Job depends on."""

    run_id: str
    batch_id: str
    indexes: int
    parallelism: int
    image: str
    batch_url: str
    python: str = "python"
    """The interpreter in the image that runs the worker."""
    owner: str = ""
    """Who started the run (``user@host``), for ``k8s-executor ls``."""
    storage_options_in_secret: bool = False
    retries: int = 0
    """Counted failures per index before it fails (``backoffLimitPerIndex``);
    disruptions (eviction, preemption, node drain) are not counted."""
    resources: Resources = field(default_factory=Resources)
    scheduling: Scheduling = field(default_factory=Scheduling)
    pod: PodOptions = field(default_factory=PodOptions)
    timeouts: Timeouts = field(default_factory=Timeouts)
    storage_retry: StorageRetry = field(default_factory=StorageRetry)
    batch_indexes: tuple[int, ...] = ()
    """The batch indexes the Job's completion indexes stand for, when it runs only some
    of its batch's (``K8S_EXECUTOR_INDEXES``); empty: the same numbers."""
    speculate: bool = False
    """Its indexes may run in two copies (``K8S_EXECUTOR_SPECULATE``)."""
    named: str = ""
    """The named run the Job belongs to, if any (a label, for ``cleanup`` and ``ls``)."""
    deadline: float | None = None
    """A detached run's deadline (epoch seconds): no heartbeat watched, the Job's
    ``activeDeadlineSeconds`` ends at it, and the worker stops then too."""
    now: float = 0.0
    """When the manifest is made (epoch seconds): the deadline's countdown starts here."""


def detached_marks(named: str, deadline: float | None) -> tuple[dict[str, str], dict[str, str]]:
    """The labels and annotations that say which named run an object belongs to and,
    detached, until when it may live (``k8s-executor cleanup --expired``)."""
    labels = {LABEL_NAMED: named} if named else {}
    annotations = {ANNOTATION_DEADLINE: str(int(deadline))} if deadline is not None else {}
    return labels, annotations


def secret_manifest(
    run_id: str,
    key: bytes,
    storage_options: Mapping[str, Any] | None = None,
    *,
    run_url: str = "",
    owner: str = "",
    named: str = "",
    deadline: float | None = None,
) -> dict[str, Any]:
    """The run's Secret: the signing key and, opted in, the storage options (JSON).
    Annotated with the run's storage prefix and owner for ``k8s-executor cleanup``."""
    import json

    data = {ENTRY_KEY: key.hex()}
    if storage_options is not None:
        data[ENTRY_STORAGE_OPTIONS] = json.dumps(dict(storage_options))
    marks, deadline_marks = detached_marks(named, deadline)
    metadata: dict[str, Any] = {
        "name": secret_name(run_id),
        "labels": {**run_labels(run_id), **marks},
    }
    annotations = {k: v for k, v in ((ANNOTATION_STORAGE, run_url), (ANNOTATION_OWNER, owner)) if v}
    annotations.update(deadline_marks)
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": data,
    }


def resources_block(resources: Resources) -> dict[str, dict[str, str]]:
    """The container ``resources`` for the options (requests, and limits per QoS)."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if resources.cpu is not None:
        requests["cpu"] = str(resources.cpu)
    if resources.memory is not None:
        requests["memory"] = str(resources.memory)
    memory_limit = resources.memory_limit or resources.memory
    if memory_limit is not None:
        limits["memory"] = str(memory_limit)
    if resources.qos == "Guaranteed" and resources.cpu is not None:
        limits["cpu"] = str(resources.cpu)
    if resources.disk is not None:
        requests["ephemeral-storage"] = str(resources.disk)
        limits["ephemeral-storage"] = str(resources.disk)
    if resources.gpu:
        # Extended resources are given as limits (requests default to them).
        limits[f"{resources.gpu_vendor}.com/gpu"] = str(resources.gpu)
    block: dict[str, dict[str, str]] = {}
    if requests:
        block["requests"] = requests
    if limits:
        block["limits"] = limits
    return block


def _env(p: JobParams) -> list[dict[str, Any]]:
    secret = secret_name(p.run_id)
    env: list[dict[str, Any]] = [
        {
            "name": c.ENV_KEY,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": ENTRY_KEY}},
        },
        # A detached run's workers do without the client: they stop at its deadline.
        {"name": c.ENV_HEARTBEAT_GRACE, "value": str(p.timeouts.heartbeat_grace)}
        if p.deadline is None
        else {"name": c.ENV_RUN_DEADLINE, "value": repr(p.deadline)},
        {"name": c.ENV_STORAGE_RETRY, "value": p.storage_retry.to_env()},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # The worker is its container's PID 1: it runs as a small init (signals passed
        # on, orphans reaped; see worker.py). Set, not guessed from the pid, so that
        # runtimes where it is not PID 1 (shareProcessNamespace, a test kubelet) agree.
        {"name": c.ENV_INIT, "value": "1"},
    ]
    if p.timeouts.keep_warm > 0:
        env.append({"name": c.ENV_KEEP_WARM, "value": f"{p.timeouts.keep_warm:g}"})
    if p.speculate:
        env.append({"name": c.ENV_SPECULATE, "value": "1"})
    if p.batch_indexes:
        env.append({"name": c.ENV_INDEXES, "value": ",".join(map(str, p.batch_indexes))})
    if p.storage_options_in_secret:
        env.append(
            {
                "name": c.ENV_STORAGE_OPTIONS,
                "valueFrom": {"secretKeyRef": {"name": secret, "key": ENTRY_STORAGE_OPTIONS}},
            }
        )
    env.extend({"name": k, "value": v} for k, v in sorted(p.pod.env.items()))
    return env


def _volumes(pod: PodOptions) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for i, v in enumerate(pod.volumes):
        name = f"pvc-{i}"
        volumes.append(
            {
                "name": name,
                "persistentVolumeClaim": {"claimName": v.claim, "readOnly": v.read_only},
            }
        )
        mount: dict[str, Any] = {"name": name, "mountPath": v.path, "readOnly": v.read_only}
        if v.sub_path:
            mount["subPath"] = v.sub_path
        mounts.append(mount)
    for name, size, path in (
        ("dshm", pod.shared_memory, "/dev/shm"),  # noqa: S108 - the pod's shm mount
        ("tmpfs", pod.tmpfs, pod.tmpfs_path),
    ):
        if size is not None:
            volumes.append({"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": size}})
            mounts.append({"name": name, "mountPath": path})
    return volumes, mounts


def _security(pod: PodOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    if pod.run_as_root:
        return {}, {}
    pod_context = {
        "runAsNonRoot": True,
        # A numeric id: runAsNonRoot cannot verify a user given by name.
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container_context = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    return pod_context, container_context


def pod_spec(p: JobParams) -> dict[str, Any]:
    """The pod spec of a batch's workers, before ``pod_template`` is merged over it."""
    volumes, mounts = _volumes(p.pod)
    pod_context, container_context = _security(p.pod)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": p.image,
        "command": [p.python, "-m", "k8s_executor.worker", p.batch_url],
        "env": _env(p),
        "resources": resources_block(p.resources),
        # The last log lines become the termination message when the worker dies
        # without writing one: that is what WorkerLostError shows.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if p.pod.secrets:
        container["envFrom"] = [{"secretRef": {"name": s}} for s in p.pod.secrets]
    if mounts:
        container["volumeMounts"] = mounts
    if container_context:
        container["securityContext"] = container_context
    if p.pod.image_pull_policy:
        container["imagePullPolicy"] = p.pod.image_pull_policy
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": p.timeouts.termination_grace,
        "containers": [container],
        # Workers never call the Kubernetes API: do not hand them a token.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if volumes:
        spec["volumes"] = volumes
    if pod_context:
        spec["securityContext"] = pod_context
    if p.pod.service_account:
        spec["serviceAccountName"] = p.pod.service_account
        # A named service account usually exists to give workers an identity
        # (workload identity for storage): let its token be mounted.
        spec["automountServiceAccountToken"] = True
    if p.pod.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in p.pod.image_pull_secrets]
    sched = p.scheduling
    if sched.node_selector:
        spec["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        spec["tolerations"] = [dict(t) for t in sched.tolerations]
    if sched.affinity:
        spec["affinity"] = copy.deepcopy(dict(sched.affinity))
    if sched.priority_class:
        spec["priorityClassName"] = sched.priority_class
    if p.pod.pod_template:
        spec = merge(spec, p.pod.pod_template)
    return spec


def job_manifest(p: JobParams) -> dict[str, Any]:
    """The Indexed Job that runs one batch."""
    marks, deadline_marks = detached_marks(p.named, p.deadline)
    labels = {**p.pod.labels, **run_labels(p.run_id), **marks, LABEL_BATCH: p.batch_id}
    if p.scheduling.queue:
        # Kueue admits the Job (it is created suspended; Kueue resumes it when quota allows).
        labels[LABEL_QUEUE] = p.scheduling.queue
    annotations = {**p.pod.annotations, **deadline_marks}
    if p.owner:
        annotations[ANNOTATION_OWNER] = p.owner
    metadata: dict[str, Any] = {"name": job_name(p.run_id, p.batch_id), "labels": labels}
    if annotations:
        metadata["annotations"] = annotations
    template_metadata: dict[str, Any] = {"labels": dict(labels)}
    if annotations:
        template_metadata["annotations"] = dict(annotations)
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": p.indexes,
        "parallelism": p.parallelism,
        # A Job with no free worker slot waits suspended, not at parallelism 0: the
        # activeDeadlineSeconds clock starts at startTime, which a suspended Job does not
        # have yet and a resumed one gets anew, so waiting does not use up the deadline.
        "suspend": p.parallelism == 0 or bool(p.scheduling.queue),
        "backoffLimitPerIndex": p.retries,
        # Never fail the whole Job because some indexes failed: the others still run,
        # and each failed index is reported on its own futures.
        "maxFailedIndexes": p.indexes,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": [EXIT_ABANDONED],
                    },
                },
                {
                    "action": "FailIndex",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": list(EXIT_NOT_RETRIED),
                    },
                },
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
            ]
        },
        "ttlSecondsAfterFinished": p.timeouts.ttl_after_finished,
        "template": {"metadata": template_metadata, "spec": pod_spec(p)},
    }
    limit = p.timeouts.job_deadline
    if p.deadline is not None:
        # A detached Job is never suspended (it starts at once): its clock runs from now.
        left = max(1.0, p.deadline - p.now)
        limit = left if limit is None else min(limit, left)
    if limit is not None:
        spec["activeDeadlineSeconds"] = int(limit)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


# Lists of these keys hold objects identified by their "name": a pod_template entry with
# the same name is merged into ours instead of replacing the whole list.
_NAMED_LISTS = frozenset(
    {
        "containers",
        "initContainers",
        "ephemeralContainers",
        "env",
        "volumes",
        "volumeMounts",
        "ports",
        "imagePullSecrets",
        "volumeDevices",
    }
)


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``overlay`` over ``base``: dicts key by key, named lists by ``name``.

    Hand-written rather than a strategic-merge-patch library: none is kept for Python,
    and pod specs need only these two rules (documented on ``PodOptions.pod_template``).
    """
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        mine = out.get(key)
        if isinstance(mine, Mapping) and isinstance(value, Mapping):
            out[key] = merge(mine, value)
        elif key in _NAMED_LISTS and isinstance(mine, list) and isinstance(value, list):
            out[key] = _merge_named(mine, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_named(base: list[Any], overlay: list[Any]) -> list[Any]:
    merged = [copy.deepcopy(item) for item in base]
    positions = {item.get("name"): i for i, item in enumerate(merged) if isinstance(item, Mapping)}
    for item in overlay:
        name = item.get("name") if isinstance(item, Mapping) else None
        if name is not None and name in positions:
            merged[positions[name]] = merge(merged[positions[name]], item)
        else:
            merged.append(copy.deepcopy(item))
    return merged
