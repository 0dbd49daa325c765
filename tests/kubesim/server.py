"""The HTTP/1.1 face of kubesim: the REST paths, verbs and error bodies of kube-apiserver.

Requests go through the same stages as in the real server's filter chain, in the same order:
authentication (bearer token) → injected faults (delay, failures) → authorization (RBAC deny
rules from :mod:`faults`) → routing → decoding and schema validation → the store.

Watches and ``follow`` logs are sent with chunked transfer encoding, one JSON document per line
for watches. Every handler thread and every open connection is tracked so that
:meth:`ApiServer.stop` leaves nothing behind.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import select
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.kubesim import defaults, eviction, kueue, openapi, podsecurity, protobuf, schema, tables
from tests.kubesim import events as kevents
from tests.kubesim import patch as patching
from tests.kubesim import watch as watching
from tests.kubesim.errors import ApiError
from tests.kubesim.faults import Faults
from tests.kubesim.selectors import Selector
from tests.kubesim.store import RESOURCES, FieldError, ResourceInfo, Store

KUBERNETES_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-kubesim",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-04-23T00:00:00Z",
    "goVersion": "go1.24.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}
USER = "kubesim-admin"
ANONYMOUS = "system:anonymous"
_SUBRESOURCES = {
    "jobs": ("status",),
    "pods": ("status", "log", "eviction"),
    "namespaces": ("status",),
    "resourcequotas": ("status",),
    "clusterqueues": ("status",),
    "localqueues": ("status",),
    "workloads": ("status",),
}
_CORE = re.compile(
    r"^/api/v1/(?:namespaces/(?P<ns>[^/]+)/)?(?P<res>[a-z]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[a-z]+))?)?$"
)
_BATCH = re.compile(
    r"^/apis/batch/v1/(?:namespaces/(?P<ns>[^/]+)/)?(?P<res>[a-z]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[a-z]+))?)?$"
)
_EVENTS_V1 = re.compile(
    r"^/apis/events\.k8s\.io/v1/(?:namespaces/(?P<ns>[^/]+)/)?(?P<res>events)(?:/(?P<name>[^/]+))?$"
)
_KUEUE = re.compile(
    r"^/apis/kueue\.x-k8s\.io/v1beta1/(?:namespaces/(?P<ns>[^/]+)/)?(?P<res>[a-z]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[a-z]+))?)?$"
)
_NAMESPACE_SUB = re.compile(r"^/api/v1/namespaces/(?P<name>[^/]+)/(?P<sub>status|finalize)$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _not_found_path() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", details={})


def _method_not_allowed() -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        details={},
    )


_REVIEW_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")


class _GoStruct:
    """A struct value as Go's ``%#v`` prints it in a field error (only the fields set)."""

    def __init__(self, type_name: str, fields: dict[str, Any]) -> None:
        self.text = (
            type_name
            + "{"
            + ", ".join(f"{k[:1].upper()}{k[1:]}:{json.dumps(v)}" for k, v in fields.items())
            + "}"
        )

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class RequestRecord:
    """One request as received, for tests that check what a client sent."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: bytes


@dataclass(frozen=True)
class Route:
    info: ResourceInfo
    namespace: str | None
    name: str | None
    subresource: str | None


def _discovery_resources(group: str) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = []
    verbs_collection = [
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ]
    for info in RESOURCES.values():
        if info.group != group:
            continue
        entry: dict[str, Any] = {
            "name": info.name,
            "singularName": info.singular,
            "namespaced": info.namespaced,
            "kind": info.kind,
            "verbs": verbs_collection
            if info.name != "namespaces"
            else ["create", "delete", "get", "list", "patch", "update", "watch"],
        }
        if info.short_names:
            entry["shortNames"] = list(info.short_names)
        if info.name == "jobs":
            entry["categories"] = ["all"]
        if info.name == "pods":
            entry["categories"] = ["all"]
        resources.append(entry)
        for sub in _SUBRESOURCES.get(info.name, ()):
            if sub == "eviction":
                resources.append(
                    {
                        "name": "pods/eviction",
                        "singularName": "",
                        "namespaced": True,
                        "group": "policy",
                        "version": "v1",
                        "kind": "Eviction",
                        "verbs": ["create"],
                    }
                )
                continue
            resources.append(
                {
                    "name": f"{info.name}/{sub}",
                    "singularName": "",
                    "namespaced": info.namespaced,
                    "kind": info.kind if sub == "status" else "Pod",
                    "verbs": ["get", "patch", "update"] if sub == "status" else ["get"],
                }
            )
    return resources


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # we join handler threads ourselves, with a bound
    allow_reuse_address = True

    def __init__(self, api: ApiServer, address: tuple[str, int]) -> None:
        self.api = api
        self._conn_lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        self.handler_threads: set[threading.Thread] = set()
        self._counter = 0
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._counter += 1
            thread = threading.Thread(
                target=self._run,
                args=(request, client_address),
                name=f"kubesim-http-{self._counter}",
                daemon=True,
            )
            self.connections.add(request)
            self.handler_threads.add(thread)
        thread.start()

    def _run(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self.connections.discard(request)
                self.handler_threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, OSError)):
            return  # clients hanging up mid-stream is normal for watches and logs
        super().handle_error(request, client_address)


class ApiServer:
    """kube-apiserver on 127.0.0.1: start with :meth:`start`, end with :meth:`stop`."""

    def __init__(
        self,
        store: Store,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str = "kubesim-token",
        kubelet: Callable[[], Any] | None = None,
        bookmark_interval: float = 1.0,
        watch_max_seconds: float = 1800.0,
        record_requests: int = 2000,
    ) -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("kubesim only listens on loopback addresses")
        self.store = store
        self.token = token
        self._kubelet = kubelet or (lambda: None)
        self.bookmark_interval = bookmark_interval
        self.watch_max_seconds = watch_max_seconds
        self.hub = watching.WatchHub(store)
        self.faults = Faults(store.compact, self.hub.drop_all)
        self.requests: deque[RequestRecord] = deque(maxlen=record_requests)
        self._httpd = _Server(self, (host, port))
        address = self._httpd.server_address
        self.host: str = str(address[0])
        self.port: int = int(address[1])
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def open_watches(self) -> int:
        return self.hub.open_count

    @property
    def handler_threads(self) -> set[threading.Thread]:
        """The threads serving a connection right now (one per open connection)."""
        with self._httpd._conn_lock:
            return set(self._httpd.handler_threads)

    def kubelet(self) -> Any:
        return self._kubelet()

    def start(self) -> ApiServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="kubesim-http-accept",
            daemon=True,
        )
        self._thread.start()
        return self

    def begin_stop(self) -> None:
        """Stop accepting, end every watch and cut idle keep-alive connections."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        # Watches end cleanly (terminating chunk) first, as on a graceful apiserver shutdown;
        # then the remaining keep-alive connections are cut.
        self.hub.close_all()
        self.faults.close()
        deadline = time.monotonic() + 5
        while self.hub.open_count and time.monotonic() < deadline:
            with self.store.changed:
                self.store.changed.wait(0.01)
        with self._httpd._conn_lock:
            connections = list(self._httpd.connections)
        for conn in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                conn.shutdown(socket.SHUT_RDWR)

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down and wait for every handler thread (bounded by ``timeout``)."""
        if self._stopped:
            return
        self.begin_stop()
        with self._httpd._conn_lock:
            threads = list(self._httpd.handler_threads)
        for thread in threads:
            thread.join(timeout=timeout)
        self._httpd.server_close()
        self._stopped = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "kubesim"
    sys_version = ""
    user = ANONYMOUS
    _events_v1 = False  # this request is served as events.k8s.io/v1 (see _route)
    # TCP_NODELAY, as the real API server's Go net/http sets on every connection. Without
    # it Nagle's algorithm holds each small response until the client's delayed ACK:
    # ~40 ms on every create/patch/delete, a latency no real cluster has (measured by
    # benchmarks/kube_overhead.py).
    disable_nagle_algorithm = True

    # --- plumbing ----------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read ApiServer.requests instead

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    @property
    def api(self) -> ApiServer:
        return self.server.api

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _send_json(
        self,
        code: int,
        body: Any,
        headers: dict[str, str] | None = None,
        warnings: list[str] | None = None,
    ) -> None:
        data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
        content_type = "application/json"
        # Content negotiation: protobuf when the client prefers it and kubesim has the kind's
        # message (tests/kubesim/protobuf.py); JSON otherwise, which client-go also accepts.
        encoded = (
            protobuf.encode(body)
            if isinstance(body, dict) and protobuf.wants_protobuf(self.headers.get("Accept"))
            else None
        )
        if encoded is not None:
            data, content_type = encoded, protobuf.MEDIA_TYPE
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache, private")
        for warning in warnings or []:
            escaped = warning.replace("\\", "\\\\").replace('"', '\\"')
            self.send_header("Warning", f'299 - "{escaped}"')
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: ApiError) -> None:
        headers = {}
        if error.retry_after is not None:
            headers["Retry-After"] = str(error.retry_after)
        self._send_json(error.code, error.status(), headers)

    def _start_chunked(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _cut_connection(self) -> None:
        """End the connection without a terminating chunk, as a network failure would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _client_alive(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return True
            return bool(self.connection.recv(1, socket.MSG_PEEK) != b"")
        except (OSError, ValueError):
            return False

    # --- request pipeline --------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        parsed = urlsplit(self.path)
        path = parsed.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
        try:
            body = self._read_body() if method in ("POST", "PUT", "PATCH", "DELETE") else b""
        except (OSError, ValueError):
            self.close_connection = True
            return
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        self.api.requests.append(RequestRecord(method, path, query, content_type, body))
        try:
            self._authenticate()
            watch = method == "GET" and query.get("watch") in ("true", "1")
            self.api.faults.hold(method, path, watch=watch)
            failure = self.api.faults.injected_failure(method, path, watch=watch)
            if failure is not None:
                raise failure
            lost = None if watch else self.api.faults.lost_answer(method, path)
            if lost is not None:
                self._route_unanswered(method, path, query, body, content_type)
                if lost.code is None:
                    self._cut_connection()
                    return
                raise lost.error()
            self._route(method, path, query, body, content_type)
        except ApiError as error:
            self._send_error(error)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a kubesim bug: answer like the apiserver's panic filter
            traceback.print_exc()
            self._send_error(ApiError(500, "InternalError", f"Internal error occurred: {exc!r}"))

    def _route_unanswered(
        self, method: str, path: str, query: dict[str, str], body: bytes, content_type: str
    ) -> None:
        """Carry out a request whose answer is lost (``faults.lose_answers``): what it
        would have sent goes nowhere."""
        sent, self.wfile = self.wfile, io.BytesIO()
        try:
            self._route(method, path, query, body, content_type)
        except ApiError:
            pass  # its refusal is lost too
        finally:
            self.wfile = sent

    def _authenticate(self) -> None:
        # client-go (kubectl) never sends a bearer token over plain http, so requests without
        # credentials are served as system:anonymous, as with --anonymous-auth=true and RBAC
        # granting it access. A token that is present but wrong is a 401, as upstream.
        header = self.headers.get("Authorization")
        if header is None:
            self.user = ANONYMOUS
        elif header == f"Bearer {self.api.token}":
            self.user = USER
        else:
            raise ApiError(401, "Unauthorized", "Unauthorized")

    def _route(
        self, method: str, path: str, query: dict[str, str], body: bytes, content_type: str
    ) -> None:
        if path in ("/openapi/v2", "/openapi/v3") or path.startswith("/openapi/v3/"):
            if method != "GET":
                raise _method_not_allowed()
            self._openapi(path, query)
            return
        discovery = self._discovery(path)
        if discovery is not None:
            if method != "GET":
                raise _method_not_allowed()
            self._send_json(200, discovery)
            return
        if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
            if method != "POST":
                raise _method_not_allowed()
            self._access_review(_decode_body(body, content_type))
            return
        route = self._match(path)
        verb = self._verb(method, route, query)
        self._authorize(verb, route)
        self._events_v1 = route.info is kevents.EVENTS_V1
        if not self._events_v1:
            self._serve(method, verb, route, query, body, content_type)
            return
        # events.k8s.io/v1: the stored core Events seen through the other group (events.py).
        try:
            if query.get("fieldSelector"):
                selector = kevents.v1_field_selector(query["fieldSelector"])
                query = {**query, "fieldSelector": selector or ""}
            self._serve(method, verb, route, query, body, content_type)
        except ApiError as exc:
            raise kevents.v1_error(exc) from None

    def _discovery(self, path: str) -> Any:
        if path in ("/healthz", "/readyz", "/livez"):
            return "ok"
        if path == "/version":
            return KUBERNETES_VERSION
        if path == "/api":
            return {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.api.host}:{self.api.port}"}
                ],
            }
        groups = {
            "batch": _group("batch"),
            "authorization.k8s.io": _group("authorization.k8s.io"),
            "events.k8s.io": _group("events.k8s.io"),
            kueue.GROUP: _group(kueue.GROUP, kueue.VERSION),
        }
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": list(groups.values())}
        if path.startswith("/apis/") and path.count("/") == 2 and path[6:] in groups:
            return {"kind": "APIGroup", "apiVersion": "v1", **groups[path[6:]]}
        if path == "/api/v1":
            return {
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": _discovery_resources(""),
            }
        if path == "/apis/batch/v1":
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": "batch/v1",
                "resources": _discovery_resources("batch"),
            }
        if path == f"/apis/{kueue.GROUP}/{kueue.VERSION}":
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{kueue.GROUP}/{kueue.VERSION}",
                "resources": _discovery_resources(kueue.GROUP),
            }
        if path == "/apis/events.k8s.io/v1":
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": "events.k8s.io/v1",
                "resources": kevents.discovery_v1(),
            }
        if path == "/apis/authorization.k8s.io/v1":
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": "authorization.k8s.io/v1",
                "resources": [
                    {
                        "name": "selfsubjectaccessreviews",
                        "singularName": "selfsubjectaccessreview",
                        "namespaced": False,
                        "kind": "SelfSubjectAccessReview",
                        "verbs": ["create"],
                    }
                ],
            }
        return None

    def _match(self, path: str) -> Route:
        if match := _NAMESPACE_SUB.match(path):
            if match["sub"] != "status":
                raise _not_found_path()
            return Route(RESOURCES["namespaces"], None, match["name"], "status")
        if match := _EVENTS_V1.match(path):
            return Route(kevents.EVENTS_V1, match["ns"], match["name"], None)
        for pattern, group in ((_CORE, ""), (_BATCH, "batch"), (_KUEUE, kueue.GROUP)):
            match = pattern.match(path)
            if match is None:
                continue
            info = RESOURCES.get(match["res"])
            if info is None or info.group != group:
                raise _not_found_path()
            sub = match["sub"]
            if sub is not None and sub not in _SUBRESOURCES.get(info.name, ()):
                raise _not_found_path()
            namespace = match["ns"]
            if not info.namespaced and namespace is not None:
                raise _not_found_path()
            return Route(info, namespace, match["name"], sub)
        raise _not_found_path()

    @staticmethod
    def _verb(method: str, route: Route, query: dict[str, str]) -> str:
        named = route.name is not None
        if route.subresource == "eviction":
            if method != "POST":
                raise _method_not_allowed()
            return "create"
        if method == "GET":
            if named:
                return "get"
            return "watch" if query.get("watch") in ("true", "1") else "list"
        if route.subresource == "log":
            raise _method_not_allowed()
        if method == "POST":
            if named:
                raise _method_not_allowed()
            if route.info.namespaced and route.namespace is None:
                raise _method_not_allowed()
            return "create"
        if not named:
            if method == "DELETE" and (route.namespace is not None or not route.info.namespaced):
                return "deletecollection"
            raise _method_not_allowed()
        if method == "DELETE" and route.subresource is not None:
            raise _method_not_allowed()
        return {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]

    def _authorize(self, verb: str, route: Route) -> None:
        if not self._refused(verb, route.info, route.subresource, route.namespace):
            return
        resource = route.info.name + (f"/{route.subresource}" if route.subresource else "")
        info = route.info
        subject = f'{info.qualified} "{route.name}"' if route.name else info.qualified
        where = (
            f'in the namespace "{route.namespace}"' if route.namespace else "at the cluster scope"
        )
        details: dict[str, Any] = {}
        if route.name:
            details["name"] = route.name
        if info.group:
            details["group"] = info.group
        details["kind"] = info.name
        raise ApiError(
            403,
            "Forbidden",
            f'{subject} is forbidden: User "{self.user}" cannot {verb} resource "{resource}" '
            f"in API "
            f'group "{info.group}" {where}',
            details=details,
        )

    def _refused(
        self, verb: str, info: ResourceInfo, subresource: str | None, namespace: str | None
    ) -> bool:
        """The authorization decision, one for requests and access reviews alike: kubesim's
        users may do anything but what ``faults.deny`` took away (RBAC-style: a request
        across all namespaces needs the grant in every one of them)."""
        resource = info.name + (f"/{subresource}" if subresource else "")
        return self.api.faults.is_denied(
            verb, resource, namespace, all_namespaces=info.namespaced and namespace is None
        )

    def _openapi(self, path: str, query: dict[str, str]) -> None:
        """The API documents (:mod:`tests.kubesim.openapi`), in JSON only: a client that
        accepts nothing else (kubectl's protobuf-only ``/openapi/v2`` fetch) gets 406, as from
        kube-openapi for a format it does not produce. A ``?hash=`` that is not the current one
        is redirected to the current URL, as kube-apiserver does."""
        if path == "/openapi/v2":
            doc = openapi.v2(_SUBRESOURCES)
        elif path == "/openapi/v3":
            doc = openapi.v3_index(_SUBRESOURCES)
        else:
            found = openapi.v3(path[len("/openapi/v3/") :], _SUBRESOURCES)
            if found is None:
                raise _not_found_path()
            doc = found
            if query.get("hash") not in (None, doc.hash):
                self.send_response(301)
                self.send_header("Location", f"{path}?hash={doc.hash}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        if not protobuf.acceptable(self.headers.get("Accept"), "application/json"):
            self.send_response(406)
            self.send_header("Vary", "Accept")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        immutable = query.get("hash") == doc.hash
        self.send_header("Cache-Control", "public, immutable" if immutable else "no-cache, private")
        self.send_header("Etag", f'"{doc.hash}"')
        self.send_header("Vary", "Accept")
        self.send_header("Content-Length", str(len(doc.body)))
        self.end_headers()
        self.wfile.write(doc.body)

    def _access_review(self, review: dict[str, Any]) -> None:
        """``POST selfsubjectaccessreviews``: would *this* request be allowed?

        As kube-apiserver: the review is validated (exactly one of ``resourceAttributes`` /
        ``nonResourceAttributes``, empty ``metadata``; 422 otherwise), then answered ``201``
        with the spec echoed and ``status.allowed`` from the same decision ``_authorize``
        makes. A refusal is RBAC's "no opinion": ``allowed: false`` and nothing else (RBAC
        has no deny rules, so never ``denied: true``); an allowed answer carries no reason,
        as for a member of ``system:masters``. Wildcards are answered as RBAC would for an
        admin less the denials: ``verb: "*"`` (or ``resource: "*"``) is allowed only when
        no denial touches any verb of that resource (any resource of that group).
        """
        group = "authorization.k8s.io"
        if self.api.faults.is_denied("create", "selfsubjectaccessreviews", None):
            raise ApiError(
                403,
                "Forbidden",
                f"selfsubjectaccessreviews.{group} is forbidden: User "
                f'"{self.user}" cannot create resource "selfsubjectaccessreviews" in API group '
                f'"{group}" at the cluster scope',
                details={"group": group, "kind": "selfsubjectaccessreviews"},
            )
        api_version, kind = review.get("apiVersion"), review.get("kind")
        if api_version and api_version != f"{group}/v1":
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({group}/v1)",
            )
        if kind and kind != "SelfSubjectAccessReview":
            raise ApiError(
                400,
                "BadRequest",
                f"the kind in the data ({kind}) does not match the expected kind "
                "(SelfSubjectAccessReview)",
            )
        spec = review.get("spec") or {}
        if not isinstance(spec, dict):
            raise ApiError(400, "BadRequest", "spec must be an object")
        resource_attrs = spec.get("resourceAttributes")
        non_resource_attrs = spec.get("nonResourceAttributes")
        errors: list[FieldError] = []
        if resource_attrs is not None and non_resource_attrs is not None:
            errors.append(
                FieldError(
                    "spec.nonResourceAttributes",
                    "Invalid",
                    "cannot be specified in combination with resourceAttributes",
                    value=_GoStruct("authorization.NonResourceAttributes", non_resource_attrs),
                )
            )
        if resource_attrs is None and non_resource_attrs is None:
            errors.append(
                FieldError(
                    "spec.resourceAttributes",
                    "Invalid",
                    "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                    value="null",
                )
            )
        meta = review.get("metadata") or {}
        set_meta = {
            k: v
            for k, v in (meta.items() if isinstance(meta, dict) else ())
            if v not in (None, "", {}, []) and k != "managedFields"
        }
        if set_meta:
            errors.append(
                FieldError(
                    "metadata",
                    "Invalid",
                    "must be empty",
                    value=_GoStruct("v1.ObjectMeta", set_meta),
                )
            )
        if errors:
            texts = [str(e) for e in errors]
            raise ApiError(
                422,
                "Invalid",
                f'SelfSubjectAccessReview.{group} "" is invalid: '
                + (texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"),
                details={
                    "group": group,
                    "kind": "SelfSubjectAccessReview",
                    "causes": [e.cause() for e in errors],
                },
            )
        allowed = resource_attrs is None or not self._review_refused(resource_attrs)
        review["apiVersion"] = f"{group}/v1"
        review["kind"] = "SelfSubjectAccessReview"
        review["metadata"] = {"creationTimestamp": None}
        review["status"] = {"allowed": allowed}
        self._send_json(201, review)

    def _review_refused(self, attrs: dict[str, Any]) -> bool:
        """Whether the request ``attrs`` describes would be refused (see _access_review)."""
        verb = str(attrs.get("verb") or "")
        group = str(attrs.get("group") or "")
        resource = str(attrs.get("resource") or "")
        subresource = attrs.get("subresource") or None
        namespace = attrs.get("namespace") or None
        verbs = _REVIEW_VERBS if verb == "*" else (verb,)
        # Denials name resources kubesim serves; a resource of another group (or one it does
        # not serve) is granted by the admin's wildcard rules.
        infos = [
            info
            for info in RESOURCES.values()
            if (resource in ("*", info.name)) and group in ("*", info.group)
        ]
        for info in infos:
            subresources: tuple[str | None, ...] = (subresource,)
            if resource == "*":
                subresources = (None, *_SUBRESOURCES.get(info.name, ()))
            for v in verbs:
                for sub in subresources:
                    if self._refused(v, info, sub, namespace):
                        return True
        return False

    # --- verbs -------------------------------------------------------------------------------

    def _serve(
        self,
        method: str,
        verb: str,
        route: Route,
        query: dict[str, str],
        body: bytes,
        content_type: str,
    ) -> None:
        store = self.api.store
        info = route.info
        if verb == "list":
            self._list(route, query)
        elif verb == "watch":
            self._watch(route, query)
        elif verb == "get":
            if route.subresource == "log":
                self._logs(route, query)
                return
            obj = store.get(info.name, route.namespace, route.name or "")
            self._send_object(200, obj, query)
        elif verb == "create" and route.subresource == "eviction":
            self._evict(route, query, body, content_type)
        elif verb == "create":
            self._create(route, query, body, content_type)
        elif verb == "update":
            self._update(route, query, body, content_type)
        elif verb == "patch":
            self._patch(route, query, body, content_type)
        elif verb == "delete":
            self._delete(route, query, body)
        elif verb == "deletecollection":
            self._delete_collection(route, query, body)
        else:  # pragma: no cover - _verb only returns the verbs above
            raise _method_not_allowed()

    def _wants_table(self) -> bool:
        return "as=table" in (self.headers.get("Accept") or "").lower().replace(" ", "")

    def _send_object(
        self,
        code: int,
        obj: dict[str, Any],
        query: dict[str, str],
        warnings: list[str] | None = None,
    ) -> None:
        info = RESOURCES.get(_resource_of(obj))
        if self._wants_table() and info is not None:
            table = tables.to_table(
                info.name,
                [obj],
                {"resourceVersion": obj["metadata"].get("resourceVersion", "")},
                self.api.store.now(),
            )
            self._send_json(code, table)
            return
        if self._events_v1 and info is not None and info.name == "events":
            obj = kevents.core_to_v1(obj)
        self._send_json(code, obj, warnings=warnings)

    def _list(self, route: Route, query: dict[str, str]) -> None:
        store = self.api.store
        info = route.info
        items, rv = store.list(
            info.name,
            route.namespace,
            label_selector=query.get("labelSelector"),
            field_selector=query.get("fieldSelector"),
        )
        meta: dict[str, Any] = {"resourceVersion": rv}
        limit = int(query.get("limit") or 0)
        token = query.get("continue")
        if token:
            start_key, token_rv = _decode_continue(token)
            try:
                store.check_watchable(token_rv)
            except ApiError:
                raise ApiError(
                    410,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter.",
                ) from None
            items = [o for o in items if _sort_key(o) > start_key]
        if limit > 0 and len(items) > limit:
            meta["continue"] = _encode_continue(_sort_key(items[limit - 1]), int(rv))
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        if self._wants_table():
            self._send_json(200, tables.to_table(info.name, items, meta, store.now()))
            return
        if self._events_v1:
            items = [kevents.core_to_v1(o) for o in items]
        self._send_json(
            200,
            {
                "kind": f"{info.kind}List",
                "apiVersion": info.api_version,
                "metadata": meta,
                "items": items,
            },
        )

    def _watch(self, route: Route, query: dict[str, str]) -> None:
        _check_watch_list(query)
        info = route.info
        selector = Selector.parse(info.name, query.get("labelSelector"), query.get("fieldSelector"))
        requested = watching.parse_resource_version(query.get("resourceVersion"))
        injected = self.api.faults.injected_watch_error(
            self.path.split("?")[0], requested, self.api.store.current_rv
        )
        if injected is not None:
            # As the watch cache's newErrWatcher: 200, one ERROR event, the end of the stream.
            self._start_chunked("application/json")
            event = {"type": "ERROR", "object": injected.status()}
            self._chunk(json.dumps(event, separators=(",", ":")).encode() + b"\n")
            self._end_chunked()
            return
        timeout = query.get("timeoutSeconds")
        request = watching.WatchRequest(
            resource=info.name,
            namespace=route.namespace,
            selector=selector,
            resource_version=query.get("resourceVersion"),
            bookmarks=query.get("allowWatchBookmarks") in ("true", "1"),
            timeout_seconds=float(timeout) if timeout else None,
        )
        events: Generator[dict[str, Any], None, None] = watching.stream(
            self.api.store,
            self.api.hub,
            request,
            bookmark_interval=self.api.bookmark_interval,
            max_seconds=self.api.watch_max_seconds,
            alive=self._client_alive,
        )
        self._start_chunked("application/json")
        try:
            for event in events:
                sent = kevents.watch_event_to_v1(event) if self._events_v1 else event
                self._chunk(json.dumps(sent, separators=(",", ":")).encode() + b"\n")
        except watching.WatchDropped:
            self._cut_connection()
            return
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
            return
        finally:
            events.close()
        self._end_chunked()

    def _logs(self, route: Route, query: dict[str, str]) -> None:
        namespace = route.namespace or "default"
        name = route.name or ""
        self.api.store.get("pods", namespace, name)  # 404 before anything else
        errors: list[FieldError] = []
        ints: dict[str, int | None] = {}
        for key, minimum in (("tailLines", 0), ("sinceSeconds", 1), ("limitBytes", 1)):
            raw = query.get(key)
            if raw is None or raw == "":
                ints[key] = None
                continue
            try:
                ints[key] = int(raw)
            except ValueError:
                raise ApiError(400, "BadRequest", f'{key}: Invalid value: "{raw}"') from None
            value = ints[key]
            assert value is not None
            if value < minimum:
                errors.append(
                    FieldError(
                        key,
                        "Invalid",
                        f"must be greater than or equal to {minimum}"
                        if minimum == 0
                        else "must be greater than 0",
                        value=value,
                    )
                )
        if query.get("sinceSeconds") and query.get("sinceTime"):
            errors.append(
                FieldError(
                    "sinceTime",
                    "Forbidden",
                    "at most one of `sinceTime` or `sinceSeconds` may be specified",
                )
            )
        if errors:
            raise ApiError(
                422,
                "Invalid",
                f'PodLogOptions "{name}" is invalid: '
                + (str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"),
                details={
                    "name": name,
                    "kind": "PodLogOptions",
                    "causes": [e.cause() for e in errors],
                },
            )
        kubelet = self.api.kubelet()
        if kubelet is None:
            raise ApiError(400, "BadRequest", f"pod {name} does not have a host assigned")
        follow = query.get("follow") in ("true", "1")
        chunks: Iterator[bytes] = iter(
            kubelet.read_log(
                namespace,
                name,
                container=query.get("container") or None,
                follow=follow,
                tail_lines=ints["tailLines"],
                since_seconds=ints["sinceSeconds"],
                timestamps=query.get("timestamps") in ("true", "1"),
                limit_bytes=ints["limitBytes"],
                previous=query.get("previous") in ("true", "1"),
            )
        )
        try:
            # Pull the first chunk before answering, so an ApiError still becomes a Status body.
            first = next(chunks, None)
            if not follow:
                data = (first or b"") + b"".join(chunks)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self._start_chunked("text/plain")
            try:
                if first:
                    self._chunk(first)
                for chunk in chunks:
                    self._chunk(chunk)
            except (BrokenPipeError, ConnectionResetError, OSError):
                self.close_connection = True
                return
            self._end_chunked()
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _decode_object(self, route: Route, body: bytes, content_type: str) -> dict[str, Any]:
        obj: dict[str, Any]
        if content_type == protobuf.MEDIA_TYPE:
            obj = protobuf.decode(body)
        elif content_type and content_type not in ("application/json", "*/*"):
            if content_type in ("application/yaml", "application/x-yaml"):
                import yaml

                try:
                    loaded = yaml.safe_load(body)
                except yaml.YAMLError as exc:
                    raise ApiError(400, "BadRequest", f"error decoding YAML: {exc}") from None
                if not isinstance(loaded, dict):
                    raise ApiError(400, "BadRequest", "the body must be an object")
                obj = loaded
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - accepted media types "
                    "include: application/json, application/yaml, "
                    "application/vnd.kubernetes.protobuf",
                )
        else:
            obj = _decode(body)
        info = route.info
        api_version = obj.get("apiVersion")
        kind = obj.get("kind")
        if (api_version and api_version != info.api_version) or (kind and kind != info.kind):
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({api_version}) does not match the expected API "
                f"version ({info.api_version})"
                if api_version != info.api_version
                else f"the kind in the data ({kind}) does not match the expected kind "
                f"({info.kind})",
            )
        meta = obj.get("metadata") or {}
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if info.namespaced and meta.get("namespace") and meta["namespace"] != route.namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the "
                "request",
            )
        return obj

    def _validated(
        self, route: Route, obj: dict[str, Any], query: dict[str, str]
    ) -> tuple[dict[str, Any], list[str]]:
        name = (obj.get("metadata") or {}).get("name") or route.name or ""
        if self._events_v1:
            obj = kevents.v1_to_core(obj)
        # As the real server: decoding defaults the versioned object before it is validated.
        defaults.default_decoded(route.info.name, obj)
        if route.info.group == kueue.GROUP:
            # Custom resources: Kueue's CRD schemas are not bundled; kueue.py validates.
            return kueue.validate(route.info.name, name, obj), []
        outcome = schema.validate(
            route.info.name, name, obj, field_validation=query.get("fieldValidation")
        )
        warnings = list(outcome.warnings)
        if route.info.name == "events":
            kevents.validate(
                kevents.normalize_core(outcome.obj), v1=self._events_v1, namespace=route.namespace
            )
        if route.info.name == "jobs" and name and not _DNS_LABEL.match(name):
            # Job validation warns (not rejects) when the name is not a DNS label.
            warnings.append(
                "metadata.name: this is used in Pod names and hostnames, which can result in "
                "surprising behavior; a DNS label is recommended: [must be no more than 63 "
                "characters]"
                if len(name) > 63
                else "metadata.name: this is used in Pod names and hostnames, which can result "
                "in surprising behavior; a DNS label is recommended"
            )
        return outcome.obj, warnings

    def _create(self, route: Route, query: dict[str, str], body: bytes, content_type: str) -> None:
        obj = self._decode_object(route, body, content_type)
        obj, warnings = self._validated(route, obj, query)
        with podsecurity.collect_warnings() as admission_warnings:
            created = self.api.store.create(
                route.info.name, route.namespace, obj, dry_run=_dry_run(query)
            )
        self._send_object(201, created, query, warnings + admission_warnings)

    def _evict(self, route: Route, query: dict[str, str], body: bytes, content_type: str) -> None:
        """``POST pods/NAME/eviction``: see :mod:`tests.kubesim.eviction`."""
        if content_type and content_type not in ("application/json", "*/*"):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types "
                "include: application/json, application/yaml, "
                "application/vnd.kubernetes.protobuf",
            )
        obj = _decode(body)
        api_version = obj.get("apiVersion")
        if api_version and api_version not in ("policy/v1", "policy/v1beta1"):
            raise ApiError(
                400,
                "BadRequest",
                f"the API version in the data ({api_version}) does not match the expected API "
                "version (policy/v1)",
            )
        kind = obj.get("kind")
        if kind and kind != "Eviction":
            raise ApiError(400, "BadRequest", f"not a Eviction object: *core.{kind}")
        meta = obj.get("metadata") or {}
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if meta.get("namespace") and meta["namespace"] != route.namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the "
                "request",
            )
        if meta.get("name", "") != route.name:
            raise ApiError(400, "BadRequest", "name in URL does not match name in Eviction object")
        options = obj.get("deleteOptions") or {}
        if not isinstance(options, dict):
            raise ApiError(400, "BadRequest", "deleteOptions must be an object")
        answer = eviction.evict(
            self.api.store,
            route.namespace or "default",
            route.name or "",
            options,
            dry_run=_dry_run(query),
        )
        self._send_json(201, answer)

    def _update(self, route: Route, query: dict[str, str], body: bytes, content_type: str) -> None:
        obj = self._decode_object(route, body, content_type)
        body_name = (obj.get("metadata") or {}).get("name")
        if body_name != route.name:
            raise ApiError(
                400,
                "BadRequest",
                f"the name of the object ({body_name}) does not match the name on the URL "
                f"({route.name})",
            )
        obj, warnings = self._validated(route, obj, query)
        updated = self.api.store.update(
            route.info.name,
            route.namespace,
            route.name or "",
            obj,
            subresource=route.subresource,
            dry_run=_dry_run(query),
        )
        self._send_object(200, updated, query, warnings)

    def _patch(self, route: Route, query: dict[str, str], body: bytes, content_type: str) -> None:
        if content_type not in patching.PATCH_TYPES:
            raise patching.unsupported_media_type(content_type)
        store = self.api.store
        info = route.info
        name = route.name or ""
        if content_type == patching.APPLY_PATCH:
            if not query.get("fieldManager"):
                raise ApiError(
                    400,
                    "BadRequest",
                    "PATCH /"
                    + self.path.split("?")[0].lstrip("/")
                    + ": fieldManager is required for apply requests",
                )
            try:
                store.get(info.name, route.namespace, name)
            except ApiError as exc:
                if exc.code != 404:
                    raise
                # Server-side apply creates a missing object.
                applied = patching.parse_apply_body(body)
                applied.setdefault("metadata", {})["name"] = name
                obj, warnings = self._validated(route, applied, query)
                created = store.create(info.name, route.namespace, obj, dry_run=_dry_run(query))
                self._send_object(201, created, query, warnings)
                return
        # Retry on conflicts the patch itself did not ask for (the patch handler does the same).
        for _ in range(5):
            current = store.get(info.name, route.namespace, name)
            patched = patching.apply_patch(
                content_type, kevents.core_to_v1(current) if self._events_v1 else current, body
            )
            meta = patched.setdefault("metadata", {})
            if not isinstance(meta, dict):
                raise ApiError(422, "Invalid", "metadata must be an object")
            wanted_rv = meta.get("resourceVersion")
            if patched.get("metadata", {}).get("name") != name:
                raise ApiError(
                    400,
                    "BadRequest",
                    f"the name of the object ({meta.get('name')}) does not match the name on the "
                    f"URL ({name})",
                )
            obj, warnings = self._validated(route, patched, query)
            if wanted_rv is None:
                obj.setdefault("metadata", {})["resourceVersion"] = current["metadata"][
                    "resourceVersion"
                ]
            try:
                updated = store.update(
                    info.name,
                    route.namespace,
                    name,
                    obj,
                    subresource=route.subresource,
                    dry_run=_dry_run(query),
                )
            except ApiError as exc:
                if exc.code == 409 and exc.reason == "Conflict" and not _body_sets_rv(body):
                    continue  # a concurrent writer got in between: re-read and re-apply
                raise
            self._send_object(200, updated, query, warnings)
            return
        raise ApiError(409, "Conflict", "too many conflicts while patching")

    def _delete_options(self, query: dict[str, str], body: bytes) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if "propagationPolicy" in query:
            options["propagationPolicy"] = query["propagationPolicy"]
        if query.get("gracePeriodSeconds"):
            options["gracePeriodSeconds"] = int(query["gracePeriodSeconds"])
        if query.get("orphanDependents"):
            options["orphanDependents"] = query["orphanDependents"] == "true"
        if query.get("dryRun"):
            options["dryRun"] = [query["dryRun"]]
        if body.strip():
            decoded = _decode(body)
            options.update(
                {
                    k: v
                    for k, v in decoded.items()
                    if v is not None and k not in ("kind", "apiVersion")
                }
            )
        if "orphanDependents" in options:
            if options.get("propagationPolicy"):
                raise ApiError(
                    422,
                    "Invalid",
                    'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Invalid value: '
                    f'"{options["propagationPolicy"]}": orphanDependents and deletionPropagation '
                    "cannot be both set",
                )
            options["propagationPolicy"] = (
                "Orphan" if options.pop("orphanDependents") else "Background"
            )
        return options

    def _delete(self, route: Route, query: dict[str, str], body: bytes) -> None:
        options = self._delete_options(query, body)
        store = self.api.store
        if options.get("dryRun"):
            obj = store.get(route.info.name, route.namespace, route.name or "")
            self._send_json(200, kevents.core_to_v1(obj) if self._events_v1 else obj)
            return
        result, removed = store.delete_detailed(
            route.info.name,
            route.namespace,
            route.name or "",
            grace_period_seconds=options.get("gracePeriodSeconds"),
            propagation_policy=options.get("propagationPolicy"),
            preconditions=options.get("preconditions"),
        )
        if self._events_v1 and result.get("kind") == "Status":
            result["details"] = {"group": kevents.EVENTS_V1.group, **result.get("details", {})}
        self._send_json(200 if removed else 202, result)

    def _delete_collection(self, route: Route, query: dict[str, str], body: bytes) -> None:
        options = self._delete_options(query, body)
        store = self.api.store
        info = route.info
        items, _ = store.list(
            info.name,
            route.namespace,
            label_selector=query.get("labelSelector"),
            field_selector=query.get("fieldSelector"),
        )
        deleted = []
        for item in items:
            try:
                result, _ = store.delete_detailed(
                    info.name,
                    item["metadata"].get("namespace"),
                    item["metadata"]["name"],
                    grace_period_seconds=options.get("gracePeriodSeconds"),
                    propagation_policy=options.get("propagationPolicy"),
                )
            except ApiError as exc:
                if exc.code == 404:
                    continue
                raise
            deleted.append(item if result.get("kind") == "Status" else result)
        if self._events_v1:
            deleted = [kevents.core_to_v1(o) for o in deleted]
        rv = store.resource_version
        self._send_json(
            200,
            {
                "kind": f"{info.kind}List",
                "apiVersion": info.api_version,
                "metadata": {"resourceVersion": rv},
                "items": deleted,
            },
        )


