"""The worker run exactly as a pod runs it: `python -m k8s_executor.worker URL` + env."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest

from k8s_executor import StorageError, VersionMismatchError
from k8s_executor import _payload as wire
from k8s_executor._batches import Task
from k8s_executor._contract import STORAGE_FAILED
from k8s_executor._outcomes import resolve_index
from k8s_executor._store import RunStore
from k8s_executor.backends._base import IndexExit
from k8s_executor.worker import EXIT_INDEX_FAILED, EXIT_OK, EXIT_TASK_FAILED, EXIT_USAGE
from tests import helpers
from tests.test_payload import _forge_header

KEY = b"s" * 32


def _batch(tmp_path: Path, calls: list[tuple[tuple[object, ...], dict[str, object]]]) -> str:
    url = str(tmp_path / "run" / "b00000")
    store = RunStore(url)
    table = wire.FunctionTable((wire.dump_function(helpers.square),), ("square",), None, None)
    store.put("fn", table.seal(KEY))
    store.put("in/0", wire.seal_inputs(KEY, [wire.TaskInput(7, 0, wire.dump_calls(None, calls))]))
    return url


def _run(url: str | None, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-m", "k8s_executor.worker"] + ([url] if url else [])
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=60)


def test_runs_index_from_env_and_writes_outcome(tmp_path: Path) -> None:
    url = _batch(tmp_path, [((3,), {}), ((4,), {})])
    done = _run(url, JOB_COMPLETION_INDEX="0", K8S_EXECUTOR_KEY=KEY.hex())
    assert done.returncode == EXIT_OK, done.stderr
    outcomes = wire.open_outcomes(KEY, RunStore(url).get("out/0"))
    assert isinstance(outcomes, list)
    assert outcomes[0].task_id == 7
    assert outcomes[0].results is not None
    assert wire.load_results(outcomes[0].results, "square") == [9, 16]


def test_key_from_file(tmp_path: Path) -> None:
    url = _batch(tmp_path, [((2,), {})])
    key_file = tmp_path / "key"
    key_file.write_text(KEY.hex() + "\n")
    done = _run(url, JOB_COMPLETION_INDEX="0", K8S_EXECUTOR_KEY_FILE=str(key_file))
    assert done.returncode == EXIT_OK, done.stderr


def test_task_error_exit_code(tmp_path: Path) -> None:
    url = _batch(tmp_path, [(("not a number",), {})])
    done = _run(url, JOB_COMPLETION_INDEX="0", K8S_EXECUTOR_KEY=KEY.hex())
    assert done.returncode == EXIT_TASK_FAILED
    outcomes = wire.open_outcomes(KEY, RunStore(url).get("out/0"))
    assert isinstance(outcomes, list) and outcomes[0].error is not None
    assert outcomes[0].error.type_name == "TypeError"


def test_wrong_key_refuses_to_unpickle(tmp_path: Path) -> None:
    url = _batch(tmp_path, [((2,), {})])
    done = _run(url, JOB_COMPLETION_INDEX="0", K8S_EXECUTOR_KEY=(b"w" * 32).hex())
    assert done.returncode == EXIT_INDEX_FAILED
    assert "signature does not match" in done.stderr


def test_version_mismatch_reported_to_client(tmp_path: Path) -> None:
    url = _batch(tmp_path, [((2,), {})])
    RunStore(url).put("in/0", _forge_header("3.99", "0.1.0", KEY))
    done = _run(url, JOB_COMPLETION_INDEX="0", K8S_EXECUTOR_KEY=KEY.hex())
    assert done.returncode == EXIT_INDEX_FAILED
    failure = wire.open_outcomes(KEY, RunStore(url).get("out/0"))
    assert isinstance(failure, wire.IndexFailure)
    assert failure.error == "version"
    assert "Python 3.99" in failure.message


@pytest.mark.parametrize("broken", ["version", "storage"])
def test_a_speculating_copy_that_cannot_start_writes_nothing(broken: str, tmp_path: Path) -> None:
    """Another copy may run the index (review finding 2): this copy's failure is not
    written as the index's outcome; were it alone, the client reads it from its log."""
    url = _batch(tmp_path, [((2,), {})])
    if broken == "version":
        RunStore(url).put("in/0", _forge_header("3.99", "0.1.0", KEY))
    else:
        RunStore(url).delete("in/0")  # the read fails (as a 503 past its retries would)
    env = {"JOB_COMPLETION_INDEX": "0", "K8S_EXECUTOR_KEY": KEY.hex()}
    done = _run(url, **env, K8S_EXECUTOR_SPECULATE="1")
    assert RunStore(url).get_or_none("out/0") is None
    exit = IndexExit(done.returncode, log_tail=done.stderr)
    (outcome,) = resolve_index(
        [Task(Future(), len, b"", 1, True, task_id=7, fn_index=0)],
        exit,
        lambda: None,
        key=KEY,
        batch_id="b00000",
        index=0,
        n_tasks=1,
        fn_names=["square"],
    )
    if broken == "version":
        assert done.returncode == EXIT_INDEX_FAILED
        assert isinstance(outcome.error, VersionMismatchError)
        assert "Python 3.99" in str(outcome.error)
    else:
        assert done.returncode == STORAGE_FAILED
        assert isinstance(outcome.error, StorageError)
        assert "in/0" in str(outcome.error)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (None, {"JOB_COMPLETION_INDEX": "0"}, "usage: python -m k8s_executor.worker BATCH_URL"),
        ("x", {"JOB_COMPLETION_INDEX": "zero"}, "JOB_COMPLETION_INDEX must be a non-negative"),
        (
            "x",
            {"JOB_COMPLETION_INDEX": "0"},
            "K8S_EXECUTOR_KEY (or K8S_EXECUTOR_KEY_FILE) is not set",
        ),
        (
            "x",
            {"JOB_COMPLETION_INDEX": "0", "K8S_EXECUTOR_STORAGE_RETRY": '{"attempts": 0}'},
            "K8S_EXECUTOR_STORAGE_RETRY='{\"attempts\": 0}' is not a StorageRetry",
        ),
    ],
)
def test_bad_invocation(args: str | None, env: dict[str, str], message: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("K8S_EXECUTOR", "JOB_"))}
    full_env = {**clean, **env, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-m", "k8s_executor.worker"] + ([args] if args else [])
    done = subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_USAGE
    assert message in done.stderr


def test_worker_exits_when_parent_dies(tmp_path: Path) -> None:
    # A middle process starts a worker blocked in a task, then is killed: the worker,
    # watching its parent, must exit on its own (no orphan outlives a killed client).
    url = str(tmp_path / "run" / "b00000")
    store = RunStore(url)
    table = wire.FunctionTable((wire.dump_function(helpers.touch_then_block),), ("t",), None, None)
    store.put("fn", table.seal(KEY))
    started = tmp_path / "started"
    store.put(
        "in/0",
        wire.seal_inputs(
            KEY, [wire.TaskInput(1, 0, wire.dump_calls(None, [((str(started),), {})]))]
        ),
    )
    middle = (
        "import os, subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-m', 'k8s_executor.worker', sys.argv[1]],"
        " env={**os.environ, 'K8S_EXECUTOR_PARENT_PID': str(os.getpid())})\n"
        "print(p.pid, flush=True)\n"
        "import threading; threading.Event().wait()\n"
    )
    env = {
        **os.environ,
        "JOB_COMPLETION_INDEX": "0",
        "K8S_EXECUTOR_KEY": KEY.hex(),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", middle, url], env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    worker_pid = int(proc.stdout.readline())
    helpers.wait_for(started.exists, 60, "the task to start")
    proc.kill()
    proc.wait()
    proc.stdout.close()
    # A zombie (re-parented, not yet reaped) counts as gone.
    helpers.wait_for(lambda: not helpers.alive(worker_pid), 30, "the orphaned worker to exit")


def test_storage_retry_travels_in_the_environment() -> None:
    from k8s_executor import StorageRetry

    retry = StorageRetry(attempts=3, initial_delay=0.5, max_delay=2.0)
    assert StorageRetry.from_env(retry.to_env()) == retry
    assert StorageRetry.from_env(None) == StorageRetry()
    # A field added by a newer client is left out: the payload's version check speaks.
    assert StorageRetry.from_env('{"attempts": 3, "added_later": 1}') == StorageRetry(attempts=3)
