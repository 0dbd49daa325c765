"""Ctrl-C or SIGTERM during map leaves no worker process behind; SIGTERM on the Kubernetes
backend leaves no Job, pod or Secret of the run, and the run's storage is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import KubernetesExecutor
from tests import helpers
from tests.kube_helpers import KubesimCluster

# Every thread's stack on SIGUSR1: what a client that does not end was doing (the test
# asks for it before it kills a client that outlived its bound).
STACKS = "import faulthandler, signal; faulthandler.register(signal.SIGUSR1, all_threads=True)"
# A terminal's Ctrl-C reaches a program whose SIGINT is neither ignored nor blocked. A child
# inherits both from the pytest process, where some test or fixture (not found yet) left
# SIGINT so under xdist (twice in CI: the client never saw its KeyboardInterrupt, its main
# thread still in future.result() 60 s later): say so, and start as a terminal would.
SIGINT_AS_A_TERMINAL = """
import sys
blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
inherited = (signal.getsignal(signal.SIGINT), blocked)
if inherited != (signal.default_int_handler, False):
    print(f"inherited SIGINT (handler, blocked): {inherited}", file=sys.stderr, flush=True)
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
"""

WITH = (
    STACKS
    + SIGINT_AS_A_TERMINAL
    + """
import sys
from k8s_executor import KubernetesExecutor
from tests import helpers

started = sys.argv[1]
with KubernetesExecutor(backend="local", max_workers=2) as ex:
    for _ in ex.map(helpers.touch_then_block, [f"{started}/a", f"{started}/b", f"{started}/c"]):
        pass
"""
)

# No `with`: nothing but map itself sees the KeyboardInterrupt (the interpreter's exit
# then shuts the executor down, which would wait for the running calls forever).
WITHOUT = (
    STACKS
    + SIGINT_AS_A_TERMINAL
    + """
import sys
from k8s_executor import KubernetesExecutor
from tests import helpers

started = sys.argv[1]
ex = KubernetesExecutor(backend="local", max_workers=2)
for _ in ex.map(helpers.touch_then_block, [f"{started}/a", f"{started}/b", f"{started}/c"]):
    pass
"""
)


@pytest.mark.parametrize("script", [WITH, WITHOUT], ids=["with", "without-with"])
def test_keyboard_interrupt_during_map_kills_workers(script: str, tmp_path: Path) -> None:
    started = tmp_path / "started"
    started.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(started)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    helpers.wait_for(lambda: len(list(started.iterdir())) == 2, 60, "two tasks to start")
    # Each file is created a moment before its pid is written into it.
    pids = [int(helpers.wait_for_text(p, 60, f"task {p.name}'s pid")) for p in started.iterdir()]
    assert all(helpers.alive(pid) for pid in pids)
    proc.send_signal(signal.SIGINT)
    stderr = _communicate_or_dump(proc, 60)
    assert "KeyboardInterrupt" in stderr
    helpers.wait_for(lambda: not any(helpers.alive(pid) for pid in pids), 60, "workers to be gone")
    # The third call (packed behind another in the same worker) never started.
    assert len(list(started.iterdir())) == 2


def _communicate_or_dump(proc: subprocess.Popen[str], timeout: float) -> str:
    """The client's stderr once it ended; if it did not end within ``timeout``, its
    threads' stacks (SIGUSR1, see STACKS), then it is killed and the test fails with them
    (nothing is left running for later tests)."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        try:
            stderr = proc.communicate(timeout=10)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            stderr = proc.communicate()[1]
        pytest.fail(f"the client did not end {timeout:g} s after SIGINT; its stacks:\n{stderr}")


# -- SIGTERM -----------------------------------------------------------------------------
# The client's storage and (on kubesim) cluster come as arguments; it prints its run id,
# then maps three calls over two workers that block until killed.

