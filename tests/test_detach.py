"""Detached named runs (issue 18): the run goes on without its client, a later client
joins what is still running, and the run's deadline leaves nothing behind; on the local
backend and on kubesim."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import (
    Batching,
    ConfigError,
    KubernetesExecutor,
    RunDetachedError,
    Timeouts,
    _contract,
    _sessions,
)
from tests import helpers
from tests.kube_helpers import kubesim_kwargs

CALLS = 40
FINISH_FIRST = 20  # calls 0-19 finish while the first client lives; 20-39 wait for the gate

# The user's script, run twice. Every execution of a call leaves a mark (its side effect).
# With "open" as its last argument, it opens the gate once its calls are submitted: the
# calls the first client's workers still run are joined by then, not started again.
SCRIPT = """
import json, os, pickle, sys
from k8s_executor import KubernetesExecutor

def work(i, marks, gate, finish_first):
    import os, threading, uuid
    open(os.path.join(marks, f"{i}-{os.getpid()}-{uuid.uuid4().hex}"), "w").close()
    while i >= finish_first and not os.path.exists(gate):
        threading.Event().wait(0.05)
    return i * i

if __name__ == "__main__":
    kwargs = pickle.loads(open(sys.argv[1], "rb").read())
    marks, gate, n, first = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    with KubernetesExecutor(run="grid-test", detach=True, **kwargs) as ex:
        it = ex.map(work, range(n), [marks] * n, [gate] * n, [first] * n)
        if sys.argv[6] == "open":
            open(gate, "w").close()
        results = list(it)
    print(json.dumps(results), flush=True)
