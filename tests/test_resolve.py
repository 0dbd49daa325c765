"""_resolve: the launched batches' bookkeeping and how their futures settle, without a
backend or an executor: a real run store in a temporary folder, the test reporting what
a backend would."""

from __future__ import annotations

import functools
import pickle
import threading
from collections.abc import Collection
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any, cast

import cloudpickle
import pytest

from k8s_executor import StorageError, WorkerLostError
from k8s_executor import _payload as wire
from k8s_executor._batches import Batch, Index, Task
from k8s_executor._resolve import Resolver
from k8s_executor._skips import SkipMarkers
from k8s_executor._store import RunStore
from k8s_executor.backends._base import Backend, IndexExit

KEY = wire.new_key()


class Recorder:
    """The backend's part: which indexes it was told to skip, how it describes a worker."""

    def __init__(self) -> None:
        self.cancelled: list[tuple[str, list[int]]] = []
        self.described: list[tuple[str, int]] = []

    def cancel(self, batch_id: str, indexes: Collection[int]) -> None:
        self.cancelled.append((batch_id, list(indexes)))

    def worker_exit(self, batch_id: str, index: int, exit: IndexExit) -> IndexExit:
        self.described.append((batch_id, index))
        return IndexExit(exit.exit_code, reason="Described", log_tail="its last words")


class Books:
    """A resolver with what the engine would hand it."""

    def __init__(self, tmp_path: Path) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.batches: dict[str, Batch] = {}
        self.backend = Recorder()
        lock = cast(threading.RLock, self.cond)  # SkipMarkers only enters it
        self.skips = SkipMarkers(lock, self.batches, self.backend.cancel)
        self.resolver = Resolver(
            self.cond, self.batches, self.skips, key=KEY, backend=cast(Backend, self.backend)
        )
        self.store = RunStore(str(tmp_path / "run"))
        self.skips.store = self.resolver.store = self.store

    def task(self, task_id: int) -> Task:
        """A task whose future is wired to the resolver, as ``Run.make_task`` does."""
        future: Future[Any] = Future()
        task = Task(future, len, b"", 1, True, task_id=task_id, fn_index=0)
        future.add_done_callback(functools.partial(self.resolver.task_done, task))
        return task

    def launch(self, batch_id: str, *indexes: list[Task]) -> Batch:
        batch = Batch(batch_id, [Index(tasks) for tasks in indexes], ["tests.work"])
        for i, tasks in enumerate(indexes):
            for t in tasks:
                t.batch_id, t.index = batch_id, i
        with self.cond:
            self.resolver.register(batch)
        return batch

    def write_results(self, batch_id: str, index: int, results: dict[int, Any]) -> None:
        outcomes = [
            wire.TaskOutcome(
                task_id, cloudpickle.dumps([value], protocol=pickle.HIGHEST_PROTOCOL), None
            )
            for task_id, value in results.items()
        ]
        self.store.put(f"{batch_id}/out/{index}", wire.seal_outcomes(KEY, outcomes))


@pytest.fixture
def books(tmp_path: Path) -> Books:
    return Books(tmp_path)


def test_an_index_starts_its_first_live_call_and_finishes_from_its_outcome(books: Books) -> None:
    first, second = books.task(0), books.task(1)
    futures = first.future, second.future
    books.launch("b00000", [first, second])
    assert books.resolver.index_started("b00000", 0) is True
    assert first.future.running() and not second.future.running()  # only the first

    books.write_results("b00000", 0, {0: "one", 1: "two"})
    books.resolver.index_finished("b00000", 0, IndexExit(0))
    assert [f.result() for f in futures] == ["one", "two"]
    assert books.batches == {}  # the batch is over: forgotten
    # Once settled, the tasks hold neither the caller's function nor its future's result.
    assert first.future is not futures[0] and first.future.result() is None


def test_an_index_whose_calls_were_all_cancelled_is_skipped(books: Books) -> None:
    only = books.task(0)
    books.launch("b00000", [only])
    assert only.future.cancel()
    # The marker is written before cancel() returns; the backend is told it need not start.
    assert books.store.get("b00000/skip/0") == b""
    assert books.backend.cancelled == [("b00000", [0])]
    assert books.resolver.index_started("b00000", 0) is False
    assert books.batches == {}


def test_a_call_cancelled_while_its_batch_was_written_gets_its_marker_at_register(
    books: Books,
) -> None:
    cancelled, live = books.task(0), books.task(1)
    assert cancelled.future.cancel()  # before launch: no marker, its batch is unknown
    with books.cond:
        assert not books.skips.unwritten()
    books.launch("b00000", [cancelled, live])
    with books.cond:
        assert books.skips.unwritten(("b00000", 0))
    # The index starts only once the marker is in storage, and runs its live call.
    assert books.resolver.index_started("b00000", 0) is True
    assert live.future.running()
    assert b'"tasks": [0]' in books.store.get("b00000/skip/0")


