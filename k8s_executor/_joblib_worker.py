"""The worker's half of the joblib backend, importable without importing joblib.

A worker unpickles the function it runs, and with it that function's module: had the
backend sent joblib's own ``BatchedCalls``, every worker would import joblib (~120 ms,
more than the rest of a local worker's start-up) to run calls that may never touch it.
The backend sends the batch's ``(func, args, kwargs)`` items and a description of the
nested backend instead, and the nested configuration is applied only once joblib is
there: at once if unpickling the calls imported it, or the moment a call imports it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

Item = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
Nested = tuple[str, int, int | None]
"""The nested joblib backend of a batch's calls: (``"threading"`` or ``"sequential"``,
its nesting level, its ``n_jobs``)."""


class TaskTimeoutError(TimeoutError):
    """A call ran longer than the backend's ``task_timeout`` inside its worker.

    Raised *inside* the call, so code that catches exceptions around its own work (such
    as scikit-learn's ``error_score``) turns it into a failed fit and goes on; otherwise
    it reaches the caller of ``Parallel`` like any exception of the call.
    """


def run_calls(items: Sequence[Item], nested: Nested) -> tuple[float, list[Any]]:
    """Run one joblib batch's calls; also report how long they took (without the
    worker's start-up), for the backend's batch sizing."""
    start = time.perf_counter()
    with _nested_config(nested):
        results = [func(*args, **kwargs) for func, args, kwargs in items]
    return time.perf_counter() - start, results


def run_batch(batch: Callable[[], list[Any]]) -> tuple[float, list[Any]]:
    """Run a joblib batch sent as it is (a joblib whose batches :func:`run_calls` does
    not know); also report how long it took."""
    start = time.perf_counter()
    results = batch()
    return time.perf_counter() - start, results


@contextlib.contextmanager
def _nested_config(nested: Nested) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        if "joblib" in sys.modules:
            stack.enter_context(_parallel_config(nested))
            yield
            return
        main = threading.current_thread()

        def configure() -> None:
            # A call imported joblib: from now on its Parallel calls nest as they would
            # have had joblib been imported from the start (in the thread running calls).
            if threading.current_thread() is main:
                stack.enter_context(_parallel_config(nested))

        hook = _AfterImport("joblib", configure)
        sys.meta_path.insert(0, hook)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(hook)


def _parallel_config(nested: Nested) -> contextlib.AbstractContextManager[Any]:
    from joblib import parallel_config
    from joblib.parallel import SequentialBackend, ThreadingBackend

    kind, level, n_jobs = nested
    backend_class = ThreadingBackend if kind == "threading" else SequentialBackend
    config: contextlib.AbstractContextManager[Any] = parallel_config(
        backend=backend_class(nesting_level=level), n_jobs=n_jobs
    )
    return config


BACKEND_NAME = "kubernetes"


def alias_nested_backend() -> None:
    """In a worker, make ``backend="kubernetes"`` mean the nested local backend.

    Code a worker runs may name the backend itself (a nested ``Parallel(backend=
    "kubernetes")``, a ``parallel_config`` block inside the call): a pod has no cluster
    credentials and no client, so those calls run on threads of the worker, as loky's
    nesting rule runs nested calls of its workers. Done when joblib is imported, at once
    or by a later import of the call's: importing joblib here would slow every worker.
    """

    def register() -> None:
        from joblib import register_parallel_backend
        from joblib.parallel import ThreadingBackend

        class NestedKubernetes(ThreadingBackend):  # type: ignore[misc]
            """``kubernetes`` inside a worker: threads of the worker."""

            def __init__(self, nesting_level: int | None = None, **_cluster: Any) -> None:
                # The client's options (executor_backend=, storage=...) mean nothing here.
                super().__init__(nesting_level=nesting_level)

        register_parallel_backend(BACKEND_NAME, NestedKubernetes)

    if "joblib" in sys.modules:
        register()
    else:
        sys.meta_path.insert(0, _AfterImport("joblib", register))


class _AfterImport:
    """A one-shot import hook (a ``sys.meta_path`` finder): runs ``then`` right after the
    module ``name`` has been executed. The standard library has no post-import hook;
    this finder only decorates the spec the other finders return."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> Any:
        if fullname != self.name:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)  # one shot; and the lookup below must not find us
        spec = importlib.util.find_spec(fullname)
        loader = None if spec is None else spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec
        then = self.then

        def exec_then_configure(module: Any) -> None:
            exec_module(module)
            then()

        # This loader instance belongs to this one spec: decorating it touches nothing else.
        loader.exec_module = exec_then_configure  # type: ignore[union-attr,method-assign]
        return spec


class TimeLimited:
    """One call, interrupted with :class:`TaskTimeoutError` after ``seconds``.

    SIGALRM is the only way to interrupt a running call while the worker process (and with
    it the other calls of its index) lives on. It needs the main thread, where the worker
    runs its calls; elsewhere (a nested thread) the call runs without a limit.
    """

    def __init__(self, func: Callable[..., Any], seconds: float) -> None:
        self.func = func
        self.seconds = seconds

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread() or not hasattr(
            signal, "setitimer"
        ):
            return self.func(*args, **kwargs)
        name = getattr(self.func, "__qualname__", repr(self.func))

        def expire(signum: int, frame: Any) -> None:
            raise TaskTimeoutError(
                f"{name} ran longer than task_timeout={self.seconds:g}s in its worker and "
                "was interrupted; raise task_timeout, or make the call shorter"
            )

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        try:
            return self.func(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
