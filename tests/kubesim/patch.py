"""The PATCH flavours the apiserver accepts.

* ``application/json-patch+json`` (RFC 6902): delegated to the ``jsonpatch`` library.
* ``application/merge-patch+json`` (RFC 7386): maps merge recursively, ``null`` deletes, lists
  are replaced.
* ``application/strategic-merge-patch+json``: a hand-written subset of apimachinery's
  strategic merge, covering what real clients send for Jobs, Pods, Secrets and ConfigMaps:
  maps merge; lists that carry a ``patchMergeKey`` in the Kubernetes types (containers, env,
  volumes, volumeMounts, ports, conditions, ownerReferences, ...) merge item by item on that key;
  ``finalizers`` merge as a set; every other list is replaced; ``$patch: delete`` / ``replace``
  / ``merge`` directives, ``$deleteFromPrimitiveList/<f>`` and ``$setElementOrder/<f>`` are
  honoured, ``$retainKeys`` is ignored. The merge key is chosen by the list's field name, which
  is unambiguous for the resources kubesim serves.
* ``application/apply-patch+yaml`` (server-side apply): approximated as "create if missing, else
  strategic-merge the applied configuration"; field ownership and conflicts are not modelled.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch

from tests.kubesim.errors import ApiError

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, APPLY_PATCH, STRATEGIC_MERGE_PATCH)

# patchMergeKey of list fields in the core/v1, batch/v1 and meta/v1 Go types.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "schedulingGates": "name",
}
# Primitive lists with patchStrategy "merge" (set semantics).
SET_LISTS = frozenset({"finalizers"})


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{', '.join(PATCH_TYPES)}",
        details={"causes": [{"reason": "UnsupportedMediaType", "message": content_type}]}
        if content_type
        else None,
    )


def apply_patch(content_type: str, original: dict[str, Any], body: bytes) -> dict[str, Any]:
    """Return ``original`` with the patch applied (``original`` is not modified)."""
    if content_type == APPLY_PATCH:
        patch_doc = parse_apply_body(body)
        return strategic_merge(original, patch_doc)
    try:
        patch_doc = json.loads(body or b"null")
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"error decoding patch: {exc}") from None
    if content_type == JSON_PATCH:
        if not isinstance(patch_doc, list):
            raise ApiError(
                400,
                "BadRequest",
                "json: cannot unmarshal object into Go value of type jsonpatch.Patch",
            )
        try:
            result = jsonpatch.apply_patch(original, patch_doc, in_place=False)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            # Upstream answers a failed JSON patch (e.g. a failing "test") with 422.
            raise ApiError(422, "Invalid", str(exc)) from None
        except (TypeError, KeyError, ValueError) as exc:
            raise ApiError(400, "BadRequest", f"invalid JSON patch: {exc}") from None
        if not isinstance(result, dict):
            raise ApiError(422, "Invalid", "the patch did not produce an object")
        return result
    if not isinstance(patch_doc, dict):
        raise ApiError(
            400,
            "BadRequest",
            "json: cannot unmarshal array into Go value of type map[string]interface {}",
        )
    if content_type == MERGE_PATCH:
        merged = merge_patch(original, patch_doc)
        assert isinstance(merged, dict)
        return merged
    if content_type == STRATEGIC_MERGE_PATCH:
        return strategic_merge(original, patch_doc)
    raise unsupported_media_type(content_type)


def parse_apply_body(body: bytes) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(body or b"{}")
    except yaml.YAMLError as exc:
        raise ApiError(400, "BadRequest", f"error decoding YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "BadRequest", "apply patch must be an object")
    return doc


def merge_patch(original: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge(original: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Strategic merge patch (the subset described in the module docstring)."""
    return _merge_map(copy.deepcopy(original), patch)


def _merge_map(original: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            target = key.split("/", 1)[1]
            if isinstance(original.get(target), list) and isinstance(value, list):
                original[target] = [v for v in original[target] if v not in value]
            continue
        if value is None:
            original.pop(key, None)
        elif isinstance(value, dict):
            current = original.get(key)
            original[key] = _merge_map(current if isinstance(current, dict) else {}, value)
        elif isinstance(value, list):
            original[key] = _merge_list(key, original.get(key), value)
        else:
            original[key] = copy.deepcopy(value)
    return original


def _merge_list(field: str, original: Any, patch: list[Any]) -> list[Any]:
    current = original if isinstance(original, list) else []
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [copy.deepcopy(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    if field in SET_LISTS:
        merged = list(current)
        for item in patch:
            if item not in merged:
                merged.append(copy.deepcopy(item))
        return merged
    key = MERGE_KEYS.get(field)
    if key is None or not all(isinstance(i, dict) for i in patch):
        return [copy.deepcopy(i) for i in patch]
    merged = [copy.deepcopy(i) for i in current]
    for item in patch:
        ident = item.get(key)
        position = next(
            (
                n
                for n, existing in enumerate(merged)
                if isinstance(existing, dict) and existing.get(key) == ident
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if position is not None:
                merged.pop(position)
            continue
        if position is None:
            merged.append(_merge_map({}, item))
        else:
            merged[position] = _merge_map(merged[position], item)
    return merged
