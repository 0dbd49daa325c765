"""The worker as its container's init (k8s_executor/_init.py), under real PID 1 semantics.

``unshare --pid --fork --mount-proc`` makes the worker PID 1 of a new PID namespace, as a
container runtime does: the kernel then drops every signal PID 1 has no handler for, from
inside the namespace (a task's own SIGKILL) and from outside (the kubelet's SIGTERM). The
same tests run with ``K8S_EXECUTOR_INIT=1`` in a plain process (the worker is then a
subreaper, as on kubesim's process kubelet), and the faults are shown without the init.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from k8s_executor import _payload as wire
from k8s_executor._init import exit_code
from k8s_executor._store import RunStore
from k8s_executor.worker import EXIT_OK
from tests.helpers import wait_for

KEY = b"i" * 32
MODES = ["pid1", "subreaper"]


def _can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


@pytest.fixture(scope="module")
def unshare_ok() -> bool:
    return _can_unshare()


def _need_pid_namespace(ok: bool) -> None:
    if ok:
        return
    message = "needs `unshare --pid` (root, util-linux) to give the worker real PID 1 semantics"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# -- tasks (run in the worker; imported from this module there) -----------------------------


def kill_myself() -> str:
    os.kill(os.getpid(), signal.SIGKILL)
    return "survived SIGKILL"


def wait_forever(started: str) -> str:
    Path(started).touch()
    threading.Event().wait(60)  # until a signal ends the worker
    return "never stopped"


def checkpoint_on_sigterm(started: str, saved: str) -> str:
    def on_term(signum: int, frame: object) -> None:
        Path(saved).write_text("checkpoint")
        os._exit(143)

    signal.signal(signal.SIGTERM, on_term)
    return wait_forever(started)


def orphan_is_reaped() -> str:
    # sh starts a short sleep in the background and exits: the sleep is an orphan,
    # handed to PID 1 (or to the nearest subreaper). Once it ends, someone must reap it.
    out = subprocess.run(["sh", "-c", "sleep 0.2 & echo $!"], capture_output=True, text=True)
    pid = int(out.stdout)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a zombie stays a zombie: it is never reaped
        if not Path(f"/proc/{pid}").exists():
            return "reaped"
        threading.Event().wait(0.05)
    return "zombie"


# -- driving the worker -------------------------------------------------------------------


def _batch(tmp_path: Path, fn: object, *args: object) -> str:
    url = str(tmp_path / "run" / "b00000")
    store = RunStore(url)
    table = wire.FunctionTable(
        (wire.dump_function(fn),), (getattr(fn, "__name__", "f"),), None, None
    )
    store.put("fn", table.seal(KEY))
    calls = wire.dump_calls(None, [(args, {})])
    store.put("in/0", wire.seal_inputs(KEY, [wire.TaskInput(1, 0, calls)]))
    return url


def _result(url: str) -> object:
    outcomes = wire.open_outcomes(KEY, RunStore(url).get("out/0"))
    assert isinstance(outcomes, list)
    assert outcomes[0].results is not None, outcomes[0].error
    return wire.load_results(outcomes[0].results, "f")[0]


def _start(url: str, mode: str, init: str = "1") -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "JOB_COMPLETION_INDEX": "0",
        "K8S_EXECUTOR_KEY": KEY.hex(),
        "K8S_EXECUTOR_INIT": init,
    }
    argv = [sys.executable, "-m", "k8s_executor.worker", url]
    if mode == "pid1":
        argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _top_pid(proc: subprocess.Popen[str], mode: str) -> int:
    """The pid (in our namespace) of the process the kubelet would signal: PID 1."""
    if mode != "pid1":
        return proc.pid
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    found: list[int] = []

    def child_started() -> bool:
        found[:] = [int(p) for p in children.read_text().split()]
        return bool(found)

    wait_for(child_started, timeout=10, what="unshare's child")
    return found[0]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, unshare_ok: bool) -> str:
    if request.param == "pid1":
        _need_pid_namespace(unshare_ok)
    return str(request.param)


def test_exit_code_is_what_a_runtime_reports() -> None:
    assert exit_code(0) == 0
    assert exit_code(83 << 8) == 83
    assert exit_code(signal.SIGKILL) == 137
    assert exit_code(signal.SIGTERM) == 143


def test_task_sigkill_ends_the_worker(tmp_path: Path, mode: str) -> None:
    url = _batch(tmp_path, kill_myself)
    proc = _start(url, mode)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 137, err
    assert RunStore(url).get_or_none("out/0") is None


def test_without_init_pid1_survives_its_own_sigkill(tmp_path: Path, unshare_ok: bool) -> None:
    """The fault the init exists for: a plain PID 1 ignores even its own SIGKILL."""
    _need_pid_namespace(unshare_ok)
    url = _batch(tmp_path, kill_myself)
    proc = _start(url, "pid1", init="0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_OK, err
    assert _result(url) == "survived SIGKILL"


def test_sigterm_ends_the_worker_at_once(tmp_path: Path, mode: str) -> None:
    started = tmp_path / "started"
    url = _batch(tmp_path, wait_forever, str(started))
    proc = _start(url, mode)
    wait_for(started.exists, timeout=30, what="the task to start")
    os.kill(_top_pid(proc, mode), signal.SIGTERM)
    _, err = proc.communicate(timeout=10)  # the task alone would wait 60 s
    assert proc.returncode == 143
    assert "SIGTERM: the pod is being stopped" in err
    assert RunStore(url).get_or_none("out/0") is None


def test_without_init_pid1_ignores_sigterm(tmp_path: Path, unshare_ok: bool) -> None:
    _need_pid_namespace(unshare_ok)
    started = tmp_path / "started"
    url = _batch(tmp_path, wait_forever, str(started))
    proc = _start(url, "pid1", init="0")
    wait_for(started.exists, timeout=30, what="the task to start")
    top = _top_pid(proc, "pid1")
    try:
        os.kill(top, signal.SIGTERM)
        # Still running after the kernel dealt with the signal: it was dropped.
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.5)
    finally:
        os.kill(top, signal.SIGKILL)  # as the kubelet does when the grace period ends
        proc.communicate(timeout=30)


def test_task_sigterm_handler_runs_first(tmp_path: Path, mode: str) -> None:
    started, saved = tmp_path / "started", tmp_path / "saved"
    url = _batch(tmp_path, checkpoint_on_sigterm, str(started), str(saved))
    proc = _start(url, mode)
    wait_for(started.exists, timeout=30, what="the task to start")
    os.kill(_top_pid(proc, mode), signal.SIGTERM)
    proc.communicate(timeout=10)
    assert saved.read_text() == "checkpoint"
    assert proc.returncode == 143


def test_orphans_are_reaped(tmp_path: Path, mode: str) -> None:
    url = _batch(tmp_path, orphan_is_reaped)
    proc = _start(url, mode)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_OK, err
    assert _result(url) == "reaped"


def test_without_init_pid1_leaves_zombies(tmp_path: Path, unshare_ok: bool) -> None:
    _need_pid_namespace(unshare_ok)
    url = _batch(tmp_path, orphan_is_reaped)
    proc = _start(url, "pid1", init="0")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_OK, err
    assert _result(url) == "zombie"


def test_a_successful_index_exits_0_through_the_init(tmp_path: Path, mode: str) -> None:
    url = _batch(tmp_path, str.upper, "apple")
    proc = _start(url, mode)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_OK, err
    assert _result(url) == "APPLE"
