"""_warm_pool: the races between a warm worker's end and the client's scheduling, driven
step by step with a real run store in a temporary folder, the test playing the worker (its
markers) and the backend (its reports of a worker's end), and gating the pool's LISTs.

No load, no sleep: each race is put in the one order that used to strand a call."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import _warm as warm
from k8s_executor._store import RunStore
from k8s_executor._warm_pool import WarmPool
from k8s_executor.backends._base import IndexExit
from tests import helpers

B0, B1 = "b00000", "b00001"
WID = warm.worker_id(B0, 0, "abc123")  # the worker started for index 0 of B0


class Engine:
    """The engine's part (``_warm_pool.Engine``): records what the pool asks of it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.launched: list[tuple[str, tuple[int, ...]]] = []
        self.finished: list[tuple[str, int, IndexExit]] = []
        self.broken: list[BaseException] = []

    def index_started(self, batch_id: str, index: int) -> bool:
        return True

    def warm_finished(
        self, batch_id: str, index: int, exit: IndexExit, worker: tuple[str, int]
    ) -> None:
        with self.lock:
            self.finished.append((batch_id, index, exit))

    def backend_broken(self, error: BaseException, *, thread: str = "") -> None:
        self.broken.append(error)

    def declined(self, batch_id: str, index: int) -> bool:
        return False

    def launch_part(self, batch_id: str, indexes: tuple[int, ...]) -> bool:
        with self.lock:
            self.launched.append((batch_id, indexes))
        return True

    def done(self, batch_id: str, index: int) -> IndexExit | None:
        with self.lock:
            return next((e for b, i, e in self.finished if (b, i) == (batch_id, index)), None)


class GatedStore(RunStore):
    """A run store whose LISTs of ``warm/`` wait at a gate while it is closed: the test
    decides when the pool's poller reads the markers, and when it gets the answer."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.open = threading.Event()
        self.open.set()
        self.waiting = threading.Event()  # a LIST waits at the closed gate

    def list_keys(self, prefix: str) -> list[str]:
        if prefix == warm.FOLDER and not self.open.is_set():
            self.waiting.set()
            assert self.open.wait(30), "the test never opened the gate"
        return super().list_keys(prefix)


@pytest.fixture
def store(tmp_path: Path) -> GatedStore:
    return GatedStore(str(tmp_path / "run"))


@pytest.fixture
def engine() -> Engine:
    return Engine()


@pytest.fixture
def pool(store: GatedStore, engine: Engine) -> Any:
    made = WarmPool(store, 2, engine)
    yield made
    store.open.set()
    made.stop()
    assert not engine.broken


def _scanned(pool: WarmPool) -> threading.Event:
    """Set once the pool's poller has applied one more LIST (wraps its private step, the
    only way to know it without waiting for time to pass)."""
    event = threading.Event()
    scan = pool._scan

    def wrapped(keys: list[str]) -> Any:
        result = scan(keys)
        event.set()
        return result

    pool._scan = wrapped  # type: ignore[method-assign]
    return event


def _idle_worker(pool: WarmPool, store: GatedStore, engine: Engine) -> None:
    """Launch B0's index 0, and let its worker finish it and be seen idle."""
    pool.add(B0, 1)
    assert engine.launched == [(B0, (0,))]
    store.put(warm.done_key(WID, 0, 0), b"")
    helpers.wait_for(lambda: engine.done(B0, 0) is not None, 30, "its done-0 to be listed")
    helpers.wait_for(pool.has_idle, 30, "the worker to be idle")


def test_a_worker_that_ended_before_its_marker_was_listed_gets_no_call(
    pool: WarmPool, store: GatedStore, engine: Engine
) -> None:
    # The worker finishes its own index and leaves at the end of its idle window; the
    # pool's LIST that shows its done-0 marker is answered only after the backend
    # reported the worker gone (the poller was slow: a loaded machine, a long interval).
    store.open.clear()
    pool.add(B0, 1)
    assert store.waiting.wait(30), "the poller never listed"
    store.put(warm.done_key(WID, 0, 0), b"")
    pool.worker_ended(B0, 0, IndexExit(0))
    scanned = _scanned(pool)
    store.open.set()
    assert scanned.wait(30), "the poller never applied its LIST"
    # The ended worker is no idle worker: the next index starts a new one. (It was taken
    # for an idle worker that nobody would ever see end: its call waited forever.)
    assert not pool.has_idle()
    pool.add(B1, 1)
    assert engine.launched == [(B0, (0,)), (B1, (0,))]
    assert store.get_or_none(warm.next_key(WID)) is None


def test_an_assignment_the_worker_never_took_goes_to_a_new_worker(
    pool: WarmPool, store: GatedStore, engine: Engine
) -> None:
    # The worker's idle window ends just as the client writes it an assignment: it reads
    # nothing, leaves, and never writes run-1.
    _idle_worker(pool, store, engine)
    pool.add(B1, 1)
    assert store.get_or_none(warm.next_key(WID)) is not None  # given to the warm worker
    pool.worker_ended(B0, 0, IndexExit(0))
    assert engine.launched == [(B0, (0,)), (B1, (0,))]  # handed on to a new worker
    assert engine.done(B1, 0) is None


def test_an_assignment_the_worker_took_fails_with_it(
    pool: WarmPool, store: GatedStore, engine: Engine
) -> None:
    _idle_worker(pool, store, engine)
    pool.add(B1, 1)
    store.put(warm.run_key(WID, 1), b"")  # it took it, then was killed
    lost = IndexExit(None, signal=9, reason="OOMKilled")
    pool.worker_ended(B0, 0, lost)
    assert engine.done(B1, 0) == lost
    assert engine.launched == [(B0, (0,))]


def test_an_assignment_done_before_the_worker_left_is_resolved_from_its_marker(
    pool: WarmPool, store: GatedStore, engine: Engine
) -> None:
    _idle_worker(pool, store, engine)
    store.open.clear()  # its done-1 is never listed before it ends
    pool.add(B1, 1)
    store.put(warm.done_key(WID, 1, 0), b"")
    store.delete(warm.done_key(WID, 0, 0))
    pool.worker_ended(B0, 0, IndexExit(0))
    store.open.set()
    assert engine.done(B1, 0) == IndexExit(0)
    assert engine.launched == [(B0, (0,))]
