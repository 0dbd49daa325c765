"""Option dataclasses: frozen, validated on construction, documented field by field.

Each field's docstring is the reference text of the option (the docs page is generated
from it). A bad value raises :class:`~k8s_executor.errors.ConfigError` naming the option,
the value and what is allowed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

__all__ = [
    "Batching",
    "PodOptions",
    "Resources",
    "Scheduling",
    "StorageRetry",
    "Timeouts",
    "VolumeMount",
]


def _fail(option: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(f"{option}={value!r} is not allowed: {allowed}")


def check_positive_int(option: str, value: object, *, allow_none: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int >= 1 (or None if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or None" if allow_none else ""
        raise _fail(option, value, f"expected an integer >= 1{extra}")


def check_seconds(option: str, value: object, *, allow_zero: bool = True) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite, non-negative duration."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 or (allow_zero and value == 0))
    )
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise _fail(option, value, f"expected a number of seconds {bound}")


class _Options:
    """Shared behaviour: a repr that shows only the fields that differ from the defaults."""

    def __repr__(self) -> str:
        parts = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)  # type: ignore[arg-type]
            if getattr(self, f.name) != f.default
        ]
        return f"{type(self).__name__}({', '.join(parts)})"


@dataclass(frozen=True, repr=False)
class Batching(_Options):
    """How calls are grouped into batches and packed into workers.

    A batch becomes one Kubernetes Indexed Job (or one group of local processes); each
    index of the batch runs a contiguous run of the batch's calls in one worker, so that
    thousands of small calls do not become thousands of pods.
    """

    window: float | None = None
    """Seconds a call given to ``submit`` waits for others to join its batch. Calls given
    to ``map`` form their own batch at once. ``None``: the backend's choice, 0.01 s for
    local processes (which start in ~60 ms) and 0.2 s on Kubernetes, where every batch is
    a Job whose pods take seconds to start, so that submits made in a loop with a little
    work in between share Jobs rather than each starting its own."""

    max_calls: int = 100_000
    """The most calls (tasks) one batch may hold; beyond it a new batch starts."""

    max_indexes: int | None = None
    """The most indexes (workers) one batch is spread over. ``None`` means
    ``max_workers``: every worker slot gets a share. Set it higher to give long calls
    their own worker each (at the cost of more worker start-ups)."""

    share_min_bytes: int | None = 65_536  # 64 KiB
    """Large arguments sent more than once are stored once per run. Buffers that pickle
    out of band (NumPy arrays, and the arrays inside pandas objects, scikit-learn inputs,
    ...) of at least this many bytes are named by their SHA-256: one passed to many calls
    (a training set given to every fit) is uploaded once, under ``<run>/shared/``, and
    each worker downloads it once. ``None`` turns this off: every call carries its own
    copy, as with ProcessPoolExecutor."""

    speculate: bool = False
    """Run a duplicate of a straggling index (see docs/durable-runs.md, "Stragglers"):
    once ``speculate_after`` of a batch's indexes have finished, an index that has run
    ``speculate_slowdown`` times longer than their median (and at least
    ``speculate_min`` seconds) gets a second worker on the same inputs. The first
    outcome written wins, the other copy stops, and each call's future resolves once."""

    speculate_after: float = 0.75
    """The share of a batch's indexes that must have finished before any index of it is
    duplicated: above 0, below 1."""

    speculate_slowdown: float = 4.0
    """How many times the median run time of the batch's finished indexes an index must
    have run to be duplicated: above 1."""

    speculate_min: float = 10.0
    """Seconds an index must have run before it may be duplicated (a duplicate costs a
    worker start: on Kubernetes, a pod)."""

    def __post_init__(self) -> None:
        if self.window is not None:
            check_seconds("Batching.window", self.window)
        check_positive_int("Batching.max_calls", self.max_calls)
        check_positive_int("Batching.max_indexes", self.max_indexes, allow_none=True)
        check_positive_int("Batching.share_min_bytes", self.share_min_bytes, allow_none=True)
        _check_speculation(self)


def _check_speculation(b: Batching) -> None:
    """Raise :class:`ConfigError` for the first bad ``Batching.speculate*`` value."""
    if not isinstance(b.speculate, bool):
        raise _fail("Batching.speculate", b.speculate, "expected True or False")
    share = b.speculate_after
    if not _real(share) or not 0 < share < 1:
        raise _fail("Batching.speculate_after", share, "expected a share above 0 and below 1")
    slowdown = b.speculate_slowdown
    if not _real(slowdown) or not slowdown > 1:
        raise _fail("Batching.speculate_slowdown", slowdown, "expected a finite number above 1")
    check_seconds("Batching.speculate_min", b.speculate_min)


