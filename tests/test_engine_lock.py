"""No storage I/O under the engine's lock: a PUT that hangs (a slow S3) must not stall
another thread's ``submit`` nor the delivery of an index's outcome.

The storage is fsspec's in-memory filesystem behind a gate that holds every skip-marker
PUT until the test opens it; the backend is the test itself, reporting index events
through the listener the executor hands it, so the test decides when each one comes.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Collection, Iterator
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from k8s_executor import Batching, KubernetesExecutor, WorkerLostError
from k8s_executor.backends._base import IndexExit, LaunchSpec, Listener, RunContext
from tests import helpers

BOUND = 30.0  # seconds: far more than any of these steps takes unless it is blocked


class GatedMemoryFS(MemoryFileSystem):  # type: ignore[misc]
    """In-memory storage whose skip-marker writes wait for ``gate``."""

    protocol = "k8sxgated"
    gate = threading.Event()
    waiting = threading.Event()

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        if "/skip/" in path:
            type(self).waiting.set()
            if not type(self).gate.wait(BOUND * 4):
                raise TimeoutError("the test never opened the gate")
        super().pipe_file(path, value, *args, **kwargs)


class HeldBackend:
    """Runs nothing: records launches; the test reports index events itself."""

    name = "held"
    heartbeat_interval: float | None = None
    batch_window = 0.0

    def __init__(self) -> None:
        self.listener: Listener | None = None
        self.launched: queue.Queue[LaunchSpec] = queue.Queue()

    def default_max_workers(self) -> int:
        return 2

    def start(self, listener: Listener, max_workers: int, run: RunContext) -> None:
        self.listener = listener

    def launch(self, spec: LaunchSpec) -> None:
        self.launched.put(spec)

    def cancel(self, batch_id: str, indexes: Collection[int]) -> None:
        pass

    def close(self, *, kill: bool) -> None:
        pass


@pytest.fixture
def gated() -> Iterator[type[GatedMemoryFS]]:
    fsspec.register_implementation(GatedMemoryFS.protocol, GatedMemoryFS, clobber=True)
    GatedMemoryFS.gate.clear()
    GatedMemoryFS.waiting.clear()
    yield GatedMemoryFS
    GatedMemoryFS.gate.set()  # whatever happened, no thread stays stuck in a PUT


def in_thread(fn: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    thread.start()
    return thread, out


def test_a_hanging_put_stalls_neither_submit_nor_an_outcome(gated: type[GatedMemoryFS]) -> None:
    backend = HeldBackend()
    ex = KubernetesExecutor(
        max_workers=2,
        backend=backend,
        storage=f"{gated.protocol}://engine-lock-{uuid.uuid4().hex[:8]}",
        batching=Batching(window=60, max_calls=2),
        progress=False,
    )
    try:
        first, second = ex.submit(helpers.square, 1), ex.submit(helpers.square, 2)
        spec = backend.launched.get(timeout=BOUND)  # one batch, one task per index
        listener = backend.listener
        assert listener is not None and spec.indexes == 2

        # cancel() writes index 1's skip marker before it returns: that PUT now hangs.
        canceller, cancelled = in_thread(second.cancel)
        assert gated.waiting.wait(BOUND), "the skip marker was never written"

        # Meanwhile another thread's submit returns...
        submitter, submitted = in_thread(ex.submit, helpers.square, 3)
        submitter.join(BOUND)
        assert not submitter.is_alive(), "submit waited for a storage write"
        # ... and index 0 starts and its outcome is delivered (none: the worker was lost).
        assert listener.index_started(spec.batch_id, 0) is True
        listener.index_finished(spec.batch_id, 0, IndexExit(None, signal=9))
        assert isinstance(first.exception(timeout=BOUND), WorkerLostError)

        # Index 1 may not start before its marker is in storage: its start waits for it.
        starter, started = in_thread(listener.index_started, spec.batch_id, 1)
        assert canceller.is_alive() and starter.is_alive()
        gated.gate.set()
        canceller.join(BOUND)
        starter.join(BOUND)
        assert cancelled == [True]
        assert started == [False]  # every call of index 1 was cancelled: skip it
        marker = f"{spec.run_id}/{spec.batch_id}/skip/1"
        (written,) = [f for path, f in gated.store.items() if path.endswith(marker)]
        assert written.getvalue() == b""  # empty: no call of the index is left to run
        assert submitted and not submitted[0].done()
    finally:
        gated.gate.set()
        ex.shutdown(wait=True, kill_workers=True)