"""


def _marks(marks: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for p in marks.iterdir():
        i = int(p.name.split("-")[0])
        counts[i] = counts.get(i, 0) + 1
    return counts


def _kwargs(backend: str, storage: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    if backend == "kubernetes":
        return kubesim_kwargs(request.getfixturevalue("kubesim"), storage)
    return {"backend": "local", "storage": str(storage)}


@pytest.mark.parametrize("backend", ["local", "kubernetes"])
def test_killed_client_of_a_detached_run_comes_back(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    storage = tmp_path / "storage"
    kw = _kwargs(backend, storage, request)
    kw.update(max_workers=4, progress=False)
    (tmp_path / "kw").write_bytes(pickle.dumps(kw))
    script = tmp_path / "grid.py"
    script.write_text(SCRIPT)
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    env = {
        **os.environ,
        "XDG_STATE_HOME": str(tmp_path / "state"),  # where the run's key is kept
        "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path),
    }
    argv = [sys.executable, str(script), str(tmp_path / "kw"), str(marks), str(gate)]
    argv += [str(CALLS), str(FINISH_FIRST)]
    calls = storage / "named" / "grid-test" / "calls"

    first = subprocess.Popen([*argv, "closed"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        helpers.wait_for(
            lambda: calls.exists() and len(list(calls.iterdir())) >= FINISH_FIRST,
            120,
            "the first 20 results to be stored",
        )
        # The two workers left each wait at their first call past the gate.
        helpers.wait_for(lambda: len(list(marks.iterdir())) >= FINISH_FIRST + 2, 60, "marks")
    finally:
        first.send_signal(signal.SIGKILL)  # the laptop closes
        first.communicate()
    running = {
        int(p.name.split("-")[1]) for p in marks.iterdir() if int(p.name.split("-")[0]) >= 20
    }
    assert len(running) == 2
    assert all(map(helpers.alive, running))  # detached: its workers go on without it

    second = subprocess.run([*argv, "open"], env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout.splitlines()[-1]) == [i * i for i in range(CALLS)]
    # Every call ran once over both clients: the finished ones were reused, the running
    # ones joined (their first copies stored the results), none started again.
    assert _marks(marks) == dict.fromkeys(range(CALLS), 1)
    named = storage / "named" / "grid-test"
    assert len(list((named / "calls").iterdir())) == CALLS
    launches = _sessions.read_launches(_store(named))
    assert len({r.run_id for r in launches}) == 1  # the second client launched nothing

    # The outcomes, without submitting anything.
    out = subprocess.run(
        [sys.executable, "-m", "k8s_executor.cli", "results", "grid-test", "--storage",
         str(storage), "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["result"] for r in rows] == [i * i for i in range(CALLS)]
    assert {r["state"] for r in rows} == {"done"}
    listing = subprocess.run(
        [sys.executable, "-m", "k8s_executor.cli", "ls", "--named", "--storage", str(storage)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()
    assert header.split() == ["NAME", "AGE", "DONE", "RUNNING", "FAILED", "LOST", "DEADLINE"]
    assert row.split()[0] == "grid-test"
    assert row.split()[2:6] == ["40", "0", "0", "0"]
    assert row.split()[6:] == ["in", "23h"]  # the default deadline: 24 hours


def _store(url: Path) -> Any:
    from k8s_executor._store import RunStore

    return RunStore(str(url))


def block(gate: str) -> int:
    helpers.wait_for(lambda: os.path.exists(gate), 3600, "the gate")
    return 1


@pytest.mark.parametrize("backend", ["local", "kubernetes"])
def test_a_run_past_its_deadline_leaves_nothing(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setattr(_contract, "EXPIRY_MARGIN", 0.0)  # the sweep comes at the deadline
    storage = tmp_path / "storage"
    kw = _kwargs(backend, storage, request)
    deadline = 4.0 if backend == "local" else 8.0
    ex = KubernetesExecutor(run="short", detach=True, deadline=deadline, progress=False, **kw)
    future = ex.submit(block, str(tmp_path / "never"))
    named = storage / "named" / "short"
    helpers.wait_for((named / "launches").exists, 60, "the launch record")
    ex.shutdown()  # detached: leaves it running
    with pytest.raises(RunDetachedError, match="k8s-executor results short"):
        future.result(timeout=10)
    (session,) = _sessions.read_sessions(_store(named))
    assert session.deadline is not None
    prefix = storage / session.run_id
    assert prefix.exists()  # kept for the workers (and a later client)
    if backend == "kubernetes":
        from k8s_executor._admin import Cluster

        cluster = Cluster(kw["kubeconfig"], None, None)
        try:
            helpers.wait_for(
                lambda: any(r.run_id == session.run_id and r.running for r in cluster.runs()),
                60,
                "its pod to run",
            )
            # Past the deadline the Job's pods stop; the Jobs go with their TTL (or the
            # sweep), the Secret with the sweep.
            helpers.wait_for(
                lambda: (
                    time.time() > session.deadline + 1  # type: ignore[operator]
                    and not any(r.run_id == session.run_id and r.running for r in cluster.runs())
                ),
                120,
                "its pods to stop at the deadline",
            )
        finally:
            cluster.close()
    else:
        helpers.wait_for(lambda: time.time() > session.deadline, 30, "the deadline")  # type: ignore[operator]
    # Any later client of the storage removes what the expired run left.
    with KubernetesExecutor(run="other", progress=False, **kw) as later:
        assert later.submit(pow, 2, 3).result(timeout=120) == 8
    helpers.wait_for(lambda: not named.exists() and not prefix.exists(), 60, "the sweep")
    assert (storage / "named" / "other").exists()  # not expired: never detached
    if backend == "kubernetes":
        cluster = Cluster(kw["kubeconfig"], None, None)
        try:
            helpers.wait_for(
                lambda: not any(r.run_id == session.run_id for r in cluster.runs()),
                60,
                "its Jobs and Secret to go",
            )
        finally:
            cluster.close()


def test_detach_options_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"detach=True needs a named run"):
        KubernetesExecutor(backend="local", detach=True)
    monkeypatch.setenv("K8S_EXECUTOR_DETACH", "1")
    with pytest.raises(ConfigError, match=r"K8S_EXECUTOR_DETACH=1 needs a named run"):
        KubernetesExecutor(backend="local")
    monkeypatch.delenv("K8S_EXECUTOR_DETACH")
    for bad in (0, -5, float("inf"), "1h", True):
        with pytest.raises(ConfigError, match=r"deadline="):
            KubernetesExecutor(backend="local", run="x", detach=True, deadline=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"deadline=60 is not allowed without detach=True"):
        KubernetesExecutor(backend="local", run="x", deadline=60)
    monkeypatch.setenv("K8S_EXECUTOR_DEADLINE", "soon")
    with pytest.raises(ConfigError, match=r"K8S_EXECUTOR_DEADLINE='soon'"):
        KubernetesExecutor(backend="local", run="x", detach=True)
    monkeypatch.setenv("K8S_EXECUTOR_DEADLINE", "90m")
    ex = KubernetesExecutor(backend="local", run="x", detach=True)
    assert ex.keep_warm == 0  # warm workers need a live client
    ex.shutdown()
    with pytest.raises(ConfigError, match=r"Timeouts.keep_warm=5 cannot be honoured"):
        KubernetesExecutor(backend="local", run="x", detach=True, timeouts=Timeouts(keep_warm=5))
    with pytest.raises(ConfigError, match=r"Batching.speculate=True cannot be honoured"):
        KubernetesExecutor(backend="local", run="x", detach=True, batching=Batching(speculate=True))
    with pytest.raises(ConfigError, match=r"detach=\'yes\'"):
        KubernetesExecutor(backend="local", run="x", detach="yes")  # type: ignore[arg-type]


def test_cleanup_by_name_stops_a_detached_run(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`k8s-executor cleanup NAME --yes`: the way to stop a detached run before its
    deadline: every session's Jobs (their pods) and Secret, and all its storage."""
    from k8s_executor import cli
    from k8s_executor._admin import Cluster

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    storage = tmp_path / "storage"
    kw = _kwargs("kubernetes", storage, request)
    ex = KubernetesExecutor(run="stopme", detach=True, progress=False, **kw)
    future = ex.submit(block, str(tmp_path / "never"))
    cluster = Cluster(kw["kubeconfig"], None, None)
    try:
        helpers.wait_for(
            lambda: any(r.named == "stopme" and r.running for r in cluster.runs()),
            60,
            "its pod to run",
        )
        ex.shutdown()
        with pytest.raises(RunDetachedError):
            future.result(timeout=10)
        assert any(r.named == "stopme" and r.running for r in cluster.runs())  # still runs
        assert cli.main(["cleanup", "stopme", "--yes", "--kubeconfig", kw["kubeconfig"]]) == 0
        helpers.wait_for(
            lambda: not any(r.named == "stopme" for r in cluster.runs()), 60, "its objects to go"
        )
    finally:
        cluster.close()
    assert sorted(p.name for p in storage.iterdir()) == ["named"]
    assert list((storage / "named").iterdir()) == []


