"""Named runs (issue 18, first part): results stored per call identity and reused by a
later client of the same run name, on the local backend and on kubesim."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import ConfigError, KubernetesExecutor, Timeouts, _durable
from tests import helpers
from tests.kube_helpers import kubesim_kwargs

CALLS = 40
FINISH_FIRST = 20  # calls 0-19 finish in the first run; 20-39 wait for the gate

# The user's script: its function is defined in __main__ (pickled by value), as in a
# notebook or a script run twice. Every run of a call leaves a mark (its side effect).
SCRIPT = """
import json, pickle, sys
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
    with KubernetesExecutor(run="grid-test", **kwargs) as ex:
        results = list(ex.map(work, range(n), [marks] * n, [gate] * n, [first] * n))
    print(json.dumps(results), flush=True)
"""


def _marks(marks: Path) -> dict[int, int]:
    counts: dict[int, int] = {}
    for p in marks.iterdir():
        i = int(p.name.split("-")[0])
        counts[i] = counts.get(i, 0) + 1
    return counts


@pytest.mark.parametrize("backend", ["local", "kubernetes"])
def test_script_rerun_after_a_crash_reuses_every_finished_call(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    storage = tmp_path / "storage"
    if backend == "kubernetes":
        kw: dict[str, Any] = kubesim_kwargs(request.getfixturevalue("kubesim"), storage)
        # The client's pods give up soon after it dies (heartbeat grace).
        kw["timeouts"] = Timeouts(startup=30, heartbeat=0.5, heartbeat_grace=3)
    else:
        kw = {"backend": "local", "storage": str(storage)}
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

    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    try:
        helpers.wait_for(
            lambda: calls.exists() and len(list(calls.iterdir())) >= FINISH_FIRST,
            120,
            "the first 20 results to be stored",
        )
    finally:
        first.send_signal(signal.SIGKILL)  # the laptop closes
        first.communicate()
    # Its workers go too (with their parent, or when its heartbeat stops): before that,
    # the gate would let them run more calls.
    pids = {int(p.name.split("-")[1]) for p in marks.iterdir()}
    helpers.wait_for(lambda: not any(map(helpers.alive, pids)), 60, "the workers to end")
    assert len(list(calls.iterdir())) == FINISH_FIRST
    before = _marks(marks)
    assert all(before.get(i) == 1 for i in range(FINISH_FIRST)), before

    gate.touch()
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout.splitlines()[-1]) == [i * i for i in range(CALLS)]
    after = _marks(marks)
    # The finished calls did not run again; the others ran (again) once.
    assert {i: after[i] for i in range(FINISH_FIRST)} == dict.fromkeys(range(FINISH_FIRST), 1)
    assert all(after[i] == before.get(i, 0) + 1 for i in range(FINISH_FIRST, CALLS)), after
    assert len(list(calls.iterdir())) == CALLS
    # Beside the named run's results, only the killed client's run prefix is left (for
    # `k8s-executor cleanup`): the second client deleted its own.
    assert len([p for p in storage.iterdir() if p.name != "named"]) == 1


def square(x: int) -> int:
    return x * x


def test_results_and_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    kw: dict[str, Any] = {"backend": "local", "storage": str(tmp_path / "s"), "run": "r1"}
    marks = tmp_path / "marks"
    marks.mkdir()
    with KubernetesExecutor(**kw) as ex:
        assert ex.submit(square, 3).result() == 9
        with pytest.raises(ValueError, match="on purpose"):
            ex.submit(helpers.fail_with_value_error, "on purpose").result()
    stored = list((tmp_path / "s" / "named" / "r1" / "calls").iterdir())
    assert len(stored) == 1  # the result; never an exception (a fixed bug runs again)
    with KubernetesExecutor(**kw) as ex:
        future = ex.submit(square, 3)
        assert future.done() and future.result() == 9  # from storage, at submit
        failing = ex.submit(helpers.fail_with_value_error, "on purpose")
        assert not failing.done()  # runs again
        with pytest.raises(ValueError, match="on purpose"):
            failing.result()
        assert ex.submit(square, 4).result() == 16  # other arguments: another call


def test_result_signed_with_another_key_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    kw: dict[str, Any] = {"backend": "local", "storage": str(tmp_path / "s"), "run": "r2"}
    with KubernetesExecutor(**kw) as ex:
        assert ex.submit(square, 5).result() == 25
    (stored,) = (tmp_path / "s" / "named" / "r2" / "calls").iterdir()
    forged = bytearray(stored.read_bytes())
    forged[-1] ^= 1  # a writer to the bucket changed the stored result
    stored.write_bytes(bytes(forged))
    with KubernetesExecutor(**kw) as ex:
        future = ex.submit(square, 5)
        assert future.result(timeout=60) == 25  # ran again, not unpickled from storage
    # Another machine (another key) does not trust this one's results either.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "other-machine"))
    with KubernetesExecutor(**kw) as ex:
        assert not ex.submit(square, 5).done()


def test_key_file_is_private_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    key = _durable.load_or_create_key("s3://b/x", "grid")
    assert _durable.load_or_create_key("s3://b/x", "grid") == key
    assert _durable.load_or_create_key("s3://b/y", "grid") != key  # per storage
    path = _durable.key_path("s3://b/x", "grid")
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="does not hold a run key"):
        _durable.load_or_create_key("s3://b/x", "grid")


@pytest.mark.parametrize("name", ["Grid", "-grid", "grid-", "a" * 41, "grid_1", "", 3])
def test_bad_run_names_are_refused(name: object, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="run name is 1-40 lowercase"):
        KubernetesExecutor(backend="local", run=name)  # type: ignore[arg-type]
    if isinstance(name, str) and name:
        monkeypatch.setenv("K8S_EXECUTOR_RUN", name)
        with pytest.raises(ConfigError, match="K8S_EXECUTOR_RUN="):
            KubernetesExecutor(backend="local")


def test_identity_depends_on_function_arguments_and_buffers() -> None:
    a = _durable.identity(b"f", b"args", ())
    assert a == _durable.identity(b"f", b"args", ())
    assert a != _durable.identity(b"g", b"args", ())
    assert a != _durable.identity(b"f", b"args2", ())
    assert a != _durable.identity(b"f", b"args", ("k",))
    assert _durable.identity(b"fa", b"rgs", ()) != a  # parts are length-prefixed


def test_forget_deletes_the_stored_results_and_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from k8s_executor import cli

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    storage = str(tmp_path / "s")
    with KubernetesExecutor(backend="local", storage=storage, run="old-grid") as ex:
        assert list(ex.map(square, range(3))) == [0, 1, 4]
    key = _durable.key_path(storage, "old-grid")
    assert key.exists()
    assert cli.main(["forget", "old-grid", "--storage", storage]) == 0
    assert "would delete named run old-grid: 3 stored results" in capsys.readouterr().out
    assert key.exists()  # a dry run
    assert cli.main(["forget", "old-grid", "--storage", storage, "--yes"]) == 0
    assert "deleted named run old-grid: 3 stored results" in capsys.readouterr().out
    assert not key.exists()
    assert not (tmp_path / "s" / "named" / "old-grid").exists()
    assert cli.main(["forget", "../etc", "--storage", storage]) == 1
    assert "run name is 1-40 lowercase" in capsys.readouterr().err
