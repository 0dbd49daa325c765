"""Functions the tests run in workers (importable, so they pickle by reference) and
small utilities: waiting, whether a process is alive, loading a file as a module. No
test here sleeps to dodge a race: they wait on conditions.

Tests and workers meet through :class:`SharedPath`: files both sides reach, a local path
when the workers run on this machine (local backend, kubesim) and a URL under the cluster's
storage when they do not (a real cluster, see ``docs/testing.md``). The helpers below take
one, or a plain path string as before.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import posixpath
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        threading.Event().wait(delay)
        delay = min(delay * 2, 0.2)


def alive(pid: int) -> bool:
    """True while process ``pid`` runs: a zombie (exited, not yet reaped) does not count."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The state follows the command name, which is in parentheses and may hold spaces.
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def load_module(path: Path, name: str) -> ModuleType:
    """Import the file ``path`` as module ``name``, without keeping it in ``sys.modules``
    (a script's ``__main__`` guard keeps it from running)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@dataclass(frozen=True)
class SharedPath:
    """A file or directory that a test and its workers both reach, through fsspec.

    ``url`` is a local path (``/tmp/pytest-.../started``) or an fsspec URL
    (``s3://bucket/tests/3f2a/started``); ``storage_options`` are how *this* process reaches
    it. ``None`` means: as the executor's own worker does, with the options the executor
    shared (``share_storage_options=True``, the ``K8S_EXECUTOR_STORAGE_OPTIONS`` variable)
    or else none, the pod's environment (``pod_secrets``, ``pod_env``) supplying
    credentials. That is what a worker gets: pickled, a SharedPath keeps only its URL, so
    this machine's credentials or an endpoint only it can reach never travel in a payload.

    Every read asks the storage again (listing caches are dropped first): tests poll these.
    """

    url: str
    storage_options: Mapping[str, Any] | None = None

    def __reduce__(self) -> tuple[object, ...]:
        return (SharedPath, (self.url,))

    def __truediv__(self, name: str) -> SharedPath:
        return SharedPath(f"{self.url.rstrip('/')}/{name}", self.storage_options)

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.rstrip("/"))

    def _fs(self) -> tuple[Any, str]:
        import fsspec.core

        options = self.storage_options
        if options is None:
            options = json.loads(os.environ.get("K8S_EXECUTOR_STORAGE_OPTIONS") or "{}")
        fs, path = fsspec.core.url_to_fs(self.url, **options)
        fs.invalidate_cache(path)
        return fs, path

    def exists(self) -> bool:
        fs, path = self._fs()
        return bool(fs.exists(path))

    def is_dir(self) -> bool:
        fs, path = self._fs()
        return bool(fs.isdir(path))

    def mkdir(self) -> None:
        """Make the directory (object stores have none: nothing to do there)."""
        fs, path = self._fs()
        fs.makedirs(path, exist_ok=True)

    def touch(self) -> None:
        fs, path = self._fs()
        fs.touch(path)

    def write_text(self, text: str) -> None:
        fs, path = self._fs()
        fs.pipe_file(path, text.encode())

    def read_text(self) -> str:
        fs, path = self._fs()
        return bytes(fs.cat_file(path)).decode()

    def listdir(self) -> list[str]:
        """Names in the directory; none when it does not exist (yet)."""
        fs, path = self._fs()
        try:
            entries = fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        here = path.rstrip("/")
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries if e.rstrip("/") != here)

    def remove(self) -> None:
        """Delete it and everything under it (nothing to do when it is gone)."""
        fs, path = self._fs()
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path, recursive=True)


def as_shared(path: str | os.PathLike[str] | SharedPath) -> SharedPath:
    """``path`` as a SharedPath (a plain path or URL string reaches storage as workers do)."""
    return path if isinstance(path, SharedPath) else SharedPath(os.fspath(path))


PathArg = str | os.PathLike[str] | SharedPath


def worker_id() -> str:
    """Which worker process this is, unique across pods: host (the pod's name) and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


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


def wait_for_file(path: PathArg, timeout: float = 60.0) -> str:
    """Block in the worker until ``path`` exists (the test creates it to release us)."""
    shared = as_shared(path)
    wait_for(shared.exists, timeout, f"release file {shared}")
    return shared.url


def wait_for_text(path: PathArg, timeout: float = 60.0, what: str = "") -> str:
    """Wait in the test until ``path`` exists *with content*, and return it. A worker's
    ``write_text`` creates the file before it writes: a reader that only waited for the
    file to exist may still find it empty."""
    shared = as_shared(path)
    seen: list[str] = []

    def written() -> bool:
        try:
            seen.append(shared.read_text())
        except FileNotFoundError:
            return False
        return bool(seen[-1])

    wait_for(written, timeout, what or f"{shared} to be written")
    return seen[-1]


def touch_then_wait(started: PathArg, release: PathArg, timeout: float = 60.0) -> int:
    as_shared(started).touch()
    wait_for_file(release, timeout)
    return os.getpid()


def touch_then_block(started: PathArg) -> None:
    as_shared(started).write_text(str(os.getpid()))
    threading.Event().wait()  # until killed


def raise_exception_missing_locally() -> None:
    """Raise an exception whose class lives in a module only the worker can import
    (written into the worker's own temporary directory, so never on the caller's side)."""
    module_dir = Path(tempfile.mkdtemp(prefix="worker_only-"))
    (module_dir / "worker_only_errors.py").write_text(
        "class WorkerOnlyError(Exception):\n    pass\n"
    )
    sys.path.insert(0, str(module_dir))
    import worker_only_errors

    shutil.rmtree(module_dir)  # imported: the class lives on in this process alone
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


class CodedError(Exception):
    """An exception whose __init__ takes more than it passes on to Exception."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ExitsWhenUnpickled:
    """Unpickling it raises SystemExit (ProcessPoolExecutor's pool breaks on such)."""

    def __reduce__(self) -> tuple[object, ...]:
        return (sys.exit, (3,))


class ExitsWhenPickled:
    """Pickling it raises SystemExit."""

    def __reduce__(self) -> tuple[object, ...]:
        raise SystemExit(4)


def return_exits_when_unpickled() -> ExitsWhenUnpickled:
    return ExitsWhenUnpickled()


def return_exits_when_pickled() -> ExitsWhenPickled:
    return ExitsWhenPickled()


def raise_coded_error(code: int) -> None:
    raise CodedError("failed with a code", code)


def raise_unpicklable_error() -> None:
    raise UnpicklableError("this one stays in the worker")


def counting_initializer(path: PathArg) -> None:
    (as_shared(path) / worker_id()).touch()


def failing_initializer() -> None:
    raise RuntimeError("initializer broke")


def read_global() -> object:
    return globals().get("INITIALIZED")


def set_global(value: object) -> None:
    globals()["INITIALIZED"] = value


def record_name(record_dir: PathArg, name: str) -> str:
    """Leave a trace named ``name`` that this call ran."""
    (as_shared(record_dir) / name).touch()
    return name


def record_then_wait(record_dir: PathArg, release: PathArg, timeout: float = 60.0) -> int:
    """Leave a trace that this call ran, then wait for the release file."""
    (as_shared(record_dir) / f"{worker_id()}-{uuid.uuid4().hex}").touch()
    wait_for_file(release, timeout)
    return os.getpid()


CLOCKS: Mapping[str, Callable[[], float]] = {"monotonic": time.monotonic, "wall": time.time}


def timed_work(
    seconds: float, clock: str = "monotonic", meet: SharedPath | None = None, together: int = 0
) -> tuple[str, float, float]:
    """Busy the worker for ``seconds`` (a workload, not a synchronisation) and report who
    ran it and when, on ``clock``: ``"monotonic"`` when every worker runs on this machine
    (one CLOCK_MONOTONIC for all processes), ``"wall"`` across nodes (synchronised clocks).

    With ``meet``, a call first waits there until ``together`` calls have arrived: the first
    ones then certainly overlap, however far apart their pods started. The span includes
    that wait, so it stays inside the worker's lifetime.
    """
    now = CLOCKS[clock]
    start = now()
    if meet is not None:
        (meet / uuid.uuid4().hex).touch()
        wait_for(lambda: len(meet.listdir()) >= together, 60, f"{together} calls to meet")
    threading.Event().wait(seconds)
    return worker_id(), start, now()


def crash_first_time(record_dir: PathArg) -> str:
    """Kill the worker on the first call (as a crash would), succeed on the next."""
    records = as_shared(record_dir)
    attempts = len(records.listdir())
    (records / str(attempts)).touch()
    if attempts == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return "second try"
