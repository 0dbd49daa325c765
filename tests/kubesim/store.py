"""Thread-safe in-memory object store: the etcd + generic registry of kubesim.

Every committed object is an immutable snapshot: writers build a new dict and swap it in, readers
get deep copies. That lets the watch history and the event dispatcher share snapshots without
copying under the lock.

One global counter gives every write its ``resourceVersion`` (as etcd's revision does), so a list
RV taken on one resource is a valid watch start for any other.

Controllers and the kubelet write through :meth:`Store.mutate` / ``update(admission=False)``;
the HTTP server writes through ``create``/``update``/``delete`` with admission on.
"""

from __future__ import annotations

import builtins
import copy
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.kubesim import defaults
from tests.kubesim.errors import ApiError
from tests.kubesim.selectors import Selector

__all__ = [
    "RESOURCES",
    "ApiError",
    "Event",
    "FieldError",
    "ResourceInfo",
    "Store",
    "format_time",
    "invalid",
    "not_found",
    "utcnow",
]

Obj = dict[str, Any]
Admission = Callable[[str, Obj | None, Obj], Obj]


@dataclass(frozen=True)
class ResourceInfo:
    """What the registry knows about one resource type."""

    name: str  # plural, as in URLs
    group: str  # "" for the core group
    version: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    singular: str = ""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``jobs.batch`` / ``pods``: how errors name the resource."""
        return f"{self.name}.{self.group}" if self.group else self.name

    @property
    def qualified_kind(self) -> str:
        """``Job.batch`` / ``Pod``: how 422 messages name the kind."""
        return f"{self.kind}.{self.group}" if self.group else self.kind


RESOURCES: dict[str, ResourceInfo] = {
    info.name: info
    for info in (
        ResourceInfo("jobs", "batch", "v1", "Job", True, (), "job"),
        ResourceInfo("pods", "", "v1", "Pod", True, ("po",), "pod"),
        ResourceInfo("secrets", "", "v1", "Secret", True, (), "secret"),
        ResourceInfo("configmaps", "", "v1", "ConfigMap", True, ("cm",), "configmap"),
        ResourceInfo("events", "", "v1", "Event", True, ("ev",), "event"),
        ResourceInfo("namespaces", "", "v1", "Namespace", False, ("ns",), "namespace"),
        ResourceInfo(
            "serviceaccounts", "", "v1", "ServiceAccount", True, ("sa",), "serviceaccount"
        ),
        ResourceInfo(
            "resourcequotas", "", "v1", "ResourceQuota", True, ("quota",), "resourcequota"
        ),
        ResourceInfo("limitranges", "", "v1", "LimitRange", True, ("limits",), "limitrange"),
        # Kueue's CRDs (tests/kubesim/kueue.py), served as kueue.x-k8s.io/v1beta1.
        ResourceInfo(
            "resourceflavors",
            "kueue.x-k8s.io",
            "v1beta1",
            "ResourceFlavor",
            False,
            ("flavor", "flavors", "rf"),
            "resourceflavor",
        ),
        ResourceInfo(
            "clusterqueues",
            "kueue.x-k8s.io",
            "v1beta1",
            "ClusterQueue",
            False,
            ("cq",),
            "clusterqueue",
        ),
        ResourceInfo(
            "localqueues",
            "kueue.x-k8s.io",
            "v1beta1",
            "LocalQueue",
            True,
            ("queue", "queues", "lq"),
            "localqueue",
        ),
        ResourceInfo(
            "workloads", "kueue.x-k8s.io", "v1beta1", "Workload", True, ("wl",), "workload"
        ),
        ResourceInfo(
            "workloadpriorityclasses",
            "kueue.x-k8s.io",
            "v1beta1",
            "WorkloadPriorityClass",
            False,
            (),
            "workloadpriorityclass",
        ),
    )
}

# apiserver `names.SimpleNameGenerator`: 58-char prefix + 5 chars of this alphabet.
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_MAX_PREFIX = 58
_RANDOM_LENGTH = 5


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 with second precision, as ``metav1.Time`` serialises."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _info(resource: str) -> ResourceInfo:
    try:
        return RESOURCES[resource]
    except KeyError:
        raise ApiError(
            404, "NotFound", "the server could not find the requested resource"
        ) from None


def not_found(resource: str, name: str) -> ApiError:
    info = _info(resource)
    return ApiError(
        404,
        "NotFound",
        f'{info.qualified} "{name}" not found',
        details={"name": name, "group": info.group, "kind": info.name}
        if info.group
        else {"name": name, "kind": info.name},
    )


def _details(info: ResourceInfo, name: str, **extra: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name}
    if info.group:
        details["group"] = info.group
    details["kind"] = info.name
    details.update(extra)
    return details


def conflict(resource: str, name: str, why: str) -> ApiError:
    info = _info(resource)
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {info.qualified} "{name}": {why}',
        details=_details(info, name),
    )


_STALE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


@dataclass(frozen=True)
class FieldError:
    """One ``field.Error``: its type picks the cause reason and the message wording."""

    field: str
    type: str  # Required | Invalid | NotSupported | Forbidden | TooLong | Duplicate | TooMany
    detail: str = ""
    value: Any = None
    supported: tuple[str, ...] = ()

    _REASONS = {
        "Required": ("FieldValueRequired", "Required value"),
        "Invalid": ("FieldValueInvalid", "Invalid value"),
        "NotSupported": ("FieldValueNotSupported", "Unsupported value"),
        "Forbidden": ("FieldValueForbidden", "Forbidden"),
        "TooLong": ("FieldValueTooLong", "Too long"),
        "Duplicate": ("FieldValueDuplicate", "Duplicate value"),
        "TooMany": ("FieldValueTooMany", "Too many"),
    }

    @staticmethod
    def _render(value: Any) -> str:
        # field.Error prints strings quoted and numbers/bools bare.
        if isinstance(value, str):
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(value, bool):
            return "true" if value else "false"
        if value is None:
            return "null"
        return str(value)

    def body(self) -> str:
        """``field.Error.ErrorBody()``."""
        label = self._REASONS[self.type][1]
        if self.type in ("Invalid", "NotSupported", "Duplicate"):
            text = f"{label}: {self._render(self.value)}"
            if self.type == "NotSupported" and self.supported:
                text += ": supported values: " + ", ".join(f'"{s}"' for s in self.supported)
        else:
            text = label
        if self.detail:
            text += f": {self.detail}"
        return text

    def cause(self) -> dict[str, str]:
        return {"reason": self._REASONS[self.type][0], "message": self.body(), "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def invalid(resource: str, name: str, errors: list[FieldError]) -> ApiError:
    """The 422 ``Invalid`` answer (``errors.NewInvalid``) for field errors."""
    info = _info(resource)
    texts = [str(e) for e in errors]
    aggregate = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    details: dict[str, Any] = {"name": name}
    if info.group:
        details["group"] = info.group
    details["kind"] = info.kind
    details["causes"] = [e.cause() for e in errors]
    return ApiError(
        422, "Invalid", f'{info.qualified_kind} "{name}" is invalid: {aggregate}', details=details
    )


@dataclass(frozen=True)
class Event:
    """One committed change, as kept in the watch history."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    resource: str
    namespace: str
    obj: Obj  # immutable snapshot: never mutate
    prev: Obj | None = None  # the object before this change (None for ADDED)


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"