def _real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, repr=False)
class StorageRetry(_Options):
    """Retries of transient storage errors (connection resets, throttling, 5xx)."""

    attempts: int = 5
    """Tries per storage operation before it fails with ``StorageError``."""

    initial_delay: float = 0.1
    """Seconds before the first retry; doubled after each further failure."""

    max_delay: float = 5.0
    """The longest wait between two tries, in seconds."""

    def __post_init__(self) -> None:
        check_positive_int("StorageRetry.attempts", self.attempts)
        check_seconds("StorageRetry.initial_delay", self.initial_delay)
        check_seconds("StorageRetry.max_delay", self.max_delay)

    def to_env(self) -> str:
        """This policy as the value of the workers' ``K8S_EXECUTOR_STORAGE_RETRY``."""
        return json.dumps(
            {
                "attempts": self.attempts,
                "initial_delay": self.initial_delay,
                "max_delay": self.max_delay,
            }
        )

    @classmethod
    def from_env(cls, text: str | None) -> StorageRetry:
        """The policy :meth:`to_env` wrote (the default when ``text`` is empty); a value
        that is not one raises ``ConfigError``."""
        if not text:
            return cls()
        try:
            values = json.loads(text)
            # Fields this version does not know (a newer client) are left out, so that
            # the payload's version check, not this, tells what is wrong.
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in values.items() if k in known})
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"K8S_EXECUTOR_STORAGE_RETRY={text!r} is not a StorageRetry: {exc}"
            ) from exc


# -- Kubernetes options ----------------------------------------------------------------

# A Kubernetes resource quantity: a number with an optional binary (Ki..Ei), decimal
# (n, u, m, k, M..E) or exponent suffix, as in "500m", "2Gi", "1.5", "1e3".
_QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")
# DNS-1123 subdomain (names of Secrets, PVCs, service accounts, priority classes).
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Label keys: optional DNS prefix + "/" + name of ≤63 alphanumerics, '-', '_', '.'.
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def quantity(option: str, value: object, *, allow_none: bool = True) -> str | None:
    """Normalise a resource quantity to the string Kubernetes expects, or fail."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _fail(option, value, 'expected a Kubernetes quantity such as "500m", "2", "4Gi"')
    text = str(value)
    if not _QUANTITY.match(text) or (isinstance(value, float) and not math.isfinite(value)):
        raise _fail(option, value, 'expected a Kubernetes quantity such as "500m", "2", "4Gi"')
    return text


def _bytes_quantity(option: str, value: object) -> str | None:
    """A quantity of bytes: a string (``"4Gi"``) or an int of bytes, as Kubernetes reads a
    bare number. A small int is surely meant in another unit: refused with the spelling."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 20:
        raise _fail(
            option,
            value,
            f"a bare number is bytes ({value} bytes is less than 1 MiB); write the unit, "
            f'e.g. "{value}Gi" or "{value}Mi"',
        )
    return quantity(option, value)


def check_dns_name(option: str, value: object) -> None:
    """Raise unless ``value`` is a DNS-1123 subdomain (how Kubernetes names objects)."""
    if not isinstance(value, str) or len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise _fail(
            option,
            value,
            "expected a Kubernetes object name: lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit",
        )


def check_labels(option: str, value: object, *, values_are_labels: bool = True) -> None:
    """Raise unless ``value`` maps valid label keys to valid label (or annotation) values."""
    if not isinstance(value, Mapping):
        raise _fail(option, value, "expected a dict of str to str")
    for key, item in value.items():
        prefix, _, name = key.rpartition("/") if isinstance(key, str) else ("", "", "")
        if (
            not isinstance(key, str)
            or not _LABEL_NAME.match(name)
            or (prefix and not _DNS_SUBDOMAIN.match(prefix))
        ):
            raise _fail(f"{option}[{key!r}]", key, "expected a label key ([prefix/]name)")
        if not isinstance(item, str) or (values_are_labels and not _LABEL_VALUE.match(item)):
            allowed = "a label value (≤63 letters, digits, '-', '_', '.')"
            raise _fail(f"{option}[{key!r}]", item, allowed if values_are_labels else "a str")


