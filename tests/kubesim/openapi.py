"""``/openapi/v2`` and ``/openapi/v3``: the API documents of what kubesim serves.

Generated, not copied: the type schemas are the official ones that ``kubernetes-validate``
ships (the same files :mod:`tests.kubesim.schema` validates with, its non-strict variant), turned
back into OpenAPI form, and the paths are built from the resources kubesim routes. What clients
read in them is what kube-apiserver's documents carry:

* kubectl's ``--validate`` (default ``strict``) asks whether the server supports the
  ``fieldValidation`` query parameter by finding, in ``/openapi/v3/<group-version>``, the PATCH
  operation tagged with the kind's ``x-kubernetes-group-version-kind``; if it does, validation is
  left to the server (without a document kubectl refuses to send anything).
* client-side ``kubectl apply`` builds its strategic merge patch from the component schema tagged
  with the kind's ``x-kubernetes-group-version-kind`` and the ``x-kubernetes-patch-merge-key`` /
  ``-patch-strategy`` / ``-list-type`` markers of its fields; and only if the PATCH operation's
  request body lists ``application/strategic-merge-patch+json``.
* ``/openapi/v3`` lists one ``serverRelativeURL`` per group-version, with a content hash that
  clients use as a cache key.

The conversion undoes what the JSON-schema packaging did: ``#/$defs/`` references become
``#/definitions/`` (v2) or ``#/components/schemas/`` (v3, wrapped in ``allOf`` beside a
description, as kube-openapi writes them), nullable type lists become the single type,
``oneOf`` string/number (``Quantity``) and string/integer (``IntOrString``) become ``string``
(``format: int-or-string`` for the latter), and the ``enum`` pinned on ``apiVersion``/``kind``
goes. Not served: the deprecated ``/watch/`` paths, protobuf encodings of the documents (a
protobuf-only ``Accept`` is answered 406, as kube-openapi answers a format it cannot produce), and
the non-group paths (``/version``, ``/.well-known``) of the v3 index.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes_validate import utils as kv_utils

from tests.kubesim import schema as kschema
from tests.kubesim.events import EVENTS_V1
from tests.kubesim.store import RESOURCES, ResourceInfo

_SOURCE = f"kubernetes-json-schema/v{kschema.KUBERNETES_VERSION}.0-local/_definitions.json"
_META = "io.k8s.apimachinery.pkg.apis.meta.v1."
_PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
)
_PRODUCES = ("application/json", "application/yaml", "application/vnd.kubernetes.protobuf")
_lock = threading.Lock()

Obj = dict[str, Any]


@dataclass(frozen=True)
class _Op:
    """One operation of one path, in neither version's shape yet."""

    method: str  # get, put, post, patch, delete
    action: str  # x-kubernetes-action
    operation_id: str
    description: str
    group: str
    version: str
    kind: str
    response: str | None  # definition name of the 200/201 body (None: plain text)
    body: str | None = None  # definition name of the request body
    query: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Path:
    path: str
    params: tuple[str, ...]  # path parameters: name, namespace
    ops: tuple[_Op, ...]


