"""Wire format: signed envelopes around pickled functions, arguments and outcomes.

An envelope is ``MAGIC | format | header length | header (JSON) | HMAC | body``. The HMAC
(SHA-256, per-run key) covers everything but itself and is checked before the header is
trusted or the body unpickled, on both sides: a writer to the bucket who does not hold
the run's key cannot make the client or a worker unpickle foreign bytes.

Bodies are pickled with the stdlib ``pickle`` and hold only bytes, strings and numbers;
user objects inside them are separate cloudpickle blobs, one per function and per task, so
one object that fails to (un)pickle fails only its own task.

Nothing here imports more than the standard library and cloudpickle: the worker runs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import linecache
import pickle
import re
import struct
import sys
import traceback
import types
from collections import ChainMap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, Final, Literal

import cloudpickle

from ._version import __version__
from .errors import (
    ArgumentsPicklingError,
    FunctionPicklingError,
    PayloadError,
    RemoteError,
    ResultPicklingError,
    StorageError,
    VersionMismatchError,
)

MAGIC: Final = b"K8SX"
FORMAT: Final = 1
_PREFIX = struct.Struct(">4sBI")  # magic, format, header length
_MAC_SIZE: Final = hashlib.sha256().digest_size
PYTHON: Final = f"{sys.version_info.major}.{sys.version_info.minor}"

Kind = Literal["fn", "in", "out"]
Codec = Literal["pickle", "json"]

# Why a task's outcome is an error (see ``TaskError.kind``).
RAISED: Final = "raised"  # the call raised; the exception travels pickled
RESULT_PICKLING: Final = "result_pickling"  # the return value could not be pickled
FUNCTION_UNPICKLING: Final = "function_unpickling"  # the worker could not load the callable
ARGUMENTS_UNPICKLING: Final = "arguments_unpickling"  # the worker could not load the args
INITIALIZER: Final = "initializer"  # the executor's initializer raised


def new_key() -> bytes:
    """Return a fresh random signing key for one run."""
    import secrets

    return secrets.token_bytes(32)


def seal(key: bytes, kind: Kind, body: bytes, *, codec: Codec = "pickle") -> bytes:
    """Wrap ``body`` in a signed envelope."""
    header = json.dumps(
        {"kind": kind, "codec": codec, "python": PYTHON, "version": __version__},
        separators=(",", ":"),
    ).encode()
    head = _PREFIX.pack(MAGIC, FORMAT, len(header)) + header
    mac = hmac.new(key, head + body, hashlib.sha256).digest()
    return head + mac + body


def open_envelope(key: bytes, data: bytes, kind: Kind) -> tuple[Codec, bytes]:
    """Check an envelope's signature, kind and versions; return its codec and body.

    Raises:
        PayloadError: the bytes are not an envelope, the signature does not match, or the
            kind is not the expected one.
        VersionMismatchError: the writer runs another Python major.minor or package version.
    """
    if len(data) < _PREFIX.size or data[:4] != MAGIC:
        raise PayloadError("not a k8s_executor payload (bad magic bytes)")
    _, fmt, header_len = _PREFIX.unpack_from(data)
    if fmt != FORMAT:
        raise PayloadError(
            f"payload format {fmt} is not supported by k8s_executor {__version__} "
            f"(format {FORMAT}); client and worker must run the same k8s_executor version"
        )
    header_end = _PREFIX.size + header_len
    mac_end = header_end + _MAC_SIZE
    if len(data) < mac_end:
        raise PayloadError("truncated k8s_executor payload")
    mac = data[header_end:mac_end]
    body = data[mac_end:]
    expected = hmac.new(key, data[:header_end] + body, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise PayloadError(
            "payload signature does not match: it was not written by this run, or the "
            "worker was given another key (K8S_EXECUTOR_KEY); refusing to unpickle it"
        )
    header = json.loads(data[_PREFIX.size : header_end])
    if header.get("kind") != kind:
        raise PayloadError(f"expected a {kind!r} payload, got {header.get('kind')!r}")
    if header.get("python") != PYTHON or header.get("version") != __version__:
        raise VersionMismatchError(
            f"payload written by Python {header.get('python')} with k8s_executor "
            f"{header.get('version')}, read by Python {PYTHON} with k8s_executor "
            f"{__version__}: client and worker must run the same Python major.minor and "
            "k8s_executor version (rebuild the image, or pin the same versions in it)"
        )
    return header["codec"], body


# -- function payload ------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionTable:
    """The callables of one batch, each pickled on its own, plus the initializer."""

    functions: tuple[bytes, ...]
    names: tuple[str, ...]
    initializer: bytes | None
    initargs: bytes | None
    run_name: str | None = None  # a named run's: workers store results under it

    def seal(self, key: bytes) -> bytes:
        """Return the signed ``fn`` payload."""
        body = pickle.dumps(
            (self.functions, self.names, self.initializer, self.initargs, self.run_name),
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        return seal(key, "fn", body)

    @classmethod
    def open(cls, key: bytes, data: bytes) -> FunctionTable:
        """Verify and parse a ``fn`` payload."""
        _, body = open_envelope(key, data, "fn")
        return cls(*pickle.loads(body))


def callable_name(fn: object) -> str:
    """A readable name for a callable, for error messages."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return repr(fn)
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module != "builtins" else str(name)


