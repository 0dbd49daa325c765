"""Garbage collector and TTL-after-finished controller of kubesim.

- Background propagation: dependents whose owner (by ``ownerReferences[].uid``) no longer
  exists are deleted. Pods with no ownerReferences at all are never touched (the store's Orphan
  delete strips the references, see CONTRACT.md).
- Foreground propagation: an owner with ``deletionTimestamp`` and the ``foregroundDeletion``
  finalizer gets its dependents deleted; once no dependent with ``blockOwnerDeletion: true`` is
  left in storage, the finalizer is removed and the store drops the owner (DGC).
- ``ttlSecondsAfterFinished``: a finished Job is deleted with Background propagation that many
  seconds after its Complete/Failed condition (clock-driven, so FakeClock tests are instant).
"""

from __future__ import annotations

import logging
import queue
import threading
from datetime import datetime, timedelta
from typing import Any

from .clock import Clock, TimerHandle
from .errors import ApiError

__all__ = ["GarbageCollector", "ttl_expiry"]

_log = logging.getLogger(__name__)

Obj = dict[str, Any]
FOREGROUND = "foregroundDeletion"


def _parse(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def ttl_expiry(job: Obj) -> datetime | None:
    """When the TTL controller may delete ``job`` (None: not finished or no TTL)."""
    ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
    if ttl is None:
        return None
    status = job.get("status") or {}
    finished: datetime | None = None
    for cond in status.get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            finished = _parse(cond.get("lastTransitionTime"))
    if finished is None:
        return None
    # The TTL controller prefers completionTime for Complete Jobs (ttlafterfinished jobFinishTime).
    finished = _parse(status.get("completionTime")) or finished
    return finished + timedelta(seconds=int(ttl))


class GarbageCollector:
    """Owner-reference GC plus the TTL-after-finished controller."""

    def __init__(self, store: Any, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._queue: queue.Queue[tuple[str, str, str] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Any = None
        self._timers: dict[tuple[str, str], TimerHandle] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self._unsubscribe = self.store.subscribe(self._on_event)
        self._thread = threading.Thread(target=self._loop, name="kubesim-gc", daemon=True)
        self._thread.start()
        self._queue.put(("scan", "", ""))

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        with self._lock:
            for handle in self._timers.values():
                handle.cancel()
            self._timers.clear()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _on_event(self, event_type: str, resource: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace", "")
        if resource == "jobs":
            if event_type == "DELETED":
                self._queue.put(("orphans", namespace, ""))
            else:
                self._queue.put(("job", namespace, meta.get("name", "")))
        elif resource == "pods":
            if meta.get("ownerReferences"):
                self._queue.put(("dependent", namespace, meta.get("name", "")))
            if event_type == "DELETED":
                for ref in meta.get("ownerReferences") or []:
                    if ref.get("kind") == "Job":
                        self._queue.put(("job", namespace, ref.get("name", "")))

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._handle(*item)
            except ApiError as exc:
                _log.debug("gc %s: %s", item, exc)
            except Exception:
                _log.exception("gc %s crashed", item)

    def _handle(self, kind: str, namespace: str, name: str) -> None:
        if kind == "scan":
            jobs, _ = self.store.list("jobs")
            for job in jobs:
                self._job(job)
            self._orphans(None)
        elif kind == "orphans":
            self._orphans(namespace)
        elif kind == "dependent":
            try:
                pod = self.store.get("pods", namespace, name)
            except ApiError:
                return
            self._collect_if_orphaned(pod, self._live_job_uids(namespace))
        elif kind == "job":
            try:
                job = self.store.get("jobs", namespace, name)
            except ApiError:
                return
            self._job(job)

    def _live_job_uids(self, namespace: str | None) -> set[str]:
        jobs, _ = self.store.list("jobs", namespace)
        return {j["metadata"]["uid"] for j in jobs}

    def _orphans(self, namespace: str | None) -> None:
        live = self._live_job_uids(namespace)
        pods, _ = self.store.list("pods", namespace)
        for pod in pods:
            self._collect_if_orphaned(pod, live)

    def _collect_if_orphaned(self, pod: Obj, live_jobs: set[str]) -> None:
        meta = pod["metadata"]
        refs = [r for r in meta.get("ownerReferences") or [] if r.get("kind") == "Job"]
        if not refs or meta.get("deletionTimestamp"):
            return
        # A dependent goes when all of its owners are gone (attemptToDeleteItem).
        if any(r.get("uid") in live_jobs for r in refs):
            return
        self._delete_pod(meta["namespace"], meta["name"])

    def _delete_pod(self, namespace: str, name: str) -> None:
        try:
            self.store.delete("pods", namespace, name, propagation_policy="Background")
        except ApiError as exc:
            if exc.code != 404:
                raise

    def _job(self, job: Obj) -> None:
        meta = job["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if meta.get("deletionTimestamp") and FOREGROUND in (meta.get("finalizers") or []):
            self._foreground(job)
            return
        expiry = ttl_expiry(job)
        if expiry is None or meta.get("deletionTimestamp"):
            return
        left = (expiry - self.clock.now()).total_seconds()
        if left > 0:
            self._wake(namespace, name, left)
            return
        try:
            self.store.delete(
                "jobs",
                namespace,
                name,
                propagation_policy="Background",
                preconditions={"uid": meta["uid"]},
            )
        except ApiError as exc:
            if exc.code not in (404, 409):
                raise

    def _wake(self, namespace: str, name: str, delay: float) -> None:
        key = (namespace, name)
        with self._lock:
            old = self._timers.pop(key, None)
            if old is not None:
                old.cancel()
            self._timers[key] = self.clock.call_later(
                delay, lambda: self._queue.put(("job", namespace, name))
            )

    def _foreground(self, job: Obj) -> None:
        meta = job["metadata"]
        uid = meta["uid"]
        pods, _ = self.store.list("pods", meta["namespace"])
        blocking = 0
        for pod in pods:
            refs = [r for r in pod["metadata"].get("ownerReferences") or [] if r.get("uid") == uid]
            if not refs:
                continue
            if any(r.get("blockOwnerDeletion") for r in refs):
                blocking += 1
            if not pod["metadata"].get("deletionTimestamp"):
                self._delete_pod(pod["metadata"]["namespace"], pod["metadata"]["name"])
        if blocking:
            return  # pod DELETED events bring us back here

        def release(obj: Obj) -> bool:
            finalizers = obj["metadata"].get("finalizers") or []
            if FOREGROUND not in finalizers:
                return False
            obj["metadata"]["finalizers"] = [f for f in finalizers if f != FOREGROUND]
            return True

        try:
            self.store.mutate("jobs", meta["namespace"], meta["name"], release)
        except ApiError as exc:
            if exc.code != 404:
                raise
