"""KubernetesExecutor: ``concurrent.futures`` whose calls run as Kubernetes Indexed Jobs.

Data flow::

    submit(fn, *args) / map(fn, *its, chunksize)        caller's thread
       │ cloudpickle the arguments (fails the future at once if they cannot be pickled)
       ▼
    queue ──▶ dispatcher thread: coalesce submits for `Batching.window`, or take a map's
       │      calls at once ──▶ Batch of tasks packed into N indexes (≤ max_workers)
       │ store <run>/<batch>/fn and <run>/<batch>/in/<i>          (before launch)
       ▼
    Backend.launch(batch)   kubernetes: one Indexed Job | local: N subprocesses
       ▼
    worker (python -m k8s_executor.worker): fn + in/<i> → call → out/<i>
       ▼
    Listener.index_started  → Future.set_running_or_notify_cancel (skip if all cancelled)
    Listener.index_finished → read out/<i> → Future.set_result / set_exception
                              no outcome → WorkerLostError (exit code, signal, log tail)

One task is one future: a ``submit`` call, or one chunk of a ``map``. An index runs a
contiguous run of tasks in one worker, so that many small calls do not become many
workers; one failing task fails only its own future, one lost worker only its tasks.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from . import _config
from . import _payload as wire
from ._config import Env
from ._options import (
    Batching,
    PodOptions,
    Resources,
    Scheduling,
    StorageRetry,
    Timeouts,
    check_positive_int,
)
from ._progress import Progress
from ._run import INTERPRETER_EXIT, Run
from ._store import new_run_id
from .backends._base import Backend
from .errors import ConfigError, FunctionPicklingError

__all__ = ["KubernetesExecutor"]

T = TypeVar("T")


def _env_json_object(name: str) -> dict[str, Any] | None:
    # cli.py still imports this; it goes once the command line reads _config.Env.
    return Env().json_object(name)


class KubernetesExecutor(Executor):
    """An Executor whose calls run in workers on Kubernetes (or locally).

    A drop-in replacement for :class:`concurrent.futures.ProcessPoolExecutor`::

        with KubernetesExecutor(max_workers=64, storage="s3://bucket/k8sx") as ex:
            results = list(ex.map(work, items))

    An executor still open when the interpreter exits waits for its calls and cleans up,
    as ProcessPoolExecutor does. Ctrl-C in a ``with`` block or a ``map`` kills the run's
    workers and cleans up; so does SIGTERM, handled while an executor started from the
    main thread runs (unless the program has its own SIGTERM handler), which ends the
    program with ``SystemExit(143)``.

    Args:
        max_workers: the most workers (pods or processes) running at once, over all the
            run's batches. Default: the number of CPUs for the local backend, 16 for
            Kubernetes.
        initializer: called in every worker before its tasks, with ``initargs``.
        initargs: arguments of ``initializer``.
        backend: ``"local"`` (subprocesses on this machine) or ``"kubernetes"``. Default:
            the ``K8S_EXECUTOR_BACKEND`` environment variable; without it, ``kubernetes``
            when ``kubeconfig`` or ``context`` is given or a cluster is configured
            (``KUBECONFIG``, ``~/.kube/config``, or running in a pod), else an error that
            says how to choose.
        storage: an fsspec URL (``s3://bucket/prefix``, ``gs://…``, ``file:///shared``)
            through which arguments and results travel; every run gets its own prefix
            under it, deleted on shutdown. Default: ``K8S_EXECUTOR_STORAGE``; for the local
            backend, a private temporary directory.
        storage_options: options of the fsspec filesystem (credentials, endpoint), for
            this machine; the pods get them only with ``share_storage_options``. Default:
            ``K8S_EXECUTOR_STORAGE_OPTIONS`` (a JSON object), else none.
        batching: how calls are coalesced into batches and packed into workers.
        storage_retry: how transient storage errors are retried, by this process and by
            the workers.
        image: (kubernetes) the workers' image. ``"auto"`` (the default when a registry is
            configured) snapshots this virtualenv into ``registry`` on first use and
            reuses it while the environment is unchanged. Default: ``K8S_EXECUTOR_IMAGE``.
        registry: (kubernetes) where ``image="auto"`` pushes the snapshot,
            ``host[:port]/namespace``. Default: ``K8S_EXECUTOR_REGISTRY``.
        base_image: (kubernetes) the image the snapshot goes on top of; its Python must
            have this interpreter's major.minor. Default: ``K8S_EXECUTOR_BASE_IMAGE``, else
            the official ``python:<major>.<minor>-slim``.
        platform: (kubernetes) the nodes' ``os/arch`` the ``image="auto"`` snapshot is for:
            ``"linux/amd64"`` or ``"linux/arm64"``. When it is not this machine's (a Mac,
            an arm64 laptop), platform-specific packages are installed for it with pip
            instead of copied. Default: ``K8S_EXECUTOR_PLATFORM``, else this machine's
            platform on Linux and ``"linux/amd64"`` elsewhere.
        namespace: (kubernetes) where Jobs, pods and the run's Secret go. Default: the
            kubeconfig context's namespace, or the pod's own namespace in-cluster.
        kubeconfig: (kubernetes) a kubeconfig file. Default: ``KUBECONFIG`` /
            ``~/.kube/config``, else the in-cluster service account.
        context: (kubernetes) the kubeconfig context. Default: its current context.
        resources: (kubernetes) CPU, memory, GPUs and disk of each worker pod.
        scheduling: (kubernetes) node selector, tolerations, affinity, priority class.
        pod: (kubernetes) labels, env, Secrets, service account, volumes, pod_template...
            Without ``pod.secrets``, the Secrets named in ``K8S_EXECUTOR_POD_SECRETS``
            (comma-separated) give the workers their environment variables.
        timeouts: (kubernetes) startup timeout, Job deadline, TTL and client heartbeat.
        retries: (kubernetes) counted pod failures (OOM, crash) per worker before its
            calls fail; disruptions (eviction, preemption, node loss) are always retried.
        python: (kubernetes) the interpreter in the image that runs the worker. Default:
            ``K8S_EXECUTOR_PYTHON``, else ``python``; with ``image="auto"`` always this
            venv's own ``bin/python``.
        share_storage_options: (kubernetes) put ``storage_options`` into the run's Secret
            so workers can use them (off by default: give pods their own credentials).
            Default: ``K8S_EXECUTOR_SHARE_STORAGE_OPTIONS`` (1/0), else off.
        stream_logs: (kubernetes) print every worker's output here, prefixed
            ``[batch/index]``. Without it, a task that raises carries its worker's last
            log lines as a note on the exception.
        progress: show a live bar of the run's calls (done, running, pending, failed)
            on stderr, updated until shutdown; a widget in a Jupyter notebook. Default:
            ``K8S_EXECUTOR_PROGRESS`` (1/0), else on only when stderr is a terminal or in
            a notebook. ``map(..., progress=True)`` gives one map its own bar.
        run: name the run (1-40 lowercase letters, digits and ``-``), so that results are
            kept and reused: a call whose function and arguments have a stored result in
            this run resolves from storage without running again (a script re-run after
            a crash redoes only what had not finished). Results are stored under
            ``<storage>/named/<run>/`` until ``k8s-executor cleanup --named RUN``; see
            "Durable runs" in the docs. Default: ``K8S_EXECUTOR_RUN``, else an unnamed
            run that keeps nothing.
        detach: (named runs) leaving the ``with`` block, ``shutdown()``, Ctrl-C or the
            client dying does not stop the run: its workers go on without the client
            (no heartbeat, no warm workers, every batch started at once) until they
            finish or the run's ``deadline``; run the script again, or
            ``k8s-executor results RUN``, to get the outcomes. Default:
            ``K8S_EXECUTOR_DETACH`` (1/0), else off. See "Durable runs" in the docs.
        deadline: (detached runs) seconds the run's workers and storage may live, from
            this client's start: at the deadline its workers stop, and any later client
            of the same storage (or ``k8s-executor cleanup --expired``) removes what is
            left. Default: ``K8S_EXECUTOR_DEADLINE`` (``3600``, ``90m``, ``12h``,
            ``2d``), else 24 hours.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        backend: str | Backend | None = None,
        storage: str | None = None,
        storage_options: dict[str, Any] | None = None,
        batching: Batching | None = None,
        storage_retry: StorageRetry | None = None,
        image: str | None = None,
        registry: str | None = None,
        base_image: str | None = None,
        platform: str | None = None,
        namespace: str | None = None,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        resources: Resources | None = None,
        scheduling: Scheduling | None = None,
        pod: PodOptions | None = None,
        timeouts: Timeouts | None = None,
        retries: int = 0,
        python: str | None = None,
        share_storage_options: bool | None = None,
        stream_logs: bool = False,
        progress: bool | None = None,
        run: str | None = None,
        detach: bool | None = None,
        deadline: float | None = None,
    ) -> None:
        if max_workers is not None:
            if isinstance(max_workers, int) and not isinstance(max_workers, bool):
                if max_workers <= 0:
                    # The very message ProcessPoolExecutor gives.
                    raise ConfigError("max_workers must be greater than 0")
            else:
                check_positive_int("max_workers", max_workers)
        if initializer is not None and not callable(initializer):
            if hasattr(initializer, "get_start_method"):
                # KubernetesExecutor(4, mp_context): ProcessPoolExecutor's positional order.
                raise ConfigError(
                    "a multiprocessing context was given where KubernetesExecutor takes "
                    "its initializer: mp_context has no meaning here (workers are pods or "
                    "subprocesses started by the backend); drop it, and pass initializer= "
                    "by keyword"
                )
            raise TypeError("initializer must be a callable")
        if not isinstance(initargs, tuple):
            raise ConfigError(f"initargs={initargs!r} is not allowed: expected a tuple")
        settings = _config.resolve(
            backend=backend,
            storage=storage,
            storage_options=storage_options,
            batching=batching,
            storage_retry=storage_retry,
            image=image,
            registry=registry,
            base_image=base_image,
            platform=platform,
            namespace=namespace,
            kubeconfig=kubeconfig,
            context=context,
            resources=resources,
            scheduling=scheduling,
            pod=pod,
            timeouts=timeouts,
            retries=retries,
            python=python,
            share_storage_options=share_storage_options,
            stream_logs=stream_logs,
            progress=progress,
            run=run,
            detach=detach,
            deadline=deadline,
        )
        self._detached = settings.deadline is not None
        self._backend: Backend = settings.backend
        self._max_workers = max_workers or self._backend.default_max_workers()
        self._keep_warm = settings.keep_warm
        self._run_id = new_run_id()
        self._run = Run(
            settings,
            max_workers=self._max_workers,
            initializer=None
            if initializer is None
            else (wire.dump_function(initializer, what="initializer"), _dump_initargs(initargs)),
            run_id=self._run_id,
            key=wire.new_key() if settings.run_name is None else _named_key(settings),
            on_start=self._started,
            on_end=self._ended,
        )

    # -- public API ----------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The id of this executor's run: its storage prefix and its Jobs' label."""
        return self._run_id

    @property
    def max_workers(self) -> int:
        """The most workers that run at once."""
        return self._max_workers

    @property
    def keep_warm(self) -> float:
        """Seconds a worker that finished its calls waits for more
        (``Timeouts.keep_warm``); 0 when workers leave at once."""
        return self._keep_warm

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; return a Future for its result."""
        future: Future[T] = Future()
        run = self._run
        task = run.make_task(future, fn, [(args, kwargs)], single=True, bars=run.bars())
        run.enqueue([task], flush=False)
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool | None = None,
    ) -> Iterator[T]:
        """Like :func:`map`, but calls run concurrently in workers.

        All calls are sent at once as one batch; ``chunksize`` groups calls into tasks as
        ProcessPoolExecutor does (an exception in a chunk is raised when iteration reaches
        it). Results come in order. With ``timeout``, ``__next__`` raises TimeoutError
        when a result is not available ``timeout`` seconds after the call to ``map``, and
        the calls not yet started are cancelled. ``progress=True`` shows a bar of this
        map's calls alone (stderr), closed when the last one ends.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if progress is not None and not isinstance(progress, bool):
            raise ConfigError(f"progress={progress!r} is not allowed: expected True or False")
        run = self._run
        bars = run.bars()
        own = Progress(f"map({wire.callable_name(fn)})") if progress else None
        if own is not None:
            bars += (own,)
        end_time = None if timeout is None else timeout + time.monotonic()
        tasks = []
        # Kept here: a task settled at once (a stored result of a named run) has already
        # swapped its future for a stand-in (Task.release).
        futures: list[Future[Any]] = []
        calls: Iterator[tuple[tuple[Any, ...], dict[str, Any]]] = (
            (args, {}) for args in zip(*iterables, strict=False)
        )
        try:
            while chunk := list(itertools.islice(calls, chunksize)):
                futures.append(Future())
                tasks.append(run.make_task(futures[-1], fn, chunk, single=False, bars=bars))
            run.enqueue(tasks, flush=True)
        except BaseException:
            if own is not None:
                own.close()
            raise
        if own is not None:
            own.seal()
        return _result_iterator(futures, end_time, self._terminate)

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, kill_workers: bool = False
    ) -> None:
        """Stop accepting work and release everything the run holds.

        Args:
            wait: return only when every pending call has finished and the run's storage,
                workers (and on Kubernetes its Jobs and Secret) are gone. With False,
                this happens in the background.
            cancel_futures: cancel every call that has not started yet.

        A detached run (``detach=True``) is not waited for: this client stops following
        it, its workers go on, and the futures not done yet fail with
        :class:`~k8s_executor.RunDetachedError` (``kill_workers`` still ends everything).
            kill_workers: also end the workers that are running now (as loky's
                ``shutdown(kill_workers=True)`` does); their calls fail with
                :class:`WorkerLostError`. Implies ``cancel_futures``.
        """
        if self._detached and not kill_workers:
            # A detached run goes on without this client (see ``detach``).
            self._run.leave(cancel_futures=cancel_futures)
        else:
            self._run.shutdown(wait=wait, cancel_futures=cancel_futures, kill_workers=kill_workers)
        if wait and not _live_executors:
            _restore_sigterm_handler()  # the program's own SIGTERM disposition again

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        from_task = getattr(exc_val, "__dict__", {}).get(wire.FROM_TASK, False)
        if exc_type is not None and not issubclass(exc_type, Exception) and not from_task:
            # KeyboardInterrupt, SIGTERM (_Terminated) or SystemExit in the with block: the
            # user wants out now.
            # Leave nothing running: cancel what has not started, kill what has. (One a
            # task raised and result() re-raised is handed on as ProcessPoolExecutor does:
            # the other calls finish.)
            self._terminate()
        else:
            self.shutdown(wait=True)

    # -- lifecycle (called by the engine) -------------------------------------------

    def _started(self) -> None:
        # The run holds threads, storage and maybe Jobs now: release them at exit.
        _live_executors.add(self)
        _install_sigterm_handler()

    def _ended(self) -> None:
        _live_executors.discard(self)

    def _terminate(self) -> None:
        """Cancel what has not started, kill what has, release everything; wait for it.
        A detached run is left running instead (Ctrl-C, SIGTERM: the client goes)."""
        self.shutdown(wait=True, kill_workers=not self._detached)