SIGTERM_CLIENT = """
import sys, types
from k8s_executor import KubernetesExecutor
from k8s_executor import KubernetesExecutor
from tests import helpers
from tests.kube_helpers import kubesim_kwargs

mode, started, storage, kubeconfig = sys.argv[1:5]
if kubeconfig:
    kw = kubesim_kwargs(types.SimpleNamespace(kubeconfig_path=kubeconfig), storage)
else:
    kw = {"backend": "local", "storage": storage}
calls = [f"{started}/a", f"{started}/b", f"{started}/c"]
if mode == "with":
    with KubernetesExecutor(max_workers=2, **kw) as ex:
        print(ex.run_id, flush=True)
        for _ in ex.map(helpers.touch_then_block, calls):
            pass
else:
    # No `with`, and not map: only the interpreter's exit sees the executor.
    ex = KubernetesExecutor(max_workers=2, **kw)
    print(ex.run_id, flush=True)
    futures = [ex.submit(helpers.touch_then_block, c) for c in calls[:2]]
    futures[0].result()
"""


def _terminate_client(
    tmp_path: Path, mode: str, kubeconfig: str = ""
) -> tuple[str, list[int], subprocess.CompletedProcess[str]]:
    """Start the client, wait until two calls run, send SIGTERM; (run id, pids, result)."""
    started = tmp_path / "started"
    started.mkdir()
    storage = tmp_path / "storage"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_CLIENT, mode, str(started), str(storage), kubeconfig],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        helpers.wait_for(lambda: len(list(started.iterdir())) == 2, 60, "two calls to start")
        pids = [int(helpers.wait_for_text(p, 60, f"{p.name}'s pid")) for p in started.iterdir()]
        assert all(helpers.alive(pid) for pid in pids)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert done.returncode == 128 + signal.SIGTERM, stderr  # SystemExit(143), no traceback
    assert "Traceback" not in stderr, stderr
    assert len(list(started.iterdir())) == 2  # the third call never started
    run_id = stdout.split()[0]
    assert not (storage / run_id).exists()
    return run_id, pids, done


@pytest.mark.parametrize("mode", ["with", "at-exit"])
def test_sigterm_on_the_local_backend_kills_workers(mode: str, tmp_path: Path) -> None:
    _, pids, _ = _terminate_client(tmp_path, mode)
    helpers.wait_for(lambda: not any(helpers.alive(pid) for pid in pids), 60, "workers to be gone")


@pytest.mark.parametrize("mode", ["with", "at-exit"])
def test_sigterm_on_kubernetes_leaves_no_job_pod_or_secret(
    mode: str, tmp_path: Path, kubesim: Any
) -> None:
    run_id, pids, _ = _terminate_client(tmp_path, mode, str(kubesim.kubeconfig_path))
    cluster = KubesimCluster(kubesim)
    try:
        # The client deleted them before it exited: the API lists none of them.
        assert cluster.run_objects(run_id) == {"jobs": [], "pods": [], "secrets": []}
    finally:
        cluster.close()
    assert not any(helpers.alive(pid) for pid in pids)  # the process kubelet's pods


USER_HANDLER = """
import signal, sys
from k8s_executor import KubernetesExecutor
from tests import helpers

def mine(signum, frame):
    print("the program's own handler", flush=True)
    sys.exit(3)

signal.signal(signal.SIGTERM, mine)
with KubernetesExecutor(backend="local", max_workers=1) as ex:
    assert signal.getsignal(signal.SIGTERM) is mine
    ex.submit(helpers.touch_then_block, sys.argv[1] + "/a")
    ex.submit(helpers.touch_then_block, sys.argv[1] + "/b").result()
"""


def test_sigterm_handler_of_the_program_is_left_alone(tmp_path: Path) -> None:
    started = tmp_path / "started"
    started.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", USER_HANDLER, str(started)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    helpers.wait_for(lambda: len(list(started.iterdir())) == 1, 60, "the call to start")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert stdout == "the program's own handler\n"
    assert proc.returncode == 3, stderr


def test_sigterm_disposition_is_restored_after_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    from k8s_executor import _executor

    # A fresh start, whatever executors earlier tests of this process left open.
    monkeypatch.setattr(_executor, "_sigterm", _executor._SigtermState())
    monkeypatch.setattr(_executor, "_live_executors", weakref.WeakSet())
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with KubernetesExecutor(backend="local", max_workers=1) as ex:
            assert ex.submit(helpers.square, 3).result(timeout=60) == 9
            assert signal.getsignal(signal.SIGTERM) is _executor._on_sigterm
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
