"""Events: the recorders of the control plane and the two API faces of one stored Event.

Recording (client-go ``tools/record``, which kube-controller-manager, kube-scheduler and the
kubelet all use): :func:`record` builds a ``core/v1`` Event named ``<involved name>.<hex unix
nanoseconds>`` with ``firstTimestamp``/``lastTimestamp``/``count: 1``, ``source`` and
``reportingComponent``/``reportingInstance`` set from the recording component, then runs it
through that component's correlator, as the real ``EventCorrelator`` does:

* aggregation: a tenth event with the same source, object, type and reason but a new message
  within 10 minutes becomes one ``(combined from similar events): <message>`` event;
* de-duplication: the same source, object (and ``fieldPath``), type, reason and message again
  → the existing Event is patched: ``count`` + 1, ``lastTimestamp`` (and ``message``) updated;
* spam filter: per source and object, a token bucket of 25 events refilled at 1 per 5 minutes;
  events beyond it are dropped.

The correlator state lives in the recording component (an LRU of 4096 keys each), so it is
kept per store and per ``(component, host)``. A failed write is logged and dropped, never
raised, as the real broadcaster does.

Serving: the store keeps the ``core/v1`` form only. ``events.k8s.io/v1`` is the same object
through the conversion of ``pkg/apis/events/v1/conversion.go``: ``involvedObject`` ↔
``regarding``, ``message`` ↔ ``note``, ``reportingComponent`` ↔ ``reportingController``,
``source``/``firstTimestamp``/``lastTimestamp``/``count`` ↔ the ``deprecated*`` fields. Field
selectors of that group are mapped onto the core keys as upstream's field label conversion
does (``regarding.name`` → ``involvedObject.name``...). Creates and updates are validated as
``ValidateEventCreate``: the legacy rules for ``core/v1`` requests, the strict ones (an
``eventTime``, no deprecated fields) for ``events.k8s.io/v1``.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import weakref
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.kubesim.errors import ApiError
from tests.kubesim.store import FieldError, ResourceInfo, Store, format_time, invalid

__all__ = [
    "EVENTS_V1",
    "Recorder",
    "core_to_v1",
    "discovery_v1",
    "go_duration",
    "normalize_core",
    "record",
    "recorder",
    "v1_error",
    "v1_field_selector",
    "v1_to_core",
    "validate",
    "watch_event_to_v1",
]

_log = logging.getLogger(__name__)

Obj = dict[str, Any]

EVENTS_V1 = ResourceInfo("events", "events.k8s.io", "v1", "Event", True, ("ev",), "event")

# client-go tools/record/events_cache.go defaults.
LRU_ENTRIES = 4096
AGGREGATE_MAX_EVENTS = 10
AGGREGATE_INTERVAL_S = 600.0
SPAM_BURST = 25
SPAM_QPS = 1.0 / 300.0
COMBINED_PREFIX = "(combined from similar events): "

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Lru:
    """``groupcache/lru``: a bounded map that forgets the least recently used key."""

    def __init__(self, size: int = LRU_ENTRIES) -> None:
        self._size = size
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any:
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: str, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


def _nanos(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _seconds(moment: datetime) -> float:
    return (moment - _EPOCH).total_seconds()


_nanos_lock = threading.Lock()
_last_nanos = [0]  # a cell, updated under the lock


def _unique_nanos(now: datetime) -> int:
    """``now`` in Unix nanoseconds, strictly increasing across all recorders of the process.

    Real clocks give every Event its own nanosecond; a frozen FakeClock (or two Events in one
    microsecond, the resolution of ``datetime``) must still give distinct names.
    """
    with _nanos_lock:
        _last_nanos[0] = max(_nanos(now), _last_nanos[0] + 1)
        return _last_nanos[0]


def reference(obj: Obj, field_path: str | None = None) -> Obj:
    """``reference.GetReference``: the ObjectReference of ``obj`` (empty fields omitted)."""
    meta = obj.get("metadata") or {}
    ref = {
        "kind": obj.get("kind", ""),
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "apiVersion": obj.get("apiVersion", ""),
        "resourceVersion": meta.get("resourceVersion", ""),
        "fieldPath": field_path or "",
    }
    return {k: v for k, v in ref.items() if v}


def _key(event: Obj, *parts: str) -> str:
    ref = event["involvedObject"]
    source = event["source"]
    fields = {
        "component": source.get("component", ""),
        "host": source.get("host", ""),
        "fieldPath": ref.get("fieldPath", ""),
        "type": event["type"],
        "reason": event["reason"],
        "message": event["message"],
        "reportingComponent": event["reportingComponent"],
        "reportingInstance": event["reportingInstance"],
    }
    for name in ("kind", "namespace", "name", "uid", "apiVersion"):
        fields[name] = ref.get(name, "")
    # A separator that cannot occur in any part keeps distinct tuples distinct.
    return "\x00".join(fields[p] for p in parts)


_EVENT_KEY = (
    "component",
    "host",
    "kind",
    "namespace",
    "name",
    "fieldPath",
    "uid",
    "apiVersion",
    "type",
    "reason",
    "message",
)
_AGGREGATE_KEY = (
    "component",
    "host",
    "kind",
    "namespace",
    "name",
    "uid",
    "apiVersion",
    "type",
    "reason",
    "reportingComponent",
    "reportingInstance",
)
_SPAM_KEY = ("component", "host", "kind", "namespace", "name", "uid", "apiVersion")


class Recorder:
    """One component's event recorder and correlator (see the module docstring)."""

    def __init__(self, store: Store, component: str, host: str | None = None) -> None:
        self.store = store
        self.component = component
        self.host = host or ""
        self._lock = threading.Lock()
        self._aggregates = _Lru()  # aggregate key -> (set of messages, last seen seconds)
        self._observed = _Lru()  # event key -> (count, firstTimestamp, name)
        self._spam = _Lru()  # spam key -> (tokens, last refill seconds)

    def record(
        self,
        obj: Obj,
        type_: str,
        reason: str,
        message: str,
        *,
        field_path: str | None = None,
    ) -> Obj | None:
        """Record one occurrence; returns the Event as written, or ``None`` when dropped."""
        ref = reference(obj, field_path)
        now = self.store.now()
        with self._lock:
            event = self._make(ref, type_, reason, message, now)
            event, key = self._aggregate(event, now)
            event = self._observe(event, key)
            if self._filtered(event, now):
                return None
            try:
                written = self._write(event)
            except ApiError as exc:
                _log.debug("event %s/%s dropped: %s", reason, ref.get("name"), exc)
                return None
            # eventLogger.updateState: repeats go to the Event as stored (its name may differ).
            self._observed.put(
                key, (written["count"], written["firstTimestamp"], written["metadata"]["name"])
            )
            return written

    def _make(self, ref: Obj, type_: str, reason: str, message: str, now: datetime) -> Obj:
        stamp = format_time(now)
        source: Obj = {"component": self.component}
        if self.host:
            source["host"] = self.host
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": self._name(ref.get("name", ""), now),
                "namespace": ref.get("namespace") or "default",
            },
            "involvedObject": ref,
            "reason": reason,
            "message": message,
            "source": source,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "type": type_,
            "eventTime": None,
            "reportingComponent": self.component,
            "reportingInstance": self.host,
        }

    def _name(self, involved: str, now: datetime) -> str:
        return f"{involved}.{_unique_nanos(now):x}"

    def _aggregate(self, event: Obj, now: datetime) -> tuple[Obj, str]:
        """``EventAggregator.EventAggregate``."""
        aggregate_key = _key(event, *_AGGREGATE_KEY)
        seen = self._aggregates.get(aggregate_key)
        messages: set[str] = set()
        if seen is not None and _seconds(now) - seen[1] <= AGGREGATE_INTERVAL_S:
            messages = seen[0]
        messages.add(event["message"])
        self._aggregates.put(aggregate_key, (messages, _seconds(now)))
        if len(messages) < AGGREGATE_MAX_EVENTS:
            return event, _key(event, *_EVENT_KEY)
        messages.pop()  # never grow the set beyond the threshold
        combined = dict(event)
        combined["message"] = COMBINED_PREFIX + event["message"]
        return combined, aggregate_key

    def _observe(self, event: Obj, key: str) -> Obj:
        """``eventLogger.eventObserve``: a repeat takes the first occurrence's name and count."""
        last = self._observed.get(key)
        if last is not None:
            count, first, name = last
            event = copy.deepcopy(event)
            event["metadata"]["name"] = name
            event["firstTimestamp"] = first
            event["count"] = count + 1
        self._observed.put(
            key, (event["count"], event["firstTimestamp"], event["metadata"]["name"])
        )
        return event

    def _filtered(self, event: Obj, now: datetime) -> bool:
        """``EventSourceObjectSpamFilter``: a token bucket per source and object."""
        key = _key(event, *_SPAM_KEY)
        at = _seconds(now)
        tokens, last = self._spam.get(key) or (float(SPAM_BURST), at)
        tokens = min(float(SPAM_BURST), tokens + max(0.0, at - last) * SPAM_QPS)
        allowed = tokens >= 1.0
        self._spam.put(key, (tokens - 1.0 if allowed else tokens, at))
        return not allowed

    def _write(self, event: Obj) -> Obj:
        """``recordToSink``: patch a repeat, create otherwise (also when the repeat is gone)."""
        namespace = event["metadata"]["namespace"]
        name = event["metadata"]["name"]
        if event["count"] > 1:

            def bump(existing: Obj) -> None:
                existing["count"] = event["count"]
                existing["lastTimestamp"] = event["lastTimestamp"]
                existing["message"] = event["message"]

            try:
                updated: Obj | None = self.store.mutate("events", namespace, name, bump)
                if updated is not None:
                    return updated
            except ApiError as exc:
                if exc.code != 404:
                    raise
        for _ in range(8):
            try:
                created: Obj = self.store.create("events", namespace, event, admission=False)
                return created
            except ApiError as exc:
                if exc.code != 409 or event["count"] > 1:
                    raise
                # Another recorder took this name in the same nanosecond: the next one is free.
                involved, _, stamp = name.rpartition(".")
                name = f"{involved}.{int(stamp, 16) + 1:x}"
                event["metadata"]["name"] = name
        raise ApiError(409, "AlreadyExists", f'events "{name}" already exists')