# Query parameters as the real documents describe them (name → (type, description)).
_QUERY: dict[str, tuple[str, str]] = {
    "pretty": ("string", "If 'true', then the output is pretty printed."),
    "dryRun": ("string", "When present, indicates that modifications should not be persisted."),
    "fieldManager": ("string", "fieldManager is a name associated with the actor or entity."),
    "fieldValidation": (
        "string",
        "fieldValidation instructs the server on how to handle objects in the request "
        "containing unknown or duplicate fields. Valid values are: Ignore, Warn (default), "
        "Strict.",
    ),
    "force": ("boolean", 'Force is going to "force" Apply requests.'),
    "allowWatchBookmarks": (
        "boolean",
        "allowWatchBookmarks requests watch events of type BOOKMARK.",
    ),
    "continue": ("string", "The continue option should be set when retrieving more results."),
    "fieldSelector": ("string", "A selector to restrict the list of returned objects by fields."),
    "labelSelector": ("string", "A selector to restrict the list of returned objects by labels."),
    "limit": ("integer", "limit is a maximum number of responses to return for a list call."),
    "resourceVersion": ("string", "resourceVersion sets a constraint on what resource versions."),
    "resourceVersionMatch": (
        "string",
        "resourceVersionMatch determines how resourceVersion is applied to list calls.",
    ),
    "sendInitialEvents": (
        "boolean",
        "`sendInitialEvents=true` may be set together with `watch=true`.",
    ),
    "timeoutSeconds": ("integer", "Timeout for the list/watch call."),
    "watch": ("boolean", "Watch for changes to the described resources."),
    "gracePeriodSeconds": (
        "integer",
        "The duration in seconds before the object should be deleted.",
    ),
    "propagationPolicy": ("string", "Whether and how garbage collection will be performed."),
    "orphanDependents": ("boolean", "Deprecated: please use the PropagationPolicy."),
    "container": ("string", "The container for which to stream logs."),
    "follow": ("boolean", "Follow the log stream of the pod."),
    "limitBytes": ("integer", "If set, the number of bytes to read from the server."),
    "previous": ("boolean", "Return previous terminated container logs."),
    "sinceSeconds": ("integer", "A relative time in seconds before the current time."),
    "sinceTime": ("string", "An RFC3339 timestamp from which to show logs."),
    "tailLines": ("integer", "If set, the number of lines from the end of the logs to show."),
    "timestamps": ("boolean", "If true, add an RFC3339 timestamp at the beginning of every line."),
}
_LIST_QUERY = (
    "allowWatchBookmarks",
    "continue",
    "fieldSelector",
    "labelSelector",
    "limit",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
    "watch",
)
_WRITE_QUERY = ("dryRun", "fieldManager", "fieldValidation")
_DELETE_QUERY = ("dryRun", "gracePeriodSeconds", "orphanDependents", "propagationPolicy")
_LOG_QUERY = (
    "container",
    "follow",
    "limitBytes",
    "previous",
    "sinceSeconds",
    "sinceTime",
    "tailLines",
    "timestamps",
)


@functools.cache
def _definitions() -> dict[str, Obj]:
    contents = kv_utils.schema_contents(_SOURCE, kschema.KUBERNETES_VERSION)
    defs: dict[str, Obj] = contents["$defs"]
    return defs


def _definition_of(group: str, version: str, kind: str) -> str:
    for name, body in _definitions().items():
        for gvk in body.get("x-kubernetes-group-version-kind") or []:
            if (gvk.get("group"), gvk.get("version"), gvk.get("kind")) == (group, version, kind):
                return name
    raise KeyError(f"no schema for {group}/{version} {kind}")


def _go_name(text: str) -> str:
    return text[:1].upper() + text[1:]


def _resource_paths(
    info: ResourceInfo, subresources: tuple[str, ...]
) -> tuple[list[_Path], set[str]]:
    """The paths of one resource and the definitions they name."""
    group, version, kind = info.group, info.version, info.kind
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    obj = _definition_of(group, version, kind)
    lst = _definition_of(group, version, kind + "List")
    status, delete_options = _META + "Status", _META + "DeleteOptions"
    patch = _META + "Patch"
    scope = "Namespaced" if info.namespaced else ""
    ops_base = (
        f"{prefix}/namespaces/{{namespace}}/{info.name}"
        if info.namespaced
        else (f"{prefix}/{info.name}")
    )
    params: tuple[str, ...] = ("namespace",) if info.namespaced else ()

    def op(method: str, action: str, verb: str, response: str | None, **kw: Any) -> _Op:
        suffix = kw.pop("suffix", "")
        return _Op(
            method,
            action,
            f"{verb}{scope}{kind}{suffix}",
            f"{action} {kind}{suffix}",
            group,
            version,
            kind,
            response,
            **kw,
        )

    collection = (
        op("get", "list", "list", lst, query=_LIST_QUERY),
        op("post", "post", "create", obj, body=obj, query=_WRITE_QUERY),
        op(
            "delete",
            "deletecollection",
            "deleteCollection",
            status,
            body=delete_options,
            query=(*_LIST_QUERY, *_DELETE_QUERY),
        ),
    )
    item = (
        op("get", "get", "read", obj),
        op("put", "put", "replace", obj, body=obj, query=_WRITE_QUERY),
        op("patch", "patch", "patch", obj, body=patch, query=(*_WRITE_QUERY, "force")),
        op("delete", "delete", "delete", status, body=delete_options, query=_DELETE_QUERY),
    )
    paths = [
        _Path(ops_base, params, collection),
        _Path(f"{ops_base}/{{name}}", (*params, "name"), item),
    ]
    if info.namespaced:
        paths.append(
            _Path(
                f"{prefix}/{info.name}",
                (),
                (
                    _Op(
                        "get",
                        "list",
                        f"list{kind}ForAllNamespaces",
                        f"list {kind}",
                        group,
                        version,
                        kind,
                        lst,
                        query=_LIST_QUERY,
                    ),
                ),
            )
        )
    names = {obj, lst, status, delete_options, patch}
    for sub in subresources:
        path = f"{ops_base}/{{name}}/{sub}"
        if sub == "status":
            ops: tuple[_Op, ...] = (
                op("get", "get", "read", obj, suffix="Status"),
                op("put", "put", "replace", obj, body=obj, query=_WRITE_QUERY, suffix="Status"),
                op(
                    "patch",
                    "patch",
                    "patch",
                    obj,
                    body=patch,
                    query=(*_WRITE_QUERY, "force"),
                    suffix="Status",
                ),
            )
        elif sub == "log":
            ops = (op("get", "connect", "read", None, query=_LOG_QUERY, suffix="Log"),)
        elif sub == "eviction":
            eviction = _definition_of("policy", "v1", "Eviction")
            names.add(eviction)
            ops = (
                _Op(
                    "post",
                    "post",
                    f"create{scope}{kind}Eviction",
                    f"create eviction of a {kind}",
                    "policy",
                    "v1",
                    "Eviction",
                    eviction,
                    body=eviction,
                    query=_WRITE_QUERY,
                ),
            )
        else:
            continue
        paths.append(_Path(path, (*params, "name"), ops))
    return paths, names


