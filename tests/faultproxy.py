"""A small fault-injecting HTTP proxy for tests: it forwards every request to one
upstream server on loopback and, on request, answers the next N matching requests with
an error instead (an S3-style XML body, which registries' clients also accept as an
opaque error body).

Hand-written because it only needs to forward bytes and fail some requests on purpose;
no proxy library on PyPI is lighter. Used in front of moto's S3 server and in front of
the OCI registry.
"""

from __future__ import annotations

import http.client
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
    "<Message>injected by the test proxy</Message><RequestId>test</RequestId></Error>"
)


@dataclass
class Faults:
    """Requests the proxy should fail: the next ``count`` whose method/path match, with
    ``status`` (and ``headers``, e.g. ``Retry-After``)."""

    count: int = 0
    status: int = 503
    code: str = "SlowDown"
    method: str | None = None
    path_regex: str = ".*"
    headers: dict[str, str] = field(default_factory=dict)
    seen: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, method: str, path: str) -> tuple[int, str] | None:
        with self.lock:
            if self.count <= 0:
                return None
            if self.method is not None and method != self.method:
                return None
            if not re.search(self.path_regex, path):
                return None
            self.count -= 1
            self.seen += 1
            return self.status, self.code


class _Proxy(ThreadingHTTPServer):
    daemon_threads = True
    upstream: tuple[str, int]
    faults: Faults

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that drops its connection (a worker exiting with a keep-alive
        # connection open) is no error of the proxy's: no traceback on stderr, where
        # the fault matrix checks what the executor says.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Proxy

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        fault = self.server.faults.take(self.command, self.path)
        if fault is not None:
            status, code = fault
            payload = _ERROR_BODY.format(code=code).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            for name, value in self.server.faults.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":  # a HEAD answer has headers only
                self.wfile.write(payload)
            return
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


@contextmanager
def fault_proxy(upstream: tuple[str, int]) -> Iterator[tuple[str, Faults]]:
    """Run a proxy to ``upstream`` (host, port) on 127.0.0.1: yields its URL and the
    :class:`Faults` that steer it; stops it (no thread, no socket left)."""
    proxy = _Proxy(("127.0.0.1", 0), _Handler)
    proxy.upstream = upstream
    proxy.faults = Faults()
    thread = threading.Thread(target=proxy.serve_forever, name="fault-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}", proxy.faults
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join()