@dataclass(frozen=True, repr=False)
class Resources(_Options):
    """What each worker pod requests from the cluster.

    Example: ``Resources(cpu=8, memory="32Gi", gpu=1)``.
    """

    cpu: str | int | float | None = "1"
    """CPU request per worker, a quantity: ``2``, ``"500m"``. ``None`` requests none."""

    memory: str | int | None = "2Gi"
    """Memory request per worker, e.g. ``"16Gi"``. Also the memory limit unless
    ``memory_limit`` says otherwise, so a worker that outgrows it is OOMKilled (and
    reported as such) instead of starving its neighbours."""

    memory_limit: str | int | None = None
    """Memory limit per worker; default: ``memory``."""

    gpu: int = 0
    """GPUs per worker (the ``<gpu_vendor>.com/gpu`` extended resource)."""

    gpu_vendor: str = "nvidia"
    """The GPU device plugin's vendor: ``"nvidia"`` or ``"amd"`` (resource
    ``nvidia.com/gpu`` or ``amd.com/gpu``)."""

    disk: str | int | None = None
    """Ephemeral storage request and limit per worker, e.g. ``"50Gi"``."""

    qos: str = "Burstable"
    """``"Guaranteed"`` sets limits equal to requests for CPU and memory (both must be
    set), so the pod is the last to be evicted under node pressure; ``"Burstable"``
    limits only memory."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "cpu", quantity("Resources.cpu", self.cpu))
        for name in ("memory", "memory_limit", "disk"):
            object.__setattr__(
                self, name, _bytes_quantity(f"Resources.{name}", getattr(self, name))
            )
        if isinstance(self.gpu, bool) or not isinstance(self.gpu, int) or self.gpu < 0:
            raise _fail("Resources.gpu", self.gpu, "expected an integer >= 0")
        if self.gpu_vendor not in ("nvidia", "amd"):
            raise _fail("Resources.gpu_vendor", self.gpu_vendor, "expected 'nvidia' or 'amd'")
        if self.qos not in ("Burstable", "Guaranteed"):
            raise _fail("Resources.qos", self.qos, "expected 'Burstable' or 'Guaranteed'")
        if self.qos == "Guaranteed" and (self.cpu is None or self.memory is None):
            raise _fail(
                "Resources.qos",
                self.qos,
                "'Guaranteed' needs both cpu and memory set (limits equal requests)",
            )
        if self.qos == "Guaranteed" and self.memory_limit not in (None, self.memory):
            raise _fail(
                "Resources.memory_limit",
                self.memory_limit,
                "with qos='Guaranteed' the limit is the request; leave memory_limit unset",
            )


@dataclass(frozen=True, repr=False)
class Scheduling(_Options):
    """Where worker pods may run."""

    node_selector: Mapping[str, str] = field(default_factory=dict)
    """Node labels a worker's node must carry, e.g. ``{"pool": "gpu"}``."""

    tolerations: tuple[Mapping[str, Any], ...] = ()
    """Kubernetes tolerations, as dicts: ``({"key": "gpu", "operator": "Exists"},)``."""

    affinity: Mapping[str, Any] | None = None
    """A Kubernetes ``affinity`` object (node/pod affinity and anti-affinity)."""

    priority_class: str | None = None
    """The PriorityClass name of worker pods."""

    queue: str | None = None
    """A Kueue LocalQueue of the namespace (the ``kueue.x-k8s.io/queue-name`` label of
    every Job; default: ``K8S_EXECUTOR_QUEUE``). Kueue then decides when each batch runs:
    the executor never suspends, resumes or resizes such Jobs itself (each Job gets up to
    ``max_workers`` pods), waits without a startup clock while a Job is queued, runs
    preempted calls again when readmitted, and fails a batch at once when its Workload
    cannot be admitted (no such LocalQueue, larger than the queue's quota)."""

    def __post_init__(self) -> None:
        check_labels("Scheduling.node_selector", self.node_selector)
        if self.queue is not None:
            check_dns_name("Scheduling.queue", self.queue)
        object.__setattr__(self, "tolerations", tuple(self.tolerations))
        for t in self.tolerations:
            if not isinstance(t, Mapping):
                raise _fail("Scheduling.tolerations", t, "expected dicts (Kubernetes tolerations)")
        if self.affinity is not None and not isinstance(self.affinity, Mapping):
            raise _fail("Scheduling.affinity", self.affinity, "expected a dict or None")
        if self.priority_class is not None:
            check_dns_name("Scheduling.priority_class", self.priority_class)


@dataclass(frozen=True, repr=False)
class VolumeMount(_Options):
    """A PersistentVolumeClaim mounted into every worker."""

    claim: str
    """The name of an existing PersistentVolumeClaim in the namespace."""

    path: str
    """Where it is mounted in the worker, an absolute path."""

    read_only: bool = False
    """Mount it read-only."""

    sub_path: str | None = None
    """Mount only this sub-directory of the volume."""

    def __post_init__(self) -> None:
        check_dns_name("VolumeMount.claim", self.claim)
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise _fail("VolumeMount.path", self.path, "expected an absolute path")