def _served(subresources: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[list[_Path], set[str]]]:
    """Paths and root definitions per group-version (``api/v1``, ``apis/batch/v1``, ...)."""
    served: dict[str, tuple[list[_Path], set[str]]] = {}

    def add(key: str, paths: list[_Path], names: set[str]) -> None:
        entry = served.setdefault(key, ([], set()))
        entry[0].extend(paths)
        entry[1].update(names)

    for info in (*RESOURCES.values(), EVENTS_V1):
        key = f"apis/{info.group}/{info.version}" if info.group else f"api/{info.version}"
        subs = () if info is EVENTS_V1 else subresources.get(info.name, ())
        try:
            paths = _resource_paths(info, subs)
        except KeyError:
            continue  # a custom resource (Kueue's): no bundled schema, so no document
        add(key, *paths)
    review = _definition_of("authorization.k8s.io", "v1", "SelfSubjectAccessReview")
    add(
        "apis/authorization.k8s.io/v1",
        [
            _Path(
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                (),
                (
                    _Op(
                        "post",
                        "post",
                        "createSelfSubjectAccessReview",
                        "create a SelfSubjectAccessReview",
                        "authorization.k8s.io",
                        "v1",
                        "SelfSubjectAccessReview",
                        review,
                        body=review,
                        query=_WRITE_QUERY,
                    ),
                ),
            )
        ],
        {review},
    )
    return served


# --- schema conversion -------------------------------------------------------------------------


