"""Label and field selectors with the apiserver's grammar and error answers.

Label selectors follow apimachinery ``labels.Parse``: comma-separated requirements, each one of
``key``, ``!key``, ``key=v``, ``key==v``, ``key!=v``, ``key in (a,b)``, ``key notin (a,b)``,
``key>n``, ``key<n``. ``!=`` and ``notin`` also match objects that lack the key, as upstream.

Field selectors follow ``fields.ParseSelector`` (``=``, ``==``, ``!=`` joined by commas, with
``\\`` escapes) and only accept the keys each resource's registry strategy exposes
(kubernetes-jobs.md §6); any other key is the 400 ``field label not supported: <key>``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.kubesim.errors import ApiError

_QUALIFIED_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # one of: exists, !exists, =, !=, in, notin, gt, lt
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if not present:
            return False
        try:
            actual = int(str(value))
        except ValueError:
            return False
        bound = int(self.values[0])
        return actual > bound if self.op == "gt" else actual < bound


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside a parenthesised value set."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _check_key(key: str) -> None:
    if not _QUALIFIED_NAME.match(key):
        raise _bad_request(
            f"unable to parse requirement: invalid label key {key!r}: name part must consist of "
            "alphanumeric characters, '-', '_' or '.', and must start and end with an "
            "alphanumeric character"
        )


def _check_value(value: str) -> None:
    if len(value) > 63 or not _LABEL_VALUE.match(value):
        raise _bad_request(
            f"unable to parse requirement: invalid label value: {value!r}: a valid label must be "
            "an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character"
        )


_SET_RE = re.compile(r"^\s*(?P<key>[^\s!=<>()]+)\s+(?P<op>in|notin)\s*\((?P<vals>[^()]*)\)\s*$")
_CMP_RE = re.compile(
    r"^\s*(?P<key>[^\s!=<>()]+)\s*(?P<op>==|=|!=|>|<)\s*(?P<val>[^\s!=<>(),]*)\s*$"
)


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse a label selector string; raise the apiserver's 400 on syntax errors."""
    if text is None or not text.strip():
        return []
    requirements: list[Requirement] = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            raise _bad_request(
                f"unable to parse requirement: found '', expected: identifier ({text})"
            )
        if match := _SET_RE.match(part):
            key = match["key"]
            _check_key(key)
            values = (
                tuple(v.strip() for v in match["vals"].split(",")) if match["vals"].strip() else ()
            )
            if not values:
                raise _bad_request(
                    f"unable to parse requirement: for 'in', 'notin' operators, values set can't "
                    f"be empty ({text})"
                )
            for value in values:
                _check_value(value)
            requirements.append(Requirement(key, match["op"], values))
        elif match := _CMP_RE.match(part):
            key, op, value = match["key"], match["op"], match["val"]
            _check_key(key)
            if op in (">", "<"):
                if not re.fullmatch(r"-?\d+", value):
                    raise _bad_request(
                        f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must be "
                        f"an integer ({text})"
                    )
                requirements.append(Requirement(key, "gt" if op == ">" else "lt", (value,)))
            else:
                _check_value(value)
                requirements.append(Requirement(key, "!=" if op == "!=" else "=", (value,)))
        elif part.startswith("!"):
            key = part[1:].strip()
            _check_key(key)
            requirements.append(Requirement(key, "!exists"))
        elif re.fullmatch(r"[^\s!=<>(),]+", part):
            _check_key(part)
            requirements.append(Requirement(part, "exists"))
        else:
            raise _bad_request(f"unable to parse requirement: invalid selector: {part!r} ({text})")
    return requirements