@dataclass(frozen=True, repr=False)
class PodOptions(_Options):
    """Everything else about worker pods: identity, environment, volumes, image pulls."""

    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels on Jobs and pods (e.g. for cost attribution)."""

    annotations: Mapping[str, str] = field(default_factory=dict)
    """Extra annotations on Jobs and pods."""

    env: Mapping[str, str] = field(default_factory=dict)
    """Environment variables of the worker, as plain values. Do not put credentials
    here: they would be readable in the pod spec; use ``secrets``."""

    secrets: tuple[str, ...] = ()
    """Names of Secrets whose keys become environment variables of the worker
    (``envFrom``), e.g. cloud credentials for the storage."""

    service_account: str | None = None
    """The service account of worker pods (e.g. one bound to a cloud identity, for
    storage access without keys)."""

    image_pull_policy: str | None = None
    """``"Always"``, ``"IfNotPresent"`` or ``"Never"``; default: Kubernetes' own (images
    referenced by digest are pulled once per node)."""

    image_pull_secrets: tuple[str, ...] = ()
    """Names of Secrets with registry credentials for pulling the image."""

    volumes: tuple[VolumeMount, ...] = ()
    """PersistentVolumeClaims mounted into every worker."""

    shared_memory: str | None = None
    """Size of a memory-backed ``/dev/shm`` (PyTorch DataLoader workers need more than
    the 64 MiB default), e.g. ``"8Gi"``. Counts against the memory limit."""

    tmpfs: str | None = None
    """Size of a memory-backed ``tmpfs_path``, e.g. ``"2Gi"``; counts against memory."""

    tmpfs_path: str = "/tmp"  # noqa: S108 - a mount point in the pod, not a temp file here
    """Where the tmpfs is mounted."""

    run_as_root: bool = False
    """Run workers as root. By default they run as an unprivileged user with no added
    capabilities and no privilege escalation."""

    pod_template: Mapping[str, Any] | None = None
    """A partial Kubernetes pod spec merged over the generated one, for anything the
    options above do not cover. Dicts merge key by key; lists of named items
    (``containers``, ``env``, ``volumes``, ``volumeMounts``...) merge by ``name`` (the
    worker container is named ``worker``); other lists replace ours."""

    def __post_init__(self) -> None:
        check_labels("PodOptions.labels", self.labels)
        check_labels("PodOptions.annotations", self.annotations, values_are_labels=False)
        if not isinstance(self.env, Mapping):
            raise _fail("PodOptions.env", self.env, "expected a dict of str to str")
        for key, value in self.env.items():
            if not isinstance(key, str) or not _ENV_NAME.match(key):
                raise _fail("PodOptions.env", key, "expected environment variable names")
            if not isinstance(value, str):
                raise _fail(f"PodOptions.env[{key!r}]", value, "expected a str")
        for name in ("secrets", "image_pull_secrets", "volumes"):
            value = getattr(self, name)
            if isinstance(value, str | Mapping) or not isinstance(value, Sequence):
                raise _fail(f"PodOptions.{name}", value, "expected a tuple or list")
            object.__setattr__(self, name, tuple(value))
        for secret in (*self.secrets, *self.image_pull_secrets):
            check_dns_name("PodOptions.secrets", secret)
        for volume in self.volumes:
            if not isinstance(volume, VolumeMount):
                raise _fail("PodOptions.volumes", volume, "expected VolumeMount instances")
        if self.service_account is not None:
            check_dns_name("PodOptions.service_account", self.service_account)
        if self.image_pull_policy not in (None, "Always", "IfNotPresent", "Never"):
            raise _fail(
                "PodOptions.image_pull_policy",
                self.image_pull_policy,
                "expected 'Always', 'IfNotPresent', 'Never' or None",
            )
        quantity("PodOptions.shared_memory", self.shared_memory)
        quantity("PodOptions.tmpfs", self.tmpfs)
        if not self.tmpfs_path.startswith("/"):
            raise _fail("PodOptions.tmpfs_path", self.tmpfs_path, "expected an absolute path")
        if self.pod_template is not None and not isinstance(self.pod_template, Mapping):
            raise _fail("PodOptions.pod_template", self.pod_template, "expected a dict")
        misplaced = sorted(set(self.pod_template or ()) & _NOT_POD_SPEC_KEYS)
        if misplaced:
            # The easiest mistake: a whole pod (or Job template) instead of its spec. Left
            # alone it fails every launch, with a schema error from the API server.
            raise ConfigError(
                f"PodOptions.pod_template has a {misplaced[0]!r} key: it takes the fields "
                "of a pod spec (e.g. {'hostNetwork': True}), not a pod or a pod template; "
                "pass what is inside its 'spec'"
            )


# Top-level keys of a pod or a pod template, never of a pod spec.
_NOT_POD_SPEC_KEYS = frozenset({"spec", "metadata", "apiVersion", "kind", "template", "status"})


@dataclass(frozen=True, repr=False)
class Timeouts(_Options):
    """Time limits that keep a stuck or abandoned run from holding the cluster."""

    startup: float = 300.0
    """Seconds a worker pod may stay unable to start (unschedulable, or its Job gets no
    pod at all) before its calls fail with ``PodStartError`` and its Job is deleted.
    Counted only while no other worker pod of the run is running: a pod that waits for
    room on a busy cluster is not failed."""

    startup_error: float = 60.0
    """Seconds a worker pod may wait with a start-up error that does not go away by itself
    (a missing Secret or ConfigMap: ``CreateContainerConfigError``; an image that cannot
    be pulled: ``ErrImagePull``, ``ImagePullBackOff``, ``InvalidImageName``) before its
    calls fail with ``PodStartError``; long enough to ride out a registry's blip, short
    next to ``startup``. Never more than ``startup``."""

    job_deadline: float | None = 24 * 3600.0
    """``activeDeadlineSeconds`` of every Job: the longest a batch may run, not counting
    time spent waiting (suspended) for worker slots held by earlier batches. ``None``
    for no limit."""

    ttl_after_finished: int = 300
    """Seconds a finished Job (and its pods) stays for inspection before Kubernetes
    deletes it, if the client did not delete it first."""

    heartbeat: float = 30.0
    """How often the client refreshes its heartbeat in storage. Workers whose client
    stopped refreshing for ``heartbeat_grace`` give up, so a killed client leaves nothing
    running for long."""

    heartbeat_grace: float = 300.0
    """Seconds without a heartbeat after which workers of a run exit."""

    termination_grace: int = 30
    """``terminationGracePeriodSeconds`` of worker pods: when a pod is stopped (shutdown
    with ``kill_workers``, Ctrl-C, eviction, preemption, a Job deadline) its task gets
    SIGTERM, and SIGKILL this many seconds later if it is still running. The worker
    itself ends at once on SIGTERM; the grace matters only to a task that installed its
    own SIGTERM handler (to checkpoint, say). Kubernetes' default is 30."""

    keep_warm: float = 60.0
    """Seconds a worker stays alive after its calls, ready for the run's next ones: a
    later ``submit`` or ``map`` starts in it in milliseconds, with what it imported still
    loaded, instead of waiting for a new pod. ``max_workers`` counts warm workers too; at
    shutdown they end at once. ``0`` ends every worker with its batch. Applies to the
    local backend too (see docs/architecture.md, "Warm workers", for what an idle
    worker costs in storage requests)."""

    def __post_init__(self) -> None:
        check_seconds("Timeouts.keep_warm", self.keep_warm, allow_zero=True)
        check_seconds("Timeouts.startup", self.startup, allow_zero=False)
        check_seconds("Timeouts.startup_error", self.startup_error, allow_zero=False)
        if self.job_deadline is not None:
            check_seconds("Timeouts.job_deadline", self.job_deadline, allow_zero=False)
        if (
            isinstance(self.ttl_after_finished, bool)
            or not isinstance(self.ttl_after_finished, int)
            or self.ttl_after_finished < 0
        ):
            raise _fail(
                "Timeouts.ttl_after_finished", self.ttl_after_finished, "expected an int >= 0"
            )
        check_seconds("Timeouts.heartbeat", self.heartbeat, allow_zero=False)
        check_seconds("Timeouts.heartbeat_grace", self.heartbeat_grace, allow_zero=False)
        if (
            isinstance(self.termination_grace, bool)
            or not isinstance(self.termination_grace, int)
            or self.termination_grace < 0
        ):
            raise _fail(
                "Timeouts.termination_grace",
                self.termination_grace,
                "expected an int >= 0 (seconds, as terminationGracePeriodSeconds)",
            )
        if self.heartbeat_grace < 2 * self.heartbeat:
            raise _fail(
                "Timeouts.heartbeat_grace",
                self.heartbeat_grace,
                f"expected at least twice Timeouts.heartbeat ({self.heartbeat})",
            )
