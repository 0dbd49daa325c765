"""A detached run's leave that is interrupted (a second Ctrl-C, the SIGTERM handler's
exception) is finished by the next shutdown: bounded, the futures fail with
RunDetachedError, and the run's workers and storage are left alone (review finding 1)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import KubernetesExecutor, RunDetachedError, _sessions
from k8s_executor._store import RunStore
from k8s_executor.backends import kubernetes, local
from tests import helpers
from tests.kube_helpers import kubesim_kwargs

SECOND_SHUTDOWN = 60.0  # the bound on the finishing shutdown (a hang otherwise)


def mark_then_block(marks: str, gate: str) -> int:
    with open(os.path.join(marks, str(os.getpid())), "w"):
        pass
    helpers.wait_for(lambda: os.path.exists(gate), 600, "the gate")
    return os.getpid()


def _interrupt_once(monkeypatch: pytest.MonkeyPatch, cls: type, *, before: bool) -> list[int]:
    """The backend's detach raises KeyboardInterrupt once, before or after its work."""
    calls: list[int] = []
    original = getattr(cls, "detach")  # noqa: B009 (mypy: any backend class)

    def detach(self: Any) -> None:
        calls.append(1)
        if len(calls) == 1 and before:
            raise KeyboardInterrupt
        original(self)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(cls, "detach", detach)
    return calls


@pytest.mark.parametrize(
    ("backend", "before"),
    [("local", False), ("local", True), ("kubernetes", False)],
    ids=["local-after-detach", "local-before-detach", "kubernetes-after-detach"],
)
def test_an_interrupted_leave_is_finished_by_the_next_shutdown(
    backend: str,
    before: bool,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    storage = tmp_path / "storage"
    kw: dict[str, Any]
    if backend == "kubernetes":
        kw = kubesim_kwargs(request.getfixturevalue("kubesim"), storage)
    else:
        kw = {"backend": "local", "storage": str(storage)}
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    ex = KubernetesExecutor(run="leave-twice", detach=True, max_workers=1, progress=False, **kw)
    try:
        future = ex.submit(mark_then_block, str(marks), str(gate))
        helpers.wait_for(lambda: list(marks.iterdir()), 120, "the worker to start")
        calls = _interrupt_once(
            monkeypatch,
            kubernetes.KubernetesBackend if backend == "kubernetes" else local.LocalBackend,
            before=before,
        )
        with pytest.raises(KeyboardInterrupt):
            ex.shutdown()  # the leave, interrupted in the backend's detach
        assert not future.done() or isinstance(future.exception(), RunDetachedError)

        # What the exit hook does next: shutdown(wait=True), from another thread here so
        # that a hang fails the test instead of blocking it.
        done = threading.Event()
        errors: list[BaseException] = []

        def again() -> None:
            try:
                ex.shutdown(wait=True)
            except BaseException as exc:  # handed to the test's thread
                errors.append(exc)
            finally:
                done.set()

        threading.Thread(target=again, daemon=True).start()
        assert done.wait(SECOND_SHUTDOWN), "the second shutdown of a half-left run hangs"
        assert errors == []
        assert len(calls) == 2  # the second shutdown finished the detach
        with pytest.raises(RunDetachedError):
            future.result(timeout=0)
        assert ex._run._state.value == "shut down"
        # Left running, its storage kept: a later client joins it.
        (session,) = _sessions.read_sessions(RunStore(str(storage / "named" / "leave-twice")))
        assert (storage / session.run_id).exists()
        if backend == "local":
            (worker,) = (int(p.name) for p in marks.iterdir())
            assert helpers.alive(worker)
        else:
            from k8s_executor._admin import Cluster

            cluster = Cluster(kw["kubeconfig"], None, None)
            try:
                assert any(r.run_id == session.run_id and r.running for r in cluster.runs())
            finally:
                cluster.close()
        with KubernetesExecutor(run="leave-twice", detach=True, progress=False, **kw) as later:
            joined = later.submit(mark_then_block, str(marks), str(gate))
            gate.touch()
            assert joined.result(timeout=120) == int(next(marks.iterdir()).name)
        assert len(list(marks.iterdir())) == 1  # joined, not started again
    finally:
        gate.touch()
