"""The worker's contract, in one place: what the client, the Job manifest and the worker
must agree on (exit codes, environment variable names, label and annotation keys, and
when a detached run past its deadline may be swept).

The exit codes sit in a range user code rarely passes to ``os._exit`` (3 or 7 would be
plausible), because the pod failure policy acts on them: a user's own exit code must not
be taken for "outcome written, do not retry" or, worse, "client gone, fail the whole Job".

Imported by the worker: standard library only.
"""

from typing import Final

# -- exit codes of ``python -m k8s_executor.worker`` -----------------------------------------

OK: Final = 0
"""Every task succeeded; the outcome is written."""
TASK_FAILED: Final = 83
"""The outcome is written and some task raised: retrying would only repeat it."""
INDEX_FAILED: Final = 84
"""The index could not run at all (bad payload, version mismatch); a JSON failure is written,
except by a copy of a speculating run, which writes instead, last on its stderr, a line
starting with ``INDEX_FAILURE_LINE`` and the failure's kind: ``version: ...``."""
INDEX_FAILURE_LINE: Final = "k8s_executor.worker: cannot run the index: "
USAGE: Final = 85
"""The worker was invoked wrongly (missing index or key)."""
ORPHANED: Final = 86
"""Local backend: the client process that started the worker is gone."""
ABANDONED: Final = 87
"""The client's heartbeat stopped: the run is abandoned, its Job should fail."""
STORAGE_FAILED: Final = 88
"""The storage failed the worker past its retries (a revoked permission, a bucket gone):
no outcome could be written; the last line of its stderr says why."""

NOT_RETRIED: Final = (TASK_FAILED, INDEX_FAILED, USAGE, STORAGE_FAILED)

# -- the worker's environment --------------------------------------------------------------

ENV_INDEX: Final = "JOB_COMPLETION_INDEX"
"""The index to run (set by the Kubernetes Job controller, or by the local backend)."""
ENV_KEY: Final = "K8S_EXECUTOR_KEY"
"""The run's signing key in hex (from the run Secret on Kubernetes)."""
ENV_KEY_FILE: Final = "K8S_EXECUTOR_KEY_FILE"
"""A file holding the key instead."""
ENV_STORAGE_OPTIONS: Final = "K8S_EXECUTOR_STORAGE_OPTIONS"
"""JSON object of fsspec storage options (also read by the client, as a default)."""
ENV_STORAGE_RETRY: Final = "K8S_EXECUTOR_STORAGE_RETRY"
"""JSON of the executor's ``StorageRetry``."""
ENV_PARENT_PID: Final = "K8S_EXECUTOR_PARENT_PID"
"""Local backend: the worker exits when this process is no longer its parent."""
ENV_HEARTBEAT_GRACE: Final = "K8S_EXECUTOR_HEARTBEAT_GRACE"
"""Seconds without a client heartbeat after which the worker gives up (exit ABANDONED)."""
ENV_KEEP_WARM: Final = "K8S_EXECUTOR_KEEP_WARM"
"""Seconds a worker stays warm after its index, taking further calls of the run (``0`` or
unset: it exits at once). See ``_warm`` for the protocol."""
ENV_INDEXES: Final = "K8S_EXECUTOR_INDEXES"
"""Comma-separated batch indexes, when a Job runs only some of its batch's indexes (the
others went to warm workers): Job completion index ``k`` runs batch index ``list[k]``."""
ENV_RUN_DEADLINE: Final = "K8S_EXECUTOR_RUN_DEADLINE"
"""A detached run's deadline (seconds since the epoch): the worker exits (ABANDONED) then,
whatever it is doing; it watches no heartbeat and no parent."""
ENV_INIT: Final = "K8S_EXECUTOR_INIT"
"""``1``: run as the container's init; ``0``: never; unset: only as PID 1 (``_init``)."""
ENV_SPECULATE: Final = "K8S_EXECUTOR_SPECULATE"
"""``1``: the index may run in two copies at once (``Batching.speculate``): the worker
writes ``out/<index>`` only if no copy has, and stops once one has (``_first_write``)."""

# -- labels and annotations on Jobs, pods and Secrets -----------------------------------------

MANAGED_BY: Final = "k8s-executor"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_RUN: Final = "k8s-executor.io/run"
LABEL_BATCH: Final = "k8s-executor.io/batch"
ANNOTATION_OWNER: Final = "k8s-executor.io/owner"
ANNOTATION_STORAGE: Final = "k8s-executor.io/storage"
LABEL_NAMED: Final = "k8s-executor.io/named"
"""The name of the named run a detached run's Jobs and Secret belong to."""
ANNOTATION_DEADLINE: Final = "k8s-executor.io/deadline"
"""A detached run's deadline (seconds since the epoch), on its Jobs and Secret."""
LABEL_QUEUE: Final = "kueue.x-k8s.io/queue-name"
"""The Kueue LocalQueue of a Job (``Scheduling.queue``)."""
LABEL_INDEX: Final = "batch.kubernetes.io/job-completion-index"
"""Set by the Job controller on every pod of an Indexed Job (label and annotation)."""
CONTAINER: Final = "worker"
"""The name of the worker's container in every pod."""

# -- detached runs past their deadline ---------------------------------------------------------

EXPIRY_MARGIN = 900.0
"""Seconds past a detached run's deadline (``ANNOTATION_DEADLINE``, its sessions'
records) before a sweep removes what it left (its storage, named folder, Jobs and
Secret): the sweep at a named run's start, the Kubernetes backend's, and ``k8s-executor
cleanup --expired``. The deadline is the launching client's clock, its workers stop by
their nodes' clocks, and the sweeper's clock may run ahead of both: a skew under this
margin never deletes a live run. (Not ``Final``: tests that sweep at once set it.)"""


def past_deadline(deadline: float | None, now: float) -> bool:
    """Whether a detached run whose deadline is ``deadline`` (None: not detached) may be
    swept at ``now`` (the sweeper's clock): ``deadline + EXPIRY_MARGIN < now``."""
    return deadline is not None and deadline + EXPIRY_MARGIN < now
