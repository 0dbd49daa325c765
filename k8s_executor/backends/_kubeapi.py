"""The Kubernetes API boundary: the only module that imports ``kubernetes``.

Everything the executor and the admin side (``k8s-executor``) ask of the API server goes
through :class:`KubeApi`: connecting (a kubeconfig or the pod's service account), calls
with a retry policy passed in (:class:`Retry`), listing, watching (list, then a watch
resumed from the last ``resourceVersion``, relisting after ``410 Gone``), log streams and
deletes. Every request carries a (connect, read) timeout, and a stream that is not read to
its end is closed, never handed back to the connection pool.

Foreign errors (``ApiException``, urllib3's ``HTTPError``, the client's config errors) are
translated here, in one table (:func:`translate`), into :class:`~k8s_executor.errors.ClusterError`
or :class:`~k8s_executor.errors.ConfigError` with what happened and what to do, ``from``
the original.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .._cluster import config_source
from ..errors import ClusterError, ConfigError
from ._kubeerrors import RBAC_RULES, check_kubeconfig_files, translate

__all__ = [
    "ONCE",
    "RBAC_RULES",
    "RETRY",
    "KubeApi",
    "LogStream",
    "OpenStreams",
    "Retry",
    "translate",
]

T = TypeVar("T")

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
WATCH_SECONDS = 240
"""A watch's ``timeoutSeconds``: below every apiserver's --min-request-timeout."""
REQUEST_TIMEOUT = (10.0, 30.0)
"""(connect, read) seconds of every request. A read timeout is retried like a dropped
connection; a watch's read bound is its own timeoutSeconds plus slack."""
FOLLOW_TIMEOUT = (10.0, 24 * 3600.0)
"""A log follow may see nothing for hours (a silent task): its read bound is a day, the
default Job deadline. (The client refuses None for "no read timeout".)"""


@dataclass(frozen=True)
class Retry:
    """How :meth:`KubeApi.call` retries: overload and server errors (429, 5xx, honouring
    ``Retry-After``) up to ``attempts`` tries with exponential backoff and full jitter;
    an unreachable server only ``unreachable_attempts`` times (then the user is told at
    once rather than after a minute of backoff)."""

    attempts: int = 8
    first_delay: float = 0.2
    max_delay: float = 10.0
    unreachable_attempts: int = 4


RETRY = Retry()
"""The executor's default: rides out a few seconds of throttling or a restarting server."""
ONCE = Retry(attempts=1, unreachable_attempts=1)
"""One try: for ``doctor`` and other checks that must answer quickly."""


