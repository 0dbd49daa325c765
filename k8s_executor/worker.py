"""The worker: ``python -m k8s_executor.worker BATCH_URL``, run once per index.

It is the container command of every pod (and of every local subprocess)::

    env JOB_COMPLETION_INDEX=3 K8S_EXECUTOR_KEY=<hex> python -m k8s_executor.worker URL

reads ``URL/fn`` and ``URL/in/3``, runs the tasks of index 3 in order, writes
``URL/out/3`` and exits. The environment contract:

``JOB_COMPLETION_INDEX``
    the index to run (set by the Kubernetes Job controller, or by the local backend).
``K8S_EXECUTOR_KEY``
    the run's signing key in hex (a Secret on Kubernetes). ``K8S_EXECUTOR_KEY_FILE``
    names a file holding it instead.
``K8S_EXECUTOR_STORAGE_OPTIONS``
    optional JSON object of fsspec storage options.
``K8S_EXECUTOR_STORAGE_RETRY``
    optional JSON of the executor's ``StorageRetry`` (attempts, initial_delay, max_delay),
    so that workers ride out storage trouble as the client does.
``K8S_EXECUTOR_PARENT_PID``
    optional; the worker exits when this process is no longer its parent (local backend:
    no worker outlives a killed client).
``K8S_EXECUTOR_SPECULATE``
    ``1`` when the index may run in two copies (``Batching.speculate``): the outcome is
    written first-writer-wins, and a copy that finds it written stops (``_first_write``).
``K8S_EXECUTOR_INIT``
    ``1`` (set by the Job manifest) or PID 1: the process forks and stays behind as the
    container's init, passing signals on and reaping orphans (``_init``); ``0``: never.

Exit codes (``_contract``): 0 every task succeeded; 83 the outcome is written and some
task raised (not worth a retry); 84 the index could not run at all (bad payload, version
mismatch) and a JSON failure was written; 85 bad invocation; 86 the parent went away;
87 the client's heartbeat stopped (``K8S_EXECUTOR_HEARTBEAT_GRACE``); 88 the storage
failed past its retries (no outcome could be written). Anything else (a
signal, an out-of-memory kill, an interpreter crash) means no outcome was written.

This module must start fast and without the client-side dependencies: it imports only
the standard library, cloudpickle, fsspec and the wire-format modules.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final, NoReturn

import cloudpickle

from . import _contract as codes
from . import _durable, _first_write, _init
from . import _payload as wire
from . import _warm as warm
from . import _worker_guards as _guards
from ._options import StorageRetry
from ._store import RunStore
from .errors import ConfigError, PayloadError, StorageError, VersionMismatchError

EXIT_OK: Final = codes.OK
EXIT_TASK_FAILED: Final = codes.TASK_FAILED
EXIT_INDEX_FAILED: Final = codes.INDEX_FAILED
EXIT_USAGE: Final = codes.USAGE
EXIT_ORPHANED: Final = codes.ORPHANED
EXIT_ABANDONED: Final = codes.ABANDONED


def _usage(message: str) -> NoReturn:
    print(f"k8s_executor.worker: {message}", file=sys.stderr)
    sys.stderr.flush()
    os._exit(EXIT_USAGE)


def _read_key() -> bytes:
    key_hex = os.environ.get(codes.ENV_KEY)
    key_file = os.environ.get(codes.ENV_KEY_FILE)
    if key_hex is None and key_file:
        with open(key_file) as f:
            key_hex = f.read().strip()
    if not key_hex:
        _usage("K8S_EXECUTOR_KEY (or K8S_EXECUTOR_KEY_FILE) is not set")
    try:
        return bytes.fromhex(key_hex)
    except ValueError:
        _usage("K8S_EXECUTOR_KEY is not a hex string")


def _index() -> int:
    """The batch index to run: ``JOB_COMPLETION_INDEX``, mapped through
    ``K8S_EXECUTOR_INDEXES`` when the Job runs only some of its batch's indexes."""
    text = os.environ.get(codes.ENV_INDEX)
    if text is None or not text.isdigit():
        _usage(f"JOB_COMPLETION_INDEX must be a non-negative integer, got {text!r}")
    listed = os.environ.get(codes.ENV_INDEXES)
    if not listed:
        return int(text)
    try:
        indexes = [int(i) for i in listed.split(",")]
        return indexes[int(text)]
    except (ValueError, IndexError):
        _usage(f"{codes.ENV_INDEXES}={listed!r} has no entry {text}")


