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
import collections
import contextlib
import dataclasses
import enum
import functools
import itertools
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import _payload as wire
from . import _progress
from ._cluster import config_source
from ._options import (
    Batching,
    PodOptions,
    Resources,
    Scheduling,
    StorageRetry,
    Timeouts,
    check_dns_name,
    check_positive_int,
)
from ._pool_errors import WorkerLostError
from ._progress import Progress
from ._store import RunStore, new_run_id
from .backends._base import Backend, IndexExit, LaunchSpec, RunContext
from .backends.kubernetes import KubernetesBackend, KubernetesSettings
from .backends.local import LocalBackend
from .errors import (
    ConfigError,
    ExecutorBrokenError,
    FunctionPicklingError,
    PicklingError,
    PodStartError,
    StorageError,
)

__all__ = ["KubernetesExecutor"]

T = TypeVar("T")


class _State(enum.Enum):
    CREATED = "created"  # no submit yet: no thread, no storage, no backend started
    RUNNING = "running"
    SHUTTING_DOWN = "shutting down"
    SHUT_DOWN = "shut down"
    BROKEN = "broken"


@dataclass(eq=False)
class _Task:
    future: Future[Any]
    fn: Callable[..., Any]
    calls: bytes
    n_calls: int
    single: bool  # a submit (result unwrapped) rather than a map chunk (a list)
    task_id: int = -1
    fn_index: int = -1
    batch_id: str = ""
    index: int = -1
    running: bool = False
    settled: bool = False
    bars: tuple[Progress, ...] = ()
    buffers: tuple[str, ...] = ()  # keys of the calls' large out-of-band buffers


@dataclass(eq=False)
class _Index:
    tasks: list[_Task]
    started: bool = False
    finished: bool = False
    skipped: bool = False


@dataclass(eq=False)
class _Batch:
    batch_id: str
    indexes: list[_Index]
    fn_names: list[str]
    unfinished: int = field(init=False)

    def __post_init__(self) -> None:
        self.unfinished = len(self.indexes)


def _backend_name(backend: str | None, kubeconfig: str | None, context: str | None) -> str:
    name = backend or os.environ.get("K8S_EXECUTOR_BACKEND")
    if name is None:
        if config_source(kubeconfig, context) is None:
            raise ConfigError(
                "no backend chosen and no Kubernetes cluster configured: pass "
                "backend='local' to run on this machine, or backend='kubernetes' with a "
                "kubeconfig (kubeconfig=, KUBECONFIG or ~/.kube/config); or set the "
                "environment variable K8S_EXECUTOR_BACKEND=local|kubernetes"
            )
        name = "kubernetes"
    if name not in ("local", "kubernetes"):
        raise ConfigError(
            f"backend={name!r} is not allowed: expected one of ['kubernetes', 'local'] "
            "(or a Backend instance)"
        )
    return name


def _env_flag(name: str) -> bool | None:
    """A yes/no environment variable; None when unset or empty."""
    text = os.environ.get(name, "").strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    if text:
        raise ConfigError(f"{name}={text!r} is not allowed: expected 1/true/on or 0/false/off")
    return None


