"""A real S3 API server for tests (moto's threaded server on 127.0.0.1), with a small
fault-injecting HTTP proxy in front of it.

The proxy is hand-written because it only needs to forward bytes and, on request, answer
the next N matching requests with an S3 error; no proxy library on PyPI is lighter.
"""

from __future__ import annotations

import http.client
import re
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
    """Requests the proxy should fail: the next ``count`` whose method/path match."""

    count: int = 0
    status: int = 503
    code: str = "SlowDown"
    method: str | None = None
    path_regex: str = ".*"
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
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
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


@dataclass
class S3Server:
    """A running moto server and its fault proxy."""

    endpoint: str  # the proxy's URL: clients go through it
    faults: Faults

    def storage_options(self) -> dict[str, Any]:
        """fsspec options for s3fs that reach this server (no retries inside botocore,
        so an injected error reaches k8s_executor's own retry)."""
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}},
            "skip_instance_cache": True,
        }


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """Start moto + proxy on loopback; stop both (no thread, no socket left)."""
    from moto.server import ThreadedMotoServer

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    proxy = _Proxy(("127.0.0.1", 0), _Handler)
    proxy.upstream = moto.get_host_and_port()
    proxy.faults = Faults()
    thread = threading.Thread(target=proxy.serve_forever, name="s3-proxy", daemon=True)
    thread.start()
    try:
        yield S3Server(f"http://127.0.0.1:{proxy.server_address[1]}", proxy.faults)
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join()
        moto.stop()