def _keep_warm() -> float:
    text = os.environ.get(codes.ENV_KEEP_WARM) or "0"
    try:
        seconds = float(text)
    except ValueError:
        _usage(f"{codes.ENV_KEEP_WARM} must be a number of seconds, got {text!r}")
    if not seconds >= 0:
        _usage(f"{codes.ENV_KEEP_WARM} must be >= 0, got {text!r}")
    return seconds


# The initializers this process ran (their pickles → the error they raised, if any).
_INITIALIZED: dict[tuple[bytes, bytes | None], wire.TaskError | None] = {}


class _KeptBuffers:
    """Shared buffers kept between the indexes a warm worker runs, by name (their SHA-256,
    so they are the same bytes in any run): the next wave of the same GridSearchCV then
    downloads its training set no more.

    Least recently used first out, once they add up to more than the most one index has
    used: an idle worker holds no more memory than its busiest index needed.
    """

    def __init__(self) -> None:
        self._buffers: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._peak = 0

    def get(self, name: str) -> bytes | None:
        return self._buffers.get(name)

    def keep(self, used: dict[str, bytes]) -> None:
        for name, data in used.items():
            self._buffers[name] = data
            self._buffers.move_to_end(name)
        self._peak = max(self._peak, sum(len(d) for d in used.values()))
        while sum(len(d) for d in self._buffers.values()) > self._peak:
            self._buffers.popitem(last=False)


_KEPT_SHARED = _KeptBuffers()


class _Runner:
    """Runs the tasks of one index against a loaded function table."""

    def __init__(
        self,
        table: wire.FunctionTable,
        run: RunStore | None = None,
        kept: _KeptBuffers | None = None,
    ) -> None:
        self.table = table
        self._functions: dict[int, Any] = {}
        self._run = run
        self._kept = kept or _KeptBuffers()
        self.shared_used: dict[str, bytes] = {}
        self.init_error: wire.TaskError | None = None

    def initialize(self) -> None:
        """Run the executor's initializer, once per worker process: a warm worker that
        takes further indexes keeps what it set up (as a ProcessPoolExecutor worker)."""
        if self.table.initializer is None:
            return
        ran = (self.table.initializer, self.table.initargs)
        if ran in _INITIALIZED:
            self.init_error = _INITIALIZED[ran]
            return
        try:
            initializer = pickle.loads(self.table.initializer)
            initargs = pickle.loads(self.table.initargs or pickle.dumps(()))
            initializer(*initargs)
        except BaseException as exc:
            self.init_error = wire.capture_error(wire.INITIALIZER, exc)
        _INITIALIZED[ran] = self.init_error

    def shared(self, name: str) -> bytes:
        """A buffer stored once per run (``shared/<sha256>``): downloaded once per
        worker, and checked against its name, which the signed input vouches for."""
        if name in self.shared_used:
            return self.shared_used[name]
        data = self._kept.get(name)  # checked when it was downloaded
        if data is None:
            if self._run is None:
                raise PayloadError(f"shared buffer {name} named, but no run storage given")
            data = self._run.get(f"shared/{name}")
            if wire.buffer_key(data) != name:
                raise PayloadError(
                    f"the shared buffer shared/{name} in the run's storage does not match "
                    "its SHA-256: it was changed or damaged after the client wrote it"
                )
        self.shared_used[name] = data
        return data

    def function(self, index: int) -> Any:
        if index not in self._functions:
            self._functions[index] = pickle.loads(self.table.functions[index])
        return self._functions[index]

    def run(self, task: wire.TaskInput) -> wire.TaskOutcome:
        def failed(kind: str, exc: BaseException) -> wire.TaskOutcome:
            return wire.TaskOutcome(task.task_id, None, wire.capture_error(kind, exc))

        if self.init_error is not None:
            return wire.TaskOutcome(task.task_id, None, self.init_error)
        try:
            fn = self.function(task.fn_index)
        except BaseException as exc:
            return failed(wire.FUNCTION_UNPICKLING, exc)
        try:
            buffers = [b if isinstance(b, bytes) else self.shared(b) for b in task.buffers]
            calls = wire.load_calls(task.calls, buffers)
        except BaseException as exc:
            return failed(wire.ARGUMENTS_UNPICKLING, exc)
        results = []
        for args, kwargs in calls:
            try:
                results.append(fn(*args, **kwargs))
            except BaseException as exc:  # SystemExit in a task reaches the caller too
                return failed(wire.RAISED, exc)
        try:
            blob = cloudpickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:
            return failed(wire.RESULT_PICKLING, exc)
        return wire.TaskOutcome(task.task_id, blob, None)