def _env_json_object(name: str) -> dict[str, Any] | None:
    """A JSON object from the environment; None when unset or empty. The value is never
    quoted in an error: it may hold credentials."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    example = '{"endpoint_url": "https://s3.example", "key": "...", "secret": "..."}'
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f"{name} is not valid JSON ({exc}): expected the fsspec storage_options as a "
            f"JSON object, e.g. {example}"
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(
            f"{name} holds a JSON {type(value).__name__}, not an object: expected the "
            f"fsspec storage_options as a JSON object, e.g. {example}"
        )
    return value


def _pod_secrets_from_env(pod: PodOptions | None) -> PodOptions:
    """``pod``, with the Secrets of ``K8S_EXECUTOR_POD_SECRETS`` when it names none."""
    pod = pod or PodOptions()
    text = os.environ.get("K8S_EXECUTOR_POD_SECRETS", "")
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if pod.secrets or not names:
        return pod
    for secret in names:
        try:
            check_dns_name("PodOptions.secrets", secret)
        except ConfigError:
            raise ConfigError(
                f"K8S_EXECUTOR_POD_SECRETS={text!r} is not allowed: {secret!r} is not the "
                "name of a Secret (lower-case letters, digits, '-' and '.', starting and "
                "ending with a letter or digit); expected the names of Secrets in the "
                "pods' namespace, separated by commas, e.g. s3-credentials"
            ) from None
    return dataclasses.replace(pod, secrets=names)


def _pack(tasks: Sequence[_Task], slots: int) -> list[list[_Task]]:
    """Split tasks into at most ``slots`` contiguous groups of about equal call counts."""
    n = min(len(tasks), slots)
    total = sum(t.n_calls for t in tasks)
    groups: list[list[_Task]] = []
    current: list[_Task] = []
    done_calls = 0
    for task in tasks:
        current.append(task)
        done_calls += task.n_calls
        if len(groups) < n - 1 and done_calls * n >= total * (len(groups) + 1):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


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
    ) -> None:
        if max_workers is not None:
            if isinstance(max_workers, int) and not isinstance(max_workers, bool):
                if max_workers <= 0:
                    # The very message ProcessPoolExecutor gives.
                    raise ConfigError("max_workers must be greater than 0")
            else:
                check_positive_int("max_workers", max_workers)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if not isinstance(initargs, tuple):
            raise ConfigError(f"initargs={initargs!r} is not allowed: expected a tuple")
        for name, value, cls in (
            ("batching", batching, Batching),
            ("storage_retry", storage_retry, StorageRetry),
            ("resources", resources, Resources),
            ("scheduling", scheduling, Scheduling),
            ("pod", pod, PodOptions),
            ("timeouts", timeouts, Timeouts),
        ):
            if value is not None and not isinstance(value, cls):
                raise ConfigError(
                    f"{name}={value!r} is not allowed: expected a {cls.__name__} instance"
                )
        if storage_options is not None and not isinstance(storage_options, dict):
            raise ConfigError(
                f"storage_options={storage_options!r} is not allowed: expected a dict"
            )
        if storage_options is None:
            storage_options = _env_json_object("K8S_EXECUTOR_STORAGE_OPTIONS")
        if share_storage_options is None:
            share_storage_options = _env_flag("K8S_EXECUTOR_SHARE_STORAGE_OPTIONS") or False
        elif not isinstance(share_storage_options, bool):
            raise ConfigError(
                f"share_storage_options={share_storage_options!r} is not allowed: expected "
                "True, False or None"
            )

        self._show_progress = _progress.wanted(progress)
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"retries={retries!r} is not allowed: expected an integer >= 0")
        if isinstance(kubeconfig, os.PathLike):
            kubeconfig = os.fspath(kubeconfig)
        for option, text, what in (
            ("kubeconfig", kubeconfig, "the path of a kubeconfig file"),
            ("context", context, "the name of a context in the kubeconfig"),
        ):
            if text is not None and (not isinstance(text, str) or not text.strip()):
                raise ConfigError(
                    f"{option}={text!r} is not allowed: expected {what}, or None for the default"
                )
        if backend is None or isinstance(backend, str):
            name = _backend_name(backend, kubeconfig, context)
            if name == "local":
                self._backend: Backend = LocalBackend()
            else:
                image = image or os.environ.get("K8S_EXECUTOR_IMAGE")
                registry = registry or os.environ.get("K8S_EXECUTOR_REGISTRY")
                base_image = base_image or os.environ.get("K8S_EXECUTOR_BASE_IMAGE")
                from .image._platform import check_platform  # imports neither podman nor requests

                platform = check_platform(platform or os.environ.get("K8S_EXECUTOR_PLATFORM"))
                if image is None and registry:
                    image = "auto"
                if not image:
                    raise ConfigError(
                        "the kubernetes backend needs an image: registry='host/namespace' "
                        "(or K8S_EXECUTOR_REGISTRY) to snapshot this virtualenv into an "
                        "image automatically, or image= an image whose Python (same "
                        "major.minor as here) has k8s_executor and your dependencies"
                    )
                if image == "auto" and not registry:
                    raise ConfigError(
                        "image='auto' needs registry= (or K8S_EXECUTOR_REGISTRY): where "
                        "the snapshot of this virtualenv is pushed and pods pull it from"
                    )
                if share_storage_options and not storage_options:
                    raise ConfigError(
                        "share_storage_options (or K8S_EXECUTOR_SHARE_STORAGE_OPTIONS) is on, "
                        "but there are no storage_options to share: the pods would get no "
                        "credentials. Pass storage_options= (or K8S_EXECUTOR_STORAGE_OPTIONS, "
                        "a JSON object such as "
                        '{"endpoint_url": "https://s3.example", "key": "...", "secret": "..."}), '
                        "or give the pods a Secret with the credentials instead "
                        "(K8S_EXECUTOR_POD_SECRETS=NAME, PodOptions.secrets)"
                    )
                pod = _pod_secrets_from_env(pod)
                self._backend = KubernetesBackend(
                    KubernetesSettings(
                        image=image,
                        registry=registry,
                        base_image=base_image,
                        platform=platform,
                        kubeconfig=kubeconfig,
                        context=context,
                        namespace=namespace,
                        python=python or os.environ.get("K8S_EXECUTOR_PYTHON") or "python",
                        retries=retries,
                        resources=resources or Resources(),
                        scheduling=scheduling or Scheduling(),
                        pod=pod,
                        timeouts=timeouts or Timeouts(),
                        share_storage_options=share_storage_options,
                        stream_logs=stream_logs,
                    )
                )
        else:
            self._backend = backend
        self._max_workers = max_workers or self._backend.default_max_workers()
        self._batching = batching or Batching()
        self._retry = storage_retry or StorageRetry()
        self._storage_options = dict(storage_options or {})
        self._storage = storage or os.environ.get("K8S_EXECUTOR_STORAGE")
        if self._storage is None and self._backend.name != "local":
            raise ConfigError(
                "storage= is required with the kubernetes backend: an fsspec URL that both "
                "this machine and the pods can reach, e.g. storage='s3://bucket/k8sx' "
                "(or set K8S_EXECUTOR_STORAGE)"
            )
        self._initializer = (
            None
            if initializer is None
            else (
                wire.dump_function(initializer, what="initializer"),
                _dump_initargs(initargs),
            )
        )

        self._run_id = new_run_id()
        self._key = wire.new_key()
        self._state = _State.CREATED
        self._broken: BaseException | None = None
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        # (batch, index) with calls cancelled since their skip marker was last written.
        self._skip_pending: set[tuple[str, int]] = set()
        self._skip_written: dict[tuple[str, int], float] = {}  # when, by time.monotonic()
        self._skip_timer: threading.Timer | None = None
        self._bulk_cancel = False
        self._queue: list[_Task] = []
        self._flush = False
        self._batches: dict[str, _Batch] = {}
        self._batch_ids = itertools.count()
        self._task_ids = itertools.count()
        self._store: RunStore | None = None
        self._temp_dir: str | None = None
        self._dispatcher: threading.Thread | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._finalizer: threading.Thread | None = None
        self._kill = False
        self._heartbeat: threading.Thread | None = None
        self._stopped = threading.Event()
        self._bar: Progress | None = None
        # Large argument buffers (see Batching.share_min_bytes), by SHA-256: how many
        # tasks carried each, the bytes of those not stored yet, and those stored once
        # for the run under shared/.
        self._buffer_uses: collections.Counter[str] = collections.Counter()
        self._buffer_data: dict[str, bytes] = {}
        self._shared: set[str] = set()

    # -- public API ----------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The id of this executor's run: its storage prefix and its Jobs' label."""
        return self._run_id

    @property
    def max_workers(self) -> int:
        """The most workers that run at once."""
        return self._max_workers

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)``; return a Future for its result."""
        future: Future[T] = Future()
        task = self._make_task(future, fn, [(args, kwargs)], single=True, bars=self._bars())
        self._enqueue([task], flush=False)
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
        bars = self._bars()
        own = Progress(f"map({wire.callable_name(fn)})") if progress else None
        if own is not None:
            bars += (own,)
        end_time = None if timeout is None else timeout + time.monotonic()
        tasks: list[_Task] = []
        calls: Iterator[tuple[tuple[Any, ...], dict[str, Any]]] = (
            (args, {}) for args in zip(*iterables, strict=False)
        )
        try:
            while chunk := list(itertools.islice(calls, chunksize)):
                tasks.append(self._make_task(Future(), fn, chunk, single=False, bars=bars))
            self._enqueue(tasks, flush=True)
        except BaseException:
            if own is not None:
                own.close()
            raise
        if own is not None:
            own.seal()
        futures = [t.future for t in tasks]
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
            kill_workers: also end the workers that are running now (as loky's
                ``shutdown(kill_workers=True)`` does); their calls fail with
                :class:`WorkerLostError`. Implies ``cancel_futures``.
        """
        with self._lock:
            if kill_workers:
                self._kill = True
                self._cond.notify_all()  # a shutdown already waiting for the work stops
            if cancel_futures or kill_workers:
                self._cancel_not_started()
            if self._finalizer is None:
                if self._state is _State.CREATED:
                    self._state = _State.SHUT_DOWN  # nothing was ever started
                    if self._bar is not None:
                        self._bar.close()
                    return
                if self._state is _State.RUNNING:
                    self._state = _State.SHUTTING_DOWN
                self._flush = True
                self._cond.notify_all()
                self._finalizer = threading.Thread(target=self._finish, name="k8sx-shutdown")
                self._finalizer.start()
            finalizer = self._finalizer
        if wait and finalizer is not threading.current_thread():
            finalizer.join()
            if not _live_executors:
                _restore_sigterm_handler()  # the program's own SIGTERM disposition again

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            # KeyboardInterrupt, SIGTERM (_Terminated) or SystemExit in the with block: the
            # user wants out now.
            # Leave nothing running: cancel what has not started, kill what has.
            self._terminate()
        else:
            self.shutdown(wait=True)

    # -- submission ----------------------------------------------------------------

    def _make_task(
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        *,
        single: bool,
        bars: tuple[Progress, ...] = (),
    ) -> _Task:
        self._check_accepting()
        keys: tuple[str, ...] = ()
        try:
            if self._batching.share_min_bytes is None:
                blob = wire.dump_calls(fn, calls)
            else:
                blob, large = wire.dump_calls_sharing(fn, calls, self._batching.share_min_bytes)
                keys = self._keep_buffers(large)
        except PicklingError as exc:
            future.set_running_or_notify_cancel()
            future.set_exception(exc)
            blob = b""
        task = _Task(future, fn, blob, len(calls), single, bars=bars, buffers=keys)
        for bar in bars:
            bar.add(task.n_calls)
        if future.done():
            task.settled = True
            for bar in bars:
                bar.finished(task.n_calls, was_running=False, failed=True, cancelled=False)
        else:
            future.add_done_callback(functools.partial(self._task_done, task))
        return task

    def _keep_buffers(self, large: list[memoryview]) -> tuple[str, ...]:
        """Name a task's large buffers by content; keep a copy of each not yet stored
        (taken now: the caller may change the array once ``submit`` returns)."""
        keys = tuple(wire.buffer_key(view) for view in large)
        for key, view in zip(keys, large, strict=True):
            with self._lock:
                self._buffer_uses[key] += 1
                known = key in self._shared or key in self._buffer_data
            if not known:
                data = bytes(view)
                with self._lock:
                    if key not in self._shared:
                        self._buffer_data.setdefault(key, data)
        return keys

    def _place_buffers(
        self, tasks: list[_Task]
    ) -> tuple[dict[str, bytes | str], list[tuple[str, bytes]]]:
        """Where each large buffer of a batch's tasks goes: a buffer carried by more than
        one task so far is stored once for the run (``shared/<key>``, referenced by key);
        one carried by a single task travels inside that task's input."""
        placed: dict[str, bytes | str] = {}
        uploads: list[tuple[str, bytes]] = []
        with self._lock:
            for key in {k for t in tasks for k in t.buffers}:
                if key in self._shared:
                    placed[key] = key
                    self._buffer_data.pop(key, None)  # copied by a submit racing the upload
                    continue
                data = self._buffer_data.pop(key)
                if self._buffer_uses[key] > 1:
                    placed[key] = key
                    uploads.append((f"shared/{key}", data))
                else:
                    placed[key] = data
        return placed, uploads

    def _bars(self) -> tuple[Progress, ...]:
        """The run's bar (started with the first call) when progress is shown."""
        if not self._show_progress:
            return ()
        with self._lock:
            if self._bar is None and self._state in (_State.CREATED, _State.RUNNING):
                self._bar = Progress(f"k8s_executor {self._run_id}")
            return () if self._bar is None else (self._bar,)

    def _check_accepting(self) -> None:
        state = self._state
        if state is _State.BROKEN:
            raise ExecutorBrokenError(
                f"the executor is broken and cannot run new calls: {self._broken}"
            ) from self._broken
        if state in (_State.SHUTTING_DOWN, _State.SHUT_DOWN):
            raise RuntimeError("cannot schedule new futures after shutdown")
        if sys.is_finalizing():
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _enqueue(self, tasks: list[_Task], *, flush: bool) -> None:
        with self._cond:
            self._check_accepting()
            self._ensure_started()
            self._queue.extend(t for t in tasks if not t.settled)
            self._flush = self._flush or flush
            self._cond.notify_all()

    def _ensure_started(self) -> None:
        if self._state is not _State.CREATED:
            return
        if self._storage is None:
            self._temp_dir = tempfile.mkdtemp(prefix="k8sx-")
            root = self._temp_dir
        else:
            root = self._storage.rstrip("/")
        store = RunStore(f"{root}/{self._run_id}", self._storage_options, self._retry)
        run = RunContext(self._run_id, store.url, self._key, self._storage_options)
        try:
            self._backend.start(self, self._max_workers, run)
        except BaseException:
            # Cluster unreachable, forbidden, misconfigured: the caller of submit sees it,
            # and nothing is left behind.
            with contextlib.suppress(Exception):
                self._backend.close(kill=True)
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
                self._temp_dir = None
            raise
        self._store = store
        if self._backend.heartbeat_interval is not None:
            self._heartbeat = threading.Thread(
                target=self._beat,
                args=(self._backend.heartbeat_interval,),
                name="k8sx-heartbeat",
                daemon=True,
            )
            self._heartbeat.start()
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="k8sx-dispatch", daemon=True
        )
        self._dispatcher.start()
        self._state = _State.RUNNING
        _live_executors.add(self)
        _install_sigterm_handler()

    # -- dispatcher thread ---------------------------------------------------------

    def _dispatch(self) -> None:
        window = self._batching.window
        if window is None:
            window = getattr(self._backend, "batch_window", 0.01)
        limit = self._batching.max_calls
        while True:
            with self._cond:
                while not self._queue:
                    if self._state is not _State.RUNNING:
                        return
                    self._cond.wait()
                deadline = time.monotonic() + window
                while not self._flush and len(self._queue) < limit:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._state is not _State.RUNNING:
                        break
                    self._cond.wait(remaining)
                tasks, self._queue = self._queue[:limit], self._queue[limit:]
                if not self._queue:
                    self._flush = False
            self._launch(tasks)

    def _launch(self, tasks: list[_Task]) -> None:
        assert self._store is not None
        # Tasks cancelled while queued never start; notify their waiters now.
        live = [t for t in tasks if not t.future.cancelled()]
        for t in tasks:
            if t.future.cancelled():
                t.future.set_running_or_notify_cancel()
        if not live:
            return
        functions: dict[int, int] = {}
        blobs: list[bytes] = []
        names: list[str] = []
        failed: dict[int, FunctionPicklingError] = {}
        for t in live:
            key = id(t.fn)
            if key not in functions:
                functions[key] = len(blobs)
                names.append(wire.callable_name(t.fn))
                try:
                    blobs.append(wire.dump_function(t.fn))
                except FunctionPicklingError as exc:
                    blobs.append(b"")
                    failed[functions[key]] = exc
            t.fn_index = functions[key]
            t.task_id = next(self._task_ids)
        for t in live:
            if t.fn_index in failed:
                self._settle(t, error=failed[t.fn_index])
        live = [t for t in live if not t.settled]
        if not live:
            return
        slots = self._batching.max_indexes or self._max_workers
        groups = _pack(live, slots)
        batch = _Batch(f"b{next(self._batch_ids):05d}", [_Index(g) for g in groups], names)
        for i, group in enumerate(groups):
            for t in group:
                t.batch_id, t.index = batch.batch_id, i
        init_blob, initargs_blob = self._initializer or (None, None)
        table = wire.FunctionTable(tuple(blobs), tuple(names), init_blob, initargs_blob)
        placed, writes = self._place_buffers(live)
        writes.append((f"{batch.batch_id}/fn", table.seal(self._key)))
        writes += [
            (
                f"{batch.batch_id}/in/{i}",
                wire.seal_inputs(
                    self._key,
                    [
                        wire.TaskInput(
                            t.task_id, t.fn_index, t.calls, tuple(placed[k] for k in t.buffers)
                        )
                        for t in g
                    ],
                ),
            )
            for i, g in enumerate(groups)
        ]
        try:
            self._write_all(writes)
        except StorageError as exc:
            for t in live:
                self._settle(t, error=exc)
            return
        with self._lock:
            self._shared.update(k for k, v in placed.items() if isinstance(v, str))
        with self._lock:
            self._batches[batch.batch_id] = batch
            # Calls cancelled while the inputs were being written: their markers now,
            # before the backend can start a worker.
            for i, entry in enumerate(batch.indexes):
                if any(t.future.cancelled() for t in entry.tasks):
                    self._skip_pending.add((batch.batch_id, i))
            if self._skip_pending:
                self._write_skip_markers()
        spec = LaunchSpec(
            run_id=self._run_id,
            batch_id=batch.batch_id,
            batch_url=f"{self._store.url}/{batch.batch_id}",
            indexes=len(groups),
            key=self._key,
            storage_options=self._storage_options,
            storage_retry=self._retry,
        )
        try:
            self._backend.launch(spec)
        except Exception as exc:
            self.backend_broken(exc)

    def _write_all(self, writes: list[tuple[str, bytes]]) -> None:
        assert self._store is not None
        if len(writes) <= 2 or self._store.is_local:
            for key, data in writes:
                self._store.put(key, data)
            return
        if self._writer is None:
            # Object stores answer each PUT in tens of ms: write the indexes side by side.
            self._writer = ThreadPoolExecutor(16, thread_name_prefix="k8sx-write")
        store = self._store
        list(self._writer.map(lambda kv: store.put(*kv), writes))

    def _task_done(self, task: _Task, _future: Future[Any]) -> None:
        """A future is done; if it was cancelled before its index started, tell the
        worker not to run it (see _write_skip_markers)."""
        cancelled = task.future.cancelled()
        for bar in task.bars:
            bar.finished(
                task.n_calls,
                was_running=task.running,
                failed=not cancelled and task.future.exception() is not None,
                cancelled=cancelled,
            )
        if not cancelled:
            return
        key = (task.batch_id, task.index)
        with self._lock:
            if task.batch_id not in self._batches:
                return  # not launched yet: it will never be
            self._skip_pending.add(key)
            if self._bulk_cancel:
                return  # _cancel_not_started writes the markers once at the end
            last = self._skip_written.get(key)
            write_now = last is None or time.monotonic() - last >= _SKIP_MARKER_DELAY
            if not write_now:
                if self._skip_timer is not None:
                    return
                # The index's marker was written a moment ago: a loop is cancelling many
                # of its calls. Write once for all of them shortly, not once per call.
                timer = threading.Timer(_SKIP_MARKER_DELAY, self._write_skip_markers)
                timer.daemon = True
                self._skip_timer = timer
        if write_now:
            # Written before cancel() returns, so the worker sees it if it starts later.
            self._write_skip_markers()
        else:
            timer.start()

    def _write_skip_markers(self) -> None:
        """Write ``skip/<index>`` for indexes with calls cancelled before they started.

        A cancelled call must not run, as with ProcessPoolExecutor, even when it shares a
        worker with calls that were not cancelled. The worker reads the marker before its
        first call: empty means every call of the index was cancelled (and the backend is
        told, so it can avoid starting the worker at all); otherwise it lists the task ids
        to leave out. Written under the lock, so that markers for one index are written in
        order, each with everything cancelled so far.
        """
        cancelled_indexes: list[tuple[str, int]] = []
        with self._lock:
            if self._skip_timer is not None and self._skip_timer is not threading.current_thread():
                self._skip_timer.cancel()
            self._skip_timer = None
            pending, self._skip_pending = self._skip_pending, set()
            store = self._store
            for batch_id, index in sorted(pending):
                batch = self._batches.get(batch_id)
                if batch is None or store is None:
                    continue
                entry = batch.indexes[index]
                if entry.started or entry.skipped:
                    continue
                ids = [t.task_id for t in entry.tasks if t.future.cancelled()]
                if all(t.future.done() for t in entry.tasks):  # nothing left to run
                    entry.skipped = True
                    marker = b""
                    cancelled_indexes.append((batch_id, index))
                else:
                    marker = json.dumps({"tasks": ids}).encode()
                try:
                    store.put(f"{batch_id}/skip/{index}", marker)
                except StorageError as exc:
                    # The calls stay cancelled; only the worker will not know to skip them.
                    _log.warning("cannot tell batch %s index %s to skip: %s", batch_id, index, exc)
                self._skip_written[(batch_id, index)] = time.monotonic()
        for batch_id, index in cancelled_indexes:
            self._backend.cancel(batch_id, [index])

    def _beat(self, interval: float) -> None:
        """Refresh the run's heartbeat: workers of a vanished client give up."""
        assert self._store is not None
        beat = 0
        while True:
            beat += 1
            with contextlib.suppress(StorageError):
                self._store.put("heartbeat", str(beat).encode())
            if self._stopped.wait(interval):
                return

    # -- listener (called by the backend, from its threads) ------------------------

    def index_started(self, batch_id: str, index: int) -> bool:
        """Mark the futures of an index running; False if all were cancelled."""
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None:
                return False
            entry = batch.indexes[index]
            if (batch_id, index) in self._skip_pending:
                # A marker still waiting for its delayed write: write it before the worker
                # may read it (the local backend starts the worker after this returns).
                self._write_skip_markers()
            entry.started = True
            for t in entry.tasks:
                if not t.settled and t.future.set_running_or_notify_cancel():
                    t.running = True
                    for bar in t.bars:
                        bar.started(t.n_calls)
                elif not t.settled:
                    t.settled = True  # cancelled before it started
            if any(t.running for t in entry.tasks):
                return True
            self._index_done(batch, entry)
            return False

    def index_finished(self, batch_id: str, index: int, exit: IndexExit) -> None:
        """Resolve the futures of a finished index from its outcome in storage."""
        with self._lock:
            batch = self._batches.get(batch_id)
            if batch is None or batch.indexes[index].finished:
                return
            entry = batch.indexes[index]
            tasks = [t for t in entry.tasks if not t.settled]
        try:
            self._resolve(batch, index, tasks, exit)
        finally:
            with self._lock:
                self._index_done(batch, entry)

    def backend_broken(self, error: BaseException) -> None:
        """Fail every unfinished future: nothing can run any more."""
        with self._lock:
            if self._state is _State.BROKEN:
                return
            self._broken = error
            if self._state is _State.RUNNING:
                self._state = _State.BROKEN
            tasks = [t for t in self._queue if not t.settled]
            self._queue.clear()
            for batch in self._batches.values():
                for entry in batch.indexes:
                    tasks.extend(t for t in entry.tasks if not t.settled)
            self._cond.notify_all()
        broken = ExecutorBrokenError(f"the {self._backend.name} backend cannot run work: {error}")
        broken.__cause__ = error
        for t in tasks:
            self._settle(t, error=broken)

    # -- resolution ----------------------------------------------------------------

    def _resolve(self, batch: _Batch, index: int, tasks: list[_Task], exit: IndexExit) -> None:
        assert self._store is not None
        if exit.never_started:
            error = PodStartError(exit.message, reason=exit.reason or "Unknown")
            for t in tasks:
                self._settle(t, error=error)
            return
        try:
            data = self._store.get_or_none(f"{batch.batch_id}/out/{index}")
            outcomes = None if data is None else wire.open_outcomes(self._key, data)
        except Exception as exc:  # StorageError, PayloadError: every task of the index
            for t in tasks:
                self._settle(t, error=exc)
            return
        if outcomes is None:
            lost = _worker_lost(batch.batch_id, index, len(batch.indexes[index].tasks), exit)
            for t in tasks:
                self._settle(t, error=lost)
            return
        if isinstance(outcomes, wire.IndexFailure):
            for t in tasks:
                self._settle(t, error=outcomes.to_exception())
            return
        by_id = {o.task_id: o for o in outcomes}
        for t in tasks:
            outcome = by_id.get(t.task_id)
            name = batch.fn_names[t.fn_index]
            if outcome is None:
                self._settle(t, error=WorkerLostError(f"the worker did not report task {name}"))
            elif outcome.error is not None:
                raised = wire.rebuild_exception(outcome.error, name)
                if exit.log_tail.strip() and not exit.log_shown:
                    # What the task printed before it raised is often the clue; nobody has
                    # seen it when workers are pods whose logs were not streamed.
                    raised.add_note(
                        f"the last lines of its worker's log (batch {batch.batch_id}, "
                        f"index {index}):\n{exit.log_tail.rstrip()}"
                    )
                self._settle(t, error=raised)
            else:
                assert outcome.results is not None
                try:
                    results = wire.load_results(outcome.results, name)
                except Exception as exc:
                    self._settle(t, error=exc)
                else:
                    self._settle(t, result=results[0] if t.single else results)

    def _settle(
        self, task: _Task, *, result: Any = None, error: BaseException | None = None
    ) -> None:
        with self._lock:
            if task.settled:
                return
            task.settled = True
            running = task.running
        if not running and not task.future.set_running_or_notify_cancel():
            return  # cancelled
        if error is not None:
            task.future.set_exception(error)
        else:
            task.future.set_result(result)

    def _index_done(self, batch: _Batch, entry: _Index) -> None:
        # Called with the lock held.
        if entry.finished:
            return
        entry.finished = True
        batch.unfinished -= 1
        if batch.unfinished == 0:
            del self._batches[batch.batch_id]
            for i in range(len(batch.indexes)):
                self._skip_written.pop((batch.batch_id, i), None)
            self._cond.notify_all()

    # -- shutdown ------------------------------------------------------------------

    def _cancel_not_started(self) -> None:
        # Called with the lock held.
        for t in self._queue:
            t.future.cancel()
        self._bulk_cancel = True  # one skip marker per index, not one per call
        try:
            for batch in self._batches.values():
                for entry in batch.indexes:
                    if not entry.started:
                        for t in entry.tasks:
                            t.future.cancel()
        finally:
            self._bulk_cancel = False
        self._write_skip_markers()

    def _finish(self) -> None:
        """Wait for the work (or kill it), then release the backend and storage."""
        if self._dispatcher is not None:
            self._dispatcher.join()
        with self._cond:
            while self._batches and self._state is not _State.BROKEN and not self._kill:
                self._cond.wait()
            kill = self._kill or self._state is _State.BROKEN
        self._backend.close(kill=kill)
        self._stopped.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        # No worker is left to report: settle whatever the backend never reported (indexes
        # dropped by a kill), so no future waits forever.
        with self._lock:
            leftover = [t for b in self._batches.values() for e in b.indexes for t in e.tasks]
            self._batches.clear()
        for t in leftover:
            self._settle(t, error=WorkerLostError(_SHUT_DOWN_MESSAGE, reason="Shutdown"))
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        try:
            if self._store is not None:
                self._store.delete_all()
        finally:
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
            with self._lock:
                if self._state is not _State.BROKEN:
                    self._state = _State.SHUT_DOWN
                bar = self._bar
            _live_executors.discard(self)
            if bar is not None:
                bar.close()

    def _terminate(self) -> None:
        """Cancel what has not started, kill what has, release everything; wait for it."""
        self.shutdown(wait=True, kill_workers=True)