def labels_match(requirements: list[Requirement], obj: dict[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(req.matches(labels) for req in requirements)


# --- field selectors -------------------------------------------------------------------------


def _get(obj: dict[str, Any], *path: str) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _meta_fields(obj: dict[str, Any]) -> dict[str, str]:
    return {
        "metadata.name": _text(_get(obj, "metadata", "name")),
        "metadata.namespace": _text(_get(obj, "metadata", "namespace")),
    }


def _pod_fields(obj: dict[str, Any]) -> dict[str, str]:
    fields = _meta_fields(obj)
    for path in (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ):
        fields[path] = _text(_get(obj, *path.split(".")))
    fields["spec.hostNetwork"] = _text(bool(_get(obj, "spec", "hostNetwork")))
    return fields


def _job_fields(obj: dict[str, Any]) -> dict[str, str]:
    fields = _meta_fields(obj)
    # The Job strategy exposes the succeeded count (0 when absent) under this legacy name.
    fields["status.successful"] = str(int(_get(obj, "status", "succeeded") or 0))
    return fields


def _event_fields(obj: dict[str, Any]) -> dict[str, str]:
    fields = _meta_fields(obj)
    for key in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath"):
        fields[f"involvedObject.{key}"] = _text(_get(obj, "involvedObject", key))
    fields["reason"] = _text(obj.get("reason"))
    fields["reportingComponent"] = _text(obj.get("reportingComponent"))
    # The event strategy falls back to reportingComponent for events.k8s.io-made Events.
    fields["source"] = _text(_get(obj, "source", "component") or obj.get("reportingComponent"))
    fields["type"] = _text(obj.get("type"))
    return fields


def _secret_fields(obj: dict[str, Any]) -> dict[str, str]:
    fields = _meta_fields(obj)
    fields["type"] = _text(obj.get("type"))
    return fields


def _namespace_fields(obj: dict[str, Any]) -> dict[str, str]:
    return {
        "metadata.name": _text(_get(obj, "metadata", "name")),
        "status.phase": _text(_get(obj, "status", "phase")),
    }


FIELD_GETTERS: dict[str, Callable[[dict[str, Any]], dict[str, str]]] = {
    "pods": _pod_fields,
    "jobs": _job_fields,
    "events": _event_fields,
    "secrets": _secret_fields,
    "configmaps": _meta_fields,
    "namespaces": _namespace_fields,
    "serviceaccounts": _meta_fields,
}


@dataclass(frozen=True)
class FieldRequirement:
    key: str
    negate: bool
    value: str


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_field_selector(resource: str, text: str | None) -> list[FieldRequirement]:
    """Parse a field selector and check its keys against the resource's supported set."""
    if text is None or not text.strip():
        return []
    supported = FIELD_GETTERS[resource]({})
    requirements: list[FieldRequirement] = []
    # Split on unescaped commas, then on the first unescaped operator.
    for part in re.split(r"(?<!\\),", text):
        match = re.match(r"^(?P<key>(?:[^\\=!]|\\.)*)(?P<op>==|=|!=)(?P<val>.*)$", part)
        if match is None:
            raise _bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        key = _unescape(match["key"]).strip()
        if key not in supported:
            raise _bad_request(f"field label not supported: {key}")
        requirements.append(FieldRequirement(key, match["op"] == "!=", _unescape(match["val"])))
    return requirements


def fields_match(resource: str, requirements: list[FieldRequirement], obj: dict[str, Any]) -> bool:
    if not requirements:
        return True
    values = FIELD_GETTERS[resource](obj)
    return all((values[r.key] == r.value) != r.negate for r in requirements)


@dataclass(frozen=True)
class Selector:
    """A parsed pair of label and field selectors for one resource."""

    resource: str
    labels: tuple[Requirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()

    @classmethod
    def parse(
        cls, resource: str, label_selector: str | None, field_selector: str | None
    ) -> Selector:
        return cls(
            resource,
            tuple(parse_label_selector(label_selector)),
            tuple(parse_field_selector(resource, field_selector)),
        )

    def matches(self, obj: dict[str, Any]) -> bool:
        return labels_match(list(self.labels), obj) and fields_match(
            self.resource, list(self.fields), obj
        )
