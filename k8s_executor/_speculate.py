"""Stragglers (``Batching(speculate=True)``): a duplicate of an index that runs far longer
than the rest of its batch; the first outcome written wins.

The rule (:func:`stragglers`, pure): once ``speculate_after`` of a batch's indexes have
finished, an index still running after ``max(speculate_min, speculate_slowdown x the
median run time of the finished ones)`` seconds gets one duplicate, if a worker slot is
free (running indexes and duplicates < ``max_workers``; idle warm workers are asked to
leave to make room). An index is duplicated at most once. Run times are the engine's:
from the index's start (``Resolver.index_started``) to its calls all settled.

The duplicate is a one-index launch of the same batch (``LaunchSpec.batch_indexes =
(i,)``, the original's ``batch_url``: the same ``fn`` and ``in/<i>``), under a batch id
of its own (``<batch>s<i>``) so that its reports are told apart from the original's
worker (a warm pool tracks workers by the index they were started for): the
:class:`Speculator` maps them back. It never stays warm.

Both copies write ``out/<i>`` first-writer-wins and the loser stops (``_first_write``).
The engine settles the index on the first report that finds an outcome; a copy that ends
without one while the other still runs is ignored (``Resolver.other_copy``): a failed or
unschedulable duplicate does not fail calls whose original succeeds, nor the reverse.
The last copy's report decides as for any index. A duplicate that cannot be launched is
only logged: the original goes on alone.

Threads: one ticking thread (every :data:`TICK` seconds) reads the launched batches under
the engine's lock and launches outside it.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._batches import Batch
from ._options import Batching
from ._progress import Progress
from .backends._base import Backend, IndexExit, LaunchSpec

if TYPE_CHECKING:  # the engine's parts; they do not import this module at run time
    from ._launch import Launcher
    from ._resolve import Resolver
    from ._warm_pool import WarmPool

__all__ = ["TICK", "Rule", "Speculator", "copy_id", "make_speculator", "stragglers"]

_log = logging.getLogger("k8s_executor._executor")

TICK = 0.25
"""Seconds between two looks for stragglers."""


@dataclass(frozen=True)
class Rule:
    """When an index is a straggler (``Batching.speculate_*``)."""

    after: float = 0.75
    slowdown: float = 4.0
    min_seconds: float = 10.0

    @classmethod
    def of(cls, batching: Batching) -> Rule:
        """The rule ``batching`` sets."""
        return cls(batching.speculate_after, batching.speculate_slowdown, batching.speculate_min)


def stragglers(
    rule: Rule, total: int, finished: int, durations: Sequence[float], running: Mapping[int, float]
) -> list[int]:
    """The indexes of one batch to duplicate now, longest-running first.

    Args:
        rule: the thresholds.
        total: the batch's indexes.
        finished: how many of them are finished (skipped ones included).
        durations: run times of the finished indexes that ran.
        running: seconds each running index (not yet duplicated) has run, by index.
    """
    if not durations or finished < rule.after * total:
        return []
    bar = max(rule.min_seconds, rule.slowdown * statistics.median(durations))
    late = [i for i, elapsed in running.items() if elapsed > bar]
    return sorted(late, key=lambda i: -running[i])


def copy_id(batch_id: str, index: int) -> str:
    """The batch id a duplicate of ``index`` of ``batch_id`` reports under."""
    return f"{batch_id}s{index}"


class Speculator:
    """Starts duplicates of a run's stragglers and routes their reports (see the module
    docstring).

    Args:
        cond: the engine's condition (its lock guards the batches and this object).
        batches: the engine's launched, unfinished batches (shared).
        rule: when an index straggles.
        max_workers: the run's worker slots.
        spec: ``spec(batch_id, indexes)``: the launch of some indexes of a batch.
        backend: where the duplicates run.
        finished: ``finished(batch_id, index, exit)``: how the engine resolves a report
            (a duplicate that cannot be launched is reported ended, never started).
        make_room: asks idle warm workers to leave (None without warm workers).
        died: ``died(name, error)`` when the thread ends on an unexpected error (the
            engine breaks: no error may pass unseen).
    """

    def __init__(
        self,
        cond: threading.Condition,
        batches: Mapping[str, Batch],
        rule: Rule,
        *,
        max_workers: int,
        spec: Callable[[str, tuple[int, ...]], LaunchSpec],
        backend: Backend,
        finished: Callable[[str, int, IndexExit], None],
        make_room: Callable[[], object] | None = None,
        died: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self._cond = cond
        self._batches = batches
        self._rule = rule
        self._max_workers = max_workers
        self._spec = spec
        self._backend = backend
        self._finished = finished
        self._make_room = make_room
        self._died = died
        self._copy_bars: dict[str, list[Progress]] = {}  # a duplicate's calls' bars
        self._copies: dict[tuple[str, int], int] = {}  # duplicated index → copies running
        self._origin: dict[str, tuple[str, int]] = {}  # a duplicate's batch id → its index
        self._ended: set[str] = set()  # duplicates whose worker reported its end
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="k8sx-speculate", daemon=True)

    def start(self) -> None:
        """Look for stragglers from now on."""
        self._thread.start()

    def stop(self) -> None:
        """Start no more duplicates (the run's work is over); returns once the thread ended."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    # -- the resolver's hook (lock held) ----------------------------------------------------

    def other_copy(self, batch_id: str, index: int) -> bool | None:
        """A copy of an index reported its end: whether another copy still runs; None
        when the index was never duplicated (False: this was its last copy)."""
        key = (batch_id, index)
        if key not in self._copies:
            return None
        running = self._copies[key]
        if running == 0:
            return False  # both copies reported already
        self._copies[key] = running - 1
        return running > 1

    # -- the duplicates' reports (the engine routes them here) --------------------------------

    def origin(self, batch_id: str) -> tuple[str, int] | None:
        """The index a duplicate's batch id stands for; None if not a duplicate's."""
        with self._cond:
            return self._origin.get(batch_id)

    def copy_finished(self, batch_id: str, index: int, exit: IndexExit) -> None:
        """A duplicate's worker ended: its origin resolves from it (or from the other
        copy), and it stops counting as running."""
        with self._cond:
            origin = self._origin.get(batch_id)
            if origin is None or batch_id in self._ended:
                return
            self._ended.add(batch_id)
            bars = self._copy_bars.pop(batch_id, [])
        self._finished(*origin, exit)
        for bar in bars:
            bar.speculative(-1)
        if exit.exit_code != 0:
            _log.info("the duplicate %s ended: %s", batch_id, exit.reason or exit.exit_code)

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopped.wait(TICK):
                for batch_id, index in self._due():
                    self._launch(batch_id, index)
        except BaseException as exc:
            if self._died is None:
                raise
            self._died("speculation", exc)

    def _due(self) -> list[tuple[str, int]]:
        """The stragglers to duplicate now, as slots allow (takes the lock)."""
        now = time.monotonic()
        due: list[tuple[str, int]] = []
        with self._cond:
            busy = 0
            candidates: list[tuple[float, str, int]] = []
            for batch in self._batches.values():
                entries = batch.indexes
                busy += sum(e.started and not e.finished for e in entries)
                busy += sum(
                    self._copies.get((batch.batch_id, i), 0) > 1 and not e.finished
                    for i, e in enumerate(entries)
                )
                done = [e for e in entries if e.finished]
                running = {
                    i: now - e.started_at
                    for i, e in enumerate(entries)
                    if e.started and not e.finished and (batch.batch_id, i) not in self._copies
                }
                durations = [e.finished_at - e.started_at for e in done if e.started]
                for i in stragglers(self._rule, len(entries), len(done), durations, running):
                    candidates.append((running[i], batch.batch_id, i))
            free = max(self._max_workers - busy, 0)
            for _, batch_id, index in sorted(candidates, reverse=True)[:free]:
                name = copy_id(batch_id, index)
                self._copies[(batch_id, index)] = 2
                self._origin[name] = (batch_id, index)
                self._copy_bars[name] = bars = self._bars(batch_id, index)
                for bar in bars:
                    bar.speculative(+1)
                due.append((batch_id, index))
        if candidates and self._make_room is not None:
            # Idle warm workers hold slots of the backend's max_workers that a duplicate
            # needs: ask them to leave (the engine does not count them as busy).
            self._make_room()
        return due

    def _launch(self, batch_id: str, index: int) -> None:
        name = copy_id(batch_id, index)
        try:
            spec = dataclasses.replace(
                self._spec(batch_id, (index,)), batch_id=name, launch_id="", keep_warm=0.0
            )
            self._backend.launch(spec)
        except Exception as exc:
            # Never fails a call: the original goes on alone.
            _log.warning("cannot start a duplicate of batch %s index %s: %s", batch_id, index, exc)
            failed = IndexExit(None, reason="LaunchFailed", message=str(exc), never_started=True)
            self.copy_finished(name, index, failed)
            return
        _log.info("straggler: batch %s index %s duplicated as %s", batch_id, index, name)

    def _bars(self, batch_id: str, index: int) -> list[Progress]:
        # Lock held. The bars of the index's calls, each once.
        batch = self._batches.get(batch_id)
        if batch is None:
            return []
        bars = {id(b): b for t in batch.indexes[index].tasks for b in t.bars}
        return list(bars.values())


def make_speculator(
    cond: threading.Condition,
    batches: Mapping[str, Batch],
    batching: Batching,
    *,
    max_workers: int,
    launcher: Launcher,
    backend: Backend,
    resolver: Resolver,
    warm: WarmPool | None,
    died: Callable[[str, BaseException], None],
) -> Speculator:
    """A run's speculator (``Batching.speculate``), wired to the engine's parts; the
    caller starts it once it is known to the reports (a duplicate's reports need it)."""
    speculator = Speculator(
        cond,
        batches,
        Rule.of(batching),
        max_workers=max_workers,
        spec=lambda batch_id, indexes: launcher.spec(batch_id, indexes, whole=False),
        backend=backend,
        finished=resolver.index_finished,
        make_room=None if warm is None else warm.release_idle,
        died=died,
    )
    resolver.other_copy = speculator.other_copy
    return speculator
