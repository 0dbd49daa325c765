"""The Kubernetes backend: one Indexed Job per batch, one watch of the run's pods and Jobs.

It composes the pure parts (``_manifest``: options → Job dicts; ``_tracker``: pod and Job
states → index events) with the I/O parts (``_kubeapi``: the API boundary, the only
importer of ``kubernetes``; ``_launches``: each launch's Job and the worker slots it holds,
over the pure ``_slots``; ``_logs``: streamed logs and log tails; ``_admission``: the
watches that say why pods do not appear).

Writes are reconciled, not fire-and-forget: the backend keeps the state it wants (which
Jobs exist, with what parallelism) and its periodic tick re-applies whatever a failed
PATCH (a burst of throttling, say) did not get across.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import socket
import sys
import threading
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .._options import PodOptions, Resources, Scheduling, Timeouts
from ..errors import ClusterError, PodStartError
from . import _manifest as m
from ._admission import Admission, start_failure
from ._base import IndexExit, LaunchSpec, Listener, RunContext, waits_for_room
from ._expired import sweep as sweep_expired
from ._kubeapi import KubeApi, Retry
from ._launches import Launches
from ._logs import Logs
from ._tracker import (
    IMAGE_REASONS,
    Event,
    Finished,
    RunTracker,
    Started,
    Stuck,
)

__all__ = ["KubernetesBackend", "KubernetesSettings"]

CLOSE_SECONDS = 20.0
"""close() returns within this many seconds (plus the pods' grace period when it kills
them): a stranded connection or a throttled API may leave objects behind (reported, with
the command that removes them), but never keeps the caller's `with` block open."""
_TICK_SECONDS = 1.0
# Deletes at close are worth more tries than other calls (an object left behind outlives
# the run): as many as fit before CLOSE_SECONDS, at most 2 s apart.
_CLOSING = Retry(attempts=1000, max_delay=2.0)
_STARTED_PHASES = frozenset({"Running", "Succeeded", "Failed"})
_LIVE = frozenset({"Pending", "Running", "Unknown"})


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


def _build_image(settings: KubernetesSettings) -> tuple[str, str]:
    """Snapshot this venv into the registry (nothing to do when it is unchanged); the
    image reference (by digest: every pod runs exactly this snapshot) and its python."""
    # Imported here: only image="auto" needs the builder (and, maybe, podman).
    from ..image import build_image

    assert settings.registry is not None
    ref = build_image(settings.registry, base_image=settings.base_image, platform=settings.platform)
    if ref.built:
        print(f"k8s_executor: built {ref.summary()}", file=sys.stderr)
    # The venv sits at its own absolute path in the image; its python runs the base
    # image's interpreter with the venv's packages.
    return ref.reference, os.path.join(sys.prefix, "bin", "python")


