"""``application/vnd.kubernetes.protobuf`` bodies for the few kinds kubectl sends that way.

kubectl (client-go's typed clients) sends ``kubectl create secret ...`` and ``kubectl auth
can-i`` (a SelfSubjectAccessReview) as protobuf and asks for protobuf back (``Accept:
application/vnd.kubernetes.protobuf,application/json``). kube-apiserver speaks protobuf for every
built-in kind; kubesim does for Secret, SelfSubjectAccessReview and Status (the error body), and
answers other kinds in JSON, which such an ``Accept`` allows.

Hand-written, on purpose: no package in the project's environment (nor a maintained one on PyPI)
carries the Kubernetes ``generated.proto`` messages, and the wire format needed here is small.
A body is the 4-byte magic ``k8s\\0`` followed by a ``runtime.Unknown`` message (field 1
``typeMeta{apiVersion=1, kind=2}``, 2 ``raw`` = the object's own message, 3 ``contentEncoding``,
4 ``contentType``). The field numbers below are those of ``k8s.io/api`` and
``k8s.io/apimachinery`` ``generated.proto``. Decoding yields the object as its JSON would be
(zero values left out, as the Go JSON encoder's ``omitempty`` does); encoding writes the fields
the JSON object has.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from tests.kubesim.errors import ApiError

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
_MAGIC = b"k8s\x00"

# A field type: a scalar name, ("message", fields), ("repeated", type), ("map", value type).
FieldType = str | tuple[Any, ...]
Message = dict[int, tuple[str, FieldType]]

_FIELDS_V1: Message = {1: ("Raw", "bytes")}
_TIME = "time"  # metav1.Time: {seconds int64 = 1, nanos int32 = 2}
_OWNER_REFERENCE: Message = {
    1: ("kind", "string"),
    3: ("name", "string"),
    4: ("uid", "string"),
    5: ("apiVersion", "string"),
    6: ("controller", "bool"),
    7: ("blockOwnerDeletion", "bool"),
}
_MANAGED_FIELDS: Message = {
    1: ("manager", "string"),
    2: ("operation", "string"),
    3: ("apiVersion", "string"),
    4: ("time", _TIME),
    6: ("fieldsType", "string"),
    7: ("fieldsV1", "fieldsv1"),
    8: ("subresource", "string"),
}
OBJECT_META: Message = {
    1: ("name", "string"),
    2: ("generateName", "string"),
    3: ("namespace", "string"),
    4: ("selfLink", "string"),
    5: ("uid", "string"),
    6: ("resourceVersion", "string"),
    7: ("generation", "int"),
    8: ("creationTimestamp", _TIME),
    9: ("deletionTimestamp", _TIME),
    10: ("deletionGracePeriodSeconds", "int"),
    11: ("labels", ("map", "string")),
    12: ("annotations", ("map", "string")),
    13: ("ownerReferences", ("repeated", ("message", _OWNER_REFERENCE))),
    14: ("finalizers", ("repeated", "string")),
    17: ("managedFields", ("repeated", ("message", _MANAGED_FIELDS))),
}
_LIST_META: Message = {
    1: ("selfLink", "string"),
    2: ("resourceVersion", "string"),
    3: ("continue", "string"),
    4: ("remainingItemCount", "int"),
}
_SELECTOR_REQUIREMENT: Message = {
    1: ("key", "string"),
    2: ("operator", "string"),
    3: ("values", ("repeated", "string")),
}
_SELECTOR_ATTRIBUTES: Message = {
    1: ("rawSelector", "string"),
    2: ("requirements", ("repeated", ("message", _SELECTOR_REQUIREMENT))),
}
_RESOURCE_ATTRIBUTES: Message = {
    1: ("namespace", "string"),
    2: ("verb", "string"),
    3: ("group", "string"),
    4: ("version", "string"),
    5: ("resource", "string"),
    6: ("subresource", "string"),
    7: ("name", "string"),
    8: ("fieldSelector", ("message", _SELECTOR_ATTRIBUTES)),
    9: ("labelSelector", ("message", _SELECTOR_ATTRIBUTES)),
}
_NON_RESOURCE_ATTRIBUTES: Message = {1: ("path", "string"), 2: ("verb", "string")}
_STATUS_CAUSE: Message = {1: ("reason", "string"), 2: ("message", "string"), 3: ("field", "string")}
_STATUS_DETAILS: Message = {
    1: ("name", "string"),
    2: ("group", "string"),
    3: ("kind", "string"),
    4: ("causes", ("repeated", ("message", _STATUS_CAUSE))),
    5: ("retryAfterSeconds", "int"),
    6: ("uid", "string"),
}

# (apiVersion, kind) → the object's message.
KINDS: dict[tuple[str, str], Message] = {
    ("v1", "Secret"): {
        1: ("metadata", ("message", OBJECT_META)),
        2: ("data", ("map", "bytes")),
        3: ("type", "string"),
        4: ("stringData", ("map", "string")),
        5: ("immutable", "bool"),
    },
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): {
        1: ("metadata", ("message", OBJECT_META)),
        2: (
            "spec",
            (
                "message",
                {
                    1: ("resourceAttributes", ("message", _RESOURCE_ATTRIBUTES)),
                    2: ("nonResourceAttributes", ("message", _NON_RESOURCE_ATTRIBUTES)),
                },
            ),
        ),
        3: (
            "status",
            (
                "message",
                {
                    1: ("allowed", "bool"),
                    2: ("reason", "string"),
                    3: ("evaluationError", "string"),
                    4: ("denied", "bool"),
                },
            ),
        ),
    },
    ("v1", "Status"): {
        1: ("metadata", ("message", _LIST_META)),
        2: ("status", "string"),
        3: ("message", "string"),
        4: ("reason", "string"),
        5: ("details", ("message", _STATUS_DETAILS)),
        6: ("code", "int"),
    },
}
_ENVELOPE: Message = {
    1: ("typeMeta", ("message", {1: ("apiVersion", "string"), 2: ("kind", "string")})),
    2: ("raw", "bytes"),
    3: ("contentEncoding", "string"),
    4: ("contentType", "string"),
}


# --- content negotiation -----------------------------------------------------------------------


def media_types(accept: str | None) -> list[str]:
    """The media types of an ``Accept`` header in the client's order (parameters dropped;
    ``q`` weights are not used by Kubernetes clients)."""
    return [
        part.split(";")[0].strip().lower() for part in (accept or "").split(",") if part.strip()
    ]


def wants_protobuf(accept: str | None) -> bool:
    """Whether protobuf is the client's first choice (client-go lists it first)."""
    types = media_types(accept)
    return bool(types) and types[0] == MEDIA_TYPE


