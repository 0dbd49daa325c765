"""The local backend: each index runs as a subprocess of this machine.

The subprocess is the very command a pod runs (``python -m k8s_executor.worker URL``) with
the same environment contract, so everything above the backend behaves as on a cluster.
At most ``max_workers`` subprocesses run at once; indexes wait in launch order.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from .. import _contract as c
from ..errors import ConfigError
from ._base import IndexExit, LaunchSpec, Listener, RunContext

__all__ = ["LocalBackend"]

_LOG_TAIL_LINES = 20
_KILLED = "the executor was shut down, ending this worker"


@dataclass
class _Pending:
    spec: LaunchSpec
    index: int


def _python_path() -> str:
    # What spawn-based ProcessPoolExecutor workers get: the parent's sys.path, so that
    # functions pickled by reference (from modules on that path) import in the worker.
    entries = [p or os.getcwd() for p in sys.path]
    return os.pathsep.join(dict.fromkeys(entries))


class LocalBackend:
    """Runs workers as local subprocesses (development, tests, the demo).

    Args:
        python: the interpreter to run workers with (default: this one).
        forward_stderr: copy each worker's stderr to this process's stderr as it comes.
    """

    name = "local"
    heartbeat_interval: float | None = None
    batch_window: float = 0.01

    def __init__(self, *, python: str | None = None, forward_stderr: bool = True) -> None:
        self._python = python or sys.executable
        self._forward_stderr = forward_stderr
        self._cond = threading.Condition()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._running: dict[int, subprocess.Popen[bytes]] = {}
        # The last stderr lines of each live worker, by the batch index it was started for.
        self._tails: dict[tuple[str, int], collections.deque[str]] = {}
        self._threads: set[threading.Thread] = set()
        self._closing = False
        self._killed = False
        self._listener: Listener | None = None
        self._max_workers = 1
        self._dispatcher: threading.Thread | None = None
        self._deadline: float | None = None  # a detached run (see detach)
        self._logs = ""

    def default_max_workers(self) -> int:
        """One worker per CPU, as ProcessPoolExecutor does."""
        return os.cpu_count() or 1

    def start(self, listener: Listener, max_workers: int, run: RunContext) -> None:
        """Begin serving launches."""
        self._listener = listener
        self._max_workers = max_workers
        if run.deadline is not None:
            self._deadline = run.deadline
            self._logs = run.log_dir or tempfile.mkdtemp(prefix=f"k8sx-{run.run_id}-logs-")
            os.makedirs(self._logs, exist_ok=True)
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="k8sx-local-dispatch", daemon=True
        )
        self._dispatcher.start()

    def launch(self, spec: LaunchSpec) -> None:
        """Queue every index of the batch."""
        try:
            json.dumps(dict(spec.storage_options))
        except TypeError as exc:
            raise ConfigError(
                f"storage_options must be JSON-serialisable to reach local workers: {exc}"
            ) from exc
        with self._cond:
            self._queue.extend(_Pending(spec, spec.batch_index(k)) for k in range(spec.indexes))
            self._cond.notify_all()

    def cancel(self, batch_id: str, indexes: Collection[int]) -> None:
        """Nothing to do: before starting an index the dispatcher asks the listener,
        which declines indexes whose calls were all cancelled (and records them done)."""

    def close(self, *, kill: bool) -> None:
        """Stop dispatching; with ``kill`` end running workers; wait for all of them.

        Without ``kill`` the engine closes once every index is done, so the workers still
        alive are warm ones waiting for work: SIGTERM ends them at once."""
        with self._cond:
            self._closing = True
            self._killed = self._killed or kill
            if kill:
                self._queue.clear()
                for proc in self._running.values():
                    _kill_group(proc)
            self._cond.notify_all()
        if self._dispatcher is not None:
            self._dispatcher.join()
        with self._cond:
            for proc in self._running.values():
                if proc.poll() is None:  # never a reaped pid, which may be reused
                    proc.terminate()
        with self._cond:
            threads = list(self._threads)
        for t in threads:
            t.join()

    def detach(self) -> None:
        """Stop following a detached run: every launched index has its worker already
        (nothing waits in this process), and they go on without it (no parent watch,
        their output in files under the session's log folder) until the run's deadline.
        Idempotent: a leave interrupted in it calls it again."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._dispatcher is not None:
            self._dispatcher.join()

    def worker_exit(self, batch_id: str, index: int, exit: IndexExit) -> IndexExit:
        """``exit`` with the last stderr lines of the live worker started for ``index``."""
        with self._cond:
            tail = self._tails.get((batch_id, index))
            text = "".join(tail) if tail is not None else ""
        return dataclasses.replace(exit, log_tail=text, log_shown=self._forward_stderr)

    # -- internals -----------------------------------------------------------------

    def _dispatch(self) -> None:
        assert self._listener is not None
        while True:
            with self._cond:
                # A detached run's batches start whole (each has at most max_workers
                # indexes): nothing may wait in a client that can go at any time.
                while not self._queue or (
                    self._deadline is None and len(self._running) >= self._max_workers
                ):
                    if self._closing and not self._queue:
                        return
                    self._cond.wait()
                item = self._queue.popleft()
            if not self._listener.index_started(item.spec.batch_id, item.index):
                # Declined (every call cancelled): reported ended all the same, as a pod
                # that finds its skip marker would be.
                self._listener_finished(item, IndexExit(0, never_started=True))
                continue
            try:
                self._spawn(item)
            except OSError as exc:
                self._listener.backend_broken(exc)
                return

    def _spawn(self, item: _Pending) -> None:
        spec = item.spec
        env = dict(os.environ)
        env.update(
            {
                c.ENV_INDEX: str(item.index),
                c.ENV_KEY: spec.key.hex(),
                c.ENV_STORAGE_OPTIONS: json.dumps(dict(spec.storage_options)),
                c.ENV_STORAGE_RETRY: spec.storage_retry.to_env(),
                c.ENV_PARENT_PID: str(os.getpid()),
                c.ENV_KEEP_WARM: f"{spec.keep_warm:g}",
                c.ENV_SPECULATE: "1" if spec.speculate else "0",
                "PYTHONPATH": _python_path(),
            }
        )
        output: Any = subprocess.PIPE
        if self._deadline is not None:
            # Detached: the worker outlives this process, so it watches no parent, writes
            # to a file (a pipe would break with us), and stops at the run's deadline.
            del env[c.ENV_PARENT_PID]
            env[c.ENV_RUN_DEADLINE] = repr(self._deadline)
            path = os.path.join(self._logs, f"{spec.name}-{item.index}.log")
            output = open(path, "ab")  # noqa: SIM115 - closed once the worker has it
        with self._cond:
            killed = self._killed
            if not killed:
                proc = subprocess.Popen(
                    [self._python, "-m", "k8s_executor.worker", spec.batch_url],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=None if output is subprocess.PIPE else output,
                    stderr=output,
                    # Its own process group: a Ctrl-C in the terminal reaches only the
                    # client, which then ends the workers itself (and their children).
                    process_group=0,
                )
                if output is not subprocess.PIPE:
                    output.close()  # the worker has its own copy
                self._running[proc.pid] = proc
                waiter = threading.Thread(
                    target=self._wait,
                    args=(proc, item),
                    name=f"k8sx-local-{proc.pid}",
                    daemon=True,
                )
                self._threads.add(waiter)
                waiter.start()
        if killed:
            # close(kill=True) came between index_started and here: report, don't run.
            self._listener_finished(item, IndexExit(None, reason="Killed", message=_KILLED))

    def _listener_finished(self, item: _Pending, exit: IndexExit) -> None:
        assert self._listener is not None
        self._listener.index_finished(item.spec.batch_id, item.index, exit)

    def _wait(self, proc: subprocess.Popen[bytes], item: _Pending) -> None:
        assert self._listener is not None
        tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
        with self._cond:
            self._tails[(item.spec.batch_id, item.index)] = tail
        shown = self._forward_stderr
        if proc.stderr is not None:
            for raw in proc.stderr:
                line = raw.decode(errors="replace")
                tail.append(line)
                if self._forward_stderr:
                    sys.stderr.write(line)
            proc.stderr.close()
            code = proc.wait()
        else:  # detached: its output is in its log file
            code = proc.wait()
            path = os.path.join(self._logs, f"{item.spec.name}-{item.index}.log")
            with contextlib.suppress(OSError), open(path, "rb") as f:
                tail.extend(f.read().decode(errors="replace").splitlines(keepends=True))
            shown = False
        exit = _describe_exit(code, "".join(tail), log_shown=shown)
        if self._killed and exit.signal == signal.SIGKILL:
            exit = IndexExit(None, signal.SIGKILL, "Killed", _KILLED, exit.log_tail)
        try:
            self._listener_finished(item, exit)
        finally:
            with self._cond:
                self._running.pop(proc.pid, None)
                self._tails.pop((item.spec.batch_id, item.index), None)
                self._threads.discard(threading.current_thread())
                self._cond.notify_all()


def _describe_exit(code: int, log_tail: str, *, log_shown: bool) -> IndexExit:
    if code >= 0:
        return IndexExit(
            exit_code=code,
            reason=None if code == 0 else "Error",
            log_tail=log_tail,
            log_shown=log_shown,
        )
    sig = -code
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
    # The kernel's OOM killer sends SIGKILL; locally nothing tells it apart from kill -9.
    return IndexExit(
        exit_code=None,
        signal=sig,
        reason="Killed" if sig == signal.SIGKILL else "Signaled",
        message=f"killed by {name}",
        log_tail=log_tail,
        log_shown=log_shown,
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
