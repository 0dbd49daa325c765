"""The OCI distribution client against a real registry (Debian's docker-registry)."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from k8s_executor.image import RegistryAuthError, RegistryError, RegistryUnreachableError
from k8s_executor.image._registry import (
    OCI_MANIFEST,
    Credentials,
    Registry,
    find_credentials,
    is_loopback,
    split_reference,
)
from tests.faultproxy import Faults, fault_proxy
from tests.image.conftest import AuthRegistry, RegistryServer, write_auth_file

pytestmark = pytest.mark.podman


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def push_small_image(registry: Registry, repo: str, tag: str) -> str:
    layer = b"not really a tar, registries do not look"
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]}}).encode()
    for blob in (layer, config):
        assert not registry.blob_exists(repo, digest_of(blob))
        registry.upload_blob(repo, digest_of(blob), len(blob), lambda b=blob: b)  # type: ignore[misc]
        assert registry.blob_exists(repo, digest_of(blob))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest_of(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest_of(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    return registry.put_manifest(repo, tag, manifest, OCI_MANIFEST)


def test_blobs_and_manifests_round_trip(oci_registry: RegistryServer) -> None:
    with Registry(oci_registry.host) as registry:
        assert registry.manifest_digest("rt/app", "v1") is None
        digest = push_small_image(registry, "rt/app", "v1")
        assert registry.manifest_digest("rt/app", "v1") == digest
        manifest, media_type, got = registry.get_manifest("rt/app", digest)
        assert (media_type, got) == (OCI_MANIFEST, digest)
        config = registry.get_json_blob("rt/app", manifest["config"]["digest"])
        assert config["rootfs"]["type"] == "layers"


def test_login_from_the_podman_auth_file(
    auth_registry: AuthRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = auth_registry.server.host
    auth = write_auth_file(tmp_path / "auth.json", host, "k8sx", "s3cret")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    with Registry(host) as registry:
        digest = push_small_image(registry, "private/app", "v1")
        assert registry.manifest_digest("private/app", "v1") == digest


def test_wrong_password_is_refused_with_the_fix(
    auth_registry: AuthRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = auth_registry.server.host
    auth = write_auth_file(tmp_path / "auth.json", host, "k8sx", "wrong")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth))
    with Registry(host) as registry, pytest.raises(RegistryAuthError) as info:
        registry.manifest_digest("private/app", "v1")
    message = str(info.value)
    assert "stored credentials of 'k8sx'" in message
    assert f"podman login {host}" in message
    assert "wrong" not in message


def test_no_credentials_is_refused_with_the_fix(
    auth_registry: AuthRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "missing.json"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    host = auth_registry.server.host
    with Registry(host) as registry, pytest.raises(RegistryAuthError, match="podman login"):
        registry.blob_exists("private/app", "sha256:" + "0" * 64)


def test_unreachable_registry_is_explained() -> None:
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{s.getsockname()[1]}"
        with Registry(host, timeout=5) as registry, pytest.raises(RegistryUnreachableError) as info:
            registry.manifest_digest("x/y", "latest")
    assert f"http://{host}" in str(info.value)
    assert "K8S_EXECUTOR_REGISTRY" in str(info.value)


class _TokenRegistry(BaseHTTPRequestHandler):
    """Just enough of a registry with token auth to exercise the Bearer flow (Debian's
    registry supports it only with a JWT-signing token service; this stands in)."""

    token_requests: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/token"):
            ok = self.headers.get("Authorization") == "Basic azhzeDpzM2NyZXQ="  # k8sx:s3cret
            self.token_requests.append(self.path)
            body = json.dumps({"token": "good-token"} if ok else {}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.do_HEAD()

    def do_HEAD(self) -> None:
        if self.headers.get("Authorization") != "Bearer good-token":
            port = self.server.server_port  # type: ignore[attr-defined]
            self.send_response(401)
            self.send_header(
                "WWW-Authenticate",
                f'Bearer realm="http://127.0.0.1:{port}/token",service="test-registry"',
            )
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def token_registry() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _TokenRegistry.token_requests = []
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_bearer_token_flow(token_registry: str) -> None:
    creds = Credentials("k8sx", "s3cret")
    with Registry(token_registry, credentials=creds) as registry:
        assert registry.manifest_digest("team/app", "env-1") is None
        assert registry.manifest_digest("team/app", "env-2") is None  # token reused
    (request,) = _TokenRegistry.token_requests
    assert "scope=repository%3Ateam%2Fapp%3Apull" in request
    assert "service=test-registry" in request


def test_bearer_token_refused(token_registry: str) -> None:
    creds = Credentials("k8sx", "nope")
    with (
        Registry(token_registry, credentials=creds) as registry,
        pytest.raises(RegistryAuthError, match="refused the credentials of 'k8sx'"),
    ):
        registry.manifest_digest("team/app", "env-1")


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("python:3.11-slim", ("docker.io", "library/python", "3.11-slim")),
        ("docker.io/library/python:3.11", ("docker.io", "library/python", "3.11")),
        ("127.0.0.1:5000/a/b:t", ("127.0.0.1:5000", "a/b", "t")),
        ("localhost/k8sx-base:py3.11", ("localhost", "k8sx-base", "py3.11")),
        ("ghcr.io/org/img@sha256:abc", ("ghcr.io", "org/img", "sha256:abc")),
        ("org/img", ("docker.io", "org/img", "latest")),
    ],
)
def test_split_reference(reference: str, expected: tuple[str, str, str]) -> None:
    assert split_reference(reference) == expected


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1:5000")
    assert is_loopback("localhost:5000")
    assert is_loopback("[::1]:5000")
    assert not is_loopback("registry.example.com")
    assert not is_loopback("10.0.0.1:5000")


def test_credentials_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    podman_file = write_auth_file(tmp_path / "auth.json", "r.example.com/team", "team", "p1")
    data = json.loads(podman_file.read_text())
    data["auths"]["https://r.example.com"] = {"auth": "aG9zdDpwMg=="}  # host:p2
    podman_file.write_text(json.dumps(data))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(podman_file))
    assert find_credentials("r.example.com", "team/app") == Credentials("team", "p1")
    assert find_credentials("r.example.com", "other/app") == Credentials("host", "p2")
    assert find_credentials("elsewhere.example.com", "x") is None
    assert "p1" not in repr(find_credentials("r.example.com", "team/app"))


@pytest.fixture
def flaky_registry(oci_registry: RegistryServer) -> Iterator[tuple[str, Faults]]:
    """The real registry behind the fault-injecting proxy: (host, faults)."""
    host, port = oci_registry.host.rsplit(":", 1)
    with fault_proxy((host, int(port))) as (url, faults):
        yield url.removeprefix("http://"), faults


@pytest.mark.parametrize(
    ("status", "method", "path"),
    [
        (503, "HEAD", "/manifests/"),  # the "is it built already?" question
        (502, "POST", "/blobs/uploads/"),  # starting an upload
        (500, "PUT", "/blobs/uploads/"),  # sending a layer
        (504, "PUT", "/manifests/"),  # tagging the image
        (429, None, ".*"),  # rate limited, anything
    ],
)
def test_transient_answers_are_retried(
    flaky_registry: tuple[str, Faults], status: int, method: str | None, path: str
) -> None:
    host, faults = flaky_registry
    faults.status, faults.method, faults.path_regex, faults.count = status, method, path, 2
    repo = f"flaky/s{status}"
    with Registry(host) as registry:
        assert registry.manifest_digest(repo, "v1") is None
        digest = push_small_image(registry, repo, "v1")
        assert registry.manifest_digest(repo, "v1") == digest
    assert faults.seen == 2  # both injected failures were met, and absorbed


class _OneShotBody:
    """A sized stream that cannot be rewound, like a layer copied from another registry."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self._size = len(data)

    def __len__(self) -> int:
        return self._size

    def read(self, size: int = -1) -> bytes:
        return self._data.read(size)

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self._data.read(1 << 16), b"")

    def close(self) -> None:
        self._data.close()


