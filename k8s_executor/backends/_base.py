"""The contract between the executor and the places where workers run.

A backend starts the indexes of a batch as workers (``python -m k8s_executor.worker``) and
reports, through a :class:`Listener`, when each index starts and how it ended. It never
reads outcomes or touches futures: the executor's engine (``_run.Run``) does that, and
the listener is its part (``_reports.Reports``), not the user's ``KubernetesExecutor``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._options import StorageRetry

__all__ = [
    "QUOTA_WAIT",
    "UNSCHEDULABLE",
    "Backend",
    "IndexExit",
    "LaunchSpec",
    "Listener",
    "RunContext",
    "waits_for_room",
]

QUOTA_WAIT = "waiting for quota"
"""How a waiting note (``Listener.waiting``) begins when pods of the run are refused for a
quota that is full only because pods use it: the engine then releases idle warm workers."""
UNSCHEDULABLE = "Unschedulable"
"""How the waiting note of a pod the scheduler cannot place on any node begins."""


def waits_for_room(note: str) -> bool:
    """Whether a waiting note says pods of the run wait for room (a full quota, or no
    node with room), which idle warm workers of the run may be holding."""
    return note.startswith((QUOTA_WAIT, UNSCHEDULABLE))


@dataclass(frozen=True)
class RunContext:
    """What a backend needs to know about the run it serves."""

    run_id: str
    run_url: str
    """Storage URL of the run (``<storage>/<run-id>``)."""
    key: bytes
    """The run's signing key; the backend delivers it to workers without exposing it."""
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    named: str = ""
    """The name of a named run, if it is one."""
    deadline: float | None = None
    """A detached run's deadline (seconds since the epoch): its workers must not depend
    on the client (no heartbeat, no parent, no slots held back for later) and stop then.
    A backend that supports it has a ``detach()`` method: stop following the run, leave
    its workers (and what they need: the key's Secret) running."""
    log_dir: str = ""
    """A detached run: where workers on this machine (the local backend's) may write
    their output, which no client may be left to read."""


@dataclass(frozen=True)
class LaunchSpec:
    """One batch to run: ``indexes`` workers, each given its ``JOB_COMPLETION_INDEX``."""

    run_id: str
    batch_id: str
    batch_url: str
    """Storage URL of the batch (``<storage>/<run-id>/<batch>``), the worker's argument."""
    indexes: int
    key: bytes
    """The run's signing key; the backend delivers it to workers without exposing it."""
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    storage_retry: StorageRetry = field(default_factory=StorageRetry)
    """How workers retry transient storage errors (``K8S_EXECUTOR_STORAGE_RETRY``)."""
    batch_indexes: tuple[int, ...] = ()
    """The batch indexes these ``indexes`` workers run, when only some of the batch's
    (the others went to warm workers): worker ``k`` runs ``batch_indexes[k]``. Empty: all,
    in order. Reported to the listener as batch indexes."""
    launch_id: str = ""
    """A name for this launch, unique in the run (a Job's name part); empty: ``batch_id``."""
    keep_warm: float = 0.0
    """Seconds a worker stays warm after its index (``K8S_EXECUTOR_KEEP_WARM``)."""
    speculate: bool = False
    """An index may run in two copies at once (``Batching.speculate``): its workers write
    their outcome first-writer-wins and stop once a copy has (``K8S_EXECUTOR_SPECULATE``).
    A launch that is such a copy has ``keep_warm`` 0."""

    @property
    def name(self) -> str:
        """``launch_id``, or ``batch_id`` when the launch runs the whole batch."""
        return self.launch_id or self.batch_id

    def batch_index(self, k: int) -> int:
        """The batch index worker ``k`` of this launch runs."""
        return self.batch_indexes[k] if self.batch_indexes else k


@dataclass(frozen=True)
class IndexExit:
    """How the worker of one index ended, as the backend saw it."""

    exit_code: int | None
    """The worker's exit code, or None when it was killed by a signal or never ran."""
    signal: int | None = None
    """The number of the signal that killed it, if any."""
    reason: str | None = None
    """A short cause from the backend, e.g. ``"OOMKilled"``, ``"Evicted"``, ``"Killed"``."""
    message: str = ""
    """Details from the backend, e.g. a Kubernetes status message."""
    log_tail: str = ""
    """The last lines the worker wrote to stderr (on Kubernetes: its pod log)."""
    log_shown: bool = False
    """The user has seen the worker's output already (forwarded or streamed), so errors
    need not repeat ``log_tail``."""
    never_started: bool = False
    """The worker could not start at all (e.g. unschedulable); ``reason`` says why."""


class Listener(Protocol):
    """What the engine of an executor exposes to its backend (private: implemented by
    ``_reports.Reports``). Calls may come from any thread; none waits for the engine's lock
    behind storage I/O."""

    def index_started(self, batch_id: str, index: int) -> bool:
        """An index is about to start; return False if it should be skipped (cancelled)."""

    def index_finished(self, batch_id: str, index: int, exit: IndexExit) -> None:
        """The worker of an index ended (its outcome, if any, is in storage). Called once
        for every launched index, declined ones included: with warm workers the engine
        learns of most outcomes from storage first, and of the worker's end here."""

    def backend_broken(self, error: BaseException) -> None:
        """Nothing can run any more; every unfinished future should fail with ``error``."""

    def waiting(self, note: str) -> None:
        """Why the calls not started yet wait, as the cluster says (a pod's start-up
        problem, ``waiting for quota: ...``, ``queued: ...``); "" once nothing known holds
        them up. Shown on the progress bars."""


class Backend(Protocol):
    """Where workers run: local subprocesses, or pods of Kubernetes Indexed Jobs."""

    name: str

    def default_max_workers(self) -> int:
        """How many workers run at once when the user gives no ``max_workers``."""

    heartbeat_interval: float | None
    """How often the executor must refresh the run's heartbeat, or None if the backend
    needs none (local workers watch their parent process instead)."""

    batch_window: float
    """Seconds submits wait for others to join their batch unless ``Batching.window``
    says otherwise: about what starting a batch costs on this backend, in proportion."""

    def start(self, listener: Listener, max_workers: int, run: RunContext) -> None:
        """Begin serving; ``listener`` receives every event from now on."""

    def launch(self, spec: LaunchSpec) -> None:
        """Start the indexes of a batch (as slots allow); must not block on them."""

    def cancel(self, batch_id: str, indexes: Collection[int]) -> None:
        """Every call of these indexes was cancelled before they started (a hint: the
        executor has also written skip markers the workers honour, and will decline the
        indexes in ``index_started``). Backends must still report them to the listener."""

    def close(self, *, kill: bool) -> None:
        """Stop; with ``kill``, end running workers. Returns when no worker is left."""

    # Optional (warm workers): def worker_exit(self, batch_id: str, index: int,
    # exit: IndexExit) -> IndexExit -- ``exit`` with what the backend knows of the live
    # worker started for ``index`` of ``batch_id`` (its log tail, whether its log was
    # shown), for a call that worker ran after its own index and that failed.
