"""Every way a call can fail, in one table: what the future raises, and that the executor
stays usable afterwards (one failure never breaks the pool, unlike ProcessPoolExecutor)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import (
    ArgumentsPicklingError,
    FunctionPicklingError,
    KubernetesExecutor,
    RemoteError,
    ResultPicklingError,
    Timeouts,
    UnpicklingError,
    WorkerLostError,
)
from tests import helpers
from tests.behaviour.conftest import ExecutorFactory
from tests.helpers import SharedPath


@dataclass(frozen=True)
class Case:
    submit: Callable[[KubernetesExecutor], cf.Future[Any]]
    raises: type[BaseException]
    match: str | None
    check: Callable[[BaseException], None] = lambda exc: None


def _lock_closure() -> Callable[[], None]:
    lock = threading.Lock()
    return lambda: print(lock)


def _remote_traceback_mentions(text: str) -> Callable[[BaseException], None]:
    def check(exc: BaseException) -> None:
        assert isinstance(exc.__cause__, _RemoteTraceback)
        assert text in str(exc.__cause__)

    return check


def _killed(exc: BaseException) -> None:
    assert isinstance(exc, WorkerLostError)
    assert isinstance(exc, BrokenProcessPool)  # existing except-clauses keep working
    assert exc.signal == signal.SIGKILL
    assert "about to die" in exc.log_tail


def _exited(exc: BaseException) -> None:
    assert isinstance(exc, WorkerLostError)
    assert exc.exit_code == 7
    assert "exiting with 7" in exc.log_tail


def _broken(what: str) -> Callable[[BaseException], None]:
    """Where ProcessPoolExecutor's pool breaks: our specific error, a BrokenProcessPool too."""

    def check(exc: BaseException) -> None:
        assert getattr(exc, "what", None) == what
        assert isinstance(exc, BrokenProcessPool)

    return check


def _coded(exc: BaseException, code: int) -> None:
    assert isinstance(exc, helpers.CodedError)
    assert exc.code == code


def _what(expected: str) -> Callable[[BaseException], None]:
    def check(exc: BaseException) -> None:
        assert getattr(exc, "what", None) == expected

    return check


def _remote_error(exc: BaseException) -> None:
    assert isinstance(exc, RemoteError)
    assert exc.type_name == "worker_only_errors.WorkerOnlyError"
    assert "only the worker knows this class" in exc.remote_traceback


CASES = {
    "unpicklable function": Case(
        lambda ex: ex.submit(_lock_closure()),
        FunctionPicklingError,
        "cannot pickle the function .*lock",
        _what("function"),
    ),
    "unpicklable argument": Case(
        lambda ex: ex.submit(print, threading.Lock()),
        ArgumentsPicklingError,
        "cannot pickle the arguments of a call to print",
        _what("arguments"),
    ),
    "unpicklable result": Case(
        lambda ex: ex.submit(helpers.return_lock),
        ResultPicklingError,
        "cannot pickle the result of tests.helpers.return_lock in the worker",
        _what("result"),
    ),
    "argument fails to unpickle in worker": Case(
        lambda ex: ex.submit(print, helpers.BadUnpickle()),
        UnpicklingError,
        "could not load the arguments of a call to print: RuntimeError: cannot rebuild",
        _broken("arguments"),
    ),
    "argument exits when unpickled in worker": Case(
        lambda ex: ex.submit(print, helpers.ExitsWhenUnpickled()),
        UnpicklingError,
        "could not load the arguments of a call to print: SystemExit: 3",
        _broken("arguments"),
    ),
    "result exits when pickled in worker": Case(
        lambda ex: ex.submit(helpers.return_exits_when_pickled),
        ResultPicklingError,
        "cannot pickle the result of .*return_exits_when_pickled in the worker: SystemExit",
        _broken("result"),
    ),
    "result exits when unpickled here": Case(
        lambda ex: ex.submit(helpers.return_exits_when_unpickled),
        UnpicklingError,
        "cannot load the result of .*return_exits_when_unpickled here: SystemExit: 3",
        _broken("result"),
    ),
    "user exception": Case(
        lambda ex: ex.submit(helpers.fail_with_value_error, "nope"),
        ValueError,
        "^nope$",
        _remote_traceback_mentions("fail_with_value_error"),
    ),
    "exception that cannot be pickled": Case(
        lambda ex: ex.submit(helpers.raise_unpicklable_error),
        RemoteError,
        "tests.helpers.UnpicklableError: this one stays in the worker",
        _remote_traceback_mentions("raise_unpicklable_error"),
    ),
    "exception with extra __init__ arguments": Case(
        lambda ex: ex.submit(helpers.raise_coded_error, 28),
        helpers.CodedError,
        "failed with a code",
        lambda exc: _coded(exc, 28),
    ),
    "exception type missing locally": Case(
        lambda ex: ex.submit(helpers.raise_exception_missing_locally),
        RemoteError,
        "WorkerOnlyError: only the worker knows this class",
        _remote_error,
    ),
    "worker killed by SIGKILL": Case(
        lambda ex: ex.submit(helpers.kill_self),
        WorkerLostError,
        "was killed by SIGKILL .*before reporting its results; it may have run out of memory",
        _killed,
    ),
    "worker calls os._exit": Case(
        lambda ex: ex.submit(helpers.exit_hard, 7),
        WorkerLostError,
        "exited with code 7",
        _exited,
    ),
    "memory exhausted inside the task": Case(
        lambda ex: ex.submit(bytearray, 1 << 62),
        MemoryError,
        None,
    ),
}


