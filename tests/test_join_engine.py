"""Joined calls and the engine's "fail everything" paths (review findings 5 and 6): a
joiner thread that fails breaks the executor, and a broken backend or a shutdown that
cancels the futures settles the joined calls too, never leaving them pending."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import ExecutorBrokenError, KubernetesExecutor, RunDetachedError, _join
from tests import helpers
from tests.test_join import _executions, mark_and_wait


@pytest.fixture
def joined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[tuple[KubernetesExecutor, Future[Any]]]:
    """A second client ``b`` whose call is joined (client ``a``'s copy waits at a gate
    that opens once the test is over); ``b`` is detached when the parameter says so."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    kw: dict[str, Any] = {"backend": "local", "storage": str(tmp_path / "s"), "run": "both"}
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    args = (7, str(marks), str(gate), False)
    a = KubernetesExecutor(progress=False, **kw)
    b = KubernetesExecutor(progress=False, detach=getattr(request, "param", False), **kw)
    try:
        first = a.submit(mark_and_wait, *args)
        helpers.wait_for(lambda: _executions(marks) == 1, 60, "the first copy to start")
        second = b.submit(mark_and_wait, *args)  # joined, not started
        assert b._run._named is not None and b._run._named.joining()
        yield b, second
    finally:
        gate.touch()
        b.shutdown(wait=True)
        assert first.result(timeout=60) == 70
        a.shutdown(wait=True)
    assert _executions(marks) == 1  # the joined call never ran in b


def test_a_failing_joiner_breaks_the_executor(
    joined: tuple[KubernetesExecutor, Future[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    b, second = joined

    def fail(self: Any, j: Any) -> str:
        raise RuntimeError("a bug in the joiner")

    monkeypatch.setattr(_join.Joiner, "_look", fail)  # its next pass raises
    error = second.exception(timeout=30)
    assert isinstance(error, ExecutorBrokenError)
    assert "join thread failed" in str(error)
    assert isinstance(error.__cause__, RuntimeError)
    with pytest.raises(ExecutorBrokenError):
        b.submit(pow, 2, 3)


def test_a_broken_backend_fails_the_joined_calls(
    joined: tuple[KubernetesExecutor, Future[Any]],
) -> None:
    b, second = joined
    b._run.backend_broken(OSError("cannot start workers"))  # as a backend reports it
    assert isinstance(second.exception(timeout=0), ExecutorBrokenError)


def test_shutdown_cancels_the_joined_calls(
    joined: tuple[KubernetesExecutor, Future[Any]],
) -> None:
    b, second = joined
    b.shutdown(wait=False, cancel_futures=True)
    assert second.cancelled()


def test_a_submit_racing_shutdown_joins_nothing(
    joined: tuple[KubernetesExecutor, Future[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 9: a shutdown landing between the run's start and the lookup of stored
    and joined calls: the submit is refused before anything is joined."""
    b, _ = joined
    run, named = b._run, b._run._named
    assert named is not None
    start = run._start_once
    looked: list[object] = []

    def start_then_shut_down() -> None:
        start()
        run.shutdown(wait=False, cancel_futures=False, kill_workers=False)  # another thread's

    monkeypatch.setattr(run, "_start_once", start_then_shut_down)

    def reuse(tasks: list[Any]) -> list[Any]:
        looked.append(tasks)
        return tasks

    monkeypatch.setattr(named, "reuse", reuse)
    with pytest.raises(RuntimeError, match="after shutdown"):
        b.submit(pow, 2, 3)
    assert looked == []


@pytest.mark.parametrize("joined", [True], indirect=True)
def test_a_joined_call_lost_while_leaving_is_detached(
    joined: tuple[KubernetesExecutor, Future[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding 11: a joined call whose copy is found lost while a detached run's client
    leaves fails with RunDetachedError (what every other call of it fails with)."""
    b, second = joined
    run = b._run
    looking = threading.Event()

    def lost_once_leaving(self: Any, j: Any) -> str:
        looking.set()
        helpers.wait_for(lambda: run._leaving, 60, "the client to leave")
        return "lost"

    monkeypatch.setattr(_join.Joiner, "_look", lost_once_leaving)
    helpers.wait_for(looking.is_set, 60, "a pass of the joiner")
    b.shutdown()  # leaves: the pass under way finds the copy lost
    with pytest.raises(RunDetachedError):
        second.result(timeout=0)