def _validate_meta(info: ResourceInfo, obj: Obj) -> None:
    meta = obj["metadata"]
    name = meta.get("name") or ""
    errors: list[FieldError] = []
    if not name:
        errors.append(FieldError("metadata.name", "Required", "name or generateName is required"))
    elif info.name == "namespaces":
        if len(name) > 63 or not re.fullmatch(_DNS_LABEL, name):
            errors.append(
                FieldError(
                    "metadata.name",
                    "Invalid",
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric "
                    "characters or '-', and must start and end with an alphanumeric character "
                    "(e.g. 'my-name',  or '123-abc', regex used for validation is "
                    f"'{_DNS_LABEL}')",
                    name,
                )
            )
    elif len(name) > 253 or not re.fullmatch(_DNS_SUBDOMAIN, name):
        errors.append(
            FieldError(
                "metadata.name",
                "Invalid",
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character "
                "(e.g. 'example.com', regex used for validation is "
                f"'{_DNS_SUBDOMAIN}')",
                name,
            )
        )
    labels = meta.get("labels") or {}
    for key, value in labels.items():
        prefix, _, short = key.rpartition("/")
        if (
            not short
            or len(short) > 63
            or not re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?", short)
            or (prefix and not re.fullmatch(_DNS_SUBDOMAIN, prefix))
        ):
            errors.append(
                FieldError(
                    "metadata.labels",
                    "Invalid",
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and "
                    "must start and end with an alphanumeric character",
                    key,
                )
            )
        if (
            not isinstance(value, str)
            or len(value) > 63
            or not re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", value)
        ):
            errors.append(
                FieldError(
                    "metadata.labels",
                    "Invalid",
                    "a valid label must be an empty string or consist of alphanumeric "
                    "characters, '-', '_' or '.', and must start and end with an alphanumeric "
                    "character",
                    value,
                )
            )
    if errors:
        raise invalid(info.name, name, errors)