# Rows whose outcome depends on the storage (see tests/behaviour/conftest.py): the
# worker dies without writing its outcome, or writes it while exiting.
STORAGE_ROWS = {
    "argument exits when unpickled in worker",
    "result exits when pickled in worker",
    "worker killed by SIGKILL",
    "worker calls os._exit",
}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(case, id=name, marks=[pytest.mark.storage] if name in STORAGE_ROWS else [])
        for name, case in CASES.items()
    ],
)
def test_failure_table(case: Case, make_executor: ExecutorFactory) -> None:
    ex = make_executor(max_workers=2)
    future = case.submit(ex)
    with pytest.raises(case.raises, match=case.match) as info:
        future.result(timeout=60)
    case.check(info.value)
    # The executor is not broken: the next call runs.
    assert ex.submit(helpers.square, 9).result(timeout=60) == 81


@pytest.mark.storage
def test_lost_worker_fails_only_its_own_tasks(make_executor: ExecutorFactory) -> None:
    from k8s_executor import Batching

    # One batch, two indexes: index 0 runs the killer, index 1 the healthy call. (The
    # second submit closes the batch (max_calls); the window outlasts any pause between.)
    ex = make_executor(max_workers=2, batching=Batching(window=60, max_calls=2, max_indexes=2))
    doomed = ex.submit(helpers.kill_self)
    healthy = ex.submit(helpers.square, 4)
    with pytest.raises(WorkerLostError):
        doomed.result(timeout=60)
    assert healthy.result(timeout=60) == 16


@pytest.mark.storage
def test_function_unpicklable_in_worker(make_executor: ExecutorFactory, tmp_path: Path) -> None:
    # A function from a module the worker cannot import (it is only on our sys.path).
    import importlib
    import sys

    module_dir = tmp_path / "client_only"
    module_dir.mkdir()
    (module_dir / "client_only_mod.py").write_text("def f():\n    return 1\n")
    sys.path.insert(0, str(module_dir))
    try:
        module = importlib.import_module("client_only_mod")
        ex = make_executor()
        # The local backend hands our sys.path to workers; remove the module afterwards
        # so the worker, importing fresh, cannot find it.
        sys.path.remove(str(module_dir))
        (module_dir / "client_only_mod.py").unlink()
        with pytest.raises(UnpicklingError, match="could not load the function client_only_mod.f"):
            ex.submit(module.f).result(timeout=60)
    finally:
        sys.modules.pop("client_only_mod", None)
        if str(module_dir) in sys.path:
            sys.path.remove(str(module_dir))


@pytest.mark.storage
def test_shutdown_kill_workers_ends_running_workers(
    make_executor: ExecutorFactory,
    shared_dir: SharedPath,
    local_workers: bool,
    request: pytest.FixtureRequest,
) -> None:
    ex = make_executor(max_workers=2)
    started = [shared_dir / "a", shared_dir / "b"]
    running = [ex.submit(helpers.touch_then_block, p) for p in started]
    pids = [int(helpers.wait_for_text(p, 60, f"call {p.name} to start")) for p in started]
    # On Kubernetes the executor learns of the starts from the watch, maybe after the
    # calls began; a call it does not know to be running yet would be cancelled.
    helpers.wait_for(lambda: all(f.running() for f in running), 60, "the executor to see both")
    queued = ex.submit(helpers.square, 3)  # no free worker: it cannot start
    began = time.monotonic()
    ex.shutdown(wait=True, kill_workers=True)
    # Not a speed goal but a behaviour: the workers end on SIGTERM, they do not make the
    # kubelet wait out the pods' grace period (30 s) and SIGKILL them (PID 1 in a container).
    assert time.monotonic() - began < Timeouts().termination_grace / 2
    assert queued.cancelled()
    for future in running:
        with pytest.raises(WorkerLostError):
            future.result(timeout=0)
    if local_workers:
        for pid in pids:  # killed and reaped: no such process any more
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    else:  # pods elsewhere: their pids mean nothing here, but the API lists them
        assert request.getfixturevalue("cluster").run_objects(ex.run_id)["pods"] == []
