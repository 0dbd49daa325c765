"""Functions the tests run in workers (importable, so they pickle by reference) and
small waiting utilities. No test here sleeps to dodge a race: they wait on conditions."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        threading.Event().wait(delay)
        delay = min(delay * 2, 0.2)


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0) -> int:
    return a + b


def echo_kwargs(*args: object, **kwargs: object) -> tuple[tuple[object, ...], dict[str, object]]:
    return args, kwargs


def pid() -> int:
    return os.getpid()


def fail_with_value_error(message: str) -> None:
    raise ValueError(message)


def raise_system_exit(code: int) -> None:
    raise SystemExit(code)


def kill_self() -> None:
    print("about to die", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def exit_hard(code: int) -> None:
    print(f"exiting with {code}", file=sys.stderr, flush=True)
    os._exit(code)


def return_lock() -> object:
    return threading.Lock()


def wait_for_file(path: str, timeout: float = 60.0) -> str:
    """Block in the worker until ``path`` exists (the test creates it to release us)."""
    wait_for(lambda: os.path.exists(path), timeout, f"release file {path}")
    return path


def touch_then_wait(started: str, release: str, timeout: float = 60.0) -> int:
    Path(started).touch()
    wait_for(lambda: os.path.exists(release), timeout, f"release file {release}")
    return os.getpid()


def touch_then_block(started: str) -> None:
    Path(started).write_text(str(os.getpid()))
    threading.Event().wait()  # until killed


def raise_exception_missing_locally(tmpdir: str) -> None:
    """Raise an exception whose class lives in a module only the worker can import."""
    module_dir = Path(tmpdir) / "worker_only"
    module_dir.mkdir(parents=True, exist_ok=True)
    (module_dir / "worker_only_errors.py").write_text(
        "class WorkerOnlyError(Exception):\n    pass\n"
    )
    sys.path.insert(0, str(module_dir))
    import worker_only_errors

    raise worker_only_errors.WorkerOnlyError("only the worker knows this class")


class BadUnpickle:
    """Pickles fine; raises when unpickled (in the worker)."""

    def __reduce__(self) -> tuple[object, ...]:
        return (_explode, ("cannot rebuild BadUnpickle",))


def _explode(message: str) -> None:
    raise RuntimeError(message)


class UnpicklableError(Exception):
    """An exception that cannot be pickled (its __reduce__ refuses)."""

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("UnpicklableError refuses to be pickled")


def raise_unpicklable_error() -> None:
    raise UnpicklableError("this one stays in the worker")


def counting_initializer(path: str) -> None:
    Path(path, str(os.getpid())).touch()


def failing_initializer() -> None:
    raise RuntimeError("initializer broke")


def read_global() -> object:
    return globals().get("INITIALIZED")


def set_global(value: object) -> None:
    globals()["INITIALIZED"] = value


def record_then_wait(record_dir: str, release: str, timeout: float = 60.0) -> int:
    """Leave a trace that this call ran, then wait for the release file."""
    Path(record_dir, f"{os.getpid()}-{time.monotonic_ns()}").touch()
    wait_for(lambda: os.path.exists(release), timeout, f"release file {release}")
    return os.getpid()


def timed_work(seconds: float) -> tuple[int, float, float]:
    """Busy the worker for ``seconds`` (a workload, not a synchronisation) and report when."""
    start = time.monotonic()
    threading.Event().wait(seconds)
    return os.getpid(), start, time.monotonic()


def crash_first_time(record_dir: str) -> str:
    """Kill the worker on the first call (as a crash would), succeed on the next."""
    attempts = len(os.listdir(record_dir))
    Path(record_dir, str(attempts)).touch()
    if attempts == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return "second try"
