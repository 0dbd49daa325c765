"""The Kubernetes backend: one Indexed Job per batch, one watch of the run's pods and Jobs.

This is the only module that imports ``kubernetes``; API errors are translated here, once,
into the package's errors. Manifests come from ``_manifest`` (pure) and the meaning of
pod/Job states from ``_tracker`` (pure); this module does the I/O between them.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import getpass
import json
import os
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .._cluster import config_source
from .._options import PodOptions, Resources, Scheduling, Timeouts
from ..errors import ClusterError, ConfigError, PodStartError
from . import _manifest as m
from ._base import IndexExit, LaunchSpec, Listener, RunContext
from ._tracker import IMAGE_REASONS, NO_POD, Event, Finished, RunTracker, Started, Stuck

__all__ = [
    "RBAC_RULES",
    "Cluster",
    "KubernetesBackend",
    "KubernetesSettings",
    "RunSummary",
    "rbac_manifests",
]

T = TypeVar("T")

# What the executor needs to be allowed to do in its namespace (for error messages and
# `k8s-executor rbac`).
RBAC_RULES = (
    ("batch", "jobs", ("create", "get", "list", "watch", "delete", "patch")),
    ("", "pods", ("get", "list", "watch", "delete")),
    ("", "pods/log", ("get",)),
    ("", "secrets", ("create", "get", "list", "delete")),
)
_RBAC_TEXT = "; ".join(
    f"{', '.join(verbs)} on {resource}{'.' + group if group else ''}"
    for group, resource, verbs in RBAC_RULES
)
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_WATCH_SECONDS = 240  # below every apiserver's --min-request-timeout
# Every request is bounded: (connect, read) seconds. A read timeout is retried by _call
# like any dropped connection; a watch's read bound is its own timeoutSeconds plus slack.
_REQUEST_TIMEOUT = (10.0, 30.0)
# A log follow may see nothing for hours (a silent task): its read bound is a day, the
# default Job deadline. (The client refuses None for "no read timeout".)
_FOLLOW_TIMEOUT = (10.0, 24 * 3600.0)
# close() returns within this many seconds (plus the pods' grace period when it kills
# them): a stranded connection or a throttled API may leave objects behind (reported,
# with the command that removes them), but never keeps the caller's `with` block open.
_CLOSE_SECONDS = 20.0
# Indexes that finish within this many seconds of each other hand their worker slots on in
# one PATCH per waiting Job (pods often end together; a pod start takes far longer).
_REBALANCE_DELAY = 0.1
_STARTED_PHASES = frozenset({"Running", "Succeeded", "Failed"})

# How long a finished index waits for its streamed log to be printed (stream_logs=True).
# The container has ended, so its follow stream ends as soon as the rest is read: this is
# only a bound for a stream that hangs, generous enough for a loaded client or API server.
_LOG_DRAIN_SECONDS = 15.0


@dataclass(frozen=True)
class KubernetesSettings:
    """Cluster access and pod options of the Kubernetes backend (see KubernetesExecutor)."""

    image: str
    """An image reference, or ``"auto"``: a snapshot of this venv pushed to ``registry``."""
    registry: str | None = None
    base_image: str | None = None
    platform: str | None = None
    """``os/arch`` the ``"auto"`` image is built for (None: the builder's default)."""
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    python: str = "python"
    retries: int = 0
    resources: Resources = field(default_factory=Resources)
    scheduling: Scheduling = field(default_factory=Scheduling)
    pod: PodOptions = field(default_factory=PodOptions)
    timeouts: Timeouts = field(default_factory=Timeouts)
    share_storage_options: bool = False
    stream_logs: bool = False


def _owner() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"[:250]


class KubernetesBackend:
    """Runs each batch as a Kubernetes Indexed Job and follows it with one watch."""

    name = "kubernetes"

    def __init__(self, settings: KubernetesSettings) -> None:
        self.settings = settings
        self.heartbeat_interval: float | None = settings.timeouts.heartbeat
        self.batch_window: float = 0.2
        self.namespace = settings.namespace or "default"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._tracker = RunTracker(startup_timeout=settings.timeouts.startup)
        self._listener: Listener | None = None
        self._run_id = ""
        self._max_workers = 1
        self._threads: list[threading.Thread] = []
        self._responses: set[Any] = set()
        self._delivery: ThreadPoolExecutor | None = None
        self._jobs: dict[str, str] = {}  # batch id -> Job name
        # Worker slots per unfinished Job (its spec.parallelism), in launch order.
        self._parallelism: dict[str, int] = {}
        self._sent_parallelism: dict[str, int] = {}  # what the cluster was last told
        self._created: set[str] = set()  # batches whose Job the API server accepted
        self._rebalance_pending = False
        self._patch_lock = threading.Lock()
        self._secret_created = False
        self._log_threads: dict[str, threading.Thread] = {}
        self._api: Any = None
        self._image = settings.image
        self._python = settings.python

    # -- Backend protocol ----------------------------------------------------------

    def default_max_workers(self) -> int:
        """A conservative default; pass max_workers to use more of the cluster."""
        return 16

    def start(self, listener: Listener, max_workers: int, run: RunContext) -> None:
        """Connect, create the run's Secret (key, opted-in storage options), start watching."""
        self._listener = listener
        self._max_workers = max_workers
        self._run_id = run.run_id
        if self.settings.image == "auto":
            self._build_image()
        self._connect()
        options = run.storage_options if self.settings.share_storage_options else None
        secret = m.secret_manifest(
            run.run_id, run.key, options, run_url=run.run_url, owner=_owner()
        )
        self._call(
            f"create Secret {m.secret_name(run.run_id)}",
            self._core.create_namespaced_secret,
            self.namespace,
            secret,
        )
        self._secret_created = True
        self._delivery = ThreadPoolExecutor(4, thread_name_prefix="k8sx-deliver")
        for target, name in (
            (self._watch_pods, "k8sx-watch-pods"),
            (self._watch_jobs, "k8sx-watch-jobs"),
            (self._tick, "k8sx-tick"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def launch(self, spec: LaunchSpec) -> None:
        """Create the batch's Indexed Job, with as many worker slots as are free now."""
        with self._lock:
            self._tracker.add_batch(spec.batch_id, spec.indexes)
            # max_workers bounds the run, not each Job: a new Job gets the free slots
            # (0 pauses it) and grows as earlier Jobs finish (see _rebalance).
            parallelism = min(spec.indexes, max(0, self._max_workers - self._slots_in_use()))
            self._parallelism[spec.batch_id] = parallelism
            self._sent_parallelism[spec.batch_id] = parallelism
        params = m.JobParams(
            run_id=spec.run_id,
            batch_id=spec.batch_id,
            indexes=spec.indexes,
            parallelism=parallelism,
            image=self._image,
            batch_url=spec.batch_url,
            python=self._python,
            owner=_owner(),
            storage_options_in_secret=self.settings.share_storage_options,
            retries=self.settings.retries,
            resources=self.settings.resources,
            scheduling=self.settings.scheduling,
            pod=self.settings.pod,
            timeouts=self.settings.timeouts,
            storage_retry=spec.storage_retry,
        )
        job = m.job_manifest(params)
        with self._lock:
            # Known before it is created, so that close() deletes it even if the answer
            # to the create is lost; PATCHed only once it exists (_created).
            self._jobs[spec.batch_id] = job["metadata"]["name"]
        self._call(
            f"create Job {job['metadata']['name']}",
            self._batch.create_namespaced_job,
            self.namespace,
            job,
        )
        with self._lock:
            self._created.add(spec.batch_id)
            # Slots freed while the Job was being created were planned for it, but could
            # not be sent to a Job that did not exist yet.
            late = self._parallelism.get(spec.batch_id) != parallelism
        if late:
            self._rebalance()

    def cancel(self, batch_id: str, indexes: Collection[int]) -> None:
        """Nothing to do: workers honour the skip markers the executor writes."""

    def close(self, *, kill: bool) -> None:
        """Delete the run's Jobs (their pods with them) and Secret; stop watching."""
        self._stop.set()
        with self._lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
            responses = list(self._responses)
        for resp in responses:
            with contextlib.suppress(Exception):
                resp.shutdown()
        deadline = time.monotonic() + _CLOSE_SECONDS
        for thread in self._threads:
            # Bounded: a watch whose answer has not arrived yet cannot be interrupted; it
            # closes its connection itself when the answer comes (it sees _stop).
            thread.join(timeout=max(0.0, min(2.0, deadline - time.monotonic())))
        if self._delivery is not None:
            self._delivery.shutdown(wait=True)
        if self._api is None:
            return
        if not kill:
            # Let streamed logs finish printing before the pods they come from are deleted.
            self._join_log_threads(5.0)
        for name in jobs:
            self._delete("Job", self._batch.delete_namespaced_job, name, deadline)
        if kill and jobs:
            grace = self.settings.timeouts.termination_grace
            self._wait_pods_gone(timeout=max(0.0, deadline - time.monotonic()) + grace)
        if self._secret_created:
            secret = m.secret_name(self._run_id)
            self._delete("Secret", self._core.delete_namespaced_secret, secret, deadline)
        self._join_log_threads(min(5.0, max(0.0, deadline - time.monotonic())))
        self._api.close()

    def _join_log_threads(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for thread in list(self._log_threads.values()):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    # -- connection and errors ------------------------------------------------------

    def _build_image(self) -> None:
        """Snapshot this venv into the registry (nothing to do when it is unchanged)."""
        # Imported here: only image="auto" needs the builder (and, maybe, podman).
        from ..image import build_image

        assert self.settings.registry is not None
        ref = build_image(
            self.settings.registry,
            base_image=self.settings.base_image,
            platform=self.settings.platform,
        )
        self._image = ref.reference  # by digest: every pod runs exactly this snapshot
        # The venv sits at its own absolute path in the image; its python runs the base
        # image's interpreter with the venv's packages.
        self._python = os.path.join(sys.prefix, "bin", "python")
        if ref.built:
            print(f"k8s_executor: built {ref.summary()}", file=sys.stderr)

    def _connect(self) -> None:
        # Imported here: `import k8s_executor` must not import kubernetes.
        from kubernetes import client, config

        s = self.settings
        in_cluster = config_source(s.kubeconfig, s.context) == "in-cluster"
        try:
            if in_cluster:
                configuration = client.Configuration()
                config.load_incluster_config(client_configuration=configuration)
                api = client.ApiClient(configuration)
                if s.namespace is None:
                    with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                        self.namespace = f.read().strip()
            else:
                api = config.new_client_from_config(config_file=s.kubeconfig, context=s.context)
                if s.namespace is None:
                    self.namespace = _context_namespace(s.kubeconfig, s.context)
        except (config.ConfigException, FileNotFoundError, TypeError) as exc:
            detail = str(exc).rstrip(".")
            if in_cluster:
                found = (
                    "KUBERNETES_SERVICE_HOST is set but the in-cluster configuration is not "
                    f"usable ({detail}; is a service account token mounted in this pod?)"
                )
            else:
                where = s.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
                found = f"no usable Kubernetes configuration in {where} ({detail})"
            raise ConfigError(
                f"{found}. Point KUBECONFIG (or kubeconfig=) at a kubeconfig file, pick a "
                "context with context=, or run inside a pod (the quickstart shows how to "
                "make a kind or k3d cluster to try on); to run without a cluster, pass "
                "backend='local'"
            ) from exc
        self._api = api
        self._core = client.CoreV1Api(api)
        self._batch = client.BatchV1Api(api)

    def _call(
        self,
        what: str,
        fn: Callable[..., T],
        *args: Any,
        deadline: float | None = None,
        **kwargs: Any,
    ) -> T:
        """Call the API, retrying overload and transient errors; translate the rest.

        Every try is bounded by ``_REQUEST_TIMEOUT`` (unless the caller passes its own
        ``_request_timeout``); ``deadline`` (monotonic) bounds the retries too, for calls
        made after ``_stop`` is set (close), whose backoff cannot wait on ``_stop``.
        """
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        kwargs.setdefault("_request_timeout", _REQUEST_TIMEOUT)
        delay = 0.2
        for attempt in range(1, 9):
            last = attempt == 8 or (deadline is not None and time.monotonic() >= deadline)
            try:
                return fn(*args, **kwargs)
            except ApiException as exc:
                if exc.status not in _RETRY_STATUSES or last:
                    raise _api_error(what, exc, self.namespace) from exc
                retry_after = (exc.headers or {}).get("Retry-After")
                wait = float(retry_after) if retry_after and retry_after.isdigit() else delay
            except HTTPError as exc:
                # Unreachable: a few quick tries (a blip, an apiserver restarting), then
                # tell the user at once rather than after a minute of backoff.
                if attempt >= 4 or last:
                    raise ClusterError(
                        f"cannot {what}: the Kubernetes API at {self._host()} cannot be "
                        f"reached ({type(exc).__name__}: {exc}); check the kubeconfig "
                        "context, your network or VPN, and `kubectl cluster-info`"
                    ) from exc
                wait = delay
            # Full jitter: many clients backing off together should not return together.
            pause = random.uniform(wait / 2, wait)
            if deadline is None:
                self._stop.wait(pause)
            else:
                threading.Event().wait(max(0.0, min(pause, deadline - time.monotonic())))
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    def _delete(
        self, kind: str, fn: Callable[..., Any], name: str, deadline: float | None = None
    ) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._call(
                f"delete {kind} {name}",
                fn,
                name,
                self.namespace,
                deadline=deadline,
                # batch/v1 Jobs default to Orphan, which would leave the pods running.
                propagation_policy="Background",
            )
        except ClusterError as exc:
            if not isinstance(exc.__cause__, ApiException) or exc.__cause__.status != 404:
                print(f"k8s_executor: {exc}", file=sys.stderr)

    def _wait_pods_gone(self, timeout: float = 90.0) -> None:
        """After a kill, return once no pod of the run is left (or say it is not)."""
        deadline = time.monotonic() + timeout
        selector = m.run_selector(self._run_id)
        delay = 0.1
        while True:
            try:
                pods = (
                    self._read_json(
                        self._core.list_namespaced_pod,
                        self.namespace,
                        label_selector=selector,
                        _preload_content=False,
                    ).get("items")
                    or []
                )
            except ClusterError:
                return
            if not pods:
                return
            if time.monotonic() > deadline:
                print(
                    f"k8s_executor: {len(pods)} pods of run {self._run_id} are still "
                    f"terminating; `kubectl get pods -n {self.namespace} -l {selector}`",
                    file=sys.stderr,
                )
                return
            # Polling, not a watch: this runs once, after the watches have stopped.
            threading.Event().wait(delay)
            delay = min(delay * 2, 2.0)

    def _host(self) -> str:
        return str(getattr(getattr(self._api, "configuration", None), "host", "?"))

    # -- watching --------------------------------------------------------------------

    def _watch_pods(self) -> None:
        self._watch(self._core.list_namespaced_pod, self._on_pod)

    def _watch_jobs(self) -> None:
        self._watch(self._batch.list_namespaced_job, self._on_job)

    def _watch(
        self, list_fn: Callable[..., Any], handle: Callable[[str, dict[str, Any]], None]
    ) -> None:
        """List, then watch from the list's resourceVersion; relist on 410; back off."""
        from kubernetes.client.exceptions import ApiException

        selector = m.run_selector(self._run_id)
        rv: str | None = None
        delay = 0.2
        while not self._stop.is_set():
            try:
                if rv is None:
                    listing = self._read_json(
                        list_fn, self.namespace, label_selector=selector, _preload_content=False
                    )
                    rv = listing["metadata"]["resourceVersion"]
                    for item in listing.get("items") or []:
                        handle("ADDED", item)
                for event in self._stream(list_fn, selector, rv):
                    kind = event.get("type")
                    obj = event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            rv = None  # history compacted: relist
                            break
                        raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if kind != "BOOKMARK":
                        handle(str(kind), obj)
                delay = 0.2
            except Exception as exc:
                if self._stop.is_set():
                    return
                status = getattr(exc, "status", None)
                if status in (401, 403):
                    # Refused, not overloaded: waiting will not help, and without the
                    # watch no future would ever finish. Say so instead of hanging.
                    error = (
                        exc
                        if isinstance(exc, ClusterError)
                        else _api_error(
                            f"watch the run's {list_fn.__name__.removeprefix('list_namespaced_')}s",
                            exc,
                            self.namespace,
                        )
                    )
                    assert self._listener is not None
                    self._listener.backend_broken(error)
                    return
                if isinstance(exc, ApiException) and exc.status == 410:
                    rv = None
                # Overload, a dropped connection, a restarting apiserver: wait, resume.
                self._stop.wait(random.uniform(delay / 2, delay))
                delay = min(delay * 2, 10.0)

    def _stream(
        self, list_fn: Callable[..., Any], selector: str, rv: str
    ) -> Iterator[dict[str, Any]]:
        # Hand-rolled instead of kubernetes.watch.Watch: with deserialize=False that class
        # fails on ERROR events (it reads a key only set when deserializing), and parsing
        # into models is wasted work here.
        from kubernetes.watch.watch import iter_resp_lines

        resp = list_fn(
            self.namespace,
            label_selector=selector,
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=_WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=(10, _WATCH_SECONDS + 30),
        )
        with self._lock:
            self._responses.add(resp)
        ended = False
        try:
            if self._stop.is_set():
                return
            for line in iter_resp_lines(resp):
                if line:
                    yield json.loads(line)
            ended = True
        finally:
            with self._lock:
                self._responses.discard(resp)
            _finish_response(resp, ended)

    def _read_json(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        resp = self._call("list objects", fn, *args, **kwargs)
        try:
            data: dict[str, Any] = json.loads(resp.data)
        finally:
            resp.release_conn()
        return data

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        with self._lock:
            events = self._tracker.on_pod(kind, pod, time.monotonic())
        phase = (pod.get("status") or {}).get("phase")
        if self.settings.stream_logs and kind != "DELETED" and phase in _STARTED_PHASES:
            # Succeeded/Failed too: a short task may never be seen Running, and a follow of
            # a finished container returns its whole log.
            self._follow_log(pod)
        self._deliver(events)

    def _on_job(self, kind: str, job: dict[str, Any]) -> None:
        with self._lock:
            events = self._tracker.on_job(kind, job, time.monotonic())
        self._deliver(events)

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                events = self._tracker.tick(time.monotonic())
            self._deliver(events)

    def _deliver(self, events: list[Event]) -> None:
        listener = self._listener
        assert listener is not None
        for event in events:
            if isinstance(event, Started):
                listener.index_started(event.batch_id, event.index)
            elif isinstance(event, Finished):
                # Reading the outcome (and, for a failure, the log tail) takes round
                # trips: keep the watch flowing while they happen. The freed slot is
                # handed on meanwhile (the tracker already counts the index finished).
                if self._delivery is not None and not self._stop.is_set():
                    self._delivery.submit(self._finish, event)
                    self._delivery.submit(self._rebalance_soon)
                else:
                    self._finish(event)
                    self._rebalance()
            elif isinstance(event, Stuck):
                self._stuck(event)

    def _finish(self, event: Finished) -> None:
        assert self._listener is not None
        exit = self._with_log_tail(event.batch_id, event.index, event.exit)
        if self.settings.stream_logs:
            self._drain_logs(event.batch_id, event.index)
            exit = dataclasses.replace(exit, log_shown=True)
        self._listener.index_finished(event.batch_id, event.index, exit)

    def _rebalance_soon(self) -> None:
        """Rebalance after a short pause, once for every index finishing meanwhile.

        Runs on a delivery thread: the first finished index waits _REBALANCE_DELAY and
        rebalances for all; the others (delivered meanwhile by the other threads) return
        at once. Without this, every pod that succeeds would cost one PATCH per waiting
        Job (the Job status used to batch them, at the cost of its latency).
        """
        with self._lock:
            if self._rebalance_pending:
                return
            self._rebalance_pending = True
        self._stop.wait(_REBALANCE_DELAY)
        with self._lock:
            self._rebalance_pending = False
        self._rebalance()

    def _demand(self, batch_id: str) -> int:
        job = self._tracker.jobs.get(batch_id)
        return 0 if job is None else sum(not e.finished for e in job.indexes)

    def _slots_in_use(self) -> int:
        # Called with the lock held: slots a Job holds are those its unfinished indexes
        # can still use.
        return sum(min(p, self._demand(b)) for b, p in self._parallelism.items())

    def _rebalance(self) -> None:
        """Give slots freed by finished indexes to Jobs still waiting for some."""
        with self._lock:
            for batch_id in [b for b in self._parallelism if self._demand(b) == 0]:
                del self._parallelism[batch_id]
            free = self._max_workers - self._slots_in_use()
            for batch_id, parallelism in self._parallelism.items():
                if free <= 0:
                    break
                extra = min(free, self._demand(batch_id) - parallelism)
                if extra > 0:
                    # Only ever grow: lowering a running Job's parallelism deletes pods.
                    self._parallelism[batch_id] = parallelism + extra
                    free -= extra
            # Every Job whose planned slots the cluster has not been told yet (grown now,
            # or earlier by a PATCH that failed or found no Job yet).
            behind = [b for b, p in self._parallelism.items() if p != self._sent_parallelism.get(b)]
        for batch_id in behind:
            with self._patch_lock:  # in order, and always the latest value
                with self._lock:
                    value = self._parallelism.get(batch_id)
                    name = self._jobs.get(batch_id)
                    sent = self._sent_parallelism.get(batch_id, 0)
                    exists = batch_id in self._created
                if value is None or name is None or not exists or value == sent:
                    continue
                if self._stop.is_set():
                    continue
                patch: dict[str, Any] = {"parallelism": value}
                if sent == 0:
                    patch["suspend"] = False  # it was created suspended, waiting for slots
                try:
                    self._call(
                        f"{'resume' if sent == 0 else 'raise the parallelism of'} Job {name}",
                        self._batch.patch_namespaced_job,
                        name,
                        self.namespace,
                        {"spec": patch},
                    )
                except ClusterError:
                    continue  # the Job may be gone already; otherwise the next rebalance
                with self._lock:
                    self._sent_parallelism[batch_id] = value

    def _stuck(self, event: Stuck) -> None:
        assert self._listener is not None
        message = (
            f"a worker pod of batch {event.batch_id} could not start for "
            f"{self.settings.timeouts.startup:g}s: {event.reason}: {event.message}"
        )
        if event.reason in IMAGE_REASONS:
            # The image cannot be pulled: no batch of this run can start.
            self._listener.backend_broken(
                PodStartError(
                    message + f" (image {self._image}); check the image name and the "
                    "registry credentials (PodOptions.image_pull_secrets)",
                    reason=event.reason,
                )
            )
            return
        with self._lock:
            job_name = self._jobs.pop(event.batch_id, None)
            job = self._tracker.jobs.get(event.batch_id)
            unfinished = (
                [] if job is None else [i for i, e in enumerate(job.indexes) if not e.finished]
            )
            if job is not None:
                for i in unfinished:
                    job.indexes[i].finished = True
                job.done = True
        if job_name is not None:
            self._delete("Job", self._batch.delete_namespaced_job, job_name)
        hint = {
            "Unschedulable": "; ask for less (Resources) or check Scheduling: "
            "node_selector, tolerations, affinity",
            "CreateContainerConfigError": "; a Secret or ConfigMap it needs is missing "
            "(PodOptions.secrets?)",
            NO_POD: f" (a ResourceQuota, a LimitRange, PodSecurity admission or an admission "
            f"webhook); `kubectl describe job -n {self.namespace} {job_name}` shows the "
            "FailedCreate events that say why",
        }.get(event.reason, "")
        exit = IndexExit(
            exit_code=None, reason=event.reason, message=message + hint, never_started=True
        )
        for i in unfinished:
            self._listener.index_finished(event.batch_id, i, exit)
        self._rebalance()

    def _with_log_tail(self, batch_id: str, index: int, exit: IndexExit) -> IndexExit:
        """Add the last log lines of a failed worker when its status carried none."""
        if exit.exit_code == 0 or exit.log_tail or exit.never_started or self._api is None:
            return exit
        with contextlib.suppress(Exception):
            job_name = m.job_name(self._run_id, batch_id)
            pods = (
                self._read_json(
                    self._core.list_namespaced_pod,
                    self.namespace,
                    label_selector=f"batch.kubernetes.io/job-name={job_name},"
                    f"batch.kubernetes.io/job-completion-index={index}",
                    _preload_content=False,
                ).get("items")
                or []
            )
            if pods:
                pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
                name = pods[-1]["metadata"]["name"]
                tail = self._core.read_namespaced_pod_log(
                    name, self.namespace, container=m.CONTAINER, tail_lines=20
                )
                return IndexExit(
                    exit.exit_code, exit.signal, exit.reason, exit.message, str(tail or "")
                )
        return exit

    # -- logs ------------------------------------------------------------------------

    def _drain_logs(self, batch_id: str, index: int) -> None:
        """Let the streamed logs of an index's pods finish printing (their containers
        have ended, so their follow streams are ending too) before its futures resolve."""
        prefix = f"{m.job_name(self._run_id, batch_id)}-{index}-"
        with self._lock:
            threads = [t for name, t in self._log_threads.items() if name.startswith(prefix)]
        for thread in threads:
            thread.join(timeout=_LOG_DRAIN_SECONDS)

    def _follow_log(self, pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        name = str(meta.get("name"))
        labels = meta.get("labels") or {}
        index = labels.get(m.LABEL_INDEX, "?")
        prefix = f"[{labels.get(m.LABEL_BATCH, '?')}/{index}] "
        with self._lock:
            if name in self._log_threads or self._stop.is_set():
                return
            thread = threading.Thread(
                target=self._print_log, args=(name, prefix), name=f"k8sx-log-{name}", daemon=True
            )
            self._log_threads[name] = thread
        thread.start()

    def _print_log(self, pod_name: str, prefix: str) -> None:
        with contextlib.suppress(Exception):
            resp: Any = self._core.read_namespaced_pod_log(
                pod_name,
                self.namespace,
                container=m.CONTAINER,
                follow=True,
                _preload_content=False,
                # The stream ends when the container does, or is closed at shutdown.
                _request_timeout=_FOLLOW_TIMEOUT,
            )
            # Chunks end anywhere, even inside a UTF-8 sequence: decode incrementally and
            # print whole lines only, each with its prefix.
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            partial = ""
            ended = False
            try:
                for raw in resp.stream(4096):
                    *lines, partial = (partial + decoder.decode(raw)).split("\n")
                    for line in lines:
                        print(prefix + line.rstrip("\r"), file=sys.stderr, flush=True)
                ended = True
                partial += decoder.decode(b"", final=True)
                if partial:
                    print(prefix + partial, file=sys.stderr, flush=True)
            finally:
                _finish_response(resp, ended)


def _finish_response(resp: Any, read_to_end: bool) -> None:
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


def _api_error(what: str, exc: Any, namespace: str) -> ClusterError:
    status = exc.status
    try:
        body = json.loads(exc.body or "{}")
        detail = body.get("message") or exc.reason
    except (TypeError, ValueError):
        detail = exc.reason
    if status == 401:
        return ClusterError(
            f"cannot {what}: the Kubernetes API did not accept our credentials (401: "
            f"{detail}); the token or certificate of the kubeconfig context may have "
            "expired: log in again (e.g. refresh your cloud provider's credentials) and "
            "check with `kubectl get pods`",
            status=status,
        )
    if status == 403:
        return ClusterError(
            f"cannot {what}: the Kubernetes API refused it ({status}: {detail}). The "
            f"executor needs, in namespace {namespace!r}: {_RBAC_TEXT}. "
            "`k8s-executor rbac` prints a Role granting exactly these; "
            f"`kubectl auth can-i create jobs.batch -n {namespace}` checks one",
            status=status,
        )
    if status == 404 and "namespaces" in str(detail):
        return ClusterError(
            f"cannot {what}: {detail}; create the namespace or pass namespace=",
            status=status,
        )
    return ClusterError(f"cannot {what}: {status} {detail}", status=status)


# -- cluster administration (the k8s-executor command) ---------------------------------


@dataclass(frozen=True)
class RunSummary:
    """One run found on the cluster, from its Jobs and Secret."""

    run_id: str
    owner: str
    created: str
    jobs: int
    active: int
    succeeded: int
    failed: int
    finished_jobs: int
    storage: str = ""
    """The run's storage prefix (from its Secret), or "" when unknown."""

    @property
    def finished(self) -> bool:
        """Whether every Job of the run has reached a terminal condition."""
        return self.finished_jobs == self.jobs


class Cluster:
    """Administrative access to the runs in one namespace (for the command line)."""

    def __init__(
        self,
        kubeconfig: str | None = None,
        context: str | None = None,
        namespace: str | None = None,
    ) -> None:
        self._backend = KubernetesBackend(
            KubernetesSettings(
                image="", kubeconfig=kubeconfig, context=context, namespace=namespace
            )
        )
        self._backend._connect()
        self.namespace = self._backend.namespace

    def close(self) -> None:
        """Release the API connection."""
        self._backend._api.close()

    def runs(self) -> list[RunSummary]:
        """Every run with Jobs or a Secret in the namespace, oldest first."""
        b = self._backend
        selector = f"{m.LABEL_MANAGED_BY}={m.MANAGED_BY}"
        jobs = (
            b._read_json(
                b._batch.list_namespaced_job,
                b.namespace,
                label_selector=selector,
                _preload_content=False,
            ).get("items")
            or []
        )
        secrets = (
            b._read_json(
                b._core.list_namespaced_secret,
                b.namespace,
                label_selector=selector,
                _preload_content=False,
            ).get("items")
            or []
        )
        found: dict[str, dict[str, Any]] = {}
        for obj in [*secrets, *jobs]:
            meta = obj.get("metadata") or {}
            run_id = (meta.get("labels") or {}).get(m.LABEL_RUN)
            if not run_id:
                continue
            entry = found.setdefault(
                run_id,
                {
                    "owner": "",
                    "created": meta.get("creationTimestamp") or "",
                    "jobs": 0,
                    "active": 0,
                    "succeeded": 0,
                    "failed": 0,
                    "finished_jobs": 0,
                    "storage": "",
                },
            )
            entry["created"] = min(entry["created"] or "~", meta.get("creationTimestamp") or "~")
            annotations = meta.get("annotations") or {}
            entry["owner"] = annotations.get(m.ANNOTATION_OWNER, entry["owner"])
            if obj.get("kind", "Job") == "Secret" or "spec" not in obj:
                entry["storage"] = annotations.get(m.ANNOTATION_STORAGE, entry["storage"])
                continue
            status = obj.get("status") or {}
            entry["jobs"] += 1
            for key in ("active", "succeeded", "failed"):
                entry[key] += int(status.get(key) or 0)
            if any(
                c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                for c in status.get("conditions") or []
            ):
                entry["finished_jobs"] += 1
        return sorted(
            (RunSummary(run_id=run_id, **entry) for run_id, entry in found.items()),
            key=lambda r: r.created,
        )

    def delete_run(self, run_id: str) -> tuple[list[str], list[str]]:
        """Delete a run's Jobs (pods with them, in the background) and Secrets."""
        b = self._backend
        selector = m.run_selector(run_id)
        deleted: tuple[list[str], list[str]] = ([], [])
        for kind, list_fn, delete_fn, names in (
            ("Job", b._batch.list_namespaced_job, b._batch.delete_namespaced_job, deleted[0]),
            (
                "Secret",
                b._core.list_namespaced_secret,
                b._core.delete_namespaced_secret,
                deleted[1],
            ),
        ):
            items = (
                b._read_json(
                    list_fn, b.namespace, label_selector=selector, _preload_content=False
                ).get("items")
                or []
            )
            for item in items:
                name = item["metadata"]["name"]
                b._delete(kind, delete_fn, name)
                names.append(name)
        return deleted

    # -- checks and logs (`k8s-executor doctor` and `logs`) ---------------------------
    # Doctor's calls are made once, without the backend's retries and with a short
    # timeout, so that it answers quickly when something is down.

    @property
    def host(self) -> str:
        """The API server's URL."""
        return self._backend._host()

    def context_name(self) -> str | None:
        """The kubeconfig context in use (None when there is none, e.g. inside a pod)."""
        from kubernetes import config

        s = self._backend.settings
        if s.context is not None:
            return s.context
        try:
            _, active = config.list_kube_config_contexts(config_file=s.kubeconfig)
        except (config.ConfigException, OSError, TypeError):
            return None
        name = (active or {}).get("name")
        return str(name) if name else None

    def version(self, timeout: float) -> str:
        """The server's version (``gitVersion``): proof that it answers and accepts us."""
        from kubernetes import client

        api = client.VersionApi(self._backend._api)
        info = self._once_json("talk to the Kubernetes API", api.get_code, timeout=timeout)
        return str(info.get("gitVersion") or "?")

    def namespace_exists(self, timeout: float) -> bool | None:
        """Whether the namespace exists; None when these credentials cannot tell.

        Reading a namespace is often not allowed outside admin accounts; then a dry-run
        create of a Secret (which the executor must be allowed anyway) answers 404 in a
        namespace that does not exist.
        """
        b = self._backend
        try:
            self._once_json(
                f"read namespace {b.namespace}", b._core.read_namespace, b.namespace,
                timeout=timeout,
            )  # fmt: skip
            return True
        except ClusterError as exc:
            if exc.status == 404:
                return False
            if exc.status != 403:
                raise
        try:
            self._once_json(
                f"create a Secret in namespace {b.namespace} (dry run)",
                b._core.create_namespaced_secret,
                b.namespace,
                {"metadata": {"generateName": "k8sx-doctor-"}},
                dry_run="All",
                timeout=timeout,
            )
            return True
        except ClusterError as exc:
            if exc.status == 404:
                return False
            if exc.status == 403:
                return None
            raise

    def missing_permissions(self, timeout: float) -> tuple[int, list[str]]:
        """(how many verbs were checked, those not allowed) of the executor's Role.

        The verbs are those of :func:`rbac_manifests` (one list for both), each asked with
        a SelfSubjectAccessReview in the namespace: the server's own answer, for whatever
        grants the current credentials (RoleBindings, ClusterRoleBindings, groups).
        Missing ones read ``verb resource[.group]``, e.g. ``create jobs.batch``.
        """
        from kubernetes import client

        b = self._backend
        authz = client.AuthorizationV1Api(b._api)
        rules = rbac_manifests(b.namespace)[0]["rules"]
        wanted = [
            (group, resource, verb)
            for rule in rules
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        ]

        def allowed(item: tuple[str, str, str]) -> bool:
            group, resource, verb = item
            name, _, subresource = resource.partition("/")
            attributes = {"namespace": b.namespace, "verb": verb, "group": group, "resource": name}
            if subresource:
                attributes["subresource"] = subresource
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            }
            answer = self._once_json(
                f"ask whether we may {verb} {resource}",
                authz.create_self_subject_access_review,
                review,
                timeout=timeout,
            )
            return bool((answer.get("status") or {}).get("allowed"))

        with ThreadPoolExecutor(4, thread_name_prefix="k8sx-access-review") as pool:
            answers = list(pool.map(allowed, wanted))
        missing = [
            f"{verb} {resource}{'.' + group if group else ''}"
            for (group, resource, verb), ok in zip(wanted, answers, strict=True)
            if not ok
        ]
        return len(wanted), missing

    def run_objects(self, run_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """A run's Jobs and pods, as the API returns them (JSON)."""
        b = self._backend
        selector = m.run_selector(run_id)
        found: list[list[dict[str, Any]]] = []
        for list_fn in (b._batch.list_namespaced_job, b._core.list_namespaced_pod):
            listing = b._read_json(
                list_fn, b.namespace, label_selector=selector, _preload_content=False
            )
            found.append(listing.get("items") or [])
        return found[0], found[1]

    def pod_log(
        self,
        name: str,
        *,
        follow: bool = False,
        tail_lines: int | None = None,
        timeout: float = 30.0,
    ) -> Iterator[bytes]:
        """The worker container's log, in chunks as they come; with ``follow``, until the
        container ends (then without a timeout: a task may print nothing for a long while).

        Raises:
            ClusterError: ``status`` 400 while the container has not started, 404 when
                the pod is gone.
        """
        b = self._backend
        options: dict[str, Any] = {"container": m.CONTAINER, "follow": follow}
        if tail_lines is not None:
            options["tail_lines"] = tail_lines
        from urllib3.exceptions import HTTPError

        resp: Any = self._once(
            f"read the log of pod {name}",
            b._core.read_namespaced_pod_log,
            name,
            b.namespace,
            _preload_content=False,
            timeout=None if follow else (timeout, timeout),
            **options,
        )

        ended: list[bool] = []

        def chunks() -> Iterator[bytes]:
            try:
                yield from resp.stream(4096, decode_content=True)
            except HTTPError as exc:
                raise ClusterError(
                    f"the log of pod {name} was cut off ({type(exc).__name__}: {exc}); "
                    "run the command again to read it from the start"
                ) from exc
            else:
                ended.append(True)
            finally:
                _finish_response(resp, bool(ended))

        return chunks()

    def _once_json(
        self, what: str, fn: Callable[..., Any], *args: Any, timeout: float, **kwargs: Any
    ) -> dict[str, Any]:
        resp = self._once(what, fn, *args, timeout=timeout, _preload_content=False, **kwargs)
        try:
            data: dict[str, Any] = json.loads(resp.data)
        finally:
            resp.release_conn()
        return data

    def _once(
        self,
        what: str,
        fn: Callable[..., T],
        *args: Any,
        timeout: float | tuple[float, float] | None,
        **kwargs: Any,
    ) -> T:
        """One call (no retries) bounded by ``timeout`` seconds (or (connect, read));
        errors translated."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        b = self._backend
        try:
            if timeout is not None:
                kwargs["_request_timeout"] = timeout
            return fn(*args, **kwargs)
        except ApiException as exc:
            raise _api_error(what, exc, b.namespace) from exc
        except HTTPError as exc:
            # urllib3 wraps the cause (refused, timed out, unknown host) in layers of
            # repr; the innermost message is the one a person can act on.
            cause: Any = getattr(exc, "reason", None) or exc
            detail = re.sub(r"^(<[^>]*>|\w+\(host=[^)]*\)): ", "", str(cause))
            context = self.context_name()
            raise ClusterError(
                f"cannot {what}: nothing answers at {b._host()}"
                + (f" (context {context})" if context else "")
                + f": {detail}; check the kubeconfig context (--context, KUBECONFIG), "
                "your network or VPN, and `kubectl cluster-info`"
            ) from exc


def rbac_manifests(namespace: str, service_account: str = "k8s-executor") -> list[dict[str, Any]]:
    """A Role with exactly the verbs the executor needs, and its RoleBinding."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "k8s-executor", "namespace": namespace},
        "rules": [
            {"apiGroups": [group], "resources": [resource], "verbs": list(verbs)}
            for group, resource, verbs in RBAC_RULES
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "k8s-executor", "namespace": namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "k8s-executor",
        },
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
    }
    return [role, binding]