_log = logging.getLogger(__name__)
# Seconds between a call's cancellation and its index's skip marker being written; the
# cancellations that come meanwhile share the write.
_SKIP_MARKER_DELAY = 0.02
_SHUT_DOWN_MESSAGE = "the executor was shut down (killing its workers) before this call finished"


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


def _worker_lost(batch_id: str, index: int, n_tasks: int, exit: IndexExit) -> WorkerLostError:
    if exit.signal is not None:
        import signal as signals

        try:
            how = f"was killed by {signals.Signals(exit.signal).name}"
        except ValueError:
            how = f"was killed by signal {exit.signal}"
    elif exit.exit_code is not None:
        how = f"exited with code {exit.exit_code}"
    else:
        how = "ended"
    detail = f" ({exit.reason}: {exit.message})" if exit.reason and exit.message else ""
    if exit.reason and not exit.message:
        detail = f" ({exit.reason})"
    hint = {
        "OOMKilled": "; it ran out of memory: give it more (Resources.memory)",
        "DeadlineExceeded": "; its Job ran longer than Timeouts.job_deadline",
        # Disruptions are retried by the pod failure policy: reaching the user, one ended
        # a worker whose Job then finished (deadline, deletion) before a retry ran.
        "EvictionByEvictionAPI": "; it was evicted (node drain or pressure)",
        "PreemptionByScheduler": "; a higher-priority pod preempted it",
        "DeletionByTaintManager": "; its node became unavailable",
        "DeletionByPodGC": "; its node was lost",
    }.get(exit.reason or "", "")
    if not hint and exit.signal == 9:
        hint = "; it may have run out of memory (give it more) or been killed from outside"
    if not hint and exit.signal == 15:
        # The worker's init passes SIGTERM on: the kubelet was stopping the pod.
        hint = (
            "; its pod was terminated (deleted, evicted or preempted, or its Job was "
            "stopped: suspended, deleted or past its deadline)"
        )
    message = (
        f"the worker of batch {batch_id} index {index} ({n_tasks} task(s)) {how}{detail} "
        f"before reporting its results{hint}"
    )
    if exit.log_tail.strip():
        message += "; the last lines of its stderr:\n" + exit.log_tail.rstrip()
    return WorkerLostError(
        message,
        exit_code=exit.exit_code,
        signal=exit.signal,
        reason=exit.reason,
        log_tail=exit.log_tail,
    )


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
                yield from chunk
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