_DYNAMIC_CODE: Final = "<dynamic-code>"
_CLOUDPICKLE_DISPATCH: Final = cloudpickle.Pickler.dispatch_table


def _code_reduce_keeping_filename(code: types.CodeType) -> tuple[Any, ...]:
    """cloudpickle's reduction of a code object, with the real ``co_filename`` put back.

    cloudpickle writes ``<dynamic-code>`` instead (for byte-identical pickles of notebook
    cells), so a remote traceback through a ``__main__`` function would name no file. The
    line numbers travel anyway; with the file name, the client can also show the source
    lines (see :func:`add_source_lines`). The file name is the only top-level argument
    equal to the marker: it comes before ``co_name`` in every ``CodeType`` signature.
    """
    rebuild, args = _CLOUDPICKLE_DISPATCH[types.CodeType](code)
    args = list(args)
    for i, arg in enumerate(args):
        if isinstance(arg, str) and arg == _DYNAMIC_CODE:
            args[i] = code.co_filename
            break
    return rebuild, tuple(args)


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, keeping the file names of the code it pickles by value."""

    dispatch_table = ChainMap(
        {types.CodeType: _code_reduce_keeping_filename}, _CLOUDPICKLE_DISPATCH
    )


def dumps(obj: object, buffer_callback: Any = None) -> bytes:
    """``cloudpickle.dumps``, keeping the file names of code pickled by value."""
    out = io.BytesIO()
    _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()


def dump_function(fn: object, *, what: str = "function") -> bytes:
    """Pickle a callable by value where needed (lambdas, closures, ``__main__``)."""
    try:
        blob: bytes = dumps(fn)
    except Exception as exc:
        raise FunctionPicklingError(
            f"cannot pickle the {what} {callable_name(fn)}: {type(exc).__name__}: {exc}; "
            "it must be picklable by cloudpickle (a module-level function, lambda or "
            "closure over picklable values)",
            what=what,
        ) from exc
    return blob


def dump_calls(fn: object, calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]) -> bytes:
    """Pickle the arguments of the calls of one task."""
    try:
        blob: bytes = dumps(list(calls))
    except Exception as exc:
        raise ArgumentsPicklingError(
            f"cannot pickle the arguments of a call to {callable_name(fn)}: "
            f"{type(exc).__name__}: {exc}",
            what="arguments",
        ) from exc
    return blob


class _SharingPickler(_Pickler):
    """cloudpickle, plus: a large NumPy array that is neither C- nor Fortran-contiguous (a
    column slice, such as scikit-learn's ``load_digits`` data) is pickled as a contiguous
    copy. NumPy pickles such an array in band, so it would never be shared; unpickled,
    both ways give the same fresh C-ordered array."""

    def __init__(self, file: IO[bytes], min_bytes: int, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._min_bytes = min_bytes

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if (
            cls.__name__ == "ndarray"
            and cls.__module__ == "numpy"  # exactly ndarray: subclasses pickle their way
            and obj.nbytes >= self._min_bytes
            and not obj.dtype.hasobject
            and not (obj.flags.c_contiguous or obj.flags.f_contiguous)
        ):
            return obj.copy(order="C").__reduce_ex__(pickle.HIGHEST_PROTOCOL)
        return super().reducer_override(obj)


def dump_calls_sharing(
    fn: object, calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]], min_bytes: int
) -> tuple[bytes, list[memoryview]]:
    """Pickle the arguments of the calls of one task, leaving out (pickle protocol 5's
    out-of-band buffers) every buffer of at least ``min_bytes``: NumPy arrays and what is
    built on them. Returns the pickle and those buffers, in the order
    :func:`load_calls` needs them back."""
    large: list[memoryview] = []

    def keep_in_band(buffer: pickle.PickleBuffer) -> bool:
        view = buffer.raw()
        if view.nbytes < min_bytes:
            return True
        large.append(view)
        return False

    out = io.BytesIO()
    try:
        _SharingPickler(
            out, min_bytes, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=keep_in_band
        ).dump(list(calls))
        blob = out.getvalue()
    except Exception as exc:
        raise ArgumentsPicklingError(
            f"cannot pickle the arguments of a call to {callable_name(fn)}: "
            f"{type(exc).__name__}: {exc}",
            what="arguments",
        ) from exc
    return blob, large


def buffer_key(data: bytes | memoryview) -> str:
    """The name of a shared buffer: its SHA-256, in hex. A worker checks a downloaded
    buffer against it, so the signed ``in/`` payload that names it vouches for it too."""
    return hashlib.sha256(data).hexdigest()


def load_calls(blob: bytes, buffers: Sequence[bytes]) -> Any:
    """Unpickle a task's calls, giving back its out-of-band buffers. Each call gets
    writable copies, as a fresh unpickle in ProcessPoolExecutor would."""
    return pickle.loads(blob, buffers=[bytearray(b) for b in buffers])


# -- input payload ---------------------------------------------------------------------


@dataclass(frozen=True)
class TaskInput:
    """One task (one future): which function, and its pickled calls.

    ``buffers`` are the calls' out-of-band buffers in order: the bytes themselves, or
    (a ``str``) the :func:`buffer_key` of one stored once per run under ``shared/``.
    """

    task_id: int
    fn_index: int
    calls: bytes
    buffers: tuple[bytes | str, ...] = ()
    identity: str = ""  # in a named run: where the worker stores the result (_durable)


def seal_inputs(key: bytes, tasks: Sequence[TaskInput]) -> bytes:
    """Return the signed ``in/<index>`` payload for the tasks of one index."""
    body = pickle.dumps(
        [(t.task_id, t.fn_index, t.calls, t.buffers, t.identity) for t in tasks],
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    return seal(key, "in", body)


def open_inputs(key: bytes, data: bytes) -> list[TaskInput]:
    """Verify and parse an ``in/<index>`` payload."""
    _, body = open_envelope(key, data, "in")
    return [TaskInput(*t) for t in pickle.loads(body)]


# -- outcome payload -------------------------------------------------------------------


@dataclass(frozen=True)
class TaskError:
    """Why a task failed in the worker, in a form that survives a missing class."""

    kind: str
    type_name: str
    message: str
    traceback: str
    exception: bytes | None  # the pickled exception, when it could be pickled


@dataclass(frozen=True)
class TaskOutcome:
    """What one task produced: pickled results (one per call) or an error."""

    task_id: int
    results: bytes | None
    error: TaskError | None


@dataclass(frozen=True)
class IndexFailure:
    """A failure of a whole index before any task could run (sent as JSON)."""

    error: str  # "payload", "version" or "storage"
    message: str

    def to_exception(self) -> Exception:
        """The exception every future of the index receives."""
        cls: type[Exception] = {
            "version": VersionMismatchError,
            "storage": StorageError,
        }.get(self.error, PayloadError)
        return cls(f"the worker could not run its tasks: {self.message}")


def seal_outcomes(key: bytes, outcomes: Sequence[TaskOutcome]) -> bytes:
    """Return the signed ``out/<index>`` payload."""
    rows = [
        (o.task_id, o.results, None if o.error is None else tuple(vars(o.error).values()))
        for o in outcomes
    ]
    return seal(key, "out", pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL))


def seal_index_failure(key: bytes, failure: IndexFailure) -> bytes:
    """Return a signed ``out/<index>`` payload that fails the whole index.

    JSON, not pickle, so that a client with another Python or package version can still
    read why its worker gave up.
    """
    body = json.dumps({"error": failure.error, "message": failure.message}).encode()
    return seal(key, "out", body, codec="json")


def open_outcomes(key: bytes, data: bytes) -> list[TaskOutcome] | IndexFailure:
    """Verify and parse an ``out/<index>`` payload.

    An index failure written by a worker of another version still opens: the version
    check is relaxed for JSON outcomes, whose only content is the message.
    """
    try:
        codec, body = open_envelope(key, data, "out")
    except VersionMismatchError as exc:
        return IndexFailure("version", str(exc))
    if codec == "json":
        doc = json.loads(body)
        return IndexFailure(str(doc["error"]), str(doc["message"]))
    return [
        TaskOutcome(task_id, results, None if err is None else TaskError(*err))
        for task_id, results, err in pickle.loads(body)
    ]


# -- worker side: capturing errors -----------------------------------------------------


def format_remote_traceback(exc: BaseException) -> str:
    """The traceback text ProcessPoolExecutor attaches, taken in the worker."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def capture_error(kind: str, exc: BaseException) -> TaskError:
    """Describe ``exc`` so the client can rebuild it, or explain it if it cannot."""
    tb = format_remote_traceback(exc)
    blob, why = _dump_exception(exc)
    if blob is None:
        tb += f"\n(the exception itself could not be sent back: {why})\n"
    cls = type(exc)
    return TaskError(
        kind=kind,
        type_name=cls.__qualname__
        if cls.__module__ == "builtins"
        else f"{cls.__module__}.{cls.__qualname__}",
        message=str(exc),
        traceback=tb,
        exception=blob,
    )


def _dump_exception(exc: BaseException) -> tuple[bytes | None, str]:
    """The pickled exception (or None, and why not).

    An exception pickles as (class, args, __dict__): no traceback, no __cause__ chain, so
    frames and their locals never need to be picklable. Rebuilding calls ``cls(*args)``,
    which fails for a class whose ``__init__`` takes other arguments than it passes on
    (``MyError(msg, code)`` calling ``super().__init__(msg)``): then the exception is sent
    by state instead, rebuilt without calling ``__init__``, as copy.copy does.
    """
    try:
        pickled: bytes = dumps(exc)
    except Exception as failure:  # its class refuses, or its state cannot be pickled
        return None, f"{type(failure).__name__}: {failure}"
    try:
        pickle.loads(pickled)  # a broken __reduce__ or __init__ fails here, not later
        return pickled, ""
    except Exception as failure:
        why = f"{type(failure).__name__}: {failure}"
    try:
        pickled = dumps(_ByState(exc))
        pickle.loads(pickled)
    except Exception:
        return None, why
    return pickled, ""


class _ByState:
    """Pickles an exception as its class, args and ``__dict__``, rebuilt without
    ``__init__``."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        exc = self.exc
        return (_restore_exception, (type(exc), exc.args, dict(getattr(exc, "__dict__", {}))))


def _restore_exception(
    cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]
) -> BaseException:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


# -- client side: rebuilding errors ----------------------------------------------------


_FRAME_LINE = re.compile(r'^  File "(?P<file>[^"\n]+)", line (?P<line>\d+), in .*$')


def add_source_lines(tb: str) -> str:
    """Fill in the source lines a worker could not show: the frames of files it does not
    have (a script run as ``__main__``, a notebook cell), read here when they are."""
    lines = tb.splitlines(keepends=True)
    out: list[str] = []
    for i, line in enumerate(lines):
        out.append(line)
        frame = _FRAME_LINE.match(line)
        if frame is None:
            continue
        if i + 1 < len(lines) and lines[i + 1].startswith("    "):
            continue  # the worker showed the line itself
        source = linecache.getline(frame["file"], int(frame["line"])).strip()
        if source:
            out.append(f"    {source}\n")
    return "".join(out)


def _remote_cause(tb: str) -> BaseException:
    # The very type ProcessPoolExecutor uses, so code that inspects __cause__ keeps working.
    # Imported here: concurrent.futures.process pulls in multiprocessing, which the worker
    # (the other user of this module) never needs.
    from concurrent.futures.process import _RemoteTraceback

    # typeshed types the argument as a traceback; CPython passes (and formats) a string.
    cause: BaseException = _RemoteTraceback(f'\n"""\n{tb}"""')  # type: ignore[arg-type]
    return cause


def rebuild_exception(error: TaskError, fn_name: str) -> BaseException:
    """Turn a :class:`TaskError` back into the exception the future should raise."""
    remote = _remote_cause(add_source_lines(error.traceback))
    if error.kind == RAISED:
        exc = _load_exception(error)
        if exc is None:
            exc = RemoteError(error.type_name, error.message, error.traceback)
        exc.__cause__ = remote
        # A task's KeyboardInterrupt or SystemExit is a result to hand on, not the user
        # pressing Ctrl-C: the executor's __exit__ tells them apart by this mark.
        with contextlib.suppress(AttributeError, TypeError):
            exc.__dict__[FROM_TASK] = True
        return exc
    if error.kind == INITIALIZER:
        from ._pool_errors import InitializerError

        init_exc = _load_exception(error) or RemoteError(
            error.type_name, error.message, error.traceback
        )
        init_exc.__cause__ = remote
        wrapped = InitializerError(
            f"the executor's initializer raised {error.type_name}: {error.message}; "
            "the tasks of this worker did not run"
        )
        wrapped.__cause__ = init_exc
        return wrapped
    from ._pool_errors import BrokenResultPicklingError, BrokenUnpicklingError

    built: BaseException
    if error.kind == RESULT_PICKLING:
        # An Exception while pickling is the call's own failure (ProcessPoolExecutor sends
        # it back too); SystemExit and the like would have ended its worker.
        fatal = error.type_name in ("SystemExit", "KeyboardInterrupt", "GeneratorExit")
        result_cls = BrokenResultPicklingError if fatal else ResultPicklingError
        built = result_cls(
            f"cannot pickle the result of {fn_name} in the worker: "
            f"{error.type_name}: {error.message}",
            what="result",
        )
    elif error.kind == FUNCTION_UNPICKLING:
        built = BrokenUnpicklingError(
            f"the worker could not load the function {fn_name}: {error.type_name}: "
            f"{error.message}; is the module that defines it (or one it uses) installed "
            "in the worker's environment?",
            what="function",
        )
    elif error.kind == ARGUMENTS_UNPICKLING:
        built = BrokenUnpicklingError(
            f"the worker could not load the arguments of a call to {fn_name}: "
            f"{error.type_name}: {error.message}",
            what="arguments",
        )
    else:
        built = PayloadError(f"unknown task error kind {error.kind!r}: {error.message}")
    built.__cause__ = remote
    return built


FROM_TASK: Final = "_k8s_executor_from_task"
"""Set on an exception a task raised, rebuilt on the client (see rebuild_exception)."""


def _load_exception(error: TaskError) -> BaseException | None:
    if error.exception is None:
        return None
    try:
        exc = pickle.loads(error.exception)
    except BaseException:  # even SystemExit: it would strand the call (see load_results)
        return None
    return exc if isinstance(exc, BaseException) else None


def load_results(blob: bytes, fn_name: str) -> list[Any]:
    """Unpickle the results of one task on the client.

    Raises:
        UnpicklingError: (a ``BrokenProcessPool`` too) whatever unpickling raised, even
            ``SystemExit``: it runs on a thread of the executor, where an escaping
            exception would leave the call without an outcome for ever.
    """
    from ._pool_errors import BrokenUnpicklingError

    try:
        results: list[Any] = pickle.loads(blob)
    except BaseException as exc:
        raise BrokenUnpicklingError(
            f"cannot load the result of {fn_name} here: {type(exc).__name__}: {exc}; "
            "does it reference a module that is installed in the worker but not locally?",
            what="result",
        ) from exc
    return results
