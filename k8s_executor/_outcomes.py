"""Pure: how an index ended (its ``out/<i>`` bytes and its exit) → each task's outcome.

The engine reads ``out/<i>`` from storage (with its lock released) and settles the
futures; the meaning of what it read, and every "worker lost" message, is decided here.
"""

from __future__ import annotations

import signal as signals
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import _payload as wire
from ._batches import Task
from ._contract import INDEX_FAILED, INDEX_FAILURE_LINE, STORAGE_FAILED
from ._pool_errors import WorkerLostError
from .backends._base import IndexExit
from .errors import PodStartError, StorageError

__all__ = ["SHUT_DOWN_MESSAGE", "Outcome", "resolve_index", "shut_down_error", "worker_lost"]

SHUT_DOWN_MESSAGE = "the executor was shut down (killing its workers) before this call finished"

# Why a worker ended, as Kubernetes says it, and what the user can do about it.
_HINTS = {
    "OOMKilled": "; it ran out of memory: give it more (Resources.memory)",
    "DeadlineExceeded": "; its Job ran longer than Timeouts.job_deadline",
    # Disruptions are retried by the pod failure policy: reaching the user, one ended
    # a worker whose Job then finished (deadline, deletion) before a retry ran.
    "EvictionByEvictionAPI": "; it was evicted (node drain or pressure)",
    "PreemptionByScheduler": "; a higher-priority pod preempted it",
    "DeletionByTaintManager": "; its node became unavailable",
    "DeletionByPodGC": "; its node was lost",
}


@dataclass(frozen=True)
class Outcome:
    """What one task's future gets: ``error`` if not None, else ``result``."""

    task: Task
    result: Any = None
    error: BaseException | None = None


def worker_lost(batch_id: str, index: int, n_tasks: int, exit: IndexExit) -> WorkerLostError:
    """The error of the tasks of an index whose worker ended without an outcome."""
    if exit.signal is not None:
        try:
            how = f"was killed by {signals.Signals(exit.signal).name}"
        except ValueError:
            how = f"was killed by signal {exit.signal}"
    elif exit.exit_code is not None:
        how = f"exited with code {exit.exit_code}"
    else:
        how = "ended"
    detail = f" ({exit.reason}: {exit.message})" if exit.reason and exit.message else ""
    if exit.reason and not exit.message:
        detail = f" ({exit.reason})"
    hint = _HINTS.get(exit.reason or "", "")
    if not hint and exit.signal == 9:
        hint = "; it may have run out of memory (give it more) or been killed from outside"
    if not hint and exit.signal == 15:
        # The worker's init passes SIGTERM on: the kubelet was stopping the pod.
        hint = (
            "; its pod was terminated (deleted, evicted or preempted, or its Job was "
            "stopped: suspended, deleted or past its deadline)"
        )
    message = (
        f"the worker of batch {batch_id} index {index} ({n_tasks} task(s)) {how}{detail} "
        f"before reporting its results{hint}"
    )
    if exit.log_tail.strip():
        message += "; the last lines of its stderr:\n" + exit.log_tail.rstrip()
    return WorkerLostError(
        message,
        exit_code=exit.exit_code,
        signal=exit.signal,
        reason=exit.reason,
        log_tail=exit.log_tail,
    )


def _storage_failure(log_tail: str) -> str:
    """The worker's own words (the last line it wrote about the storage)."""
    prefix = "k8s_executor.worker: "
    lines = [line for line in log_tail.splitlines() if line.startswith(prefix)]
    if lines:
        return lines[-1].removeprefix(prefix)
    return "see its log (`k8s-executor logs`)"


def _index_failure(log_tail: str) -> wire.IndexFailure | None:
    """The failure a speculating copy that could not open its payload printed instead of
    writing it (``INDEX_FAILURE_LINE``, then the kind and the message, to the end)."""
    at = log_tail.rfind(INDEX_FAILURE_LINE)
    if at < 0:
        return None
    kind, _, message = log_tail[at + len(INDEX_FAILURE_LINE) :].partition(": ")
    return wire.IndexFailure(kind, message.rstrip())


def shut_down_error() -> WorkerLostError:
    """The error of a call whose worker a killing shutdown ended before it reported."""
    return WorkerLostError(SHUT_DOWN_MESSAGE, reason="Shutdown")


def resolve_index(
    tasks: Sequence[Task],
    exit: IndexExit,
    read: Callable[[], bytes | None],
    *,
    key: bytes,
    batch_id: str,
    index: int,
    n_tasks: int,
    fn_names: Sequence[str],
    read_unstarted: bool = False,
) -> list[Outcome]:
    """The outcome of each of ``tasks`` (the unsettled tasks of one finished index).

    Args:
        tasks: the tasks to resolve.
        exit: how the worker ended.
        read: returns the index's ``out/<i>`` bytes, or None when there are none; called
            only when the worker may have written them. Its errors fail every task.
        key: the run's signing key.
        batch_id: the batch, for messages.
        index: the index, for messages.
        n_tasks: how many tasks the index had in all, for messages.
        fn_names: the batch's function names, by ``Task.fn_index``.
        read_unstarted: read ``out/<i>`` even when ``exit`` never started (the last copy
            of a duplicated index: the other copy ran): its outcome, if there, decides.
    """
    if exit.never_started and not read_unstarted:
        error: BaseException = PodStartError(exit.message, reason=exit.reason or "Unknown")
        return [Outcome(t, error=error) for t in tasks]
    try:
        data = read()
        outcomes = None if data is None else wire.open_outcomes(key, data)
    except Exception as exc:  # StorageError, PayloadError: every task of the index
        return [Outcome(t, error=exc) for t in tasks]
    if outcomes is None and exit.never_started:
        error = PodStartError(exit.message, reason=exit.reason or "Unknown")
        return [Outcome(t, error=error) for t in tasks]
    if outcomes is None and exit.exit_code == STORAGE_FAILED:
        why = _storage_failure(exit.log_tail)
        failed = StorageError(
            f"the worker of batch {batch_id} index {index} could not use the storage: {why}"
        )
        return [Outcome(t, error=failed) for t in tasks]
    failure = _index_failure(exit.log_tail) if exit.exit_code == INDEX_FAILED else None
    if outcomes is None and failure is not None:
        return [Outcome(t, error=failure.to_exception()) for t in tasks]
    if outcomes is None:
        lost = worker_lost(batch_id, index, n_tasks, exit)
        return [Outcome(t, error=lost) for t in tasks]
    if isinstance(outcomes, wire.IndexFailure):
        return [Outcome(t, error=outcomes.to_exception()) for t in tasks]
    by_id = {o.task_id: o for o in outcomes}
    settled: list[Outcome] = []
    for t in tasks:
        outcome = by_id.get(t.task_id)
        name = fn_names[t.fn_index]
        if outcome is None:
            lost = WorkerLostError(f"the worker did not report task {name}")
            settled.append(Outcome(t, error=lost))
        elif outcome.error is not None:
            raised = wire.rebuild_exception(outcome.error, name)
            if exit.log_tail.strip() and not exit.log_shown:
                # What the task printed before it raised is often the clue; nobody has
                # seen it when workers are pods whose logs were not streamed.
                raised.add_note(
                    f"the last lines of its worker's log (batch {batch_id}, "
                    f"index {index}):\n{exit.log_tail.rstrip()}"
                )
            settled.append(Outcome(t, error=raised))
        else:
            assert outcome.results is not None
            try:
                results = wire.load_results(outcome.results, name)
            except Exception as exc:
                settled.append(Outcome(t, error=exc))
            else:
                settled.append(Outcome(t, result=results[0] if t.single else results))
    return settled