_log = logging.getLogger(__name__)


def _named_key(settings: _config.Settings) -> bytes:
    """A named run's key: this machine's for that run and storage (see ``_durable``)."""
    from ._durable import load_or_create_key

    assert settings.run_name is not None
    assert settings.storage is not None
    return load_or_create_key(settings.storage, settings.run_name)


def _dump_initargs(initargs: tuple[Any, ...]) -> bytes:
    import pickle

    import cloudpickle

    try:
        blob: bytes = cloudpickle.dumps(initargs, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise FunctionPicklingError(
            f"cannot pickle initargs: {type(exc).__name__}: {exc}", what="initializer"
        ) from exc
    return blob


def _result_iterator(
    futures: list[Future[Any]], end_time: float | None, interrupted: Callable[[], None]
) -> Iterator[Any]:
    # A generator, so that the calls are sent when map() is called, not on first next().
    def chained() -> Iterator[Any]:
        try:
            futures.reverse()
            while futures:
                future = futures.pop()
                try:
                    if end_time is None:
                        chunk = future.result()
                    else:
                        chunk = future.result(end_time - time.monotonic())
                finally:
                    future.cancel()
                    del future
                # Handed out one by one, and dropped here as they go: a result the caller
                # lets go of is freed, as with ProcessPoolExecutor.
                chunk.reverse()
                while chunk:
                    yield chunk.pop()
        except (KeyboardInterrupt, _Terminated):
            # Ctrl-C (or SIGTERM) while waiting for results, with or without a `with`
            # block: leave nothing running. With ProcessPoolExecutor the terminal's SIGINT
            # reaches the workers too (one process group); ours are in their own group, or
            # pods.
            interrupted()
            raise
        finally:
            for future in futures:
                future.cancel()

    return chained()


# -- interpreter exit and SIGTERM ------------------------------------------------------
#
# Executors still running when the interpreter exits are shut down (waiting for their
# calls, as ProcessPoolExecutor does), so that no worker and no storage is left behind.
# That must happen before concurrent.futures' own exit hook, which shuts every thread
# pool for good: the event loop's default executor among them, through which s3fs's
# aiobotocore resolves host names; after it, no storage call can succeed. CPython runs
# that hook from threading._shutdown, before the atexit hooks, calling the hooks
# registered with threading._register_atexit in reverse order. concurrent.futures.thread
# (imported above, through ThreadPoolExecutor) registered its own already, so ours,
# registered below, runs first.
_live_executors: weakref.WeakSet[KubernetesExecutor] = weakref.WeakSet()


class _Terminated(SystemExit):
    """Raised in the main thread by SIGTERM while an executor runs: the program ends as
    on Ctrl-C (``with`` blocks and ``map`` kill the run's workers), with exit status
    128 + SIGTERM as a shell reports it."""


class _SigtermState:
    """Our SIGTERM handler's state; touched only from the main thread."""

    previous: Any = None  # the disposition our handler replaced, while it is installed
    received = False


_sigterm = _SigtermState()


def _install_sigterm_handler() -> None:
    """End the program cleanly on SIGTERM, unless someone else handles SIGTERM.

    Only from the main thread (where Python runs signal handlers) and only over the
    default disposition: a handler the program installed (or SIG_IGN) is left alone.
    """
    if _sigterm.previous is not None or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    signal.signal(signal.SIGTERM, _on_sigterm)
    _sigterm.previous = signal.SIG_DFL


def _restore_sigterm_handler() -> None:
    """Put back the disposition we replaced (when nobody replaced ours meanwhile)."""
    previous = _sigterm.previous
    if previous is None or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, previous)
    _sigterm.previous = None


def _on_sigterm(signum: int, _frame: object) -> None:
    # From here on SIGTERM has its previous meaning again: a second one ends the process
    # at once, as a second Ctrl-C interrupts the cleanup of the first.
    _restore_sigterm_handler()
    if not _live_executors:
        os.kill(os.getpid(), signum)  # nothing of ours to clean up: the default action
        return
    _sigterm.received = True
    raise _Terminated(128 + signum)


def _shutdown_all() -> None:
    # Before any atexit handler runs: a submit from one raises, as ProcessPoolExecutor's.
    INTERPRETER_EXIT.set()
    for executor in list(_live_executors):
        try:
            if _sigterm.received:
                executor._terminate()
            else:
                try:
                    executor.shutdown(wait=True)
                except _Terminated:
                    executor._terminate()  # SIGTERM while waiting for the calls: stop now
        except Exception:  # one executor's failure must not keep the others running
            _log.exception("cannot shut down the executor of run %s at exit", executor.run_id)


_register_exit_hook = getattr(threading, "_register_atexit", atexit.register)
_register_exit_hook(_shutdown_all)