def test_streamed_upload_starts_over_after_a_transient_answer(
    flaky_registry: tuple[str, Faults],
) -> None:
    host, faults = flaky_registry
    faults.status, faults.method, faults.path_regex, faults.count = 503, "PUT", "/blobs/", 2
    blob = b"layer bytes " * 5000
    opened: list[_OneShotBody] = []

    def open_body() -> Any:
        opened.append(_OneShotBody(blob))
        return opened[-1]

    with Registry(host) as registry:
        registry.upload_blob("flaky/stream", digest_of(blob), len(blob), open_body)
        assert registry.blob_exists("flaky/stream", digest_of(blob))
        with registry.get_blob("flaky/stream", digest_of(blob)) as r:
            assert r.content == blob
    assert faults.seen == 2
    assert len(opened) == 3  # a fresh body (and upload session) for each try


def test_retry_after_is_honoured(flaky_registry: tuple[str, Faults]) -> None:
    host, faults = flaky_registry
    faults.status, faults.count, faults.headers = 429, 1, {"Retry-After": "1"}
    with Registry(host) as registry:
        started = time.monotonic()
        assert registry.manifest_digest("flaky/retry-after", "v1") is None
        waited = time.monotonic() - started
    assert faults.seen == 1
    assert waited >= 0.9  # the registry asked for a second before the next try


def test_persistent_server_errors_are_reported(flaky_registry: tuple[str, Faults]) -> None:
    host, faults = flaky_registry
    faults.status, faults.count = 503, 100
    with Registry(host) as registry, pytest.raises(RegistryError) as info:
        registry.manifest_digest("flaky/down", "v1")
    assert faults.seen == 5  # one try and four retries, then the answer is explained
    assert "answered 503" in str(info.value)