# Pod fields an update may change (pod strategy ValidatePodUpdate); everything else is frozen.
_POD_UPDATE_MESSAGE = (
    "pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
    "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
    "(allow it to be set to 1 if it was previously negative)"
)


def _pod_spec_frozen_view(spec: Obj) -> Obj:
    view = copy.deepcopy(spec)
    for key in ("containers", "initContainers"):
        for container in view.get(key) or []:
            if isinstance(container, dict):
                container.pop("image", None)
    view.pop("activeDeadlineSeconds", None)
    view.pop("tolerations", None)
    # The scheduler's binding sets nodeName once; schedulingGates may only be removed.
    view.pop("nodeName", None)
    view.pop("schedulingGates", None)
    return view


class Store:
    """The object store. See the module docstring and ``CONTRACT.md``."""

    def __init__(
        self,
        now: Callable[[], datetime] = utcnow,
        *,
        history_events: int = 20_000,
        history_seconds: float = 300.0,
    ) -> None:
        self._now = now
        self._lock = threading.RLock()
        # Watchers wait on this for new history; it shares the store lock.
        self.changed = threading.Condition(self._lock)
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {r: {} for r in RESOURCES}
        self._rv = 0
        self._history: deque[tuple[float, Event]] = deque()
        self._history_events = history_events
        self._history_seconds = history_seconds
        self._compacted_rv = 0  # events with rv <= this are gone from the history
        self._admission: dict[str, list[Admission]] = {}
        self._subscribers: list[Callable[[str, str, Obj], None]] = []
        self._dispatch: deque[Event] = deque()
        self._dispatch_cond = threading.Condition(threading.Lock())
        self._enqueued = 0
        self._delivered = 0
        self._dispatcher: threading.Thread | None = None
        self._closed = False
        self._last_removed: Obj = {}
        self.create("namespaces", None, {"metadata": {"name": "default"}})

    # --- configuration -----------------------------------------------------------------------

    def register_admission(self, resource: str, fn: Admission) -> None:
        """Run ``fn(op, old, new) -> new`` on API creates/updates of ``resource``."""
        _info(resource)
        with self._lock:
            self._admission.setdefault(resource, []).append(fn)

    def now(self) -> datetime:
        return self._now()

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._rv)

    # --- reads -------------------------------------------------------------------------------

    def get(self, resource: str, namespace: str | None, name: str) -> Obj:
        info = _info(resource)
        with self._lock:
            obj = self._objects[resource].get(self._key(info, namespace, name))
            if obj is None:
                raise not_found(resource, name)
            return copy.deepcopy(obj)

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[builtins.list[Obj], str]:
        info = _info(resource)
        selector = Selector.parse(resource, label_selector, field_selector)
        with self._lock:
            items = [
                obj
                for (ns, _), obj in self._objects[resource].items()
                if (namespace is None or not info.namespaced or ns == namespace)
                and selector.matches(obj)
            ]
            rv = str(self._rv)
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return [copy.deepcopy(o) for o in items], rv

    # --- writes ------------------------------------------------------------------------------

    def create(
        self,
        resource: str,
        namespace: str | None,
        obj: Obj,
        *,
        admission: bool = True,
        dry_run: bool = False,
    ) -> Obj:
        info = _info(resource)
        new = copy.deepcopy(obj)
        new["apiVersion"] = info.api_version
        new["kind"] = info.kind
        meta = new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if info.namespaced:
            namespace = namespace or meta.get("namespace") or "default"
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        defaults.default_object(resource, new)
        with self._lock:
            if info.namespaced:
                assert namespace is not None
                ns_obj = self._objects["namespaces"].get(("", namespace))
                if ns_obj is None:
                    raise not_found("namespaces", namespace)
                if ns_obj["metadata"].get("deletionTimestamp") and resource != "events":
                    raise ApiError(
                        403,
                        "Forbidden",
                        f'{info.qualified} "{meta.get("name") or meta.get("generateName", "")}" '
                        f"is forbidden: unable to create new content in namespace {namespace} "
                        "because it is being terminated",
                        details=_details(info, meta.get("name", "")),
                    )
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = self._generate_name(info, namespace, meta["generateName"])
            # System fields (rest.FillObjectMetaSystemFields) come before admission, so the Job
            # admission can build its selector from the UID.
            for field in (
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "managedFields",
                "selfLink",
            ):
                meta.pop(field, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = format_time(self._now())
            if resource == "jobs":
                meta["generation"] = 1
                new["status"] = {}
            elif info.group == "kueue.x-k8s.io":
                meta["generation"] = 1  # custom resources count spec changes too
            elif resource == "pods":
                defaults.prepare_pod_for_create(new)
            elif resource == "namespaces":
                labels = meta.setdefault("labels", {})
                labels["kubernetes.io/metadata.name"] = meta.get("name", "")
                new["spec"] = {"finalizers": ["kubernetes"]}
                new["status"] = {"phase": "Active"}
            _validate_meta(info, new)
            if admission:
                for fn in self._admission.get(resource, []):
                    new = fn("CREATE", None, new)
            key = self._key(info, namespace, meta["name"])
            if key in self._objects[resource]:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{info.qualified} "{meta["name"]}" already exists',
                    details=_details(info, meta["name"]),
                )
            if dry_run:
                return copy.deepcopy(new)
            self._commit("ADDED", resource, key, new)
            return copy.deepcopy(new)

    def update(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        obj: Obj,
        *,
        subresource: str | None = None,
        admission: bool = True,
        dry_run: bool = False,
    ) -> Obj:
        info = _info(resource)
        incoming = copy.deepcopy(obj)
        if subresource is None:
            defaults.default_object(resource, incoming)
        with self._lock:
            key = self._key(info, namespace, name)
            old = self._objects[resource].get(key)
            if old is None:
                raise not_found(resource, name)
            wanted_rv = (incoming.get("metadata") or {}).get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise conflict(resource, name, _STALE)
            if subresource == "status":
                new = copy.deepcopy(old)
                if "status" in incoming:
                    new["status"] = incoming["status"]
            elif subresource is None:
                new = incoming
                new["apiVersion"] = info.api_version
                new["kind"] = info.kind
                meta = new.setdefault("metadata", {})
                old_meta = old["metadata"]
                for field in (
                    "name",
                    "namespace",
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "generateName",
                ):
                    if field in old_meta:
                        meta[field] = old_meta[field]
                    else:
                        meta.pop(field, None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
                if resource == "namespaces":
                    new["spec"] = copy.deepcopy(old.get("spec", {}))
                _validate_meta(info, new)
                if admission and resource == "pods":
                    self._check_pod_update(old, new)
                self._check_immutable_data(info, old, new)
            else:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if admission:
                for fn in self._admission.get(resource, []):
                    new = fn("UPDATE", copy.deepcopy(old), new)
            if dry_run:
                new.setdefault("metadata", {})["resourceVersion"] = old["metadata"][
                    "resourceVersion"
                ]
                return copy.deepcopy(new)
            return copy.deepcopy(self._commit_update(resource, key, old, new))

    def mutate(
        self, resource: str, namespace: str | None, name: str, fn: Callable[[Obj], bool | None]
    ) -> Obj | None:
        """Atomic read-modify-write for controllers: no RV check, no admission.

        Returns the object after the write, or ``None`` when ``fn`` returned ``False``.
        Raises the 404 ``ApiError`` when the object does not exist.
        """
        info = _info(resource)
        with self._lock:
            key = self._key(info, namespace, name)
            old = self._objects[resource].get(key)
            if old is None:
                raise not_found(resource, name)
            new = copy.deepcopy(old)
            if fn(new) is False:
                return None
            return copy.deepcopy(self._commit_update(resource, key, old, new))

    def delete(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        *,
        grace_period_seconds: int | None = None,
        propagation_policy: str | None = None,
        preconditions: dict[str, Any] | None = None,
    ) -> Obj:
        """Delete with the registry's graceful/finalizer rules; returns the response body."""
        body, _ = self.delete_detailed(
            resource,
            namespace,
            name,
            grace_period_seconds=grace_period_seconds,
            propagation_policy=propagation_policy,
            preconditions=preconditions,
        )
        return body

    def delete_detailed(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        *,
        grace_period_seconds: int | None = None,
        propagation_policy: str | None = None,
        preconditions: dict[str, Any] | None = None,
    ) -> tuple[Obj, bool]:
        """Like :meth:`delete`, also telling whether the object is gone (200) or pending (202)."""
        info = _info(resource)
        if propagation_policy not in (None, "Orphan", "Background", "Foreground"):
            raise invalid(
                resource,
                name,
                [
                    FieldError(
                        "propagationPolicy",
                        "NotSupported",
                        value=propagation_policy,
                        supported=("Foreground", "Background", "Orphan", "nil"),
                    )
                ],
            )
        if grace_period_seconds is not None and grace_period_seconds < 0:
            grace_period_seconds = 0
        with self._lock:
            key = self._key(info, namespace, name)
            old = self._objects[resource].get(key)
            if old is None:
                raise not_found(resource, name)
            self._check_preconditions(resource, name, old, preconditions or {})
            if resource == "namespaces":
                return self._delete_namespace(key, old)
            meta = old["metadata"]
            finalizers = list(meta.get("finalizers") or [])
            if resource == "jobs":
                # batch/v1 Jobs default to Orphan (job strategy DefaultGarbageCollectionPolicy).
                policy = propagation_policy or "Orphan"
                if policy == "Foreground" and "foregroundDeletion" not in finalizers:
                    finalizers.append("foregroundDeletion")
                if policy == "Orphan" and not finalizers:
                    # The real apiserver adds the `orphan` finalizer and the garbage collector
                    # strips ownerReferences before removing it; the end state is the same, done
                    # here atomically so the GC never sees orphaned pods pointing at a gone owner.
                    self._orphan_dependents(meta.get("namespace", ""), meta["uid"])
            grace = 0
            if resource == "pods":
                phase = (old.get("status") or {}).get("phase")
                if grace_period_seconds is not None:
                    grace = grace_period_seconds
                else:
                    grace = int((old.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
                if not (old.get("spec") or {}).get("nodeName") or phase in ("Succeeded", "Failed"):
                    grace = 0
            current_grace = meta.get("deletionGracePeriodSeconds")
            if meta.get("deletionTimestamp") and current_grace is not None:
                grace = min(grace, int(current_grace))
            if grace == 0 and not finalizers:
                self._remove(resource, key, old)
                if resource in ("pods", "resourcequotas"):  # their stores' ReturnDeletedObject
                    return copy.deepcopy(self._last_removed), True
                return self._success(info, old), True
            if (
                meta.get("deletionTimestamp")
                and current_grace == grace
                and finalizers == list(meta.get("finalizers") or [])
            ):
                return copy.deepcopy(old), False  # already pending, nothing shortened
            new = copy.deepcopy(old)
            new_meta = new["metadata"]
            new_meta["deletionTimestamp"] = format_time(self._now() + timedelta(seconds=grace))
            new_meta["deletionGracePeriodSeconds"] = grace
            if finalizers:
                new_meta["finalizers"] = finalizers
            self._commit("MODIFIED", resource, key, new)
            return copy.deepcopy(new), False

    # --- subscriptions and history -----------------------------------------------------------

    def subscribe(self, fn: Callable[[str, str, Obj], None]) -> Callable[[], None]:
        """Call ``fn(type, resource, obj)`` for every later change, in commit order.

        Calls come from one dispatcher thread, never under the store lock.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("store is closed")
            self._subscribers.append(fn)
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch_loop, name="kubesim-store-dispatch", daemon=True
                )
                self._dispatcher.start()

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)

        return unsubscribe

    def sync(self, timeout: float = 10.0) -> bool:
        """Wait until every change committed so far was delivered to the subscribers."""
        with self._dispatch_cond:
            target = self._enqueued
            return self._dispatch_cond.wait_for(
                lambda: self._delivered >= target or self._closed, timeout
            )

    def events_since(self, rv: int, resource: str | None = None) -> builtins.list[Event]:
        """Events after ``rv`` (optionally of one resource); 410 Expired when compacted.

        Call with the lock held (``with store.changed:``) or not; both are safe.
        """
        with self._lock:
            self._trim_history()
            if rv < self._compacted_rv:
                raise expired(rv, self._compacted_rv)
            result: builtins.list[Event] = []
            # History is ordered by rv; walk from the end until we pass rv.
            for _, event in reversed(self._history):
                if event.rv <= rv:
                    break
                if resource is None or event.resource == resource:
                    result.append(event)
            result.reverse()
            return result

    def check_watchable(self, rv: int) -> None:
        """Raise the 410 Expired error when a watch from ``rv`` cannot be served."""
        with self._lock:
            self._trim_history()
            if rv < self._compacted_rv:
                raise expired(rv, self._compacted_rv)

    @property
    def current_rv(self) -> int:
        with self._lock:
            return self._rv

    def compact(self) -> None:
        """Forget the whole history: every resourceVersion issued so far becomes too old.

        The counter moves on by one (as if another resource had been written) so the RV of a
        fresh list is watchable again.
        """
        with self._lock:
            self._rv += 1
            self._history.clear()
            self._compacted_rv = self._rv
            self.changed.notify_all()

    def set_history(self, *, events: int | None = None, seconds: float | None = None) -> None:
        with self._lock:
            if events is not None:
                self._history_events = events
            if seconds is not None:
                self._history_seconds = seconds
            self._trim_history()

    def close(self) -> None:
        """Stop the dispatcher thread and wake every waiter (watches end)."""
        with self._lock:
            self._closed = True
            self.changed.notify_all()
            dispatcher = self._dispatcher
        with self._dispatch_cond:
            self._dispatch_cond.notify_all()
        if dispatcher is not None and dispatcher is not threading.current_thread():
            dispatcher.join(timeout=10)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- internals ---------------------------------------------------------------------------

    @staticmethod
    def _key(info: ResourceInfo, namespace: str | None, name: str) -> tuple[str, str]:
        return ((namespace or "default") if info.namespaced else "", name)

    def _generate_name(self, info: ResourceInfo, namespace: str | None, prefix: str) -> str:
        prefix = prefix[:_MAX_PREFIX]
        # RetryGenerateName (GA 1.32): the apiserver retries a colliding generated name.
        for _ in range(8):
            suffix = "".join(secrets.choice(_NAME_ALPHABET) for _ in range(_RANDOM_LENGTH))
            candidate = prefix + suffix
            if self._key(info, namespace, candidate) not in self._objects[info.name]:
                return candidate
        return candidate

    def _check_preconditions(
        self, resource: str, name: str, old: Obj, preconditions: dict[str, Any]
    ) -> None:
        meta = old["metadata"]
        uid = preconditions.get("uid")
        if uid and uid != meta["uid"]:
            raise conflict(
                resource,
                name,
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                f"{meta['uid']}",
            )
        rv = preconditions.get("resourceVersion")
        if rv and rv != meta["resourceVersion"]:
            raise conflict(
                resource,
                name,
                f"Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion "
                f"in object meta: {meta['resourceVersion']}",
            )

    @staticmethod
    def _check_pod_update(old: Obj, new: Obj) -> None:
        old_view = _pod_spec_frozen_view(old.get("spec") or {})
        new_view = _pod_spec_frozen_view(new.get("spec") or {})
        old_node = (old.get("spec") or {}).get("nodeName")
        if old_view != new_view or (
            old_node and (new.get("spec") or {}).get("nodeName") != old_node
        ):
            raise invalid(
                "pods",
                old["metadata"]["name"],
                [FieldError("spec", "Forbidden", _POD_UPDATE_MESSAGE)],
            )

    @staticmethod
    def _check_immutable_data(info: ResourceInfo, old: Obj, new: Obj) -> None:
        if info.name not in ("secrets", "configmaps") or not old.get("immutable"):
            return
        errors = [
            FieldError(field, "Forbidden", "field is immutable when `immutable` is set")
            for field in ("data", "binaryData", "stringData")
            if new.get(field) != old.get(field) and field != "stringData"
        ]
        if not new.get("immutable"):
            errors.append(
                FieldError("immutable", "Forbidden", "field is immutable when `immutable` is set")
            )
        if errors:
            raise invalid(info.name, old["metadata"]["name"], errors)

    def _commit_update(self, resource: str, key: tuple[str, str], old: Obj, new: Obj) -> Obj:
        """Bookkeeping shared by update and mutate; returns the committed snapshot."""
        meta = new.setdefault("metadata", {})
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if (resource == "jobs" or RESOURCES[resource].group == "kueue.x-k8s.io") and new.get(
            "spec"
        ) != old.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        if new == old:
            return old  # a no-op write keeps the RV and sends no event, as upstream
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and int(meta.get("deletionGracePeriodSeconds") or 0) == 0
        ):
            # registry ShouldDeleteDuringUpdate: finalizers gone and no grace left → delete.
            self._remove(resource, key, new)
            return self._last_removed
        self._commit("MODIFIED", resource, key, new)
        return new

    def _orphan_dependents(self, namespace: str, owner_uid: str) -> None:
        for resource, objects in self._objects.items():
            for key, obj in list(objects.items()):
                if key[0] != namespace:
                    continue
                refs = obj["metadata"].get("ownerReferences") or []
                kept = [r for r in refs if r.get("uid") != owner_uid]
                if len(kept) == len(refs):
                    continue
                new = copy.deepcopy(obj)
                if kept:
                    new["metadata"]["ownerReferences"] = kept
                else:
                    new["metadata"].pop("ownerReferences", None)
                self._commit("MODIFIED", resource, key, new)

    def _delete_namespace(self, key: tuple[str, str], old: Obj) -> tuple[Obj, bool]:
        name = key[1]
        if name in ("default", "kube-system", "kube-public"):
            raise ApiError(
                403,
                "Forbidden",
                f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                details={"name": name, "kind": "namespaces"},
            )
        if not old["metadata"].get("deletionTimestamp"):
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = format_time(self._now())
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["status"] = {"phase": "Terminating"}
            self._commit("MODIFIED", "namespaces", key, new)
            # The namespace controller deletes the content; done inline here.
            for resource in RESOURCES:
                if resource == "namespaces":
                    continue
                for obj_key in [k for k in self._objects[resource] if k[0] == name]:
                    if obj_key in self._objects[resource]:
                        self.delete_detailed(
                            resource, name, obj_key[1], propagation_policy="Background"
                        )
        result = self._maybe_finish_namespace(name)
        if result is not None:
            return result, True
        current = self._objects["namespaces"].get(key)
        if current is None:  # emptied (and removed) while its content was being deleted
            return copy.deepcopy(self._last_removed), True
        return copy.deepcopy(current), False

    def _maybe_finish_namespace(self, namespace: str) -> Obj | None:
        ns_key = ("", namespace)
        ns_obj = self._objects["namespaces"].get(ns_key)
        if ns_obj is None or not ns_obj["metadata"].get("deletionTimestamp"):
            return None
        if any(
            k[0] == namespace
            for r, objs in self._objects.items()
            if r not in ("namespaces", "events")
            for k in objs
        ):
            return None
        # Events may still be written into a terminating namespace (the kubelet's Killing while
        # its pods wind down); the namespace controller's next pass deletes them.
        for key in [k for k in self._objects["events"] if k[0] == namespace]:
            self._commit("DELETED", "events", key, copy.deepcopy(self._objects["events"][key]))
        self._remove("namespaces", ns_key, ns_obj)
        return copy.deepcopy(self._last_removed)

    def _success(self, info: ResourceInfo, obj: Obj) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": _details(info, obj["metadata"]["name"], uid=obj["metadata"]["uid"]),
        }

    def _remove(self, resource: str, key: tuple[str, str], obj: Obj) -> None:
        final = copy.deepcopy(obj)
        self._commit("DELETED", resource, key, final)
        self._last_removed = final
        if resource != "namespaces" and key[0]:
            self._maybe_finish_namespace(key[0])
            # _maybe_finish_namespace may overwrite _last_removed; restore ours.
            self._last_removed = final

    def _commit(self, event_type: str, resource: str, key: tuple[str, str], obj: Obj) -> None:
        """Store (or drop) ``obj`` with a fresh RV, record history, queue the dispatch."""
        # The previous snapshot lets a selector watch turn "stopped matching" into DELETED.
        prev = self._objects[resource].get(key)
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        if event_type == "DELETED":
            self._objects[resource].pop(key, None)
        else:
            self._objects[resource][key] = obj
        event = Event(self._rv, event_type, resource, key[0], obj, prev)
        self._history.append((time.monotonic(), event))
        self._trim_history()
        self.changed.notify_all()
        if self._subscribers:
            with self._dispatch_cond:
                self._dispatch.append(event)
                self._enqueued += 1
                self._dispatch_cond.notify_all()

    def _trim_history(self) -> None:
        horizon = time.monotonic() - self._history_seconds
        while self._history and (
            len(self._history) > self._history_events or self._history[0][0] < horizon
        ):
            _, dropped = self._history.popleft()
            self._compacted_rv = max(self._compacted_rv, dropped.rv)

    def _dispatch_loop(self) -> None:
        while True:
            with self._dispatch_cond:
                self._dispatch_cond.wait_for(lambda: bool(self._dispatch) or self._closed)
                if self._closed and not self._dispatch:
                    self._dispatch_cond.notify_all()
                    return
                event = self._dispatch.popleft()
            with self._lock:
                subscribers = list(self._subscribers)
            for fn in subscribers:
                try:
                    fn(event.type, event.resource, copy.deepcopy(event.obj))
                except Exception:  # a broken subscriber must not stop the others
                    import traceback

                    traceback.print_exc()
            with self._dispatch_cond:
                self._delivered += 1
                self._dispatch_cond.notify_all()


def expired(rv: int, oldest: int) -> ApiError:
    """The watch cache's 410 for a compacted resourceVersion."""
    return ApiError(410, "Expired", f"too old resource version: {rv} ({oldest})")
