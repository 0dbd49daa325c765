"""Pure: what a batch is made of, and how its tasks become the objects workers read.

A **task** is one future (a ``submit``, or one chunk of a ``map``); an **index** is the
contiguous run of a batch's tasks that one worker runs; a batch is N indexes. Nothing
here does I/O or takes a lock: the engine (``_run``) calls these with its lock released
or around plain data, and the unit tests call them directly.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from . import _payload as wire
from ._progress import Progress
from .errors import FunctionPicklingError

__all__ = [
    "Batch",
    "Index",
    "Placement",
    "Task",
    "function_table",
    "index_inputs",
    "pack",
    "place_buffers",
]


@dataclass(eq=False)
class Task:
    """One future and its pickled calls, with where it runs once launched."""

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
    identity: str = ""  # in a named run: the call's identity (see _durable)
    reused: bool = False  # settled from a named run's stored result, without a pod

    def release(self) -> None:
        """The future is settled (done, and a cancellation notified): drop the function,
        the pickled calls and the future (which holds the result), so that nothing the
        caller passed or got back stays alive in the engine's structures. ``future``
        becomes a stand-in in the same final state (cancelled, or done)."""
        cancelled = self.future.cancelled()
        self.future = _CANCELLED if cancelled else _DONE
        self.fn = _released
        self.calls = b""


@dataclass(eq=False)
class Index:
    """The tasks of one worker, and how far it got."""

    tasks: list[Task]
    started: bool = False
    finished: bool = False
    skipped: bool = False
    started_at: float = 0.0  # time.monotonic() when it started (for _speculate)
    finished_at: float = 0.0  # when its calls were all settled


@dataclass(eq=False)
class Batch:
    """One launch: its indexes and the names of its functions (for error messages)."""

    batch_id: str
    indexes: list[Index]
    fn_names: list[str]
    unfinished: int = field(init=False)

    def __post_init__(self) -> None:
        self.unfinished = len(self.indexes)


def _released(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("the task was released")


def _stand_in(cancelled: bool) -> Future[Any]:
    future: Future[Any] = Future()
    if cancelled:
        future.cancel()
        future.set_running_or_notify_cancel()
    else:
        future.set_running_or_notify_cancel()
        future.set_result(None)
    return future


# What a released task's ``future`` becomes: its state, not its result.
_CANCELLED = _stand_in(True)
_DONE = _stand_in(False)


class _Sized(Protocol):
    n_calls: int


S = TypeVar("S", bound=_Sized)


def pack(tasks: Sequence[S], slots: int) -> list[list[S]]:
    """Split tasks into at most ``slots`` contiguous groups of about equal call counts.

    Contiguous, so that a ``map``'s results come back in the order its workers run.
    """
    n = min(len(tasks), slots)
    total = sum(t.n_calls for t in tasks)
    groups: list[list[S]] = []
    current: list[S] = []
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


@dataclass(frozen=True)
class FunctionTable:
    """The distinct functions of a batch's tasks, each pickled once."""

    blobs: tuple[bytes, ...]
    names: tuple[str, ...]
    fn_index: tuple[int, ...]
    """For each task given, the position of its function."""
    failed: Mapping[int, FunctionPicklingError]
    """Functions that cannot be pickled, by position: their tasks fail."""


def function_table(
    fns: Iterable[Callable[..., Any]],
    dump: Callable[[Callable[..., Any]], bytes] = wire.dump_function,
) -> FunctionTable:
    """Pickle each distinct function (by identity) of ``fns`` once."""
    positions: dict[int, int] = {}
    blobs: list[bytes] = []
    names: list[str] = []
    failed: dict[int, FunctionPicklingError] = {}
    fn_index: list[int] = []
    for fn in fns:
        key = id(fn)
        if key not in positions:
            positions[key] = len(blobs)
            names.append(wire.callable_name(fn))
            try:
                blobs.append(dump(fn))
            except FunctionPicklingError as exc:
                blobs.append(b"")
                failed[positions[key]] = exc
        fn_index.append(positions[key])
    return FunctionTable(tuple(blobs), tuple(names), tuple(fn_index), failed)


@dataclass(frozen=True)
class Placement:
    """Where each large buffer of a batch goes (see :func:`place_buffers`)."""

    placed: dict[str, bytes | str]
    """By key: the bytes themselves (inline in the one task's input) or the key of
    ``shared/<key>``."""
    uploads: list[tuple[str, bytes]]
    """``(storage key, bytes)`` to write before launch: the newly shared buffers."""


def place_buffers(
    keys: Iterable[str],
    uses: collections.Counter[str],
    data: dict[str, bytes],
    shared: set[str],
) -> Placement:
    """Place the large buffers ``keys`` of a batch's tasks: one carried by more than one
    task so far is stored once for the run (``shared/<key>``, referenced by key); one
    carried by a single task travels inside that task's input.

    ``data`` (the copies taken at submit, not yet stored) loses the keys placed; ``uses``
    and ``shared`` (those already stored) are only read.
    """
    placed: dict[str, bytes | str] = {}
    uploads: list[tuple[str, bytes]] = []
    for key in sorted(set(keys)):
        if key in shared:
            placed[key] = key
            data.pop(key, None)  # copied by a submit racing the upload
            continue
        blob = data.pop(key)
        if uses[key] > 1:
            placed[key] = key
            uploads.append((f"shared/{key}", blob))
        else:
            placed[key] = blob
    return Placement(placed, uploads)


def index_inputs(
    key: bytes,
    batch_id: str,
    groups: Sequence[Sequence[Task]],
    placed: Mapping[str, bytes | str],
) -> list[tuple[str, bytes]]:
    """The signed ``<batch>/in/<index>`` objects of a batch's indexes."""
    return [
        (
            f"{batch_id}/in/{i}",
            wire.seal_inputs(
                key,
                [
                    wire.TaskInput(
                        t.task_id,
                        t.fn_index,
                        t.calls,
                        tuple(placed[k] for k in t.buffers),
                        t.identity,
                    )
                    for t in group
                ],
            ),
        )
        for i, group in enumerate(groups)
    ]
