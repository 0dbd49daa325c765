"""A minimal client of the OCI distribution API (the registry HTTP API, v2).

Hand-written on ``requests`` (already a dependency, through ``kubernetes``) because the
subset needed is small: HEAD/GET/PUT of manifests, HEAD/GET/upload of blobs and the two
auth schemes, a few hundred lines. A client library such as oras-py would bring its own auth
and configuration layer for the same few calls. podman can't be used to ask "does this tag
exist?" (its 4.3 API only looks at local storage), and uploading blobs directly is what
makes an incremental build take a fraction of a second (docs/images.md has the numbers).

Transient answers (429 and 5xx) are retried with exponential backoff, honouring
``Retry-After`` (capped), by the rules of urllib3's ``Retry``: mounted on the session for
HEAD and GET, and applied here to PUT and POST, whose bodies urllib3 cannot always rewind
(a layer copied from another registry is a stream, re-opened with ``open_body``). A blob
upload that meets a transient answer starts over with a fresh upload session, unless the
blob turns out to be stored already (an answer lost on the way back). An unreachable
registry is not retried, so that a wrong address fails at once.

Auth: a request answered 401 is retried once with what ``WWW-Authenticate`` asks for —
``Basic`` with the stored credentials, or ``Bearer`` with a token fetched from the realm
(with the stored credentials when there are any, anonymously otherwise). Credentials come
from podman's auth file (``REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
``~/.config/containers/auth.json``) and then Docker's (``~/.docker/config.json``), the
files ``podman login`` / ``docker login`` write; credential helpers are not supported.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

from ._errors import RegistryAuthError, RegistryError, RegistryUnreachableError

__all__ = [
    "MANIFEST_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Credentials",
    "Registry",
    "find_credentials",
    "is_loopback",
    "split_reference",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)

DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or identity token) for one registry."""

    username: str
    password: str

    def __repr__(self) -> str:  # never print a password
        return f"Credentials(username={self.username!r}, password=***)"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``name[:port]``) is this machine: such registries speak plain HTTP."""
    if host.startswith("["):  # [v6]:port
        name = host[1:].split("]", 1)[0]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_reference(reference: str) -> tuple[str, str, str]:
    """``host/repo:tag`` or ``host/repo@sha256:…`` → (host, repo, tag-or-digest).

    Follows the usual rules: no host part (or one without a dot, colon or ``localhost``)
    means Docker Hub, and Docker Hub names without a slash live under ``library/``.
    """
    name, _, digest = reference.partition("@")
    tag = ""
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, repo = first, rest
    else:
        host, repo = DOCKER_HUB, name
    if host == DOCKER_HUB and "/" not in repo:
        repo = f"library/{repo}"
    return host, repo, digest or tag or "latest"


def _auth_files() -> Iterator[Path]:
    explicit = os.environ.get("REGISTRY_AUTH_FILE")
    if explicit:
        yield Path(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        yield Path(runtime) / "containers" / "auth.json"
    yield Path.home() / ".config" / "containers" / "auth.json"
    docker = os.environ.get("DOCKER_CONFIG")
    yield (Path(docker) if docker else Path.home() / ".docker") / "config.json"


def find_credentials(host: str, repo: str = "") -> Credentials | None:
    """The stored credentials for ``host`` (most specific ``host/namespace`` entry first)."""
    keys = [f"{host}/{repo}"] if repo else []
    parts = repo.split("/")
    keys += [f"{host}/{'/'.join(parts[:i])}" for i in range(len(parts) - 1, 0, -1)]
    keys.append(host)
    if host == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io", _DOCKER_HUB_API]
    for path in _auth_files():
        try:
            auths = json.loads(path.read_text()).get("auths", {})
        except (OSError, ValueError, AttributeError):
            continue
        normalised = {re.sub(r"^https?://", "", k).rstrip("/"): v for k, v in auths.items()}
        for key in keys:
            entry = auths.get(key) or normalised.get(re.sub(r"^https?://", "", key).rstrip("/"))
            if isinstance(entry, dict) and entry.get("auth"):
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                return Credentials(user, password)
    return None


# Statuses worth another try: rate limiting and server-side trouble (a registry behind a
# load balancer answers 502/503/504 while it restarts or scales).
_TRANSIENT_STATUSES = (429, 500, 502, 503, 504)
_RETRIES = 4


_MAX_RETRY_AFTER = 60.0  # seconds: a registry asking for longer fails the build instead


def _transient_retry(methods: frozenset[str] = frozenset({"HEAD", "GET"})) -> Any:
    """urllib3's retry policy for the registry: 4 more tries of ``methods`` on a transient
    status, at once and then after about 1, 2 and 4 s, or after ``Retry-After`` (at most
    a minute); connection failures are not retried. (Parameters of urllib3 1.26 and 2.x.)
    """
    from urllib3.util.retry import Retry

    class _Retry(Retry):
        def parse_retry_after(self, retry_after: str) -> float:
            return min(float(super().parse_retry_after(retry_after)), _MAX_RETRY_AFTER)

    return _Retry(
        total=_RETRIES,
        connect=0,
        read=0,
        other=0,
        status=_RETRIES,
        status_forcelist=_TRANSIENT_STATUSES,
        allowed_methods=methods,
        backoff_factor=0.5,
        raise_on_status=False,  # the last answer reaches _request, which explains it
        respect_retry_after_header=True,
    )


def _retry_later(policy: Any, method: str, url: str, response: Any) -> Any:
    """``policy`` after a transient answer, having slept as it says; None when spent."""
    from urllib3.exceptions import MaxRetryError

    try:
        policy = policy.increment(method, url, response=response.raw)
    except MaxRetryError:
        return None
    response.close()
    policy.sleep(response.raw)
    return policy


_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class Registry:
    """One registry host, with the auth state of a session.

    Args:
        host: ``name[:port]`` (``docker.io`` means Docker Hub).
        insecure: Plain HTTP instead of HTTPS. Default: only for loopback addresses.
        credentials: Default: :func:`find_credentials` for the repository being accessed.
        timeout: Seconds to wait for a connection or a response chunk.
    """

    def __init__(
        self,
        host: str,
        *,
        insecure: bool | None = None,
        credentials: Credentials | None = None,
        timeout: float = 60.0,
    ) -> None:
        import requests
        from requests.adapters import HTTPAdapter

        self.host = host
        api_host = _DOCKER_HUB_API if host == DOCKER_HUB else host
        scheme = "http" if (is_loopback(host) if insecure is None else insecure) else "https"
        self.base_url = f"{scheme}://{api_host}"
        self._credentials = credentials
        self._timeout = timeout
        self._session = requests.Session()
        adapter = HTTPAdapter(max_retries=_transient_retry())
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._tokens: dict[str, str] = {}  # scope → Authorization header value

    def close(self) -> None:
        """Close the connection pool."""
        self._session.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- manifests -----------------------------------------------------------------------

    def manifest_digest(self, repo: str, reference: str) -> str | None:
        """The digest of ``repo:reference`` (a tag or digest), or None when it does not exist."""
        r = self._request(
            "HEAD",
            f"/v2/{repo}/manifests/{reference}",
            repo,
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
            ok=(200, 404),
        )
        if r.status_code == 404:
            return None
        digest = r.headers.get("Docker-Content-Digest")
        if digest:
            return str(digest)
        # Not every registry sends the header on HEAD; the body's hash is authoritative.
        return self.get_manifest(repo, reference)[2]

    def get_manifest(self, repo: str, reference: str) -> tuple[dict[str, Any], str, str]:
        """(parsed manifest, media type, digest) of ``repo:reference``."""
        r = self._request(
            "GET",
            f"/v2/{repo}/manifests/{reference}",
            repo,
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
            ok=(200, 404),
        )
        if r.status_code == 404:
            raise RegistryError(f"{self.host}/{repo}:{reference} does not exist")
        body = r.content
        manifest = json.loads(body)
        media_type = manifest.get("mediaType") or r.headers.get("Content-Type", OCI_MANIFEST)
        return manifest, media_type.split(";")[0], f"sha256:{hashlib.sha256(body).hexdigest()}"

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        """Store a manifest under ``reference`` (a tag); returns its digest."""
        self._request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            repo,
            push=True,
            headers={"Content-Type": media_type},
            body=lambda: body,
            ok=(201, 200),
        )
        return f"sha256:{hashlib.sha256(body).hexdigest()}"

    # --- blobs ---------------------------------------------------------------------------

    def blob_exists(self, repo: str, digest: str) -> bool:
        """Whether the registry has ``digest`` in ``repo``."""
        r = self._request("HEAD", f"/v2/{repo}/blobs/{digest}", repo, ok=(200, 404))
        return bool(r.status_code == 200)

    def get_blob(self, repo: str, digest: str) -> Any:
        """A streaming response with the blob's bytes (close it, or use it as a context)."""
        return self._request("GET", f"/v2/{repo}/blobs/{digest}", repo, stream=True)

    def get_json_blob(self, repo: str, digest: str) -> dict[str, Any]:
        """A small JSON blob (an image config), checked against its digest."""
        with self.get_blob(repo, digest) as r:
            body = r.content
        if f"sha256:{hashlib.sha256(body).hexdigest()}" != digest:
            raise RegistryError(f"{self.host}/{repo}: blob {digest} does not match its digest")
        value = json.loads(body)
        if not isinstance(value, dict):
            raise RegistryError(f"{self.host}/{repo}: blob {digest} is not a JSON object")
        return value

    def upload_blob(
        self, repo: str, digest: str, size: int, open_body: Callable[[], IO[bytes] | bytes]
    ) -> None:
        """Upload one blob in a single request (POST to start, PUT with the bytes).

        ``open_body`` is called to (re)open the content, so that a request that must be
        repeated (after an auth challenge, or a transient answer) can send it again.
        """
        policy = _transient_retry(frozenset({"PUT"}))
        while True:
            r = self._request("POST", f"/v2/{repo}/blobs/uploads/", repo, push=True, ok=(202,))
            location = r.headers.get("Location")
            if not location:
                raise RegistryError(f"{self.host}: upload start for {repo} returned no Location")
            url = urljoin(self.base_url + "/", location)
            parts = urlsplit(url)
            query = f"{parts.query}&" if parts.query else ""
            url = urlunsplit(parts._replace(query=query + urlencode({"digest": digest})))
            r = self._request(
                "PUT",
                url,
                repo,
                push=True,
                # requests sets Content-Length from the body (bytes, file or sized stream).
                headers={"Content-Type": "application/octet-stream"},
                body=open_body,
                ok=(201, *_TRANSIENT_STATUSES),
                retry=False,  # a failed upload session is not reused: start a new one
            )
            if r.status_code == 201:
                r.close()
                return
            # The answer may have been lost after the blob was stored.
            if self.blob_exists(repo, digest):
                r.close()
                return
            policy = _retry_later(policy, "PUT", url, r)
            if policy is None:
                r.close()
                raise RegistryError(
                    f"{self.host}: PUT {urlsplit(url).path} answered {r.status_code} on "
                    f"every try (upload of {digest} to {repo})"
                )

    # --- transport -----------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        repo: str,
        *,
        push: bool = False,
        headers: Mapping[str, str] | None = None,
        body: Callable[[], IO[bytes] | bytes] | None = None,
        ok: tuple[int, ...] = (200,),
        stream: bool = False,
        retry: bool = True,
    ) -> Any:
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        # HEAD and GET are retried inside the session (see _transient_retry); the others
        # here, re-opening their bodies.
        policy = (
            _transient_retry(frozenset({method}))
            if retry and method not in ("HEAD", "GET")
            else None
        )
        while True:
            r = self._send(
                method, url, repo=repo, push=push, headers=headers, body=body, stream=stream
            )
            if policy is None or r.status_code in ok or r.status_code not in _TRANSIENT_STATUSES:
                break
            policy = _retry_later(policy, method, url, r)
            if policy is None:
                break
        return self._check(r, method, url, repo=repo, push=push, ok=ok, stream=stream)

    def _send(
        self,
        method: str,
        url: str,
        *,
        repo: str,
        push: bool,
        headers: Mapping[str, str] | None,
        body: Callable[[], IO[bytes] | bytes] | None,
        stream: bool,
    ) -> Any:
        """One request, and once more when a 401 asks for credentials we can supply."""
        import requests

        scope = f"repository:{repo}:{'pull,push' if push else 'pull'}"
        for attempt in range(2):
            hdrs = dict(headers or {})
            if scope in self._tokens:
                hdrs["Authorization"] = self._tokens[scope]
            data = body() if body is not None else None
            try:
                r = self._session.request(
                    method,
                    url,
                    headers=hdrs,
                    data=data,
                    stream=stream,
                    timeout=self._timeout,
                    allow_redirects=True,
                )
            except requests.ConnectionError as exc:
                raise RegistryUnreachableError(
                    f"cannot reach the registry at {self.base_url} ({exc.__class__.__name__}): "
                    "is it running and is the address right (registry= or "
                    "K8S_EXECUTOR_REGISTRY)? A registry without TLS needs insecure=True "
                    "unless it is on localhost"
                ) from exc
            except requests.RequestException as exc:
                raise RegistryError(f"{method} {url} failed: {exc}") from exc
            finally:
                if data is not None and not isinstance(data, bytes):
                    data.close()
            if r.status_code == 401 and attempt == 0:
                challenge = r.headers.get("WWW-Authenticate", "")
                r.close()
                self._tokens[scope] = self._authorize(challenge, repo, scope)
                continue
            break
        return r

    def _check(
        self,
        r: Any,
        method: str,
        url: str,
        *,
        repo: str,
        push: bool,
        ok: tuple[int, ...],
        stream: bool,
    ) -> Any:
        """``r`` if its status is one of ``ok``; otherwise the error that explains it."""
        if r.status_code in (401, 403):
            r.close()
            who = self._creds(repo)
            raise RegistryAuthError(
                f"{self.host} refused {method} {urlsplit(url).path} "
                f"({r.status_code}) with "
                + (f"the stored credentials of {who.username!r}" if who else "no credentials")
                + f": log in with `podman login {self.host}` (or set REGISTRY_AUTH_FILE), "
                "and check the account may " + ("push to" if push else "pull from") + f" {repo}"
            )
        if r.status_code not in ok:
            detail = r.text[:500] if not stream else ""
            r.close()
            raise RegistryError(
                f"{self.host}: {method} {urlsplit(url).path} answered {r.status_code} {detail}"
            )
        return r

    def _creds(self, repo: str) -> Credentials | None:
        return self._credentials or find_credentials(self.host, repo)

    def _authorize(self, challenge: str, repo: str, scope: str) -> str:
        """The Authorization header value that answers ``challenge``."""
        import requests

        scheme, _, params_text = challenge.partition(" ")
        creds = self._creds(repo)
        if scheme.lower() == "basic":
            if creds is None:
                raise RegistryAuthError(
                    f"{self.host} requires a login and no credentials are stored for it: "
                    f"run `podman login {self.host}` (or set REGISTRY_AUTH_FILE)"
                )
            raw = f"{creds.username}:{creds.password}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        if scheme.lower() != "bearer":
            raise RegistryAuthError(f"{self.host}: unsupported auth challenge {challenge!r}")
        params = dict(_CHALLENGE.findall(params_text))
        realm = params.get("realm")
        if not realm:
            raise RegistryAuthError(f"{self.host}: bearer challenge without realm: {challenge}")
        query = {"scope": scope}
        if "service" in params:
            query["service"] = params["service"]
        try:
            r = self._session.get(
                realm,
                params=query,
                auth=(creds.username, creds.password) if creds else None,
                timeout=self._timeout,
            )
        except requests.RequestException as exc:
            raise RegistryUnreachableError(
                f"cannot reach the token service {realm} of {self.host}: {exc}"
            ) from exc
        with r:
            if r.status_code in (401, 403):
                raise RegistryAuthError(
                    f"the token service of {self.host} refused "
                    + (f"the credentials of {creds.username!r}" if creds else "anonymous access")
                    + f" for {scope}: run `podman login {self.host}` (or set REGISTRY_AUTH_FILE)"
                )
            if r.status_code != 200:
                raise RegistryError(f"token service {realm} answered {r.status_code}")
            answer = r.json()
        token = answer.get("token") or answer.get("access_token")
        if not token:
            raise RegistryError(f"token service {realm} returned no token")
        return f"Bearer {token}"
