"""Removing what detached runs left in the namespace once their deadline has passed.

A detached run's Jobs stop at its deadline (``activeDeadlineSeconds``) and go with their
TTL; its Secret (the workers' key) has no TTL, and nothing of the run is left in the
cluster to delete it. So every client of a named run sweeps, once at its start: the
Secrets (and any Jobs left) of runs whose ``k8s-executor.io/deadline`` has passed by
more than ``_contract.EXPIRY_MARGIN``.
``k8s-executor cleanup --expired`` does the same on demand.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .._contract import (
    ANNOTATION_DEADLINE,
    LABEL_MANAGED_BY,
    LABEL_NAMED,
    LABEL_RUN,
    MANAGED_BY,
    past_deadline,
)
from ._kubeapi import KubeApi
from ._manifest import run_selector

__all__ = ["expired_runs", "sweep"]

_log = logging.getLogger(__name__)

SWEEP_SECONDS = 20.0
"""The longest a sweep takes (its API calls' deadline)."""


def expired_runs(secrets: list[dict[str, Any]], now: float) -> list[str]:
    """The run ids of detached runs' Secrets whose deadline is before ``now`` by more than
    ``_contract.EXPIRY_MARGIN`` (the clocks' skew)."""
    runs = []
    for secret in secrets:
        meta = secret.get("metadata") or {}
        text = (meta.get("annotations") or {}).get(ANNOTATION_DEADLINE)
        run_id = (meta.get("labels") or {}).get(LABEL_RUN)
        try:
            if run_id and text is not None and past_deadline(float(text), now):
                runs.append(str(run_id))
        except ValueError:
            continue
    return sorted(set(runs))


def sweep(api: KubeApi, now: float | None = None) -> list[str]:
    """Delete the Jobs and Secrets of every expired detached run in the namespace; the run
    ids swept. Never raises (a run not removed now is tried by the next sweep)."""
    now = time.time() if now is None else now
    deadline = time.monotonic() + SWEEP_SECONDS
    selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_NAMED}"
    try:
        secrets = api.list(
            "list the Secrets of named runs",
            api.core.list_namespaced_secret,
            selector,
            deadline=deadline,
        )
        runs = expired_runs(secrets, now)
        for run_id in runs:
            for kind, list_fn, delete_fn in (
                ("Job", api.batch.list_namespaced_job, api.batch.delete_namespaced_job),
                ("Secret", api.core.list_namespaced_secret, api.core.delete_namespaced_secret),
            ):
                items = api.list(f"list {kind}s", list_fn, run_selector(run_id), deadline=deadline)
                for item in items:
                    error = api.delete(kind, delete_fn, item["metadata"]["name"], deadline=deadline)
                    if error is not None:
                        _log.warning("cannot delete an expired run's %s: %s", kind, error)
    except Exception as exc:  # a thread of its own: nobody to raise to, tried next time
        _log.warning("cannot sweep the expired detached runs: %s", exc)
        return []
    return runs
