"""The Kubernetes backend's launches: each one's Job, the batch indexes it runs, its slots.

A launch is one Indexed Job: a whole batch, or the indexes of a batch that no warm worker
took (its completion index ``k`` runs batch index ``spec.batch_index(k)``). Below the
listener, the tracker, the slot plan and the Jobs know only launches; :class:`Launches`
maps them back to batches, and finds the launch that started the worker of a batch index
in one lookup.

It also keeps the worker slots (the pure plan is ``_slots``): the parallelism each
unfinished Job should have and what the cluster was last told. :meth:`Launches.rebalance`
sends the difference: it resumes a Job created suspended and raises the parallelism of
one that can use more. A PATCH that fails stays owed (:meth:`Launches.owed`), and the
backend's tick sends it again.

Every method takes the lock it is given (the backend's, shared with the tracker it also
guards): none may be called with that lock held.
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import Any

from ..errors import ClusterError
from . import _slots
from ._admission import TrackerUpdate
from ._base import LaunchSpec
from ._kubeapi import KubeApi
from ._tracker import Event, RunTracker

__all__ = ["REBALANCE_DELAY", "Launches"]

REBALANCE_DELAY = 0.1
"""Indexes that finish within this many seconds of each other hand their worker slots on
in one PATCH per waiting Job (pods often end together; a pod start takes far longer)."""


class Launches:
    """The launches of one run, their Jobs and the worker slots they hold.

    Args:
        lock: the backend's lock; it also guards ``tracker``.
        tracker: the run's tracker (its Jobs' unfinished indexes are the slot demand).
        stop: set when the run closes; no PATCH is sent after it.
    """

    def __init__(self, lock: threading.Lock, tracker: RunTracker, stop: threading.Event) -> None:
        self._lock = lock
        self._tracker = tracker
        self._stop = stop
        self._api: KubeApi | None = None
        self._max_workers = 1
        # Launch name -> what was launched, and -> its Job's name.
        self._specs: dict[str, LaunchSpec] = {}
        self._jobs: dict[str, str] = {}
        # (batch, batch index) -> (launch, completion index) of the first launch of it.
        self._workers: dict[tuple[str, int], tuple[str, int]] = {}
        # The slot plan (see _slots): each unfinished Job's parallelism, in launch order,
        # and what the cluster was last told.
        self._parallelism: dict[str, int] = {}
        self._sent: dict[str, int] = {}
        self._created: set[str] = set()  # launches whose Job the API server accepted
        self._rebalance_pending = False
        self._patch_lock = threading.Lock()

    def start(self, api: KubeApi, max_workers: int) -> None:
        """Serve a connected run of at most ``max_workers`` pods."""
        self._api = api
        self._max_workers = max_workers

    # -- launches and their Jobs ---------------------------------------------------

    def add(self, spec: LaunchSpec, *, queued: bool) -> int:
        """Track a new launch; the parallelism its Job is created with (0: suspended).

        ``queued``: Kueue admits it (and would take a parallelism change for a new
        workload), so it is outside the slot plan and never patched."""
        name = spec.name
        with self._lock:
            self._specs[name] = spec
            for k in range(spec.indexes):
                self._workers.setdefault((spec.batch_id, spec.batch_index(k)), (name, k))
            self._tracker.add_batch(name, spec.indexes)
            if queued:
                return min(spec.indexes, self._max_workers)
            parallelism = _slots.initial(
                spec.indexes, self._parallelism, self._demands(), self._max_workers
            )
            self._parallelism[name] = parallelism
            self._sent[name] = parallelism
            return parallelism

    def job_named(self, launch: str, job_name: str) -> None:
        """The launch's Job is called ``job_name``: known before it is created, so that
        close deletes it even if the answer to the create is lost."""
        with self._lock:
            self._jobs[launch] = job_name

    def not_created(self, launch: str) -> None:
        """The launch's Job could not be created: its slots go back to the plan (else
        later Jobs would wait for them for ever). Its name stays known, so that close
        deletes it should a try whose answer was lost have created it after all."""
        with self._lock:
            self._parallelism.pop(launch, None)
            self._sent.pop(launch, None)
            self._tracker.forget(launch)

    def created(self, launch: str, parallelism: int, *, queued: bool) -> None:
        """The launch's Job, created with ``parallelism``, exists: PATCHes can reach it."""
        with self._lock:
            self._created.add(launch)
            # Slots freed while the Job was being created were planned for it, but could
            # not be sent to a Job that did not exist yet.
            late = not queued and self._parallelism.get(launch) != parallelism
        if late:
            self.rebalance()

    def take_jobs(self) -> list[str]:
        """The names of every Job launched, forgotten (the run is closing: to delete)."""
        with self._lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
        return jobs

    def abandon(self, launch: str) -> tuple[str | None, list[int]]:
        """Give up a launch whose pods cannot start: its Job's name (None if forgotten
        already) and its unfinished completion indexes, now counted finished."""
        with self._lock:
            job_name = self._jobs.pop(launch, None)
            job = self._tracker.jobs.get(launch)
            if job is None:
                return job_name, []
            unfinished = [i for i, e in enumerate(job.indexes) if not e.finished]
            for i in unfinished:
                job.indexes[i].finished = True
            job.done = True
        return job_name, unfinished

    def update(self, job_names: Collection[Any], update: TrackerUpdate) -> list[Event]:
        """``update(tracker, launch)`` for the launch whose Job has one of ``job_names``
        (none known: no events), under the lock."""
        with self._lock:
            launch = next((b for b, n in self._jobs.items() if n in job_names), None)
            return [] if launch is None else update(self._tracker, launch)

    def batch_index(self, launch: str, k: int) -> tuple[str, int]:
        """The batch and batch index that completion index ``k`` of a launch's Job runs."""
        with self._lock:
            spec = self._specs.get(launch)
        return (launch, k) if spec is None else (spec.batch_id, spec.batch_index(k))

    def worker(self, batch_id: str, index: int) -> tuple[str, int] | None:
        """The launch and completion index that started a worker for ``index`` of
        ``batch_id`` (the first, if several did), or None."""
        with self._lock:
            return self._workers.get((batch_id, index))

    # -- worker slots ----------------------------------------------------------------

    def planned(self, launch: str) -> int | None:
        """The parallelism the plan gives the launch's Job (None: not in the plan)."""
        with self._lock:
            return self._parallelism.get(launch)

    def owed(self) -> bool:
        """Whether a planned parallelism has not reached its (existing) Job yet."""
        with self._lock:
            return bool(_slots.behind(self._parallelism, self._sent, self._created))

    def rebalance_soon(self) -> None:
        """Rebalance after a short pause, once for every index finishing meanwhile.

        Runs on a delivery thread: the first finished index waits :data:`REBALANCE_DELAY`
        and rebalances for all; the others (delivered meanwhile by the other threads)
        return at once. Without this, every pod that succeeds would cost one PATCH per
        waiting Job (the Job status used to batch them, at the cost of its latency).
        """
        with self._lock:
            if self._rebalance_pending:
                return
            self._rebalance_pending = True
        self._stop.wait(REBALANCE_DELAY)
        with self._lock:
            self._rebalance_pending = False
        self.rebalance()

    def rebalance(self) -> None:
        """Give slots freed by finished indexes to Jobs still waiting for some, and send
        every planned parallelism the cluster has not been told yet."""
        with self._lock:
            self._parallelism = _slots.replan(self._parallelism, self._demands(), self._max_workers)
            # Grown now, or earlier by a PATCH that failed or found no Job yet.
            owed = _slots.behind(self._parallelism, self._sent, self._created)
        api = self._api
        for launch in owed:
            with self._patch_lock:  # in order, and always the latest value
                with self._lock:
                    value = self._parallelism.get(launch)
                    name = self._jobs.get(launch)
                    sent = self._sent.get(launch, 0)
                if value is None or name is None or value == sent or api is None:
                    continue
                if self._stop.is_set():
                    continue
                patch: dict[str, Any] = {"parallelism": value}
                if sent == 0:
                    patch["suspend"] = False  # it was created suspended, waiting for slots
                try:
                    api.call(
                        f"{'resume' if sent == 0 else 'raise the parallelism of'} Job {name}",
                        api.batch.patch_namespaced_job,
                        name,
                        api.namespace,
                        {"spec": patch},
                        stop=self._stop,
                    )
                except ClusterError:
                    continue  # still owed: the next tick sends it again
                with self._lock:
                    self._sent[launch] = value

    def _demands(self) -> dict[str, int]:
        # Called with the lock held: the unfinished indexes of each planned Job.
        demand = {}
        for launch in self._parallelism:
            job = self._tracker.jobs.get(launch)
            demand[launch] = 0 if job is None else sum(not e.finished for e in job.indexes)
        return demand