def _references(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            found.add(ref[len("#/$defs/") :])
        for value in node.values():
            _references(value, found)
    elif isinstance(node, list):
        for value in node:
            _references(value, found)


def _closure(roots: set[str]) -> list[str]:
    defs = _definitions()
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        found: set[str] = set()
        _references(defs[name], found)
        todo.extend(found - seen)
    return sorted(seen)


def _convert(node: Any, ref_prefix: str, v3: bool, served_gvks: set[tuple[str, str, str]]) -> Any:
    if isinstance(node, list):
        return [_convert(v, ref_prefix, v3, served_gvks) for v in node]
    if not isinstance(node, dict):
        return node
    out: Obj = {}
    one_of = node.get("oneOf")
    if isinstance(one_of, list) and all(isinstance(b, dict) and "type" in b for b in one_of):
        types = {t for b in one_of for t in _types(b["type"])}
        out["type"] = "string"
        if "integer" in types:
            out["format"] = "int-or-string"
    for key, value in node.items():
        if key == "oneOf" and "type" in out:
            continue
        if key == "$ref":
            out[key] = ref_prefix + str(value)[len("#/$defs/") :]
        elif key == "type":
            kinds = _types(value)
            out[key] = kinds[0] if kinds else "object"
        elif key == "properties":
            props = {}
            for name, prop in value.items():
                converted = _convert(prop, ref_prefix, v3, served_gvks)
                if name in ("apiVersion", "kind"):
                    converted.pop("enum", None)
                if v3 and "$ref" in converted and len(converted) > 1:
                    ref = converted.pop("$ref")
                    converted = {"allOf": [{"$ref": ref}], **converted}
                props[name] = converted
            out[key] = props
        elif key == "x-kubernetes-group-version-kind":
            gvks = [g for g in value if (g["group"], g["version"], g["kind"]) in served_gvks]
            out[key] = gvks or value
        else:
            out[key] = _convert(value, ref_prefix, v3, served_gvks)
    return out


def _types(value: Any) -> list[str]:
    kinds = value if isinstance(value, list) else [value]
    return [str(k) for k in kinds if k != "null"]


def _gvks(paths: list[_Path]) -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    for path in paths:
        for op in path.ops:
            found.add((op.group, op.version, op.kind))
            found.add((op.group, op.version, op.kind + "List"))
            for meta in ("Status", "DeleteOptions", "WatchEvent"):
                found.add((op.group, op.version, meta))
    found.add(("", "v1", "Status"))  # the core group's own, which every error body is
    return found


def _schemas(names: set[str], ref_prefix: str, v3: bool, gvks: set[tuple[str, str, str]]) -> Obj:
    defs = _definitions()
    return {
        name: _convert(copy.deepcopy(defs[name]), ref_prefix, v3, gvks) for name in _closure(names)
    }


def _gvk(op: _Op) -> Obj:
    return {"group": op.group, "version": op.version, "kind": op.kind}


# --- OpenAPI v3 --------------------------------------------------------------------------------


def _v3_param(name: str, where: str, required: bool = False) -> Obj:
    kind, description = _QUERY.get(name, ("string", f"name of the {name}"))
    if where == "path":
        description = {
            "name": "name of the resource",
            "namespace": "object name and auth scope, such as for teams and projects",
        }[name]
    param: Obj = {
        "name": name,
        "in": where,
        "description": description,
        "schema": {"type": kind, "uniqueItems": True},
    }
    if required:
        param["required"] = True
    return param


def _v3_op(op: _Op, tag: str) -> Obj:
    schemas = "#/components/schemas/"
    content: Obj
    if op.response is None:
        content = {"text/plain": {"schema": {"type": "string"}}}
    else:
        content = {t: {"schema": {"$ref": schemas + op.response}} for t in _PRODUCES}
    codes: tuple[str, ...] = ("200", "201", "202") if op.method == "post" else ("200",)
    if op.method == "put":
        codes = ("200", "201")
    if op.method == "delete" and op.action == "delete":
        codes = ("200", "202")
    body: Obj = {
        "tags": [tag],
        "description": op.description,
        "operationId": op.operation_id,
        "parameters": [_v3_param(q, "query") for q in op.query],
        "responses": {
            **{c: {"description": "OK", "content": content} for c in codes},
            "401": {"description": "Unauthorized"},
        },
        "x-kubernetes-action": op.action,
        "x-kubernetes-group-version-kind": _gvk(op),
    }
    if op.body is not None:
        types = _PATCH_TYPES if op.method == "patch" else ("*/*",)
        body["requestBody"] = {
            "content": {t: {"schema": {"$ref": schemas + op.body}} for t in types},
            "required": op.method != "delete",
        }
    return body


def _tag(key: str) -> str:
    group_version = key.split("/", 1)[1]
    if "/" not in group_version:
        return f"core_{group_version}"
    group, version = group_version.split("/")
    return (
        f"{group.split('.', 1)[0]}_{version}"
        if group.endswith(".k8s.io")
        else (f"{group}_{version}")
    )


def _v3_document(key: str, paths: list[_Path], names: set[str]) -> Obj:
    tag = _tag(key)
    doc_paths: Obj = {}
    for path in paths:
        item: Obj = {
            "parameters": [
                *[_v3_param(p, "path", required=True) for p in path.params],
                _v3_param("pretty", "query"),
            ]
        }
        for op in path.ops:
            item[op.method] = _v3_op(op, tag)
        doc_paths[path.path] = item
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": _VERSION},
        "paths": doc_paths,
        "components": {
            "schemas": _schemas(names, "#/components/schemas/", True, _gvks(paths)),
            "securitySchemes": {
                "BearerToken": {
                    "type": "apiKey",
                    "description": "Bearer Token authentication",
                    "name": "authorization",
                    "in": "header",
                }
            },
        },
        "security": [{"BearerToken": []}],
    }


