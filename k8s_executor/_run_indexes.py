"""What a run's Jobs and pods say about each of its indexes (``k8s-executor logs``):
:func:`run_indexes` gathers every index of the Jobs with its pods, oldest attempt first.
Pure: it reads objects as the API returns them. Re-exported by ``_admin``, the one private
module the command line imports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._contract import LABEL_BATCH, LABEL_INDEX
from .backends._tracker import parse_indexes

__all__ = ["RunIndex", "run_indexes"]

# How many attempts of an index have failed before a pod (annotations the Job controller
# sets on the pods of a Job with backoffLimitPerIndex): orders a task's pods by attempt.
_FAILURES_KEY = "batch.kubernetes.io/job-index-failure-count"
_IGNORED_FAILURES_KEY = "batch.kubernetes.io/job-index-ignored-failure-count"


@dataclass
class RunIndex:
    """One index of one batch: its pods (attempts, oldest first) and what its Job says."""

    batch: str
    index: int
    pods: list[dict[str, Any]] = field(default_factory=list)
    job_says: str = ""
    """``Succeeded`` / ``Failed`` from the Job's completed/failed indexes, else empty."""
    queued: bool = False
    """Its Job is suspended: it waits for a free worker slot (``max_workers``)."""

    @property
    def name(self) -> str:
        """``batch/index``, as ``k8s-executor logs`` names it."""
        return f"{self.batch}/{self.index}"


def run_indexes(
    jobs: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]]
) -> dict[tuple[str, int], RunIndex]:
    """Every index of a run's Jobs, with its pods: (batch, index) → :class:`RunIndex`.

    ``jobs`` and ``pods`` are the run's objects as the API returns them
    (:meth:`Cluster.run_objects`); a pod whose Job is gone still makes its index known.
    """
    found: dict[tuple[str, int], RunIndex] = {}
    for job in jobs:
        batch = ((job.get("metadata") or {}).get("labels") or {}).get(LABEL_BATCH)
        if not batch:
            continue
        spec, status = job.get("spec") or {}, job.get("status") or {}
        succeeded = parse_indexes(status.get("completedIndexes"))
        failed = parse_indexes(status.get("failedIndexes"))
        for i in range(int(spec.get("completions") or 0)):
            says = "Succeeded" if i in succeeded else "Failed" if i in failed else ""
            found[batch, i] = RunIndex(batch, i, job_says=says, queued=bool(spec.get("suspend")))
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        batch = labels.get(LABEL_BATCH)
        index = labels.get(LABEL_INDEX) or (meta.get("annotations") or {}).get(LABEL_INDEX)
        if not batch or not str(index or "").isdigit():
            continue
        key = (batch, int(str(index)))
        found.setdefault(key, RunIndex(*key)).pods.append(pod)
    for entry in found.values():
        entry.pods.sort(key=_attempt_order)
    return found


def _attempt_order(pod: dict[str, Any]) -> tuple[int, str, str]:
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    failures = 0
    for key in (_FAILURES_KEY, _IGNORED_FAILURES_KEY):
        with contextlib.suppress(TypeError, ValueError):
            failures += int(annotations.get(key) or 0)
    return failures, str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")
