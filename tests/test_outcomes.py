"""_outcomes: how an index's ``out/<i>`` bytes and its worker's exit become each task's
outcome, and what a lost worker's error says. Pure: no storage, no backend."""

from __future__ import annotations

import pickle
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from typing import Any

import cloudpickle
import pytest

from k8s_executor import (
    PayloadError,
    PodStartError,
    StorageError,
    VersionMismatchError,
    WorkerLostError,
)
from k8s_executor import _payload as wire
from k8s_executor._batches import Task
from k8s_executor._outcomes import Outcome, resolve_index, shut_down_error, worker_lost
from k8s_executor.backends._base import IndexExit

KEY = wire.new_key()


def task(task_id: int, *, single: bool = True) -> Task:
    return Task(Future(), len, b"", 1, single, task_id=task_id, fn_index=0)


def resolve(tasks: list[Task], exit: IndexExit, data: bytes | None) -> list[Outcome]:
    return resolve_index(
        tasks,
        exit,
        lambda: data,
        key=KEY,
        batch_id="b00003",
        index=1,
        n_tasks=len(tasks),
        fn_names=["tests.work"],
    )


def results(values: list[Any]) -> bytes:
    blob: bytes = cloudpickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)
    return blob


# -- worker_lost: one row per way a worker can end without an outcome -----------------


@pytest.mark.parametrize(
    ("exit", "expected"),
    [
        (
            IndexExit(None, signal=9),
            "was killed by SIGKILL before reporting its results; it "
            "may have run out of memory (give it more) or been killed from outside",
        ),
        (
            IndexExit(None, signal=15),
            "was killed by SIGTERM before reporting its results; its pod was terminated",
        ),
        (IndexExit(None, signal=200), "was killed by signal 200 before"),
        (
            IndexExit(137, reason="OOMKilled"),
            "exited with code 137 (OOMKilled) before "
            "reporting its results; it ran out of memory: give it more (Resources.memory)",
        ),
        (
            IndexExit(None, reason="DeadlineExceeded", message="Job was active longer"),
            "ended (DeadlineExceeded: Job was active longer) before reporting its results; "
            "its Job ran longer than Timeouts.job_deadline",
        ),
        (IndexExit(1, reason="Error"), "exited with code 1 (Error) before reporting its results"),
        (IndexExit(None, reason="DeletionByPodGC"), "; its node was lost"),
    ],
)
def test_worker_lost_says_how_and_why(exit: IndexExit, expected: str) -> None:
    error = worker_lost("b00003", 1, 4, exit)
    assert isinstance(error, BrokenProcessPool)  # existing except clauses keep working
    assert str(error).startswith("the worker of batch b00003 index 1 (4 task(s)) ")
    assert expected in str(error)
    assert (error.exit_code, error.signal, error.reason) == (
        exit.exit_code,
        exit.signal,
        exit.reason,
    )


def test_worker_lost_ends_with_the_log_tail() -> None:
    error = worker_lost("b00000", 0, 1, IndexExit(1, log_tail="line 1\nMemoryError\n"))
    assert str(error).endswith("; the last lines of its stderr:\nline 1\nMemoryError")
    assert error.log_tail == "line 1\nMemoryError\n"


def test_shut_down_error() -> None:
    error = shut_down_error()
    assert error.reason == "Shutdown" and "shut down (killing its workers)" in str(error)


# -- resolve_index ---------------------------------------------------------------------


def test_results_of_a_submit_and_of_a_map_chunk() -> None:
    submit, chunk = task(7), task(8, single=False)
    data = wire.seal_outcomes(
        KEY,
        [wire.TaskOutcome(7, results([49]), None), wire.TaskOutcome(8, results([1, 4]), None)],
    )
    settled = resolve([submit, chunk], IndexExit(0), data)
    assert [(o.task, o.result, o.error) for o in settled] == [
        (submit, 49, None),
        (chunk, [1, 4], None),
    ]


def test_a_raised_exception_is_itself_with_the_remote_traceback_and_the_log() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        error = wire.capture_error(wire.RAISED, exc)
    data = wire.seal_outcomes(KEY, [wire.TaskOutcome(7, None, error)])
    (outcome,) = resolve([task(7)], IndexExit(83, log_tail="looking up...\n"), data)
    assert isinstance(outcome.error, KeyError)
    assert isinstance(outcome.error.__cause__, _RemoteTraceback)
    assert outcome.error.__notes__ == [
        "the last lines of its worker's log (batch b00003, index 1):\nlooking up..."
    ]
    # Output the user has already seen (streamed, forwarded) is not repeated.
    (outcome,) = resolve([task(7)], IndexExit(83, log_tail="x\n", log_shown=True), data)
    assert not getattr(outcome.error, "__notes__", None)


