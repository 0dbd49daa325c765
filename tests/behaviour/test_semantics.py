"""The concurrent.futures contract, with ProcessPoolExecutor as the reference.

Every test runs on every backend (see conftest.BACKENDS)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from concurrent.futures.process import _RemoteTraceback
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import Batching, ConfigError, KubernetesExecutor
from tests import helpers
from tests.behaviour.conftest import ExecutorFactory
from tests.helpers import SharedPath


@pytest.mark.storage
def test_submit_returns_plain_future_with_result(make_executor: ExecutorFactory) -> None:
    ex = make_executor(max_workers=2)
    future = ex.submit(helpers.square, 12)
    assert type(future) is cf.Future
    assert future.result(timeout=60) == 144


def test_submit_keyword_arguments_named_fn_and_self(make_executor: ExecutorFactory) -> None:
    # submit(fn, /, *args, **kwargs) is positional-only, as in the stdlib.
    ex = make_executor()
    args, kwargs = ex.submit(helpers.echo_kwargs, 1, fn=2, self=3).result(timeout=60)
    assert args == (1,)
    assert kwargs == {"fn": 2, "self": 3}


@pytest.mark.storage
def test_map_preserves_order_across_chunks(make_executor: ExecutorFactory) -> None:
    ex = make_executor(max_workers=3)
    for chunksize in (1, 4, 1000):
        assert list(ex.map(helpers.square, range(50), chunksize=chunksize)) == [
            x * x for x in range(50)
        ]


def test_map_several_iterables_stops_at_shortest(make_executor: ExecutorFactory) -> None:
    ex = make_executor()
    assert list(ex.map(helpers.add, [1, 2, 3], [10, 20])) == [11, 22]


def test_map_empty(make_executor: ExecutorFactory) -> None:
    ex = make_executor()
    assert list(ex.map(helpers.square, [])) == []


def test_lambda_closure_nested_and_main_functions(make_executor: ExecutorFactory) -> None:
    offset = 100

    def nested(x: int) -> int:
        return x + offset

    ex = make_executor()
    assert ex.submit(lambda: offset * 2).result(timeout=60) == 200
    assert list(ex.map(nested, [1, 2])) == [101, 102]


def test_functions_defined_in_main_script_work(
    tmp_path: Path, executor_kwargs: dict[str, Any]
) -> None:
    import pickle

    (tmp_path / "kwargs.pickle").write_bytes(pickle.dumps(executor_kwargs))
    script = tmp_path / "script.py"
    script.write_text(
        "import pickle, sys\n"
        "from k8s_executor import KubernetesExecutor\n"
        "def triple(x):\n    return 3 * x\n"
        "class Box:\n    def __init__(self, v):\n        self.v = v\n"
        "def unbox(b):\n    return Box(b.v + 1)\n"
        "if __name__ == '__main__':\n"
        "    kwargs = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "    with KubernetesExecutor(**kwargs) as ex:\n"
        "        print(list(ex.map(triple, [1, 2])), ex.submit(unbox, Box(4)).result().v)\n"
    )
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "kwargs.pickle")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "[3, 6] 5"


def test_user_exception_is_itself_with_remote_traceback(make_executor: ExecutorFactory) -> None:
    ex = make_executor()
    future = ex.submit(helpers.fail_with_value_error, "bad input")
    with pytest.raises(ValueError, match="bad input") as info:
        future.result(timeout=60)
    cause = info.value.__cause__
    assert isinstance(cause, _RemoteTraceback)
    assert "fail_with_value_error" in str(cause)
    assert "raise ValueError(message)" in str(cause)


def test_system_exit_reaches_caller(make_executor: ExecutorFactory) -> None:
    ex = make_executor()
    with pytest.raises(SystemExit) as info:
        ex.submit(helpers.raise_system_exit, 3).result(timeout=60)
    assert info.value.code == 3


def test_exception_in_map_raised_at_its_position(make_executor: ExecutorFactory) -> None:
    def maybe_fail(x: int) -> int:
        if x == 5:
            raise KeyError(x)
        return x

    ex = make_executor()
    it = ex.map(maybe_fail, range(10))
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(KeyError):
        next(it)


def test_wait_and_as_completed(make_executor: ExecutorFactory) -> None:
    ex = make_executor(max_workers=2)
    futures = [ex.submit(helpers.square, i) for i in range(8)]
    done, not_done = cf.wait(futures, timeout=60)
    assert not not_done
    assert {f.result() for f in done} == {i * i for i in range(8)}
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=60)) == sorted(
        i * i for i in range(8)
    )


def test_wait_first_exception(make_executor: ExecutorFactory) -> None:
    ex = make_executor(max_workers=2)
    bad = ex.submit(helpers.fail_with_value_error, "x")
    done, _ = cf.wait([bad], timeout=60, return_when=cf.FIRST_EXCEPTION)
    assert bad in done


def test_done_callbacks_run(make_executor: ExecutorFactory) -> None:
    ex = make_executor()
    seen: list[int] = []
    called = threading.Event()

    def callback(f: cf.Future[int]) -> None:
        seen.append(f.result())
        called.set()

    ex.submit(helpers.square, 3).add_done_callback(callback)
    assert called.wait(60)
    assert seen == [9]


@pytest.mark.storage
def test_cancel_pending_future_before_start(
    shared_dir: SharedPath, make_executor: ExecutorFactory
) -> None:
    # One worker slot, held by a blocking task: the second batch cannot start.
    ex = make_executor(max_workers=1)
    started, release = shared_dir / "started", shared_dir / "release"
    blocker = ex.submit(helpers.touch_then_wait, started, release)
    helpers.wait_for(started.exists, 60, "the blocking task to start")
    queued = ex.submit(helpers.square, 2)
    assert queued.cancel()
    assert queued.cancelled()
    release.touch()
    blocker.result(timeout=60)
    done, _ = cf.wait([queued], timeout=60)
    assert queued in done
    with pytest.raises(cf.CancelledError):
        queued.result()


@pytest.mark.storage
def test_cancelled_call_does_not_run_beside_calls_that_do(
    shared_dir: SharedPath, make_executor: ExecutorFactory
) -> None:
    # Three calls share one worker (one slot, one index), held back by a blocking task;
    # the middle one is cancelled after its batch was handed to the backend. As with
    # ProcessPoolExecutor, a call whose cancel() returned True never runs. (A window no
    # three submits outlast, closed by the third (max_calls), keeps the three in one
    # batch however slow the machine; the blocker goes through map, which does not wait
    # for the window.)
    ex = make_executor(max_workers=1, batching=Batching(window=60, max_calls=3))
    started, release, calls = shared_dir / "started", shared_dir / "release", shared_dir / "calls"
    calls.mkdir()
    blocker = ex.map(helpers.touch_then_wait, [started], [release])
    helpers.wait_for(started.exists, 60, "the blocking task to start")
    queued = [ex.submit(helpers.record_name, calls, name) for name in ("a", "b", "c")]
    # The three are launched as one batch, which waits for the slot.
    helpers.wait_for(lambda: len(ex._run._batches) == 2, 60, "the second batch to be launched")
    assert queued[1].cancel()
    release.touch()
    assert isinstance(next(blocker), int)
    assert [queued[0].result(timeout=60), queued[2].result(timeout=60)] == ["a", "c"]
    assert queued[1].cancelled()
    assert sorted(calls.listdir()) == ["a", "c"]


@pytest.mark.backends("local")
def test_cancelling_many_calls_writes_each_marker_a_few_times(
    shared_dir: SharedPath, make_executor: ExecutorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from k8s_executor._store import RunStore

    markers: list[str] = []
    put = RunStore.put

    def counting_put(self: RunStore, key: str, data: bytes) -> None:
        if "/skip/" in key:
            markers.append(key)
        put(self, key, data)

    monkeypatch.setattr(RunStore, "put", counting_put)
    # One batch of the 300 calls however slow the machine: a window no loop outlasts,
    # closed by the 300th submit (max_calls); the blocker goes through map (no window).
    ex = make_executor(max_workers=1, batching=Batching(window=60, max_calls=300))
    started, release, calls = shared_dir / "started", shared_dir / "release", shared_dir / "calls"
    calls.mkdir()
    blocker = ex.map(helpers.touch_then_wait, [started], [release])
    helpers.wait_for(started.exists, 60, "the blocking task to start")
    queued = [ex.submit(helpers.record_name, calls, f"c{i}") for i in range(300)]
    helpers.wait_for(lambda: len(ex._run._batches) == 2, 60, "the second batch to be launched")
    assert all(f.cancel() for f in queued[:-1])  # a loop cancelling all but the last
    # The last marker is written a moment after the loop (the worker could start first
    # only if its slot freed within that moment; here the test holds the slot).
    helpers.wait_for(lambda: ex._run._skips.timer is None, 60, "the skip marker to be written")
    release.touch()
    assert isinstance(next(blocker), int)
    assert queued[-1].result(timeout=60) == "c299"
    assert calls.listdir() == ["c299"]
    # One index: written by the first cancel, then once more for the rest (or a few
    # times, if the loop outlasts the 20 ms delay on a slow machine) — not 299 times.
    assert 1 <= len(markers) <= 10


def test_running_future_cannot_be_cancelled(
    shared_dir: SharedPath, make_executor: ExecutorFactory
) -> None:
    ex = make_executor(max_workers=1)
    started, release = shared_dir / "started", shared_dir / "release"
    future = ex.submit(helpers.touch_then_wait, started, release)
    helpers.wait_for(started.exists, 60, "the task to start")
    helpers.wait_for(future.running, 60, "the future to be running")
    assert not future.cancel()
    release.touch()
    assert isinstance(future.result(timeout=60), int)


@pytest.mark.storage
def test_map_timeout_raises_and_cancels_not_started(
    shared_dir: SharedPath, make_executor: ExecutorFactory
) -> None:
    ex = make_executor(max_workers=1, batching=Batching(max_indexes=10))
    calls, release = shared_dir / "calls", shared_dir / "release"
    calls.mkdir()
    it = ex.map(helpers.record_then_wait, [calls] * 3, [release] * 3, timeout=0.5)
    # The timeout counts from the call to map, not from next(): let the first call start
    # (its trace written, the executor told) before asking for it, however long its
    # worker takes to start. Then next() certainly times out on a call that is running.
    helpers.wait_for(lambda: len(calls.listdir()) == 1, 60, "the first call to start")
    helpers.wait_for(lambda: _indexes_started(ex) == 1, 60, "the executor to see it start")
    with pytest.raises(TimeoutError):
        next(it)
    release.touch()
    ex.shutdown(wait=True)
    # Only the first call (one worker slot) had started; the other two were cancelled.
    assert len(calls.listdir()) == 1


def _indexes_started(ex: KubernetesExecutor) -> int:
    """How many indexes of the executor's live batches it knows to have started."""
    with ex._run._lock:
        return sum(entry.started for batch in ex._run._batches.values() for entry in batch.indexes)


