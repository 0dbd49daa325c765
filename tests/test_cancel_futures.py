"""``shutdown(cancel_futures=True)`` (issue 14, item 3): every call the executor does not
know to be running is cancelled, wherever it is (queued in the batching window, in the
batch being written, in a launched index), and the shutdown does not wait for a worker
that will never start.

Each test runs on the local backend and on kubesim (process kubelet), except the stuck
pod, which only Kubernetes has."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import Batching, KubernetesExecutor, Timeouts
from k8s_executor._store import RunStore
from tests import helpers
from tests.helpers import SharedPath
from tests.kube_helpers import ClusterUnderTest, kubesim_kwargs

BOUND = 60.0  # seconds: far more than any step here takes unless it is stuck


def sleep_then(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


@pytest.fixture(params=["local", "kubernetes"])
def kwargs(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "local":
        return {"backend": "local", "storage": str(tmp_path / "storage"), "progress": False}
    sim = request.getfixturevalue("kubesim")
    return {**kubesim_kwargs(sim, tmp_path / "storage"), "progress": False}


def test_many_slow_calls_to_two_workers_are_cancelled(kwargs: dict[str, Any]) -> None:
    # CPython's test_cancel_futures: 50 slow calls to 2 workers, then at once a shutdown
    # that cancels. Only calls known to be running may finish, and they finish well.
    ex = KubernetesExecutor(max_workers=2, **kwargs)
    futures = [ex.submit(sleep_then, 0.1, i) for i in range(50)]
    ex.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    assert len(cancelled) > 20
    for f in futures:
        assert f.done(), f"{f!r} is neither cancelled nor finished after the shutdown"
        if not f.cancelled():
            assert f.exception() is None


@pytest.fixture
def held_inputs(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[threading.Event, threading.Event]]:
    """(writing, release): the client's writes of a batch's inputs (``in/<i>``) wait for
    ``release``; ``writing`` is set once the first one waits."""
    writing, release = threading.Event(), threading.Event()
    put = RunStore.put

    def held_put(self: RunStore, key: str, data: bytes) -> None:
        if "/in/" in key:
            writing.set()
            if not release.wait(BOUND):
                raise TimeoutError("the test never released the inputs")
        put(self, key, data)

    monkeypatch.setattr(RunStore, "put", held_put)
    yield writing, release
    release.set()  # whatever happened, no thread stays in a write


def test_calls_of_a_batch_being_written_are_cancelled(
    kwargs: dict[str, Any],
    held_inputs: tuple[threading.Event, threading.Event],
    tmp_path: Path,
) -> None:
    writing, release = held_inputs
    calls = tmp_path / "calls"
    calls.mkdir()
    # The window closes at once: the dispatcher has taken the calls from the queue and
    # is writing their batch when the shutdown comes. None of them is running.
    ex = KubernetesExecutor(max_workers=2, batching=Batching(window=0.0), **kwargs)
    futures = [ex.submit(helpers.record_name, calls, f"c{i}") for i in range(10)]
    try:
        assert writing.wait(BOUND), "the batch's inputs were never written"
        ex.shutdown(wait=False, cancel_futures=True)
        not_cancelled = [i for i, f in enumerate(futures) if not f.cancelled()]
        assert not_cancelled == [], "calls not running yet must be cancelled"
    finally:
        release.set()
        ex.shutdown(wait=True)
    assert list(calls.iterdir()) == []  # and none of them ran


def test_shutdown_does_not_wait_for_a_pod_that_never_starts(
    cluster: ClusterUnderTest, shared_dir: SharedPath
) -> None:
    # The pod's Secret is missing: it waits in CreateContainerConfigError, and no worker
    # will ever read its skip marker. Its start-up error would fail it after a minute;
    # a shutdown that cancels must not wait for that.
    kw = cluster.executor_kwargs(shared_dir / "storage", secrets=("no-such-secret",))
    kw["timeouts"] = Timeouts(startup=300, startup_error=60, heartbeat=1, heartbeat_grace=30)
    ex = KubernetesExecutor(max_workers=2, progress=False, **kw)
    futures = [ex.submit(helpers.square, i) for i in range(4)]

    def stuck() -> bool:
        for pod in cluster.pods(ex.run_id):
            for status in pod.status.container_statuses or ():
                waiting = status.state.waiting
                if waiting is not None and waiting.reason == "CreateContainerConfigError":
                    return True
        return False

    helpers.wait_for(stuck, BOUND, "a pod stuck on its missing Secret")
    began = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    took = time.monotonic() - began
    assert took < 15, f"shutdown(cancel_futures=True) took {took:.1f} s with a pod stuck"
    assert all(f.cancelled() for f in futures)
    done, _ = cf.wait(futures, timeout=0)
    assert len(done) == len(futures)
    helpers.wait_for(
        lambda: cluster.run_objects(ex.run_id) == {"jobs": [], "pods": [], "secrets": []},
        30,
        "the run's Jobs, pods and Secret to be gone",
    )
    assert not (shared_dir / "storage" / ex.run_id).exists()
