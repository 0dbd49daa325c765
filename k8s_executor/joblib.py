"""A joblib parallel backend that runs ``Parallel`` calls on a :class:`KubernetesExecutor`.

    import joblib
    import k8s_executor.joblib

    k8s_executor.joblib.register()
    with joblib.parallel_config(backend="kubernetes", n_jobs=32, storage="s3://bucket/k8sx"):
        scores = joblib.Parallel()(joblib.delayed(score)(p) for p in params)

Importing ``k8s_executor`` does not import joblib; this module does, so it is imported
only by those who register the backend.

How a ``Parallel`` call maps onto the executor::

    Parallel ── BatchedCalls (joblib's batch of calls) ──▶ KubernetesParallelBackend.submit
                                                             │ executor.submit(_run_batch, batch)
       ▲ callback: result, next dispatch                     ▼
       └──────────── Future ◀── KubernetesExecutor: batches of submits, packed into
                                ≤ n_jobs workers (pods / local processes)

Starting workers (pods) is the unit of overhead, not a call. Workers stay warm for
``Timeouts.keep_warm`` after their work (60 s by default), and so does the executor between
``Parallel`` calls: one whose call ended cleanly is kept and taken by the next call with the
same options and ``n_jobs`` (scikit-learn makes one ``Parallel`` call per search round or
cross-validation), so that call starts in the same workers, as loky's reusable pool does.
An executor nobody takes within its ``keep_warm`` window is shut down;
:func:`shutdown_idle_executors` does it at once.

joblib keeps only ``2 * n_jobs`` batches in flight and dispatches one more per completed
batch, which with workers started per wave would mean many waves. The backend therefore
(1) measures the time calls take inside the worker and sizes joblib's batches from it, not
from the round trip that includes start-up, and (2) once it knows how long calls take,
submits enough further batches ahead (``lookahead`` seconds of work per worker) that each
wave of workers has enough to do.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import joblib
from joblib.parallel import ParallelBackendBase, SequentialBackend, ThreadingBackend

from ._config import known_backends
from ._joblib_worker import Nested, TaskTimeoutError, TimeLimited, run_batch, run_calls
from ._reuse import ReusePool
from .errors import ConfigError, ExecutorBrokenError

if TYPE_CHECKING:
    from ._executor import KubernetesExecutor
    from .backends._base import Backend

__all__ = ["KubernetesParallelBackend", "TaskTimeoutError", "register", "shutdown_idle_executors"]

BACKEND_NAME = "kubernetes"
DEFAULT_WINDOW = 0.05
"""Seconds the executor waits for more submits to join a batch, unless ``batching=``
is given."""

# Options of KubernetesExecutor that this backend sets itself.
_RESERVED = {
    "max_workers": "set n_jobs instead (Parallel(n_jobs=...) or parallel_config(n_jobs=...))",
    "backend": "use executor_backend= (joblib's own backend= names this joblib backend)",
}

# Options Parallel passes to every backend's configure() for its process pools (memory
# mapping of large arrays, multiprocessing context, verbosity): nothing to do here.
_JOBLIB_POOL_KWARGS = ("max_nbytes", "temp_folder", "mmap_mode", "verbose", "context")


# Executors kept between Parallel calls (see the module's docstring).
_IDLE = ReusePool()


def shutdown_idle_executors() -> None:
    """Shut down now the executors kept between ``Parallel`` calls for their warm workers.

    They are shut down anyway when nobody takes them within ``Timeouts.keep_warm``, and at
    interpreter exit; call this to release their workers (pods) and storage sooner, e.g.
    at the end of a notebook section.
    """
    _IDLE.clear()


def register(name: str = BACKEND_NAME) -> None:
    """Register the backend with joblib under ``name`` (``"kubernetes"`` by default).

    After it, ``joblib.parallel_config(backend="kubernetes", n_jobs=..., **options)`` runs
    ``Parallel`` calls (and scikit-learn's ``n_jobs``) through a :class:`KubernetesExecutor`.
    Registering again is harmless.

    Args:
        name: the name to pass as ``backend=`` to ``parallel_config`` or ``Parallel``.
    """
    joblib.register_parallel_backend(name, KubernetesParallelBackend)


class KubernetesParallelBackend(ParallelBackendBase):  # type: ignore[misc]
    """joblib backend running each ``Parallel`` call on its own :class:`KubernetesExecutor`.

    Options are given to ``parallel_config`` (or ``Parallel``) after ``backend=``; every
    keyword not listed here goes to :class:`KubernetesExecutor` unchanged (``storage``,
    ``storage_options``, ``image``, ``namespace``, ``resources``, ``batching``,
    ``initializer``, ...). ``n_jobs`` sets the executor's ``max_workers``; ``n_jobs=-1``
    means the executor's default (the number of CPUs locally, 16 on Kubernetes).

    Args:
        nesting_level: set by joblib.
        inner_max_num_threads: not supported (joblib rejects it for this backend).
        executor_backend: where workers run: ``"local"``, ``"kubernetes"``, or a callable
            returning a new executor ``Backend`` for each ``Parallel`` call. Default: the
            executor's own choice (``K8S_EXECUTOR_BACKEND``, then a configured cluster).
        task_timeout: seconds one call (one ``delayed`` call, not a batch) may run inside
            its worker before :class:`TaskTimeoutError` is raised in it. Only that call
            fails; the worker goes on with its other calls. Unlike ``Parallel(timeout=)``
            it does not count the time spent waiting for a worker to start. ``None``
            (default): no limit. See the docs for its limits (calls stuck in C code).
        lookahead: seconds of work per worker (estimated from calls already run) that the
            backend keeps submitted beyond joblib's own ``pre_dispatch`` pacing, so that
            each wave of fresh workers gets enough calls to pay for its start-up. ``0``
            keeps joblib's pacing. Lower it when every call carries large arguments.
        **executor_options: passed to :class:`KubernetesExecutor`.
    """

    default_n_jobs = -1
    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    uses_threads = False
    supports_sharedmem = False

    #: Seconds of worker time one joblib batch should take: long enough that the client's
    #: per-batch cost (pickling, a future, a callback: ~0.1 ms) stays negligible, short
    #: enough that batches spread evenly over the workers of a wave.
    TARGET_BATCH_SECONDS = 0.05
    MAX_BATCH_SIZE = 1_000_000

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        executor_backend: str | Callable[[], Backend] | None = None,
        task_timeout: float | None = None,
        lookahead: float = 60.0,
        **executor_options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._options = self._check_options(
            executor_backend, task_timeout, lookahead, executor_options
        )
        self._lock = threading.Lock()
        self._executor: KubernetesExecutor | None = None
        # What the executor was taken for (its options, its max_workers): the key it goes
        # back to the idle pool under.
        self._executor_key: tuple[Mapping[str, Any], int] | None = None
        self._reused = False
        # This call's futures not done yet (a done future's callback removes it; terminate
        # checks done() itself, since callbacks run after waiters wake up).
        self._outstanding: set[Future[Any]] = set()
        self._workers = 0
        self._call_options: dict[str, Any] = {}
        self._reset_stats()

    # -- configuration -------------------------------------------------------------

    @staticmethod
    def _check_options(
        executor_backend: Any,
        task_timeout: Any,
        lookahead: Any,
        executor_options: Mapping[str, Any],
    ) -> dict[str, Any]:
        for name, why in _RESERVED.items():
            if name in executor_options:
                raise ConfigError(f"{name}= is not an option of the joblib backend: {why}")
        if task_timeout is not None and (
            isinstance(task_timeout, bool)
            or not isinstance(task_timeout, int | float)
            or not task_timeout > 0
        ):
            raise ConfigError(
                f"task_timeout={task_timeout!r} is not allowed: expected a number of seconds "
                "> 0, or None"
            )
        if isinstance(lookahead, bool) or not isinstance(lookahead, int | float) or lookahead < 0:
            raise ConfigError(
                f"lookahead={lookahead!r} is not allowed: expected a number of seconds >= 0"
            )
        if executor_backend is not None and not (
            isinstance(executor_backend, str) or callable(executor_backend)
        ):
            raise ConfigError(
                f"executor_backend={executor_backend!r} is not allowed: expected one of "
                f"{sorted(known_backends)} or a callable returning a new Backend (a "
                "backend instance can serve only one executor, and each Parallel call "
                "gets its own)"
            )
        options = {
            "executor_backend": executor_backend,
            "task_timeout": task_timeout,
            "lookahead": float(lookahead),
            **executor_options,
        }
        # Build (never start) an executor now, so that a bad option fails at
        # parallel_config(...) rather than deep inside the first Parallel call.
        _new_executor(options, max_workers=None).shutdown(wait=False)
        return options

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """The number of workers ``n_jobs`` asks for: ``-1`` is the executor's default
        ``max_workers``, ``-2`` one fewer, and so on (as for joblib's process backends)."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs < 0:
            return max(self._default_workers() + 1 + n_jobs, 1)
        return int(n_jobs)

    def _default_workers(self) -> int:
        options = {**self._options, **self._call_options}
        return _new_executor(options, max_workers=None).max_workers

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Prepare for one ``Parallel`` call; return its number of workers.

        Keywords given to ``Parallel(...)`` itself (rather than ``parallel_config``)
        arrive here and override the constructor's options for this call.
        """
        self.parallel = parallel
        for name in _JOBLIB_POOL_KWARGS:
            backend_kwargs.pop(name, None)
        self._call_options = (
            self._check_options(
                backend_kwargs.pop("executor_backend", self._options["executor_backend"]),
                backend_kwargs.pop("task_timeout", self._options["task_timeout"]),
                backend_kwargs.pop("lookahead", self._options["lookahead"]),
                {**self._executor_options(self._options), **backend_kwargs},
            )
            if backend_kwargs
            else {}
        )
        self._workers = self.effective_n_jobs(n_jobs)
        return self._workers

    @staticmethod
    def _executor_options(options: Mapping[str, Any]) -> dict[str, Any]:
        return {
            k: v
            for k, v in options.items()
            if k not in ("executor_backend", "task_timeout", "lookahead")
        }

    @property
    def _active_options(self) -> dict[str, Any]:
        return self._call_options or self._options

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        """Nested ``Parallel`` calls inside a task run in the worker: threads at the first
        level of nesting, sequentially below it; never back onto the cluster."""
        level = (self.nesting_level or 0) + 1
        if level > 1:
            return SequentialBackend(nesting_level=level), None
        return ThreadingBackend(nesting_level=level), None

    # -- one Parallel call -----------------------------------------------------------

    def start_call(self) -> None:
        """A ``Parallel`` call begins: timings of earlier calls do not apply to it."""
        self._reset_stats()

    def compute_batch_size(self) -> int:
        """Calls per joblib batch, from the time calls took inside the workers.

        joblib's own auto-batching times a batch from dispatch to result; here that
        includes starting a worker (a pod), which would keep batches tiny. Until a result
        has come back, one call per batch.
        """
        with self._lock:
            per_call = self._per_call_seconds()
        if per_call is None:
            return 1
        size = int(self.TARGET_BATCH_SECONDS / max(per_call, 1e-9))
        return min(max(size, 1), self.MAX_BATCH_SIZE)

    def submit(self, func: Any, callback: Callable[[Any], object] | None = None) -> Future[Any]:
        """Run one joblib batch (``func``) in a worker; ``callback`` when it is done."""
        timeout = self._active_options["task_timeout"]
        n_calls = len(func) if hasattr(func, "__len__") else 1
        if timeout is not None and hasattr(func, "items"):
            # Limit each call rather than the batch: batch sizes are chosen by the backend,
            # so a limit per batch would mean nothing to the user.
            func.items = [(TimeLimited(f, timeout), a, k) for f, a, k in func.items]
        with self._lock:
            self._pending_calls += n_calls
        nested = _nested(func)
        if nested is not None:
            # The calls and a description of their nested backend, not joblib's
            # BatchedCalls: workers then import joblib only if the calls need it.
            future = self._submit(run_calls, func.items, nested)
        else:
            future = self._submit(run_batch, func)
        future.add_done_callback(functools.partial(self._batch_done, callback, n_calls))
        return future

    def retrieve_result_callback(self, out: Future[Any]) -> Any:
        """The results of a finished batch; re-raises its exception (with the remote
        traceback as ``__cause__``)."""
        elapsed, results = out.result()
        with self._lock:
            self._elapsed += elapsed
            self._measured_calls += len(results)
        return results

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel what has not started, end the workers that have; nothing is left
        running. With ``ensure_ready`` the next submit gets a fresh executor."""
        with self._lock:
            executor, self._executor = self._executor, None
            self._outstanding.clear()
        if executor is not None:
            _kill(executor)

    def terminate(self) -> None:
        """The ``Parallel`` call is over. Its executor is kept for the next call with the
        same options during ``Timeouts.keep_warm`` (its workers stay warm), or shut down
        (with its storage) when it keeps no workers warm or calls are still pending."""
        with self._lock:
            executor, self._executor = self._executor, None
            pending = any(not f.done() for f in self._outstanding)
            self._outstanding.clear()
            key = self._executor_key
        if executor is not None:
            if pending or key is None:
                executor.shutdown(wait=True, cancel_futures=True)
            else:
                _IDLE.give_back(key[0], key[1], executor)
        self._reset_stats()

    # -- internals -----------------------------------------------------------------

    def _reset_stats(self) -> None:
        with self._lock:
            self._elapsed = 0.0
            self._measured_calls = 0
            self._pending_calls = 0

    def _per_call_seconds(self) -> float | None:
        # Called with the lock held.
        if self._measured_calls == 0:
            return None
        return self._elapsed / self._measured_calls

    def _get_executor(self) -> tuple[KubernetesExecutor, bool]:
        """This call's executor, and whether it was kept from an earlier call."""
        with self._lock:
            if self._executor is None:
                workers = self._workers or self.effective_n_jobs(-1)
                options = self._active_options
                self._executor, self._reused = _IDLE.take(
                    options, workers, lambda: _new_executor(options, max_workers=workers)
                )
                self._executor_key = (options, workers)
            return self._executor, self._reused

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        while True:
            executor, reused = self._get_executor()
            try:
                future = executor.submit(fn, *args)
            except ExecutorBrokenError:
                if not reused:
                    raise
                # A kept executor that broke while idle (its cluster connection, its
                # storage): drop it and take another (in the end a new one).
                with self._lock:
                    if self._executor is executor:
                        self._executor = None
                executor.shutdown(wait=False, cancel_futures=True)
                continue
            with self._lock:
                self._outstanding.add(future)
            return future

    def _batch_done(
        self, callback: Callable[[Any], object] | None, n_calls: int, future: Future[Any]
    ) -> None:
        with self._lock:
            self._pending_calls -= n_calls
            self._outstanding.discard(future)
        if callback is not None:
            callback(future)
        if not future.cancelled() and future.exception() is None:
            self._dispatch_ahead()

    def _dispatch_ahead(self) -> None:
        """Submit further batches while less than ``lookahead`` seconds of work per worker
        is pending, so that the next wave of workers starts with enough to do."""
        lookahead = self._active_options["lookahead"]
        parallel = getattr(self, "parallel", None)
        with self._lock:
            per_call = self._per_call_seconds()
        if not lookahead or parallel is None or per_call is None:
            return
        lock = getattr(parallel, "_lock", None)
        if lock is None or not hasattr(parallel, "_original_iterator"):
            return  # another joblib version: keep joblib's own pacing
        budget = lookahead * max(self._workers, 1) / max(per_call, 1e-9)
        # The same guard as joblib's own completion callback: dispatch under Parallel's
        # lock, and only while the task iterator is still there (it is dropped once empty).
        with lock:
            while parallel._original_iterator is not None and not parallel._aborting:
                with self._lock:
                    pending = self._pending_calls
                if pending >= budget:
                    return
                parallel.dispatch_next()
                with self._lock:
                    if self._pending_calls <= pending:
                        return  # nothing was dispatched (aborting, or the iterator failed)


def _new_executor(options: Mapping[str, Any], *, max_workers: int | None) -> KubernetesExecutor:
    from ._executor import KubernetesExecutor

    kwargs = KubernetesParallelBackend._executor_options(options)
    if kwargs.get("batching") is None:
        from ._options import Batching

        # joblib submits a wave's batches one by one as results come in, pickling each:
        # a longer window than the executor's 10 ms keeps such a burst in one launch.
        kwargs["batching"] = Batching(window=DEFAULT_WINDOW)
    backend = options.get("executor_backend")
    if backend is not None and not isinstance(backend, str):
        backend = backend()
    return KubernetesExecutor(max_workers=max_workers, backend=backend, **kwargs)


def _kill(executor: KubernetesExecutor) -> None:
    """Shut ``executor`` down now: cancel what has not started, kill running workers."""
    executor.shutdown(wait=True, cancel_futures=True, kill_workers=True)


def _nested(batch: Any) -> Nested | None:
    """How ``batch`` (a ``BatchedCalls``) configures nested ``Parallel`` calls, or None
    when this joblib's batches look unlike 1.6's (then the batch is sent as it is)."""
    backend: Any = getattr(batch, "_backend", None)
    if not isinstance(getattr(batch, "items", None), list):
        return None
    kind = {ThreadingBackend: "threading", SequentialBackend: "sequential"}.get(type(backend))
    if kind is None:
        return None
    return (kind, int(backend.nesting_level or 0), getattr(batch, "_n_jobs", None))