def test_initializer_runs_in_every_worker(make_executor: ExecutorFactory) -> None:
    ex = make_executor(max_workers=2, initializer=helpers.set_global, initargs=("ready",))
    assert list(ex.map(lambda _: helpers.read_global(), range(4))) == ["ready"] * 4


def test_initializer_failure_fails_tasks_not_executor(make_executor: ExecutorFactory) -> None:
    from k8s_executor import InitializerError

    ex = make_executor(initializer=helpers.failing_initializer)
    future = ex.submit(helpers.square, 2)
    with pytest.raises(InitializerError, match="initializer broke") as info:
        future.result(timeout=60)
    assert isinstance(info.value, cf.process.BrokenProcessPool)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_submit_after_shutdown_exact_message(make_executor: ExecutorFactory) -> None:
    ex = make_executor()
    ex.submit(helpers.square, 1).result(timeout=60)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="^cannot schedule new futures after shutdown$"):
        ex.submit(helpers.square, 1)
    with pytest.raises(RuntimeError, match="^cannot schedule new futures after shutdown$"):
        ex.map(helpers.square, [1])


def test_shutdown_twice_and_unused_is_harmless(make_executor: ExecutorFactory) -> None:
    unused = make_executor()
    unused.shutdown()
    unused.shutdown()
    used = make_executor()
    used.submit(helpers.square, 1).result(timeout=60)
    used.shutdown()
    used.shutdown(wait=False)
    used.shutdown(cancel_futures=True)


