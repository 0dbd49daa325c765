"""Calls → a task, pickled in the caller's thread; tasks → a batch in storage: its
function table, its packed indexes, their inputs and the large buffers they share,
written before the backend may start a worker.

The engine (``_run``) calls :meth:`Launcher.prepare` from its dispatcher thread with no
lock held; the buffers' bookkeeping has a small lock of its own, never held for I/O.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from . import _payload as wire
from ._batches import Batch, Index, Task, function_table, index_inputs, pack, place_buffers
from ._config import Settings
from ._durable import FunctionBlobs, identity
from ._progress import Progress
from ._sessions import LaunchRecord, write_launch
from ._store import RunStore
from .backends._base import LaunchSpec
from .errors import PicklingError, StorageError

__all__ = ["Launcher"]

Settle = Callable[..., None]

_log = logging.getLogger(__name__)


class Launcher:
    """Prepares the batches of one run (see the module docstring).

    Args:
        settings: the run's configuration (batching, storage options and retries).
        max_workers: the most indexes a batch gets without ``Batching.max_indexes``.
        initializer: the pickled initializer and initargs, or None.
        run_id: the run's id.
        key: the run's signing key.
        settle: ``settle(task, error=...)`` fails a task that cannot be launched.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        max_workers: int,
        initializer: tuple[bytes, bytes] | None,
        run_id: str,
        key: bytes,
        settle: Settle,
    ) -> None:
        self._settings = settings
        self._slots = settings.batching.max_indexes or max_workers
        self._initializer = initializer
        self._run_id = run_id
        self._key = key
        self._settle = settle
        self.store: RunStore | None = None  # set when the run starts
        # A named run: where its launch records go, and its deadline when detached.
        self.named: RunStore | None = None
        self.deadline_at: float | None = None
        self._batch_ids = itertools.count()
        self._task_ids = itertools.count()
        self._launch_ids = itertools.count(1)
        self._writer: ThreadPoolExecutor | None = None
        # Large argument buffers (see Batching.share_min_bytes), by SHA-256: how many
        # tasks carried each, the bytes of those not stored yet, and those stored once
        # for the run under shared/.
        self._lock = threading.Lock()
        self._buffer_uses: collections.Counter[str] = collections.Counter()
        self._buffer_data: dict[str, bytes] = {}
        self._shared: set[str] = set()
        # A named run: the calls' identities need their functions' pickles.
        self._fn_blobs = FunctionBlobs() if settings.run_name is not None else None

    def make_task(
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        *,
        single: bool,
        bars: tuple[Progress, ...],
    ) -> Task:
        """Pickle ``calls`` of ``fn`` into a task for ``future``; when they cannot be
        pickled, the future fails at once and the task is settled."""
        keys: tuple[str, ...] = ()
        share = self._settings.batching.share_min_bytes
        try:
            if share is None:
                blob = wire.dump_calls(fn, calls)
            else:
                blob, large = wire.dump_calls_sharing(fn, calls, share)
                keys = self.keep_buffers(large)
        except PicklingError as exc:
            future.set_running_or_notify_cancel()
            future.set_exception(exc)
            blob = b""
        task = Task(future, fn, blob, len(calls), single, bars=bars, buffers=keys)
        if self._fn_blobs is not None and not future.done():
            try:
                task.identity = identity(self._fn_blobs.get(fn), blob, keys)
            except PicklingError as exc:
                future.set_running_or_notify_cancel()
                future.set_exception(exc)
        for bar in bars:
            bar.add(task.n_calls)
        if future.done():
            task.settled = True
            for bar in bars:
                bar.finished(task.n_calls, was_running=False, failed=True, cancelled=False)
        return task

    def keep_buffers(self, large: list[memoryview]) -> tuple[str, ...]:
        """Name a task's large buffers by content; keep a copy of each not yet stored
        (taken now: the caller may change the array once ``submit`` returns)."""
        keys = tuple(wire.buffer_key(view) for view in large)
        for key, view in zip(keys, large, strict=True):
            with self._lock:
                self._buffer_uses[key] += 1
                known = key in self._shared or key in self._buffer_data
            if not known:
                data = bytes(view)  # a copy of maybe many MB: not under the lock
                with self._lock:
                    if key not in self._shared:
                        self._buffer_data.setdefault(key, data)
        return keys

    def prepare(self, tasks: list[Task]) -> Batch | None:
        """Write a batch of ``tasks`` to storage; None when none is left to launch (the
        cancelled ones are notified, those that cannot be pickled or written failed)."""
        assert self.store is not None
        # Tasks cancelled while queued never start (the engine notified their waiters).
        live = [t for t in tasks if not t.settled]
        if not live:
            return None
        table = function_table(t.fn for t in live)
        for t, position in zip(live, table.fn_index, strict=True):
            t.fn_index = position
            t.task_id = next(self._task_ids)
            if position in table.failed:
                self._settle(t, error=table.failed[position])
        live = [t for t in live if not t.settled]
        if not live:
            return None
        groups = pack(live, self._slots)
        batch_id = f"b{next(self._batch_ids):05d}"
        batch = Batch(batch_id, [Index(g) for g in groups], list(table.names))
        for i, group in enumerate(groups):
            for t in group:
                t.batch_id, t.index = batch_id, i
        init_blob, initargs_blob = self._initializer or (None, None)
        fns = wire.FunctionTable(
            table.blobs, table.names, init_blob, initargs_blob, self._settings.run_name
        )
        with self._lock:
            placement = place_buffers(
                (k for t in live for k in t.buffers),
                self._buffer_uses,
                self._buffer_data,
                self._shared,
            )
        writes = [*placement.uploads, (f"{batch_id}/fn", fns.seal(self._key))]
        writes += index_inputs(self._key, batch_id, groups, placement.placed)
        try:
            self._write_all(writes)
        except StorageError as exc:
            for t in live:
                self._settle(t, error=exc)
            return None
        with self._lock:
            self._shared.update(k for k, v in placement.placed.items() if isinstance(v, str))
        self._record(batch_id, groups)
        return batch

    def _record(self, batch_id: str, groups: list[list[Task]]) -> None:
        """A named run's launch record (before the launch): a later client joins these
        calls while this batch's workers run them (``_join``)."""
        calls = [
            (t.identity, i, wire.callable_name(t.fn), t.n_calls, t.single)
            for i, group in enumerate(groups)
            for t in group
            if t.identity
        ]
        if self.named is None or not calls:
            return
        record = LaunchRecord(self._run_id, batch_id, time.time(), self.deadline_at, calls)
        try:
            write_launch(self.named, record)
        except StorageError as exc:  # the calls run all the same; a later client reruns them
            _log.warning("cannot record the launch of %s: %s", batch_id, exc)

    def spec(self, batch_id: str, indexes: tuple[int, ...], *, whole: bool) -> LaunchSpec:
        """What the backend needs to start workers for ``indexes`` of a batch (``whole``:
        they are all of its indexes, in order)."""
        assert self.store is not None
        return LaunchSpec(
            run_id=self._run_id,
            batch_id=batch_id,
            batch_url=f"{self.store.url}/{batch_id}",
            indexes=len(indexes),
            key=self._key,
            storage_options=self._settings.storage_options,
            storage_retry=self._settings.storage_retry,
            batch_indexes=() if whole else indexes,
            launch_id="" if whole else f"{batch_id}p{next(self._launch_ids)}",
            keep_warm=self._settings.keep_warm,
            speculate=self._settings.batching.speculate,
        )

    def close(self) -> None:
        """Release the writer threads (the dispatcher has ended)."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)

    def _write_all(self, writes: list[tuple[str, bytes]]) -> None:
        store = self.store
        assert store is not None
        if len(writes) <= 2 or store.is_local:
            for key, data in writes:
                store.put(key, data)
            return
        if self._writer is None:
            # Object stores answer each PUT in tens of ms: write the indexes side by side.
            self._writer = ThreadPoolExecutor(16, thread_name_prefix="k8sx-write")

        def put(item: tuple[str, bytes]) -> Any:
            store.put(*item)

        list(self._writer.map(put, writes))
