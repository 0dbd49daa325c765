"""Validation of request bodies against the official OpenAPI schema (Kubernetes 1.33).

The schemas are the ones shipped by PyPI ``kubernetes-validate`` (strict variant: objects carry
``additionalProperties: false``), so unknown fields are detectable. A real apiserver reports
the three kinds of problems differently, and so do we:

* **Unknown fields** are handled by the ``fieldValidation`` query parameter (KEP-2885, GA 1.27):
  ``Strict`` → 400 BadRequest ``<Kind> in version "<v>" cannot be handled as a <Kind>: strict
  decoding error: unknown field "spec.foo"``; ``Warn`` (the server default when the parameter is
  absent, which is what the Python client sends) → the fields are dropped and each one is
  reported in a ``Warning: 299 - "unknown field \\"spec.foo\\""`` header; ``Ignore`` → dropped
  silently. kubectl ≥1.27 sends ``Strict`` by default.
* **Wrong JSON types** fail decoding → 400 BadRequest ``... cannot be handled as a <Kind>: json:
  cannot unmarshal ...``. The Go struct name in that message is approximated from the path.
* **Missing required fields, unsupported enum values and other constraint violations** are what
  the registry's validation reports → 422 Invalid with one cause per field path.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import referencing
from kubernetes_validate import utils as kv_utils

from tests.kubesim.errors import ApiError
from tests.kubesim.store import RESOURCES, FieldError, invalid

KUBERNETES_VERSION = "1.33"
_SCHEMA_DIR = f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict"
_lock = threading.Lock()

_PYTHON_TO_JSON = {
    str: "string",
    bool: "bool",
    int: "number",
    float: "number",
    list: "array",
    dict: "object",
    type(None): "null",
}


@functools.cache
def _definitions() -> referencing.Resource[Any]:
    contents = kv_utils.schema_contents(f"{_SCHEMA_DIR}/_definitions.json", KUBERNETES_VERSION)
    return referencing.Resource.from_contents(contents)


@functools.cache
def _validator(kind: str, api_version: str) -> jsonschema.protocols.Validator:
    # kubernetes-validate names files "<kind>-<group-without-domain>-<version>.json".
    group_version = api_version.replace("/", "-").split(".", 1)[0]
    if "/" in api_version:
        group, version = api_version.split("/", 1)
        group_version = f"{group.split('.', 1)[0]}-{version}"
    schema = kv_utils.schema_contents(
        f"{_SCHEMA_DIR}/{kind.lower()}-{group_version}.json", KUBERNETES_VERSION
    )
    registry: referencing.Registry[Any] = referencing.Registry()
    registry = referencing.Resource.from_contents(schema) @ registry
    registry = _definitions() @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


def field_path(path: Any) -> str:
    """``deque(['spec', 'containers', 0, 'name'])`` → ``spec.containers[0].name``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


@dataclass
class Outcome:
    """What validation decided: the (possibly pruned) object and warnings to send."""

    obj: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def _unknown_fields(error: jsonschema.ValidationError) -> list[str]:
    instance = error.instance if isinstance(error.instance, dict) else {}
    known = set(
        (error.schema or {}).get("properties", {}) if isinstance(error.schema, dict) else ()
    )
    prefix = field_path(error.absolute_path)
    return [f"{prefix}.{k}" if prefix else k for k in instance if k not in known]


def _remove(obj: dict[str, Any], dotted_parent: list[Any], key: str) -> None:
    node: Any = obj
    for part in dotted_parent:
        node = node[part]
    if isinstance(node, dict):
        node.pop(key, None)


def _walk(errors: list[jsonschema.ValidationError]) -> list[jsonschema.ValidationError]:
    """Flatten anyOf/oneOf into the branch errors that got furthest."""
    flat: list[jsonschema.ValidationError] = []
    for error in errors:
        if error.validator in ("anyOf", "oneOf") and error.context:
            flat.append(jsonschema.exceptions.best_match(error.context) or error)
        else:
            flat.append(error)
    return flat


def validate(
    resource: str,
    name: str,
    obj: dict[str, Any],
    *,
    field_validation: str | None = None,
) -> Outcome:
    """Validate ``obj`` (a create or replace body) the way the apiserver would.

    Raises the 400 or 422 ``ApiError``; returns the object with unknown fields pruned unless
    ``Strict``.
    """
    info = RESOURCES[resource]
    mode = field_validation or "Warn"
    if mode not in ("Strict", "Warn", "Ignore"):
        raise ApiError(
            400,
            "BadRequest",
            f'fieldValidation parameter unsupported: "{mode}". Supported values: "Ignore", '
            '"Warn", "Strict"',
        )
    body = dict(obj)
    body.setdefault("apiVersion", info.api_version)
    body.setdefault("kind", info.kind)
    with _lock:  # the cached validators are built lazily; build each once
        validator = _validator(info.kind, info.api_version)
    errors = _walk(list(validator.iter_errors(body)))
    cannot_handle = f'{info.kind} in version "{info.version}" cannot be handled as a {info.kind}: '
    unknown: list[tuple[list[Any], str, str]] = []
    type_errors: list[str] = []
    field_errors: list[FieldError] = []
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        path = field_path(error.absolute_path)
        if error.validator == "additionalProperties":
            for full in _unknown_fields(error):
                unknown.append((list(error.absolute_path), full.rsplit(".", 1)[-1], full))
        elif error.validator == "type":
            expected = error.validator_value
            if isinstance(expected, list):
                expected = next((t for t in expected if t != "null"), expected[0])
            actual = _PYTHON_TO_JSON.get(type(error.instance), "value")
            # Upstream names the Go struct (``JobSpec.spec.completions``); we give the path.
            type_errors.append(
                f"json: cannot unmarshal {actual} into Go struct field {path or info.kind} of type "
                f"{_go_type(expected)}"
            )
        elif error.validator == "required":
            missing = [key for key in error.validator_value if key not in (error.instance or {})]
            for key in missing:
                field_errors.append(FieldError(f"{path}.{key}" if path else key, "Required"))
        elif error.validator == "enum":
            if path in ("apiVersion", "kind"):
                continue  # checked by the server against the URL
            field_errors.append(
                FieldError(
                    path,
                    "NotSupported",
                    value=error.instance,
                    supported=tuple(str(v) for v in error.validator_value if v is not None),
                )
            )
        else:
            field_errors.append(FieldError(path, "Invalid", error.message, value=error.instance))
    if type_errors:
        raise ApiError(400, "BadRequest", cannot_handle + type_errors[0])
    if unknown and mode == "Strict":
        listed = ", ".join(f'unknown field "{full}"' for _, _, full in unknown)
        raise ApiError(400, "BadRequest", cannot_handle + "strict decoding error: " + listed)
    if field_errors:
        raise invalid(resource, name, field_errors)
    pruned = json.loads(json.dumps(obj))
    warnings: list[str] = []
    for parent, key, full in unknown:
        _remove(pruned, parent, key)
        if mode == "Warn":
            warnings.append(f'unknown field "{full}"')
    return Outcome(pruned, warnings)


def _go_type(json_type: Any) -> str:
    return {
        "integer": "int32",
        "string": "string",
        "boolean": "bool",
        "array": "[]",
        "object": "map",
        "number": "float64",
    }.get(str(json_type), str(json_type))