_registry_lock = threading.Lock()
_registry: weakref.WeakKeyDictionary[Store, dict[tuple[str, str], Recorder]] = (
    weakref.WeakKeyDictionary()
)


def recorder(store: Store, component: str, host: str | None = None) -> Recorder:
    """The recorder (and its correlator state) of ``component`` on ``host`` for ``store``."""
    with _registry_lock:
        per_store = _registry.setdefault(store, {})
        key = (component, host or "")
        found = per_store.get(key)
        if found is None:
            found = per_store[key] = Recorder(store, component, host)
        return found


def record(
    store: Store,
    obj: Obj,
    type_: str,
    reason: str,
    message: str,
    component: str,
    host: str | None = None,
    *,
    field_path: str | None = None,
) -> Obj | None:
    """Record an Event about ``obj`` as ``component`` (on ``host``) would; never raises."""
    try:
        return recorder(store, component, host).record(
            obj, type_, reason, message, field_path=field_path
        )
    except Exception:  # an event must never break the component recording it
        _log.exception("recording %s %s failed", reason, (obj.get("metadata") or {}).get("name"))
        return None


# --- Go-style formatting -----------------------------------------------------------------------


def _fraction(value: int, unit: int) -> str:
    whole, rest = divmod(value, unit)
    text = str(whole)
    if rest:
        text += "." + str(rest).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return text