def _group(name: str, version: str = "v1") -> dict[str, Any]:
    return {
        "name": name,
        "versions": [{"groupVersion": f"{name}/{version}", "version": version}],
        "preferredVersion": {"groupVersion": f"{name}/{version}", "version": version},
    }


def _check_watch_list(query: dict[str, str]) -> None:
    """Streaming lists (``sendInitialEvents``, KEP-3157) are refused as by a 1.33 server,
    whose WatchList gate is off by default: 422 on the ListOptions, so that clients that try
    them first (kubectl >= 1.35's informers: ``wait``, ``delete --wait``) fall back to
    list + watch, as they do against such a cluster."""
    if "sendInitialEvents" not in query:
        return
    errors = []
    if query.get("resourceVersionMatch") != "NotOlderThan":
        errors.append(
            FieldError(
                "resourceVersionMatch",
                "Forbidden",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )
        )
    errors.append(
        FieldError(
            "sendInitialEvents",
            "Forbidden",
            "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
        )
    )
    texts = [str(e) for e in errors]
    raise ApiError(
        422,
        "Invalid",
        'ListOptions.meta.k8s.io "" is invalid: '
        + (texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"),
        details={
            "group": "meta.k8s.io",
            "kind": "ListOptions",
            "causes": [e.cause() for e in errors],
        },
    )


def _decode_body(body: bytes, content_type: str) -> dict[str, Any]:
    """A JSON or (for the kinds :mod:`protobuf` knows) protobuf request body."""
    if content_type == protobuf.MEDIA_TYPE:
        return protobuf.decode(body)
    return _decode(body)


def _decode(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body or b"{}")
    except ValueError as exc:
        raise ApiError(
            400, "BadRequest", f"couldn't get version/kind; json parse error: {exc}"
        ) from None
    if not isinstance(obj, dict):
        raise ApiError(
            400,
            "BadRequest",
            "couldn't get version/kind; json parse error: json: cannot unmarshal "
            f"{type(obj).__name__} into Go value of type struct",
        )
    return obj


def _dry_run(query: dict[str, str]) -> bool:
    value = query.get("dryRun")
    if value is None:
        return False
    if value != "All":
        # Upstream rejects other values while decoding the options (not per resource).
        raise ApiError(
            400, "BadRequest", f'dryRun: Unsupported value: "{value}": supported values: "All"'
        )
    return True


def _body_sets_rv(body: bytes) -> bool:
    """Whether the patch itself pins ``metadata.resourceVersion`` (then conflicts are real)."""
    try:
        doc = json.loads(body or b"null")
    except ValueError:
        return False
    if isinstance(doc, dict):
        return bool((doc.get("metadata") or {}).get("resourceVersion"))
    if isinstance(doc, list):
        return any(
            isinstance(op, dict) and str(op.get("path", "")).startswith("/metadata/resourceVersion")
            for op in doc
        )
    return False


def _resource_of(obj: dict[str, Any]) -> str:
    for info in RESOURCES.values():
        if info.kind == obj.get("kind") and info.api_version == obj.get("apiVersion"):
            return info.name
    return ""


def _sort_key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


def _encode_continue(key: str, rv: int) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": key}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        return str(data["start"]), int(data["rv"])
    except (ValueError, KeyError, TypeError):
        raise ApiError(
            400, "BadRequest", "continue key is not valid: illegal base64 data at input byte 0"
        ) from None