def test_shutdown_waits_for_pending_work(make_executor: ExecutorFactory) -> None:
    ex = make_executor(max_workers=1)
    futures = [ex.submit(helpers.square, i) for i in range(5)]
    ex.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == [0, 1, 4, 9, 16]


def test_shutdown_no_wait_finishes_in_background(make_executor: ExecutorFactory) -> None:
    ex = make_executor(max_workers=1)
    futures = [ex.submit(helpers.square, i) for i in range(3)]
    ex.shutdown(wait=False)
    assert [f.result(timeout=60) for f in futures] == [0, 1, 4]


@pytest.mark.storage
def test_shutdown_cancel_futures_cancels_not_started(
    shared_dir: SharedPath, make_executor: ExecutorFactory
) -> None:
    ex = make_executor(max_workers=1)
    started, release = shared_dir / "started", shared_dir / "release"
    running = ex.submit(helpers.touch_then_wait, started, release)
    helpers.wait_for(started.exists, 60, "the first task to start")
    # On Kubernetes the executor learns of the start from the watch, maybe after the task
    # began; only calls it knows to be running are spared by cancel_futures.
    helpers.wait_for(running.running, 60, "the executor to see it running")
    queued = [ex.submit(helpers.square, i) for i in range(5)]
    ex.shutdown(wait=False, cancel_futures=True)
    release.touch()
    ex.shutdown(wait=True)
    assert isinstance(running.result(timeout=0), int)
    assert all(f.cancelled() for f in queued)