def go_duration(seconds: float) -> str:
    """``time.Duration.String()``: ``1.5s``, ``523.4ms``, ``2m3.25s``, ``0s``."""
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < 1_000:
        return f"{sign}{nanos}ns"
    if nanos < 1_000_000:
        return f"{sign}{_fraction(nanos, 1_000)}µs"
    if nanos < 1_000_000_000:
        return f"{sign}{_fraction(nanos, 1_000_000)}ms"
    hours, rest = divmod(nanos, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return f"{sign}{text}{_fraction(rest, 1_000_000_000)}s"


# --- the two API faces ----------------------------------------------------------------------------

# (core/v1 field, events.k8s.io/v1 field) for the fields that only change their name.
_RENAMED = (
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
)
_SAME = ("eventTime", "series", "reportingInstance", "action", "reason", "related", "type")


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _time(value: Any, field: str, *, micro: bool) -> str | None:
    """Re-serialise a client's timestamp as ``metav1.Time`` / ``metav1.MicroTime`` would."""
    if value in (None, ""):
        return None
    try:
        moment = _parse_time(str(value))
    except ValueError:
        raise ApiError(
            400,
            "BadRequest",
            f'Event in version "v1" cannot be handled as a Event: {field}: parsing time '
            f'"{value}" as "2006-01-02T15:04:05Z07:00": cannot parse "{value}"',
        ) from None
    if micro:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return format_time(moment)


def normalize_core(obj: Obj) -> Obj:
    """The core/v1 Event as the apiserver stores and serialises it (Go ``omitempty`` rules)."""
    obj["involvedObject"] = obj.get("involvedObject") or {}
    obj["source"] = obj.get("source") or {}
    obj["firstTimestamp"] = _time(obj.get("firstTimestamp"), "firstTimestamp", micro=False)
    obj["lastTimestamp"] = _time(obj.get("lastTimestamp"), "lastTimestamp", micro=False)
    obj["eventTime"] = _time(obj.get("eventTime"), "eventTime", micro=True)
    series = obj.get("series")
    if isinstance(series, dict):
        series["lastObservedTime"] = _time(
            series.get("lastObservedTime"), "series.lastObservedTime", micro=True
        )
    elif series is None:
        obj.pop("series", None)
    for field in ("reason", "message", "type", "action", "related"):
        if not obj.get(field):
            obj.pop(field, None)
    if not obj.get("count"):
        obj.pop("count", None)
    obj["reportingComponent"] = obj.get("reportingComponent") or ""
    obj["reportingInstance"] = obj.get("reportingInstance") or ""
    return obj


def core_to_v1(obj: Obj) -> Obj:
    """A stored core/v1 Event as ``events.k8s.io/v1`` serialises it."""
    out: Obj = {
        "kind": "Event",
        "apiVersion": EVENTS_V1.api_version,
        "metadata": copy.deepcopy(obj.get("metadata") or {}),
        "eventTime": obj.get("eventTime"),
    }
    if obj.get("series"):
        out["series"] = copy.deepcopy(obj["series"])
    if obj.get("reportingComponent"):
        out["reportingController"] = obj["reportingComponent"]
    for field in ("reportingInstance", "action", "reason"):
        if obj.get(field):
            out[field] = obj[field]
    out["regarding"] = copy.deepcopy(obj.get("involvedObject") or {})
    if obj.get("related"):
        out["related"] = copy.deepcopy(obj["related"])
    if obj.get("message"):
        out["note"] = obj["message"]
    if obj.get("type"):
        out["type"] = obj["type"]
    # Structs are never omitted by encoding/json: an unset source is {}, unset times null.
    out["deprecatedSource"] = copy.deepcopy(obj.get("source") or {})
    out["deprecatedFirstTimestamp"] = obj.get("firstTimestamp")
    out["deprecatedLastTimestamp"] = obj.get("lastTimestamp")
    if obj.get("count"):
        out["deprecatedCount"] = obj["count"]
    return out


def v1_to_core(obj: Obj) -> Obj:
    """An ``events.k8s.io/v1`` body as the core/v1 Event the store keeps.

    Keys that are neither ``events.k8s.io/v1`` nor core fields are kept under their own name,
    so the schema validation that follows still reports them as unknown fields.
    """
    out: Obj = {"apiVersion": "v1", "kind": "Event"}
    v1_names = {v1 for _, v1 in _RENAMED} | set(_SAME) | {"metadata", "apiVersion", "kind"}
    core_only = {core for core, _ in _RENAMED} - {"reason"}
    for key, value in obj.items():
        if key in ("apiVersion", "kind"):
            continue
        if key == "metadata":
            out["metadata"] = copy.deepcopy(value)
        elif key in _SAME:
            out[key] = copy.deepcopy(value)
        elif key not in v1_names and key not in core_only:
            out[key] = copy.deepcopy(value)  # unknown either way: let validation report it
    for core, v1 in _RENAMED:
        if v1 in obj:
            out[core] = copy.deepcopy(obj[v1])
    return out


def watch_event_to_v1(event: Obj) -> Obj:
    """One watch event of the core store as the ``events.k8s.io/v1`` watch sends it."""
    kind = event.get("type")
    if kind in ("ADDED", "MODIFIED", "DELETED"):
        return {"type": kind, "object": core_to_v1(event["object"])}
    if kind == "BOOKMARK":
        bookmark = copy.deepcopy(event)
        bookmark["object"]["apiVersion"] = EVENTS_V1.api_version
        return bookmark
    return event


_V1_FIELD_LABELS = {
    "reason": "reason",
    "regarding.kind": "involvedObject.kind",
    "regarding.namespace": "involvedObject.namespace",
    "regarding.name": "involvedObject.name",
    "regarding.uid": "involvedObject.uid",
    "regarding.apiVersion": "involvedObject.apiVersion",
    "regarding.resourceVersion": "involvedObject.resourceVersion",
    "regarding.fieldPath": "involvedObject.fieldPath",
    "reportingController": "reportingComponent",
    "source": "source",
    "type": "type",
    "metadata.namespace": "metadata.namespace",
    "metadata.name": "metadata.name",
}


def v1_field_selector(text: str | None) -> str | None:
    """Map an ``events.k8s.io/v1`` field selector onto the core keys (400 on other keys)."""
    if text is None or not text.strip():
        return text
    out: list[str] = []
    for part in re.split(r"(?<!\\),", text):
        match = re.match(r"^(?P<key>(?:[^\\=!]|\\.)*)(?P<op>==|=|!=)(?P<val>.*)$", part)
        if match is None:
            raise ApiError(
                400, "BadRequest", f"invalid selector: '{text}'; can't understand '{part}'"
            )
        key = re.sub(r"\\(.)", r"\1", match["key"]).strip()
        if key not in _V1_FIELD_LABELS:
            raise ApiError(400, "BadRequest", f"field label not supported: {key}")
        out.append(_V1_FIELD_LABELS[key] + match["op"] + match["val"])
    return ",".join(out)


def v1_error(exc: ApiError) -> ApiError:
    """Name the ``events.k8s.io`` resource in an error the core store raised."""
    message = re.sub(r'^(events|Event) "', r'\1.events.k8s.io "', exc.message, count=1)
    message = message.replace(
        'Operation cannot be fulfilled on events "',
        'Operation cannot be fulfilled on events.events.k8s.io "',
        1,
    )
    details = exc.details
    if details and details.get("kind") in ("events", "Event") and "group" not in details:
        details = {"name": details.get("name", ""), "group": EVENTS_V1.group, **details}
    return ApiError(exc.code, exc.reason, message, details=details, retry_after=exc.retry_after)


def discovery_v1() -> list[Obj]:
    """The ``/apis/events.k8s.io/v1`` resource list."""
    return [
        {
            "name": "events",
            "singularName": "event",
            "namespaced": True,
            "kind": "Event",
            "verbs": [
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
            "shortNames": ["ev"],
        }
    ]


# --- validation (pkg/apis/core/validation/events.go) --------------------------------------------

REPORTING_INSTANCE_LIMIT = 128
ACTION_LIMIT = 128
REASON_LIMIT = 128
NOTE_LIMIT = 1024
_QUALIFIED_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


def _too_long(field: str, limit: int) -> FieldError:
    return FieldError(field, "Invalid", f"can have at most {limit} characters", value="")


def _legacy(event: Obj, v1: bool, namespace: str) -> list[FieldError]:
    errors: list[FieldError] = []
    involved = event.get("involvedObject") or {}
    involved_ns = involved.get("namespace", "")
    mismatch = FieldError(
        "involvedObject.namespace", "Invalid", "does not match event.namespace", value=involved_ns
    )
    if not event.get("eventTime"):
        if (not involved_ns and namespace not in ("", "default")) or (
            involved_ns and involved_ns != namespace
        ):
            errors.append(mismatch)
        return errors
    if not involved_ns and namespace not in ("default", "kube-system"):
        errors.append(mismatch)
    controller_field = "reportingController" if v1 else "reportingComponent"
    controller = event.get("reportingComponent") or ""
    if not controller:
        errors.append(FieldError(controller_field, "Required"))
    if not _QUALIFIED_NAME.match(controller):
        errors.append(
            FieldError(
                controller_field,
                "Invalid",
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                "start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  "
                "or '123-abc', regex used for validation is "
                "'([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
                value=controller,
            )
        )
    for field, limit in (
        ("reportingInstance", REPORTING_INSTANCE_LIMIT),
        ("action", ACTION_LIMIT),
        ("reason", REASON_LIMIT),
    ):
        value = event.get(field) or ""
        if not value:
            errors.append(FieldError(field, "Required"))
        if len(value) > limit:
            errors.append(_too_long(field, limit))
    if len(event.get("message") or "") > NOTE_LIMIT:
        errors.append(_too_long("message", NOTE_LIMIT))
    return errors


def _strict(event: Obj) -> list[FieldError]:
    errors: list[FieldError] = []
    series = event.get("series")
    if isinstance(series, dict):
        if int(series.get("count") or 0) < 2:
            errors.append(FieldError("series.count", "Invalid", "should be at least 2", value=""))
        if not series.get("lastObservedTime"):
            errors.append(FieldError("series.lastObservedTime", "Required"))
    if not event.get("eventTime"):
        errors.append(FieldError("eventTime", "Required"))
    if event.get("type") not in ("Normal", "Warning"):
        errors.append(
            FieldError("type", "Invalid", f"has invalid value: {event.get('type', '')}", value="")
        )
    for core in ("firstTimestamp", "lastTimestamp", "count", "source"):
        if event.get(core):
            errors.append(FieldError(core, "Invalid", "needs to be unset", value=""))
    return errors


def validate(event: Obj, *, v1: bool, namespace: str | None = None) -> None:
    """``ValidateEventCreate`` / the legacy half of ``ValidateEventUpdate``; 422 on failure.

    ``namespace`` is the request's (the body may leave it out).
    """
    meta = event.get("metadata") or {}
    errors = _legacy(event, v1, namespace or meta.get("namespace") or "default")
    if v1:
        errors += _strict(event)
    if errors:
        raise invalid("events", (event.get("metadata") or {}).get("name", ""), errors)
