"""_dispatch: the batching window, which failed launches fail only their own calls, and
what a launch the backend refuses does to the calls (the test is the engine and the
backend)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, cast

import pytest

from k8s_executor import Batching, ClusterError, StorageRetry
from k8s_executor._batches import Batch, Index, Task
from k8s_executor._config import Settings
from k8s_executor._dispatch import (
    SHORTEST_WINDOW,
    Dispatcher,
    batch_window,
    fails_only_its_calls,
)
from k8s_executor._launch import Launcher
from k8s_executor._resolve import Resolver
from k8s_executor._skips import SkipMarkers
from k8s_executor._store import RunStore
from k8s_executor.backends._base import Backend, LaunchSpec
from k8s_executor.errors import ExecutorBrokenError


@pytest.mark.parametrize(
    ("configured", "backend", "warm_idle", "expected"),
    [
        (None, 0.2, False, 0.2),  # the backend's own
        (None, 0.2, True, SHORTEST_WINDOW),  # a warm worker takes it at once
        (None, 0.001, True, 0.001),  # never longer than the backend's
        (0.5, 0.2, True, 0.5),  # Batching.window wins, warm or not
        (0.0, 0.2, False, 0.0),
    ],
)
def test_batch_window(
    configured: float | None, backend: float, warm_idle: bool, expected: float
) -> None:
    assert batch_window(configured, backend, warm_idle=warm_idle) == expected


@pytest.mark.parametrize(
    ("status", "only_its_calls"),
    [
        (None, True),  # unreachable: the next batch tries again
        (429, True),
        (500, True),
        (503, True),
        (504, True),
        (400, False),  # an invalid Job: so would the next one be
        (403, False),  # RBAC
        (404, False),
        (422, False),
    ],
)
def test_which_failed_launch_breaks_the_executor(status: int | None, only_its_calls: bool) -> None:
    assert fails_only_its_calls(ClusterError("no", status=status)) is only_its_calls


class Refusing:
    """A backend whose launches fail with ``error``."""

    name = "refusing"
    batch_window = 0.0

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.launched: list[LaunchSpec] = []

    def launch(self, spec: LaunchSpec) -> None:
        self.launched.append(spec)
        raise self.error

    def cancel(self, batch_id: str, indexes: Iterable[int]) -> None:
        pass


class Engine:
    """The engine's part: records what broke it."""

    def __init__(self) -> None:
        self.broken: list[BaseException] = []

    def dispatching(self) -> bool:
        return True

    def broken_error(self) -> ExecutorBrokenError | None:
        return None

    def backend_broken(
        self, error: BaseException, held: Iterable[Task] = (), *, thread: str = ""
    ) -> None:
        self.broken.append(error)

    def thread_died(self, name: str, error: BaseException, tasks: list[Task] | None = None) -> None:
        raise AssertionError(f"the {name} thread died: {error!r}")


def launch(tmp_path: Path, error: Exception) -> tuple[Engine, Refusing, list[Future[Any]], bool]:
    """Launch index 1 of a two-index batch on a backend failing with ``error``."""
    cond = threading.Condition(threading.RLock())
    batches: dict[str, Batch] = {}
    backend = Refusing(error)
    engine = Engine()
    skips = SkipMarkers(cast(threading.RLock, cond), batches, backend.cancel)
    resolver = Resolver(cond, batches, skips, key=b"k", backend=cast(Backend, backend))
    settings = Settings(
        cast(Backend, backend), None, {}, Batching(), StorageRetry(), show_progress=False
    )
    launcher = Launcher(
        settings, max_workers=2, initializer=None, run_id="r", key=b"k", settle=resolver.settle
    )
    launcher.store = RunStore(str(tmp_path))
    dispatcher = Dispatcher(
        cond,
        engine,
        backend=cast(Backend, backend),
        batching=Batching(),
        launcher=launcher,
        resolver=resolver,
        skips=skips,
    )
    tasks = [Task(Future(), len, b"", 1, True, task_id=i) for i in range(2)]
    futures = [t.future for t in tasks]
    with cond:
        resolver.register(Batch("b00000", [Index([t]) for t in tasks], ["len"]))
    launched = dispatcher.launch_part("b00000", (1,))
    assert [s.batch_indexes for s in backend.launched] == [(1,)]
    return engine, backend, futures, launched


def test_a_throttled_launch_fails_only_its_calls(tmp_path: Path) -> None:
    error = ClusterError("too many requests", status=429)
    engine, _, futures, launched = launch(tmp_path, error)
    assert launched is False
    assert engine.broken == []
    assert futures[1].exception() is error
    assert not futures[0].done()  # its index was launched apart, or waits


def test_a_refused_launch_breaks_the_executor(tmp_path: Path) -> None:
    error = ClusterError("forbidden", status=403)
    engine, _, futures, launched = launch(tmp_path, error)
    assert launched is False
    assert engine.broken == [error]  # the engine fails every unfinished call
    assert not any(f.done() for f in futures)


def test_an_unexpected_launch_error_breaks_the_executor(tmp_path: Path) -> None:
    error = ValueError("a bug")
    engine, _, _, launched = launch(tmp_path, error)
    assert launched is False
    assert engine.broken == [error]