def _cancelled_tasks(marker: bytes | None) -> frozenset[int]:
    """The task ids a skip marker lists (calls cancelled before this worker started)."""
    if marker is None:
        return frozenset()
    try:
        ids = json.loads(marker)["tasks"]
        return frozenset(int(i) for i in ids)
    except (ValueError, TypeError, KeyError) as exc:
        # Not written by the executor (markers are not signed): run every call.
        print(f"k8s_executor.worker: ignoring a malformed skip marker: {exc}", file=sys.stderr)
        return frozenset()


# The least time between two reads of the skip marker while running an index's calls; more
# when a read takes long (SKIP_RECHECK_COST reads' time apart), so a 10 000-call index does
# not pay a storage round trip per call.
SKIP_RECHECK_SECONDS: Final = 0.2
SKIP_RECHECK_COST: Final = 10


class _SkipMarker:
    """The calls of this index cancelled so far: the marker read at start, re-read between
    calls (rate-limited), so that ``shutdown(cancel_futures=True)`` and ``Future.cancel``
    reach calls queued behind others in this worker."""

    def __init__(self, store: RunStore, index: int) -> None:
        self._store = store
        self.index = index
        self._key = f"skip/{index}"
        self.every = False  # the whole index was cancelled
        self.cancelled: frozenset[int] = frozenset()
        self._next = 0.0
        self.read()

    def read(self) -> None:
        began = time.monotonic()
        marker = self._store.get_or_none(self._key)
        now = time.monotonic()
        self._next = now + max(SKIP_RECHECK_SECONDS, SKIP_RECHECK_COST * (now - began))
        if marker == b"":
            self.every = True
        else:
            self.cancelled = _cancelled_tasks(marker)

    def skips(self, task_id: int) -> bool:
        """Whether the call ``task_id`` was cancelled (re-reading the marker if due)."""
        if not self.every and time.monotonic() >= self._next:
            try:
                self.read()
            except Exception as exc:  # the calls run as if not cancelled: no harm done
                self._next = time.monotonic() + SKIP_RECHECK_SECONDS
                print(
                    f"k8s_executor.worker: cannot re-read its skip marker: {exc}", file=sys.stderr
                )
        return self.every or task_id in self.cancelled


def run_index(store: RunStore, key: bytes, index: int, run: RunStore | None = None) -> int:
    """Run one index of a batch (``store``: the batch's storage, ``run``: the run's, for
    shared buffers); return the process exit code."""
    out_key = f"out/{index}"
    # Batching.speculate: another copy may run this index; first outcome written wins.
    race = _first_write.OutcomeWatch(store, index) if _first_write.speculating() else None
    try:
        if race is not None and race.written():
            return EXIT_OK  # the other copy finished before this one started
        skip = _SkipMarker(store, index)
        if skip.every:
            # Every call of this index was cancelled before the worker started.
            return EXIT_OK
        table = wire.FunctionTable.open(key, store.get("fn"))
        tasks = wire.open_inputs(key, store.get(f"in/{index}"))
    except (PayloadError, StorageError, FileNotFoundError) as exc:
        kind = (
            "version"
            if isinstance(exc, VersionMismatchError)
            else "payload"
            if isinstance(exc, PayloadError)
            else "storage"
        )
        if race is not None:
            # Another copy may run this index (Batching.speculate): a failure of this copy
            # alone (a transient read, another image on its node) must not become the
            # index's outcome, first writer winning over the other copy's result. Nothing
            # is written: the client leaves the index to the other copy, or describes a
            # lone copy from this log tail's last line (see _outcomes).
            if kind == "storage":
                print(f"k8s_executor.worker: {exc}", file=sys.stderr, flush=True)
                return codes.STORAGE_FAILED
            print(f"{codes.INDEX_FAILURE_LINE}{kind}: {exc}", file=sys.stderr, flush=True)
            return EXIT_INDEX_FAILED
        failure = wire.seal_index_failure(key, wire.IndexFailure(kind, str(exc)))
        try:
            store.put(out_key, failure)
        except StorageError as put_exc:
            # Nothing written: the client has only the log tail, whose last line of ours
            # becomes its StorageError (exit 88); the first cause goes last.
            print(f"k8s_executor.worker: {put_exc}", file=sys.stderr)
            print(f"k8s_executor.worker: {exc}", file=sys.stderr, flush=True)
            return codes.STORAGE_FAILED
        print(f"k8s_executor.worker: {exc}", file=sys.stderr)
        return EXIT_INDEX_FAILED
    if race is not None:
        race.start()
    try:
        return _run_tasks(store, key, tasks, table, skip=skip, run=run, race=race)
    finally:
        if race is not None:
            race.stop()