class KubeApi:
    """A connection to one namespace of one cluster."""

    def __init__(
        self,
        client: Any,
        namespace: str,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
    ) -> None:
        from kubernetes import client as k8s

        self.client = client
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.context = context
        self.core: Any = k8s.CoreV1Api(client)
        self.batch: Any = k8s.BatchV1Api(client)
        self.custom: Any = k8s.CustomObjectsApi(client)
        self.streams = OpenStreams()

    @classmethod
    def connect(
        cls,
        kubeconfig: str | None = None,
        context: str | None = None,
        namespace: str | None = None,
    ) -> KubeApi:
        """Connect with a kubeconfig (``kubeconfig``/``context``, ``KUBECONFIG``,
        ``~/.kube/config``) or, inside a pod, its service account.

        Raises:
            ConfigError: no usable configuration, saying where it looked and what to set.
        """
        # Imported here: `import k8s_executor` must not import kubernetes.
        from kubernetes import client, config

        in_cluster = config_source(kubeconfig, context) == "in-cluster"
        if not in_cluster:
            check_kubeconfig_files(kubeconfig)
        try:
            if in_cluster:
                configuration = client.Configuration()
                config.load_incluster_config(client_configuration=configuration)
                api = client.ApiClient(configuration)
                if namespace is None:
                    with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                        namespace = f.read().strip()
            else:
                api = config.new_client_from_config(config_file=kubeconfig, context=context)
                if namespace is None:
                    namespace = _context_namespace(kubeconfig, context)
        except (config.ConfigException, FileNotFoundError, TypeError) as exc:
            detail = str(exc).rstrip(".")
            if in_cluster:
                found = (
                    "KUBERNETES_SERVICE_HOST is set but the in-cluster configuration is not "
                    f"usable ({detail}; is a service account token mounted in this pod?)"
                )
            else:
                where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
                paths = [os.path.expanduser(p) for p in where.split(os.pathsep) if p]
                if not any(os.path.exists(p) for p in paths):
                    found = f"no kubeconfig: {where} does not exist"
                else:
                    found = f"no usable Kubernetes configuration in {where} ({detail})"
            raise ConfigError(
                f"{found}. Point KUBECONFIG (kubeconfig= in code, --kubeconfig on the "
                "command line) at a kubeconfig file, pick a context (context=, --context), "
                "or run inside a pod (the quickstart shows how to make a kind or k3d "
                "cluster to try on); to run without a cluster, use the local backend "
                "(backend='local' or K8S_EXECUTOR_BACKEND=local)"
            ) from exc
        return cls(api, namespace, kubeconfig=kubeconfig, context=context)

    # -- facts about the connection ---------------------------------------------------------

    @property
    def host(self) -> str:
        """The API server's URL."""
        return str(getattr(getattr(self.client, "configuration", None), "host", "?"))

    def context_name(self) -> str | None:
        """The kubeconfig context in use (None when there is none, e.g. inside a pod)."""
        from kubernetes import config

        if self.context is not None:
            return self.context
        try:
            _, active = config.list_kube_config_contexts(config_file=self.kubeconfig)
        except (config.ConfigException, OSError, TypeError):
            return None
        name = (active or {}).get("name")
        return str(name) if name else None

    def version_api(self) -> Any:
        """``VersionApi`` of this connection."""
        from kubernetes import client

        return client.VersionApi(self.client)

    def authorization_api(self) -> Any:
        """``AuthorizationV1Api`` of this connection."""
        from kubernetes import client

        return client.AuthorizationV1Api(self.client)

    # -- calls ------------------------------------------------------------------------------

    def call(
        self,
        what: str,
        fn: Callable[..., T],
        *args: Any,
        retry: Retry = RETRY,
        deadline: float | None = None,
        stop: threading.Event | None = None,
        **kwargs: Any,
    ) -> T:
        """``fn(*args, **kwargs)``, retried by ``retry``; errors translated (``what`` is
        what the message says could not be done, e.g. ``"create Job k8sx-..."``).

        Every try is bounded by :data:`REQUEST_TIMEOUT` unless ``_request_timeout`` is
        passed. ``deadline`` (monotonic) also bounds the retries; ``stop``, once set,
        cuts the backoff waits short (the caller is shutting down).

        Raises:
            ClusterError: refused, or still failing after the retries.
        """
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        delay = retry.first_delay
        for attempt in range(1, retry.attempts + 1):
            last = attempt == retry.attempts or (
                deadline is not None and time.monotonic() >= deadline
            )
            try:
                return fn(*args, **kwargs)
            except ApiException as exc:
                if exc.status not in _RETRY_STATUSES or last:
                    raise self.translate(what, exc) from exc
                retry_after = (exc.headers or {}).get("Retry-After")
                wait = float(retry_after) if retry_after and retry_after.isdigit() else delay
            except HTTPError as exc:
                if attempt >= retry.unreachable_attempts or last:
                    raise self.translate(what, exc) from exc
                wait = delay
            # Full jitter: many clients backing off together should not return together.
            pause = random.uniform(wait / 2, wait)
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            if stop is not None and deadline is None:
                stop.wait(pause)
            else:
                threading.Event().wait(pause)
            delay = min(delay * 2, retry.max_delay)
        raise AssertionError("unreachable")

    def create(
        self,
        kind: str,
        create_fn: Callable[..., Any],
        read_fn: Callable[..., Any],
        body: dict[str, Any],
        *,
        stop: threading.Event | None = None,
    ) -> None:
        """Create a namespaced object, once: a ``409 AlreadyExists`` for an object that
        carries all of ``body``'s labels is ours (a retry after a lost answer: the first
        try was written, its response never came back), not a failure.

        Raises:
            ClusterError: refused, failing past the retries, or the name is taken by an
                object that is not ours.
        """
        name = body["metadata"]["name"]
        try:
            self.call(f"create {kind} {name}", create_fn, self.namespace, body, stop=stop)
        except ClusterError as exc:
            if exc.status != 409:
                raise
            found = self.read_json(f"read {kind} {name}", read_fn, name, self.namespace, stop=stop)
            labels = (found.get("metadata") or {}).get("labels") or {}
            wanted = body["metadata"].get("labels") or {}
            if not wanted or any(labels.get(k) != v for k, v in wanted.items()):
                raise
            # Ours: created by an earlier try whose answer was lost.

    def read_json(
        self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        """A call whose answer is parsed as JSON (no models: faster, and exact)."""
        resp = self.call(what, fn, *args, _preload_content=False, **kwargs)
        try:
            data: dict[str, Any] = json.loads(resp.data)
        finally:
            resp.release_conn()
        return data

    def list(
        self, what: str, fn: Callable[..., Any], selector: str, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """The items of a namespaced list with a label selector."""
        listing = self.read_json(what, fn, self.namespace, label_selector=selector, **kwargs)
        return list(listing.get("items") or [])

    def delete(
        self,
        kind: str,
        fn: Callable[..., Any],
        name: str,
        *,
        retry: Retry = RETRY,
        deadline: float | None = None,
    ) -> ClusterError | None:
        """Delete a namespaced object (its dependents in the background: ``batch/v1``
        Jobs default to ``Orphan``, which would leave their pods running).

        Returns None when it is deleted or already gone, else the error (the caller says
        what is left and how to remove it).
        """
        try:
            self.call(
                f"delete {kind} {name}",
                fn,
                name,
                self.namespace,
                propagation_policy="Background",
                retry=retry,
                deadline=deadline,
            )
        except ClusterError as exc:
            return None if exc.status == 404 else exc
        return None

    # -- streams ----------------------------------------------------------------------------

    def watch(
        self,
        list_fn: Callable[..., Any],
        selector: str,
        handle: Callable[[str, dict[str, Any]], None],
        stop: threading.Event,
        *,
        field_selector: str | None = None,
    ) -> None:
        """List, then watch from the list's resourceVersion, until ``stop`` is set;
        relist after 410 Gone; back off on overload and dropped connections.

        ``handle(event_type, object)`` gets every object (listed ones as ``ADDED``);
        ``selector`` is a label selector, ``field_selector`` a field selector.

        Raises:
            ClusterError: the watch is refused (401/403): waiting will not help.
        """
        fields = {"field_selector": field_selector} if field_selector else {}
        _Watch(self, list_fn, selector, fields, stop).run(handle)

    def open_log(
        self,
        pod: str,
        container: str,
        *,
        follow: bool = False,
        tail_lines: int | None = None,
        retry: Retry = RETRY,
        timeout: tuple[float, float] | None = None,
    ) -> LogStream:
        """A pod's log as a stream of chunks (with ``follow``, until the container ends).

        Raises:
            ClusterError: ``status`` 400 while the container has not started, 404 when the
                pod is gone.
        """
        options: dict[str, Any] = {"container": container, "follow": follow}
        if tail_lines is not None:
            options["tail_lines"] = tail_lines
        resp = self.call(
            f"read the log of pod {pod}",
            self.core.read_namespaced_pod_log,
            pod,
            self.namespace,
            retry=retry,
            _preload_content=False,
            _request_timeout=timeout or (FOLLOW_TIMEOUT if follow else REQUEST_TIMEOUT),
            **options,
        )
        self.streams.add(resp)
        return LogStream(self.streams, pod, resp)

    def log_tail(self, pod: str, container: str, lines: int) -> str:
        """The last ``lines`` lines of a container's log ("" when there is none)."""
        text = self.call(
            f"read the log of pod {pod}",
            self.core.read_namespaced_pod_log,
            pod,
            self.namespace,
            container=container,
            tail_lines=lines,
        )
        return str(text or "")

    def shutdown_streams(self) -> None:
        """Cut every open watch and log stream (their threads see the end at once)."""
        self.streams.shutdown()

    def close(self) -> None:
        """Cut the streams and release every connection."""
        self.shutdown_streams()
        self.client.close()

    # -- errors -----------------------------------------------------------------------------

    def translate(self, what: str, exc: BaseException) -> ClusterError:
        """This connection's wording of :func:`translate`."""
        context = self.context_name()
        return translate(what, exc, namespace=self.namespace, host=self.host, context=context)


class OpenStreams:
    """The streamed responses (watches, log follows) of a connection still being read:
    :meth:`shutdown` cuts them all, and any opened after it end at once."""

    def __init__(self) -> None:
        self._open: set[Any] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        """True once :meth:`shutdown` was called."""
        return self._closed.is_set()

    def add(self, resp: Any) -> None:
        with self._lock:
            self._open.add(resp)

    def discard(self, resp: Any) -> None:
        with self._lock:
            self._open.discard(resp)

    def shutdown(self) -> None:
        """Cut every open stream (their readers see the end at once)."""
        self._closed.set()
        with self._lock:
            streams = list(self._open)
        for resp in streams:
            with contextlib.suppress(Exception):
                resp.shutdown()


class _Watch:
    """The loop of :meth:`KubeApi.watch` over one kind of object (see there)."""

    def __init__(
        self,
        api: KubeApi,
        list_fn: Callable[..., Any],
        selector: str,
        fields: dict[str, str],
        stop: threading.Event,
    ) -> None:
        self._api = api
        self._list_fn = list_fn
        self._selector = selector
        self._fields = fields
        self._stop = stop

    def run(self, handle: Callable[[str, dict[str, Any]], None]) -> None:
        api, list_fn, stop = self._api, self._list_fn, self._stop
        what = f"watch the run's {list_fn.__name__.removeprefix('list_namespaced_')}s"
        rv: str | None = None
        delay = 0.2
        while not stop.is_set():
            try:
                if rv is None:
                    listing = api.read_json(
                        what,
                        list_fn,
                        api.namespace,
                        label_selector=self._selector,
                        stop=stop,
                        **self._fields,
                    )
                    rv = listing["metadata"]["resourceVersion"]
                    for item in listing.get("items") or []:
                        handle("ADDED", item)
                for event in self._stream(rv):
                    kind = event.get("type")
                    obj = event.get("object") or {}
                    if kind == "ERROR":
                        code = obj.get("code")
                        if code == 410:
                            rv = None  # history compacted: relist
                            break
                        # E.g. 504 "Too large resource version" from a lagging watch
                        # cache: resume from the same version after a pause.
                        raise _WatchError(code, obj.get("message"))
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if kind != "BOOKMARK":
                        handle(str(kind), obj)
                delay = 0.2
            except Exception as exc:
                if stop.is_set():
                    return
                status = getattr(exc, "status", None)
                if status in (401, 403):
                    if isinstance(exc, ClusterError):
                        raise
                    raise api.translate(what, exc) from exc
                if status == 410:
                    rv = None
                # Overload, a dropped connection, a restarting apiserver: wait, resume.
                stop.wait(random.uniform(delay / 2, delay))
                delay = min(delay * 2, 10.0)

    def _stream(self, rv: str) -> Iterator[dict[str, Any]]:
        # Hand-rolled instead of kubernetes.watch.Watch: with deserialize=False that class
        # fails on ERROR events (it reads a key only set when deserializing), and parsing
        # into models is wasted work here.
        from kubernetes.watch.watch import iter_resp_lines

        streams = self._api.streams
        resp = self._list_fn(
            self._api.namespace,
            label_selector=self._selector,
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=(REQUEST_TIMEOUT[0], WATCH_SECONDS + 30),
            **self._fields,
        )
        streams.add(resp)
        ended = False
        try:
            if self._stop.is_set() or streams.closed:
                return
            for line in iter_resp_lines(resp):
                if line:
                    yield json.loads(line)
            ended = True
        finally:
            streams.discard(resp)
            finish_response(resp, ended)


class LogStream:
    """A pod log being read: iterate for chunks; the connection is closed unless the log
    was read to its end (see :func:`finish_response`)."""

    def __init__(self, streams: OpenStreams, pod: str, resp: Any) -> None:
        self._streams = streams
        self._pod = pod
        self._resp = resp

    def chunks(self, size: int = 4096) -> Iterator[bytes]:
        """The log's bytes as they come.

        Raises:
            ClusterError: the stream was cut off midway.
        """
        from urllib3.exceptions import HTTPError

        ended = False
        try:
            yield from self._resp.stream(size, decode_content=True)
            ended = True
        except HTTPError as exc:
            raise ClusterError(
                f"the log of pod {self._pod} was cut off ({type(exc).__name__}: {exc}); "
                "run the command again to read it from the start"
            ) from exc
        finally:
            self._streams.discard(self._resp)
            finish_response(self._resp, ended)


class _WatchError(Exception):
    """An ERROR event in a watch stream other than 410 (the watch is resumed)."""

    def __init__(self, code: Any, message: Any) -> None:
        super().__init__(f"{code} {message}")
        self.status = code


def finish_response(resp: Any, read_to_end: bool) -> None:
    """Give a streamed response's connection back to the pool only if it was read to its
    end. A watch or log follow left midway still has the server writing on it: returned
    to the pool, the next request would be written on it and wait for an answer behind
    the rest of the stream (up to the watch's 240 s). Closed, it is simply not reused."""
    if read_to_end:
        resp.release_conn()
        return
    with contextlib.suppress(Exception):
        resp.close()
    with contextlib.suppress(Exception):
        resp.release_conn()  # a closed connection: the pool replaces it


def _context_namespace(kubeconfig: str | None, context: str | None) -> str:
    from kubernetes import config

    contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    chosen = active
    if context is not None:
        chosen = next((c for c in contexts if c.get("name") == context), None)
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace or "default")