def acceptable(accept: str | None, offered: str) -> bool:
    """Whether ``offered`` (``type/subtype``) satisfies the ``Accept`` header."""
    if not accept:
        return True
    kind, _, _ = offered.partition("/")
    return any(t in (offered, "*/*", f"{kind}/*") for t in media_types(accept))


# --- wire format -------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64s are ten-byte two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    if result >= 1 << 63:
        result -= 1 << 64
    return result, pos


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs: varints as int, length-delimited as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            yield number, value
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            if length < 0 or pos + length > len(data):
                raise ValueError("truncated field")
            yield number, data[pos : pos + length]
            pos += length
        elif wire == 1:
            pos += 8  # fixed64: no field kubesim reads has it
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _format_time(seconds: int) -> str | None:
    if seconds == 0:
        return None  # the zero Time is JSON null
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _decode_value(kind: FieldType, raw: int | bytes) -> Any:
    if kind == "string":
        return bytes(raw).decode() if isinstance(raw, bytes) else None
    if kind == "bytes":
        return base64.b64encode(raw).decode() if isinstance(raw, bytes) else None
    if kind == "bool":
        return bool(raw)
    if kind == "int":
        return int(raw) if isinstance(raw, int) else None
    if kind == _TIME:
        seconds = dict(_fields(raw)).get(1, 0) if isinstance(raw, bytes) else 0
        return _format_time(int(seconds))
    if kind == "fieldsv1":
        inner = dict(_fields(raw)).get(1, b"{}") if isinstance(raw, bytes) else b"{}"
        return json.loads(bytes(inner) or b"{}")
    if isinstance(kind, tuple) and kind[0] == "message" and isinstance(raw, bytes):
        return decode_message(raw, kind[1])
    raise ValueError(f"field of type {kind!r} has the wrong wire type")