def _wait_pods_gone(api: KubeApi, run_id: str, timeout: float, *, live_only: bool = False) -> None:
    """Return once no pod of the run is left (``live_only``: none Pending or Running),
    or say that some are."""
    deadline = time.monotonic() + timeout
    selector = m.run_selector(run_id)
    delay = 0.1
    while True:
        try:
            pods = api.list(
                "list the run's pods", api.core.list_namespaced_pod, selector, deadline=deadline
            )
        except ClusterError:
            return
        if live_only:
            pods = [p for p in pods if (p.get("status") or {}).get("phase") in _LIVE]
        if not pods:
            return
        if time.monotonic() > deadline:
            print(
                f"k8s_executor: {len(pods)} pods of run {run_id} are still "
                f"terminating; `kubectl get pods -n {api.namespace} -l {selector}`",
                file=sys.stderr,
            )
            return
        # Polling, not a watch: this runs once, after the watches have stopped.
        threading.Event().wait(delay)
        delay = min(delay * 2, 2.0)


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
        self._tracker = RunTracker(
            startup_timeout=settings.timeouts.startup,
            error_timeout=settings.timeouts.startup_error,
        )
        self._listener: Listener | None = None
        self._note = ""  # the waiting note last given to the listener (tick thread only)
        self._run_id = ""
        self._threads: list[threading.Thread] = []
        self._delivery: ThreadPoolExecutor | None = None
        # Below the listener, "batch" means a launch: the tracker, slots and Jobs know only
        # launches (see Launches.batch_index).
        self._launches = Launches(self._lock, self._tracker, self._stop)
        self._secret_created = False
        self._api: KubeApi | None = None
        self._logs: Logs | None = None
        self._image = settings.image
        self._python = settings.python
        self._named = ""  # a named run's name; with _deadline, a detached run's
        self._deadline: float | None = None

    # -- Backend protocol ----------------------------------------------------------

    def default_max_workers(self) -> int:
        """A conservative default; pass max_workers to use more of the cluster."""
        return 16

    def start(self, listener: Listener, max_workers: int, run: RunContext) -> None:
        """Connect, create the run's Secret (key, opted-in storage options), start watching."""
        self._listener = listener
        self._run_id = run.run_id
        self._named, self._deadline = run.named, run.deadline
        if self.settings.image == "auto":
            self._image, self._python = _build_image(self.settings)
        s = self.settings
        api = KubeApi.connect(s.kubeconfig, s.context, s.namespace)
        self._api, self.namespace = api, api.namespace
        self._launches.start(api, max_workers)
        self._logs = Logs(api, run.run_id)
        options = run.storage_options if s.share_storage_options else None
        secret = m.secret_manifest(
            run.run_id,
            run.key,
            options,
            run_url=run.run_url,
            owner=_owner(),
            named=run.named,
            deadline=run.deadline,
        )
        api.create(
            "Secret",
            api.core.create_namespaced_secret,
            api.core.read_namespaced_secret,
            secret,
            stop=self._stop,
        )
        self._secret_created = True
        if run.named:
            # What expired detached runs left (their Secrets): nothing else removes it.
            threading.Thread(
                target=sweep_expired, args=(api,), name="k8sx-sweep", daemon=True
            ).start()
        self._delivery = ThreadPoolExecutor(4, thread_name_prefix="k8sx-deliver")
        admission = Admission(api, self._stop, self._launches.update, self._deliver)
        for target, name in (
            (self._watch_pods, "k8sx-watch-pods"),
            (self._watch_jobs, "k8sx-watch-jobs"),
            (admission.watch_events, "k8sx-watch-events"),
            (self._tick, "k8sx-tick"),
            *([(admission.watch_workloads, "k8sx-watch-workloads")] if s.scheduling.queue else []),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def launch(self, spec: LaunchSpec) -> None:
        """Create the launch's Indexed Job, with as many worker slots as are free now."""
        api = self._connected()
        queued = bool(self.settings.scheduling.queue)
        # A detached run's Jobs start at once with the parallelism they may use (no slot
        # plan: nobody may be left to resume a suspended Job), as Kueue's do.
        unplanned = queued or self._deadline is not None
        # One Job per launch: a whole batch, or the indexes of it no warm worker took
        # (their Job's completion index k runs batch index spec.batch_index(k)).
        name = spec.name
        parallelism = self._launches.add(spec, queued=unplanned)
        params = m.JobParams(
            run_id=spec.run_id,
            batch_id=name,
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
            # A speculative copy never stays warm (see LaunchSpec.speculate).
            timeouts=self.settings.timeouts
            if spec.keep_warm or not spec.speculate
            else dataclasses.replace(self.settings.timeouts, keep_warm=0.0),
            storage_retry=spec.storage_retry,
            batch_indexes=spec.batch_indexes,
            speculate=spec.speculate,
            named=self._named,
            deadline=self._deadline,
            now=time.time(),
        )
        job = m.job_manifest(params)
        self._launches.job_named(name, job["metadata"]["name"])
        try:
            api.create(
                "Job",
                api.batch.create_namespaced_job,
                api.batch.read_namespaced_job,
                job,
                stop=self._stop,
            )
        except ClusterError:
            self._launches.not_created(name)
            raise
        self._launches.created(name, parallelism, queued=unplanned)

    def cancel(self, batch_id: str, indexes: Collection[int]) -> None:
        """Nothing to do: workers honour the skip markers the executor writes."""

    def close(self, *, kill: bool) -> None:
        """Delete the run's Jobs (their pods with them) and Secret; stop watching.

        Bounded: :data:`CLOSE_SECONDS`, plus the pods' grace period with ``kill``."""
        self._stop.set()
        jobs = self._launches.take_jobs()
        api, logs = self._api, self._logs
        deadline = time.monotonic() + CLOSE_SECONDS
        left: list[tuple[str, ClusterError]] = []
        streaming = api is not None and logs is not None and self.settings.stream_logs
        if streaming and not kill and api is not None and logs is not None:
            # Warm workers' pods are alive, and their logs end only with them: end them
            # first, so that their last lines are printed before the streams are cut.
            left = self._delete_jobs(api, jobs, deadline, kill=kill)
            jobs = []
            logs.join(5.0)
        if api is not None:
            api.shutdown_streams()
        if logs is not None:
            logs.close()
        for thread in self._threads:
            # Bounded: a watch whose answer has not arrived yet cannot be interrupted; it
            # closes its connection itself when the answer comes (it sees _stop).
            thread.join(timeout=max(0.0, min(2.0, deadline - time.monotonic())))
        if self._delivery is not None:
            self._delivery.shutdown(wait=True)
        if api is None or logs is None:
            return
        left += self._delete_jobs(api, jobs, deadline, kill=kill)
        if self._secret_created:
            name = m.secret_name(self._run_id)
            error = api.delete(
                "Secret", api.core.delete_namespaced_secret, name, retry=_CLOSING, deadline=deadline
            )
            if error is not None:
                left.append((f"Secret {name}", error))
        for what, error in left:
            print(
                f"k8s_executor: {error}; {what} is left: `k8s-executor cleanup "
                f"{self._run_id} -n {self.namespace} --yes` removes what is left of the run",
                file=sys.stderr,
            )
        logs.join(min(5.0, max(0.0, deadline - time.monotonic())))
        api.close()

    def detach(self) -> None:
        """Stop following a detached run: its Jobs and Secret stay (the Jobs end at the
        run's deadline, ``activeDeadlineSeconds``; what is left after it goes with
        ``k8s-executor cleanup --expired`` or the next client's sweep). Bounded like
        ``close``: the watches are stopped and joined for at most 2 s each. Idempotent:
        a leave interrupted in it calls it again, which repeats each step (none deletes
        anything)."""
        self._stop.set()
        self._launches.take_jobs()
        if self._api is not None:
            self._api.shutdown_streams()
        if self._logs is not None:
            self._logs.close()
        deadline = time.monotonic() + CLOSE_SECONDS
        for thread in self._threads:
            thread.join(timeout=max(0.0, min(2.0, deadline - time.monotonic())))
        if self._delivery is not None:
            self._delivery.shutdown(wait=True)
        if self._api is not None:
            self._api.close()

    def _delete_jobs(
        self, api: KubeApi, jobs: list[str], deadline: float, *, kill: bool
    ) -> list[tuple[str, ClusterError]]:
        """Delete ``jobs`` and wait for their pods to stop; what could not be deleted."""
        left = []
        for name in jobs:
            error = api.delete(
                "Job", api.batch.delete_namespaced_job, name, retry=_CLOSING, deadline=deadline
            )
            if error is not None:
                left.append((f"Job {name}", error))
        if jobs:
            # The run's storage is deleted after this returns: a worker still running
            # (its call cancelled or timed out, its pod now being stopped) must not write
            # it back. With the worker as its container's init, SIGTERM ends it at once;
            # an idle warm worker exits at once too.
            grace = self.settings.timeouts.termination_grace
            _wait_pods_gone(
                api,
                self._run_id,
                timeout=max(0.0, deadline - time.monotonic()) + grace,
                live_only=not kill,
            )
        return left

    # -- connection ------------------------------------------------------------------

    def _connected(self) -> KubeApi:
        assert self._api is not None, "start() first"
        return self._api

    # -- watching --------------------------------------------------------------------

    def _watch_pods(self) -> None:
        api = self._connected()
        self._watch(api, api.core.list_namespaced_pod, self._on_pod)

    def _watch_jobs(self) -> None:
        api = self._connected()
        self._watch(api, api.batch.list_namespaced_job, self._on_job)

    def _watch(self, api: KubeApi, list_fn: Any, handle: Any) -> None:
        try:
            api.watch(list_fn, m.run_selector(self._run_id), handle, self._stop)
        except ClusterError as error:
            # Refused, not overloaded: waiting will not help, and without the watch no
            # future would ever finish. Say so instead of hanging.
            assert self._listener is not None
            self._listener.backend_broken(error)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        with self._lock:
            events = self._tracker.on_pod(kind, pod, time.monotonic())
        phase = (pod.get("status") or {}).get("phase")
        if self.settings.stream_logs and kind != "DELETED" and phase in _STARTED_PHASES:
            # Succeeded/Failed too: a short task may never be seen Running, and a follow of
            # a finished container returns its whole log.
            assert self._logs is not None
            self._logs.follow(pod)
        self._deliver(events)

    def _on_job(self, kind: str, job: dict[str, Any]) -> None:
        with self._lock:
            events = self._tracker.on_job(kind, job, time.monotonic())
        self._deliver(events)

    def _tick(self) -> None:
        while not self._stop.wait(_TICK_SECONDS):
            with self._lock:
                events = self._tracker.tick(time.monotonic())
                note = self._tracker.waiting_note()
            owed = self._launches.owed()
            self._deliver(events)
            # A wait for room (quota, or nodes) is said again every tick: idle warm workers
            # of the run (which may have gone idle since) hold what the waiting pods need.
            again = waits_for_room(note)
            if (note != self._note or again) and self._listener is not None:
                self._note = note
                self._listener.waiting(note)
            if owed and self._delivery is not None:
                # A PATCH that failed (throttled longer than its retries) is owed still:
                # re-send it, off this thread (a throttled API would stall the tick)...
                try:
                    self._delivery.submit(self._launches.rebalance_soon)
                except RuntimeError:
                    # ...unless the pool refuses work (interpreter exit shuts every thread
                    # pool down): then here, or this thread would die and nothing would
                    # ever re-send it.
                    self._launches.rebalance_soon()

    def _deliver(self, events: list[Event]) -> None:
        listener = self._listener
        assert listener is not None
        for event in events:
            if isinstance(event, Started):
                listener.index_started(*self._launches.batch_index(event.batch_id, event.index))
            elif isinstance(event, Finished):
                # Reading the outcome (and, for a failure, the log tail) takes round
                # trips: keep the watch flowing while they happen. The freed slot is
                # handed on meanwhile (the tracker already counts the index finished).
                if self._delivery is not None and not self._stop.is_set():
                    try:
                        self._delivery.submit(self._finish, event)
                        self._delivery.submit(self._launches.rebalance_soon)
                        continue
                    except RuntimeError:
                        # The pool refuses work (interpreter exit shuts every thread pool
                        # down): deliver here, or the event would be lost with its calls.
                        pass
                self._finish(event)
                self._launches.rebalance()
            elif isinstance(event, Stuck):
                self._stuck(event)

    def _finish(self, event: Finished) -> None:
        assert self._listener is not None
        assert self._logs is not None
        exit = self._logs.with_tail(event.batch_id, event.index, event.exit)
        if self.settings.stream_logs:
            self._logs.drain(event.batch_id, event.index)
            exit = dataclasses.replace(exit, log_shown=True)
        batch_index = self._launches.batch_index(event.batch_id, event.index)
        self._listener.index_finished(*batch_index, exit)

    def worker_exit(self, batch_id: str, index: int, exit: IndexExit) -> IndexExit:
        """``exit`` with the log tail of the live pod started for ``index`` of ``batch_id``
        (a warm worker whose later call failed)."""
        found = self._launches.worker(batch_id, index)
        if found is None or self._logs is None:
            return exit
        if self.settings.stream_logs:
            return dataclasses.replace(exit, log_shown=True)
        return self._logs.with_tail(*found, exit)

    # -- pods that cannot start ------------------------------------------------------

    def _stuck(self, event: Stuck) -> None:
        assert self._listener is not None
        api = self._connected()
        if event.reason in IMAGE_REASONS:
            # The image cannot be pulled: no batch of this run can start.
            message = start_failure(event, self._tracker.limit(event.reason), "", "")
            self._listener.backend_broken(
                PodStartError(
                    message + f" (image {self._image}); check the image name and the "
                    "registry credentials (PodOptions.image_pull_secrets)",
                    reason=event.reason,
                )
            )
            return
        job_name, unfinished = self._launches.abandon(event.batch_id)
        if job_name is not None:
            error = api.delete("Job", api.batch.delete_namespaced_job, job_name)
            if error is not None:
                print(f"k8s_executor: {error}", file=sys.stderr)
        limit = self._tracker.limit(event.reason)
        message = start_failure(event, limit, self.namespace, job_name or "")
        exit = IndexExit(exit_code=None, reason=event.reason, message=message, never_started=True)
        for i in unfinished:
            self._listener.index_finished(*self._launches.batch_index(event.batch_id, i), exit)
        self._launches.rebalance()
