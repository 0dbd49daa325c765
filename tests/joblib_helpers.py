"""Task functions for the joblib backend tests (importable, so they pickle by reference),
and a local backend that counts the workers it starts."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from k8s_executor.backends._base import LaunchSpec
from k8s_executor.backends.local import LocalBackend
from k8s_executor.joblib import TaskTimeoutError
from tests.helpers import wait_for


class CountingLocalBackend(LocalBackend):
    """A LocalBackend that records the number of workers (indexes) of every launch."""

    def __init__(self, launches: list[int]) -> None:
        super().__init__()
        self.launches = launches

    def launch(self, spec: LaunchSpec) -> None:
        self.launches.append(spec.indexes)
        super().launch(spec)


def inc(x: int) -> int:
    return x + 1


def pid_after(seconds: float) -> int:
    """The worker's pid, after ``seconds`` (so that the calls spread over the workers)."""
    import time

    time.sleep(seconds)
    return os.getpid()


def wait_if_first(x: int, release: str) -> int:
    """Call 0 waits for the test to create ``release``; the others return at once."""
    if x == 0:
        wait_for(lambda: os.path.exists(release), 60, f"release file {release}")
    return x


def fail_or_block(x: int, started: str) -> int:
    """Call 0 fails at once; the others record their pid and block until killed."""
    if x == 0:
        raise ValueError("call 0 failed on purpose")
    Path(started, str(x)).write_text(str(os.getpid()))
    threading.Event().wait()
    return x


def wait_for_release(release: str, timeout: float = 60.0) -> int:
    wait_for(lambda: os.path.exists(release), timeout, f"release file {release}")
    return os.getpid()


def wait_unless_timed_out(x: int, release: str) -> tuple[Any, int]:
    """Call 0 waits (for a file no one creates) until the backend's task_timeout
    interrupts it, and reports that, as scikit-learn's ``error_score`` would."""
    try:
        if x == 0:
            wait_for(lambda: os.path.exists(release), 60, f"release file {release}")
        return x, os.getpid()
    except TaskTimeoutError:
        return "timed out", os.getpid()


def nested_parallel(n: int) -> tuple[int, list[int], str]:
    """Run a nested Parallel inside the task: which backend does it get, where does it run?"""
    import joblib
    from joblib.parallel import get_active_backend

    backend, _ = get_active_backend()
    pids = joblib.Parallel(n_jobs=2)(joblib.delayed(os.getpid)() for _ in range(n))
    return os.getpid(), list(pids), type(backend).__name__


def parallel_naming_kubernetes(n: int) -> tuple[int, list[int], str]:
    """Code that names the backend itself, as library code inside a task may."""
    import joblib

    with joblib.parallel_config(backend="kubernetes", executor_backend="local"):
        backend, _ = joblib.parallel.get_active_backend()
        pids = joblib.Parallel(n_jobs=2)(joblib.delayed(os.getpid)() for _ in range(n))
    also = joblib.Parallel(n_jobs=2, backend="kubernetes")(
        joblib.delayed(os.getpid)() for _ in range(n)
    )
    return os.getpid(), list(pids) + list(also), type(backend).__name__