@pytest.mark.storage
def test_shutdown_deletes_run_storage(
    shared_dir: SharedPath, executor_kwargs: dict[str, Any], make_executor: ExecutorFactory
) -> None:
    storage = shared_dir / "storage"
    options = executor_kwargs.get("storage_options", {})
    ex = make_executor(storage=storage.url, storage_options=options)
    ex.submit(helpers.square, 2).result(timeout=60)
    run_dir = storage / ex.run_id
    assert run_dir.is_dir()
    ex.shutdown()
    assert not run_dir.exists()


@pytest.mark.backends("local")
def test_default_temporary_storage_removed(make_executor: ExecutorFactory) -> None:
    ex = make_executor()
    ex.submit(helpers.square, 2).result(timeout=60)
    temp_dir = ex._run._temp_dir
    assert temp_dir is not None and os.path.isdir(temp_dir)
    ex.shutdown()
    assert not os.path.exists(temp_dir)


def test_context_manager_returns_executor_and_shuts_down(
    executor_kwargs: dict[str, Any],
) -> None:
    with KubernetesExecutor(**executor_kwargs) as ex:
        future = ex.submit(helpers.square, 5)
    assert future.done()
    assert future.result() == 25
    with pytest.raises(RuntimeError):
        ex.submit(helpers.square, 1)


def test_max_workers_bounds_concurrency(
    shared_dir: SharedPath, local_workers: bool, make_executor: ExecutorFactory
) -> None:
    ex = make_executor(max_workers=2, batching=Batching(max_indexes=6))
    # The first two calls meet before working, so they overlap even when their pods
    # start far apart. Local processes share CLOCK_MONOTONIC; pods on several nodes
    # only share (synchronised) wall clocks.
    clock = "monotonic" if local_workers else "wall"
    meet = shared_dir / "meet"
    meet.mkdir()
    spans = list(ex.map(helpers.timed_work, [0.2] * 6, [clock] * 6, [meet] * 6, [2] * 6))
    # Six indexes, in at least two worker processes (warm workers take later indexes)...
    assert 2 <= len({worker for worker, _, _ in spans}) <= 6
    # ...never more than two at once.
    events = sorted([(start, 1) for _, start, _ in spans] + [(end, -1) for _, _, end in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2


def test_many_submits_are_coalesced_into_few_workers(make_executor: ExecutorFactory) -> None:
    # A window far longer than 50 submits can take, closed by the 50th (max_calls): one
    # batch, whatever the machine's speed, and no wait for the window to run out.
    ex = make_executor(max_workers=2, batching=Batching(window=60, max_calls=50))
    futures = [ex.submit(helpers.worker_id) for _ in range(50)]
    workers = {f.result(timeout=60) for f in futures}
    assert 1 <= len(workers) <= 2


@pytest.mark.parametrize("bad", [0, -1])
def test_max_workers_must_be_positive(bad: int, executor_kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="^max_workers must be greater than 0$"):
        KubernetesExecutor(max_workers=bad, **executor_kwargs)


def test_map_chunksize_must_be_positive(make_executor: ExecutorFactory) -> None:
    ex = make_executor()
    with pytest.raises(ValueError, match=r"chunksize must be >= 1\."):
        ex.map(helpers.square, [1], chunksize=0)


def test_config_error_names_option_value_and_allowed(executor_kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"max_workers='8' is not allowed: expected an integer"):
        KubernetesExecutor(max_workers="8", **executor_kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"Batching.window=-1 is not allowed"):
        Batching(window=-1)
    with pytest.raises(ConfigError, match=r"backend='nope' is not allowed: expected one of"):
        KubernetesExecutor(backend="nope")