def test_a_worker_that_ends_without_an_outcome_fails_its_calls(books: Books) -> None:
    task = books.task(0)
    future = task.future
    books.launch("b00000", [task])
    books.resolver.index_started("b00000", 0)
    books.resolver.index_finished("b00000", 0, IndexExit(None, signal=9))
    assert isinstance(future.exception(), WorkerLostError)


def test_a_failed_launch_fails_only_the_calls_of_its_indexes(books: Books) -> None:
    a, b = books.task(0), books.task(1)
    futures = a.future, b.future
    batch = books.launch("b00000", [a], [b])
    error = RuntimeError("throttled")
    books.resolver.fail_indexes(batch, (1,), error)
    assert futures[1].exception() is error
    assert not futures[0].done()
    assert "b00000" in books.batches  # index 0 still runs
    books.resolver.fail_indexes(batch, (0,), error)
    assert books.batches == {}


def test_settle_is_first_come_and_drops_a_cancelled_calls_result(books: Books) -> None:
    kept, dropped = books.task(0), books.task(1)
    futures = kept.future, dropped.future
    books.launch("b00000", [kept], [dropped])
    books.resolver.settle(kept, result=1)
    books.resolver.settle(kept, error=RuntimeError("too late"))  # already settled
    assert futures[0].result() == 1
    assert futures[1].cancel()
    books.resolver.settle(dropped, result=2)
    with pytest.raises(CancelledError):
        futures[1].result()


def test_declined_finishes_an_index_with_nothing_left(books: Books) -> None:
    a, b = books.task(0), books.task(1)
    books.launch("b00000", [a, b])
    assert books.resolver.declined("b00000", 0) is False
    books.resolver.settle(a, result=None)
    b.future.cancel()
    assert books.resolver.declined("b00000", 0) is True
    assert books.batches == {}
    assert books.resolver.declined("b00000", 0) is True  # over: still nothing to run


def test_a_warm_workers_failure_is_described_by_the_backend(books: Books) -> None:
    task = books.task(0)
    future = task.future
    books.launch("b00001", [task])
    books.resolver.index_started("b00001", 0)
    books.resolver.warm_finished("b00001", 0, IndexExit(1), ("b00000", 3))
    assert books.backend.described == [("b00000", 3)]
    error = future.exception()
    assert isinstance(error, WorkerLostError)
    assert "Described" in str(error)


def test_cancel_all_leaves_running_calls_alone_and_drop_all_forgets(books: Books) -> None:
    running, waiting = books.task(0), books.task(1)
    futures = running.future, waiting.future
    books.launch("b00000", [running, waiting])
    books.resolver.index_started("b00000", 0)
    with books.cond:
        books.resolver.cancel_all()
    assert futures[0].running() and futures[1].cancelled()
    books.skips.write()
    assert b'"tasks": [1]' in books.store.get("b00000/skip/0")
    with books.cond:
        assert books.resolver.drop_all() == [running, waiting]
    assert books.batches == {}


def test_an_index_skipped_before_it_started_is_done_without_its_worker(books: Books) -> None:
    # A pod that never starts would never report: the engine does not wait for it.
    skipped, started = books.task(0), books.task(1)
    futures = skipped.future, started.future
    books.launch("b00000", [skipped], [started])
    books.resolver.index_started("b00000", 1)
    assert futures[0].cancel()
    assert not futures[1].cancel()  # running
    books.resolver.skipped("b00000", [0, 1])
    batch = books.batches["b00000"]
    assert [entry.finished for entry in batch.indexes] == [True, False]
    assert books.resolver.index_started("b00000", 0) is False  # a late start runs nothing


def test_an_unstarted_last_copy_leaves_the_index_to_the_outcome_written(
    books: Books, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batching.speculate (review finding 7): the original reports first, its outcome
    written but the read of it failing; the duplicate, never started, reports last: the
    calls get the original's result, not the duplicate's PodStartError."""
    copies = iter([True, False])  # the Speculator's answers: another copy runs, then none
    books.resolver.other_copy = lambda batch_id, index: next(copies)
    task = books.task(0)
    future = task.future
    books.launch("b00000", [task])
    books.resolver.index_started("b00000", 0)
    books.write_results("b00000", 0, {0: "the original's"})
    get_or_none = RunStore.get_or_none

    def failing_once(store: RunStore, key: str) -> bytes | None:
        monkeypatch.setattr(RunStore, "get_or_none", get_or_none)
        raise StorageError(f"cannot read {key}: SlowDown (503), gave up")

    monkeypatch.setattr(RunStore, "get_or_none", failing_once)
    books.resolver.index_finished("b00000", 0, IndexExit(0))
    assert not future.done()  # left to the other copy
    unstarted = IndexExit(None, reason="Unschedulable", message="no node", never_started=True)
    books.resolver.index_finished("b00000", 0, unstarted)
    assert future.result(timeout=0) == "the original's"