def pid_then_block(marks: str, gate: str) -> int:
    with open(os.path.join(marks, str(os.getpid())), "w"):
        pass
    helpers.wait_for(lambda: os.path.exists(gate), 120, "the gate")
    return os.getpid()


def test_ctrl_c_leaves_a_detached_run_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    kw: dict[str, Any] = {"backend": "local", "storage": str(tmp_path / "s"), "progress": False}
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    ex = KubernetesExecutor(run="ctrl-c", detach=True, **kw)
    future = ex.submit(pid_then_block, str(marks), str(gate))
    helpers.wait_for(lambda: list(marks.iterdir()), 60, "the worker to start")
    # Ctrl-C in the with block: the client leaves.
    ex.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)
    with pytest.raises(RunDetachedError):
        future.result(timeout=10)
    (worker,) = (int(p.name) for p in marks.iterdir())
    assert helpers.alive(worker)  # not killed: the run goes on
    # The same call again, from a new client: joined, it resolves with the first copy's
    # result (its worker's pid), not started again.
    with KubernetesExecutor(run="ctrl-c", detach=True, **kw) as again:
        joined = again.submit(pid_then_block, str(marks), str(gate))
        gate.touch()
        assert joined.result(timeout=60) == worker
    assert len(list(marks.iterdir())) == 1