def test_no_outcome_means_the_worker_was_lost() -> None:
    tasks = [task(1), task(2)]
    settled = resolve(tasks, IndexExit(None, signal=9), None)
    assert [o.task for o in settled] == tasks
    assert all(isinstance(o.error, WorkerLostError) for o in settled)
    assert "(2 task(s)) was killed by SIGKILL" in str(settled[0].error)


def test_a_task_missing_from_the_outcome_is_lost_alone() -> None:
    data = wire.seal_outcomes(KEY, [wire.TaskOutcome(1, results([1]), None)])
    ok, missing = resolve([task(1), task(2)], IndexExit(0), data)
    assert ok.result == 1 and ok.error is None
    assert isinstance(missing.error, WorkerLostError)
    assert str(missing.error) == "the worker did not report task tests.work"


def test_a_worker_that_never_started() -> None:
    reads: list[int] = []

    def read() -> bytes | None:
        reads.append(1)
        return None

    exit = IndexExit(None, reason="ImagePullBackOff", message="no such image", never_started=True)
    (outcome,) = resolve_index(
        [task(1)],
        exit,
        read,
        key=KEY,
        batch_id="b",
        index=0,
        n_tasks=1,
        fn_names=["f"],
    )
    assert isinstance(outcome.error, PodStartError)
    assert outcome.error.reason == "ImagePullBackOff" and "no such image" in str(outcome.error)
    assert reads == []  # nothing to read: no storage call


@pytest.mark.parametrize("written", [True, False])
def test_an_unstarted_last_copy_of_a_duplicated_index_reads_the_other_copys_outcome(
    written: bool,
) -> None:
    """The original ran (its own read of out/<i> failed, say), then the duplicate's launch
    failed and reported last (review finding 7): the outcome written decides; none
    written, the duplicate's PodStartError."""
    data = wire.seal_outcomes(KEY, [wire.TaskOutcome(1, results([9]), None)])
    exit = IndexExit(None, reason="Unschedulable", message="no node fits", never_started=True)
    (outcome,) = resolve_index(
        [task(1)],
        exit,
        lambda: data if written else None,
        key=KEY,
        batch_id="b",
        index=0,
        n_tasks=1,
        fn_names=["f"],
        read_unstarted=True,
    )
    if written:
        assert (outcome.result, outcome.error) == (9, None)
    else:
        assert isinstance(outcome.error, PodStartError)
        assert outcome.error.reason == "Unschedulable"


@pytest.mark.parametrize(
    ("failure", "expected"),
    [("version", VersionMismatchError), ("storage", StorageError), ("payload", PayloadError)],
)
def test_an_index_failure_fails_every_task(failure: str, expected: type[Exception]) -> None:
    data = wire.seal_index_failure(KEY, wire.IndexFailure(failure, "why"))
    settled = resolve([task(1), task(2)], IndexExit(84), data)
    assert all(type(o.error) is expected for o in settled)
    assert "the worker could not run its tasks: why" in str(settled[0].error)


def test_a_read_or_payload_error_fails_every_task() -> None:
    def unreadable() -> bytes:
        raise StorageError("cannot read b00003/out/1")

    settled = resolve_index(
        [task(1), task(2)],
        IndexExit(0),
        unreadable,
        key=KEY,
        batch_id="b00003",
        index=1,
        n_tasks=2,
        fn_names=["f"],
    )
    assert [str(o.error) for o in settled] == ["cannot read b00003/out/1"] * 2
    # Bytes signed with another run's key are refused before anything is unpickled.
    forged = wire.seal_outcomes(wire.new_key(), [wire.TaskOutcome(1, results([1]), None)])
    (outcome,) = resolve([task(1)], IndexExit(0), forged)
    assert isinstance(outcome.error, PayloadError)


def test_a_result_that_cannot_be_unpickled_fails_its_task_alone() -> None:
    data = wire.seal_outcomes(
        KEY,
        [wire.TaskOutcome(1, b"not a pickle", None), wire.TaskOutcome(2, results([2]), None)],
    )
    bad, good = resolve([task(1), task(2)], IndexExit(0), data)
    assert bad.error is not None and good.result == 2