_VERSION = f"v{kschema.KUBERNETES_VERSION}.0-kubesim"


@dataclass(frozen=True)
class Document:
    body: bytes  # the JSON encoding
    hash: str  # what ``?hash=`` names in the v3 index


def _encoded(doc: Obj) -> Document:
    body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    return Document(body, hashlib.sha512(body).hexdigest().upper())


_cache: dict[str, Document] = {}


def v3(group_version: str, subresources: Mapping[str, tuple[str, ...]]) -> Document | None:
    """The document of ``group_version`` (``api/v1``, ``apis/batch/v1``); None if not served."""
    with _lock:
        if group_version not in _cache:
            served = _served(subresources)
            if group_version not in served:
                return None
            _cache[group_version] = _encoded(_v3_document(group_version, *served[group_version]))
        return _cache[group_version]


def v3_index(subresources: Mapping[str, tuple[str, ...]]) -> Document:
    """``/openapi/v3``: where each group-version's document is, with its content hash."""
    paths = {}
    for key in sorted(_served(subresources)):
        doc = v3(key, subresources)
        assert doc is not None
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={doc.hash}"}
    return _encoded({"paths": paths})


# --- OpenAPI v2 --------------------------------------------------------------------------------


def _v2_op(op: _Op, tag: str) -> Obj:
    refs = "#/definitions/"
    params: list[Obj] = []
    if op.body is not None:
        params.append(
            {
                "name": "body",
                "in": "body",
                "required": op.method != "delete",
                "schema": {"$ref": refs + op.body},
            }
        )
    for name in op.query:
        kind, description = _QUERY[name]
        params.append(
            {
                "uniqueItems": True,
                "type": kind,
                "description": description,
                "name": name,
                "in": "query",
            }
        )
    ok: Obj = {"description": "OK"}
    ok["schema"] = {"$ref": refs + op.response} if op.response else {"type": "string"}
    body: Obj = {
        "description": op.description,
        "consumes": list(_PATCH_TYPES) if op.method == "patch" else ["*/*"],
        "produces": ["text/plain"] if op.response is None else list(_PRODUCES),
        "schemes": ["https"],
        "tags": [tag],
        "operationId": op.operation_id,
        "parameters": params,
        "responses": {"200": ok, "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": op.action,
        "x-kubernetes-group-version-kind": _gvk(op),
    }
    return body


def v2(subresources: Mapping[str, tuple[str, ...]]) -> Document:
    """``/openapi/v2``: one Swagger 2.0 document of every group-version."""
    with _lock:
        if "v2" in _cache:
            return _cache["v2"]
    served = _served(subresources)
    paths: Obj = {}
    names: set[str] = set()
    all_paths: list[_Path] = []
    for key, (group_paths, group_names) in sorted(served.items()):
        tag = _tag(key)
        names |= group_names
        all_paths.extend(group_paths)
        for path in group_paths:
            item: Obj = {
                "parameters": [
                    *[
                        {
                            "uniqueItems": True,
                            "type": "string",
                            "description": p,
                            "name": p,
                            "in": "path",
                            "required": True,
                        }
                        for p in path.params
                    ],
                    {
                        "uniqueItems": True,
                        "type": "string",
                        "description": _QUERY["pretty"][1],
                        "name": "pretty",
                        "in": "query",
                    },
                ]
            }
            for op in path.ops:
                item[op.method] = _v2_op(op, tag)
            paths[path.path] = item
    doc = {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": _VERSION},
        "paths": paths,
        "definitions": _schemas(names, "#/definitions/", False, _gvks(all_paths)),
        "securityDefinitions": {
            "BearerToken": {
                "description": "Bearer Token authentication",
                "type": "apiKey",
                "name": "authorization",
                "in": "header",
            }
        },
        "security": [{"BearerToken": []}],
    }
    encoded = _encoded(doc)
    with _lock:
        _cache["v2"] = encoded
    return encoded