def _empty(value: Any) -> bool:
    return value in (None, "", 0, False, {}, [])


def decode_message(data: bytes, message: Message) -> dict[str, Any]:
    """One message as the JSON object of its Go struct (zero values left out)."""
    out: dict[str, Any] = {}
    for number, raw in _fields(data):
        if number not in message:
            continue  # unknown fields are dropped, as by an older server
        name, kind = message[number]
        if isinstance(kind, tuple) and kind[0] == "repeated":
            out.setdefault(name, []).append(_decode_value(kind[1], raw))
        elif isinstance(kind, tuple) and kind[0] == "map":
            if not isinstance(raw, bytes):
                raise ValueError(f"{name}: a map entry must be length-delimited")
            entry = dict(_fields(raw))
            key = bytes(entry.get(1, b"")).decode()
            out.setdefault(name, {})[key] = _decode_value(kind[1], entry.get(2, b""))
        else:
            out[name] = _decode_value(kind, raw)
    return {k: v for k, v in out.items() if not _empty(v)}


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _delimited(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def _encode_value(number: int, kind: FieldType, value: Any) -> bytes:
    if kind == "string":
        return _delimited(number, str(value).encode())
    if kind == "bytes":
        return _delimited(number, base64.b64decode(value))
    if kind in ("bool", "int"):
        return _key(number, 0) + _varint(int(value))
    if kind == _TIME:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return _delimited(number, _key(1, 0) + _varint(int(moment.timestamp())))
    if kind == "fieldsv1":
        return _delimited(number, _delimited(1, json.dumps(value, separators=(",", ":")).encode()))
    if isinstance(kind, tuple) and kind[0] == "message":
        return _delimited(number, encode_message(value, kind[1]))
    raise ValueError(f"cannot encode a field of type {kind!r}")


def encode_message(obj: dict[str, Any], message: Message) -> bytes:
    out = bytearray()
    for number, (name, kind) in sorted(message.items()):
        value = obj.get(name)
        if value is None:
            continue
        if isinstance(kind, tuple) and kind[0] == "repeated":
            for item in value:
                out += _encode_value(number, kind[1], item)
        elif isinstance(kind, tuple) and kind[0] == "map":
            for key in sorted(value):
                entry = _delimited(1, str(key).encode()) + _encode_value(2, kind[1], value[key])
                out += _delimited(number, entry)
        else:
            out += _encode_value(number, kind, value)
    return bytes(out)


# --- bodies ------------------------------------------------------------------------------------


def _unsupported(what: str) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"kubesim cannot decode {what} from application/vnd.kubernetes.protobuf; send it as "
        "application/json (kubesim speaks protobuf for "
        + ", ".join(kind for _, kind in KINDS)
        + " only)",
    )


def decode(body: bytes) -> dict[str, Any]:
    """A request body → the object as JSON would carry it (with apiVersion and kind)."""
    if not body.startswith(_MAGIC):
        raise ApiError(
            400,
            "BadRequest",
            "provided data does not appear to be a protobuf message, expected prefix "
            f"{list(_MAGIC)}",
        )
    try:
        envelope = decode_message(body[len(_MAGIC) :], _ENVELOPE)
        type_meta = envelope.get("typeMeta") or {}
        api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
        message = KINDS.get((api_version, kind))
        if message is None:
            raise _unsupported(f"{kind or 'an object without kind'} ({api_version})")
        raw = base64.b64decode(envelope.get("raw") or "")
        obj = decode_message(raw, message)
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"unable to decode protobuf body: {exc}") from None
    return {"apiVersion": api_version, "kind": kind, **obj}


def encode(obj: dict[str, Any]) -> bytes | None:
    """An answer body, or None if kubesim has no protobuf message for its kind."""
    api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    message = KINDS.get((api_version, kind))
    if message is None:
        return None
    raw = encode_message(obj, message)
    type_meta = {"apiVersion": api_version, "kind": kind}
    envelope = encode_message(
        {"typeMeta": type_meta, "raw": base64.b64encode(raw).decode()}, _ENVELOPE
    )
    return _MAGIC + envelope