def _run_tasks(
    store: RunStore,
    key: bytes,
    tasks: list[wire.TaskInput],
    table: wire.FunctionTable,
    *,
    skip: _SkipMarker,
    run: RunStore | None,
    race: _first_write.OutcomeWatch | None,
) -> int:
    """Run the calls of an index not cancelled, and write their outcomes."""
    out_key = f"out/{skip.index}"
    runner = _Runner(table, run, _KEPT_SHARED)
    runner.initialize()
    named = _named_store(run, table.run_name)
    # A named run's copy tells joining clients it is at work (see _join); on an error the
    # process ends, and the marker with it.
    alive = _guards.Alive(store, skip.index) if named is not None else None
    outcomes = []
    for task in tasks:
        if skip.skips(task.task_id):
            continue
        outcome = runner.run(task)
        outcomes.append(outcome)
        if named is not None and task.identity and outcome.error is None:
            _store_result(named, key, task.identity, outcome)
    _KEPT_SHARED.keep(runner.shared_used)
    sealed = wire.seal_outcomes(key, outcomes)
    if alive is not None:
        alive.stop()
    if race is None:
        store.put(out_key, sealed)
    elif not race.put(sealed):
        return EXIT_OK  # the other copy's outcome stands: the index is done
    return EXIT_OK if all(o.error is None for o in outcomes) else EXIT_TASK_FAILED


def _named_store(run: RunStore | None, name: str | None) -> RunStore | None:
    """A named run's results store (beside the run's prefix), or None."""
    if run is None or name is None:
        return None
    root = run.url.rstrip("/").rsplit("/", 1)[0]
    return RunStore(_durable.run_url(root, name), run.options, run.retry)


def _store_result(named: RunStore, key: bytes, identity: str, outcome: wire.TaskOutcome) -> None:
    """Keep a call's result for later clients of the named run, as soon as it is known
    (a client that dies half-way loses only the calls still running)."""
    stored = wire.TaskOutcome(-1, outcome.results, None)
    try:
        named.put(_durable.call_key(identity), wire.seal_outcomes(key, [stored]))
    except StorageError as exc:  # the call's outcome still goes to out/<index>
        print(f"k8s_executor.worker: cannot store the result for reuse: {exc}", file=sys.stderr)


class _IdleSignals:
    """While a warm worker waits for work, SIGTERM (its pod deleted at shutdown, the
    local backend closing) ends it at once with its own index's exit code: nothing is
    running, nothing is lost. During a call SIGTERM keeps its default (see ``_init``)."""

    def __init__(self, code: int) -> None:
        self._code = code
        self._previous: Any = None

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._leave)

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _leave(self, signum: int, frame: object) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(self._code)


def serve_warm(
    run: RunStore,
    key: bytes,
    *,
    batch_id: str,
    index: int,
    code: int,
    keep_warm: float,
    batch_store: Callable[[str], RunStore],
) -> int:
    """After its own index (which ended with ``code``), take the client's further
    assignments until ``keep_warm`` seconds pass without one, or the client says stop
    (see ``_warm``); return the process's exit code: its own index's."""
    wid = warm.worker_id(batch_id, index, secrets.token_hex(3))
    seq = 0
    last_done = warm.done_key(wid, seq, code)
    run.put(last_done, b"")
    while True:
        idle_since = time.monotonic()
        with _IdleSignals(code):
            assignment = _wait_for_work(run, wid, seq, idle_since + keep_warm)
        if assignment is None or assignment.stop:
            return code
        seq = assignment.seq
        run.put(warm.run_key(wid, seq), b"")
        done = run_index(batch_store(assignment.batch_id), key, assignment.index, run)
        run.put(warm.done_key(wid, seq, done), b"")
        # Only the latest marker matters to the client: keep its LIST short.
        run.delete(warm.run_key(wid, seq), last_done)
        last_done = warm.done_key(wid, seq, done)


def _wait_for_work(run: RunStore, wid: str, seq: int, deadline: float) -> warm.Assignment | None:
    """Poll ``next`` until it holds an assignment after ``seq``, or ``deadline`` passes."""
    # A worker of the local backend (it watches its parent) on a local directory: reads
    # cost a file open, so read often (see warm.LOCAL_POLL).
    local = run.is_local and bool(os.environ.get(codes.ENV_PARENT_PID))
    for delay in warm.poll_intervals(local=local):
        try:
            assignment = warm.parse_assignment(run.get_or_none(warm.next_key(wid)))
        except StorageError as exc:
            # Past the retries: the client will see this worker end, and hand its work on.
            print(f"k8s_executor.worker: cannot read its next call: {exc}", file=sys.stderr)
            return None
        if assignment is not None and assignment.seq > seq:
            return assignment
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(delay, left))  # SIGTERM interrupts it (see _IdleSignals)
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of ``python -m k8s_executor.worker BATCH_URL``."""
    args = sys.argv[1:] if argv is None else argv
    if _init.wanted():
        # PID 1 of a container: fork, and stay behind as the init (see _init).
        _init.become_init()
    if len(args) != 1:
        _usage("usage: python -m k8s_executor.worker BATCH_URL")
    index = _index()
    keep_warm = _keep_warm()
    # Joblib code of a task that names backend="kubernetes" runs on the worker's threads.
    from ._joblib_worker import alias_nested_backend

    alias_nested_backend()
    parent = os.environ.get(codes.ENV_PARENT_PID)
    if parent:
        _guards.watch_parent(int(parent))
    options = json.loads(os.environ.get(codes.ENV_STORAGE_OPTIONS) or "{}")
    try:
        retry = StorageRetry.from_env(os.environ.get(codes.ENV_STORAGE_RETRY))
    except ConfigError as exc:
        _usage(str(exc))
    key = _read_key()
    run = RunStore(args[0].rstrip("/").rsplit("/", 1)[0], options, retry)
    grace = os.environ.get(codes.ENV_HEARTBEAT_GRACE)
    if grace:
        _guards.watch_heartbeat(run, float(grace))
    deadline = os.environ.get(codes.ENV_RUN_DEADLINE)
    if deadline:
        try:
            _guards.watch_deadline(float(deadline))
        except ValueError:
            _usage(f"{codes.ENV_RUN_DEADLINE} must be seconds since the epoch, got {deadline!r}")
    batch_url = args[0].rstrip("/")

    def batch_store(batch_id: str) -> RunStore:
        return RunStore(f"{run.url}/{batch_id}", options, retry)

    try:
        code = run_index(RunStore(batch_url, options, retry), key, index, run)
        if keep_warm > 0:
            batch_id = batch_url.rsplit("/", 1)[-1]
            code = serve_warm(
                run,
                key,
                batch_id=batch_id,
                index=index,
                code=code,
                keep_warm=keep_warm,
                batch_store=batch_store,
            )
    except StorageError as exc:
        # Past the storage's own retries: say why, for the client (its log tail), and
        # exit with the code that tells it so.
        print(f"k8s_executor.worker: {exc}", file=sys.stderr, flush=True)
        code = codes.STORAGE_FAILED
    sys.stdout.flush()
    sys.stderr.flush()
    # The outcome is written: nothing a task left behind (a non-daemon thread, a hung
    # atexit hook) may keep the worker, and so its pod and slot, alive.
    os._exit(code)


if __name__ == "__main__":
    main()
