"""Speculative copies, the worker's half: the first copy of an index to write its outcome
wins, and a copy that finds the outcome written stops.

With ``Batching.speculate`` the engine may start a second worker on an index that
straggles (``_speculate``); both read the same ``fn`` and ``in/<index>``. Each worker of
such a run (``K8S_EXECUTOR_SPECULATE=1``):

- returns at once, exit 0, if ``out/<index>`` exists when it starts (the other copy won
  before this one got going);
- watches ``out/<index>`` while its calls run (a stat locally, a HEAD on object stores,
  every :data:`POLL_LOCAL` or :data:`POLL` seconds at first, less often as it goes on:
  :func:`poll_intervals`) and exits 0 as soon as it appears written by the other copy:
  a call in progress is not interruptible in any other way, and a stopped copy has
  nothing to report (the outcome is there);
- writes ``out/<index>`` with ``RunStore.put_new``, first writer wins, and exits 0
  without writing if the other copy was first.

Exit 0, because for the Job controller (and the engine) the index is done: its outcome
is in storage. The engine never waits for a copy that stopped (see ``_speculate``).

Imported by the worker: the standard library and ``_store`` only.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from typing import Final

from . import _contract as codes
from ._store import RunStore

__all__ = ["POLL", "POLL_LOCAL", "POLL_MAX", "OutcomeWatch", "poll_intervals", "speculating"]

POLL: Final = 2.0
"""Seconds between two looks for the outcome on an object store (one HEAD each)."""
POLL_LOCAL: Final = 0.5
"""Seconds between two looks on a local directory (one stat each)."""
POLL_MAX: Final = 10.0
"""The longest wait between two looks, reached after 200 s of watching."""


def poll_intervals(*, local: bool) -> Iterator[float]:
    """Seconds between looks for the outcome: :data:`POLL` (or :data:`POLL_LOCAL`) at
    first, then a twentieth of the time watched so far, at most :data:`POLL_MAX`. Every
    worker of a speculating run watches, and few of them are ever duplicated: a long
    call costs a few requests a minute, not thirty; a copy that lost runs on for at most
    ``POLL_MAX`` seconds (its calls' futures are settled already)."""
    base = POLL_LOCAL if local else POLL
    watched = 0.0
    while True:
        every = min(max(base, watched / 20), max(base, POLL_MAX))
        watched += every
        yield every


def speculating() -> bool:
    """Whether this worker's index may run in two copies (``K8S_EXECUTOR_SPECULATE``)."""
    return os.environ.get(codes.ENV_SPECULATE) == "1"


def _stop(message: str) -> None:
    print(f"k8s_executor.worker: {message}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(codes.OK)


class OutcomeWatch:
    """Stops this process once another copy has written ``out/<index>``.

    Args:
        store: the batch's storage.
        index: the batch index this worker runs.
    """

    def __init__(self, store: RunStore, index: int) -> None:
        self._store = store
        self._index = index
        self._key = f"out/{index}"
        self._writing = threading.Event()  # our own write began: the outcome is ours
        self._done = threading.Event()

    def written(self) -> bool:
        """Whether the outcome exists now (a copy won before this one started)."""
        return self._store.age(self._key) is not None

    def start(self) -> None:
        """Watch from now on (a daemon thread)."""
        threading.Thread(target=self._watch, name="k8sx-outcome-watch", daemon=True).start()

    def put(self, data: bytes) -> bool:
        """Write the outcome unless a copy has: True if this copy's is the one stored."""
        self._writing.set()
        try:
            wrote = self._store.put_new(self._key, data)
        finally:
            self._done.set()
        if not wrote:
            print(
                f"k8s_executor.worker: another copy of index {self._index} wrote its outcome "
                "first; this copy's is dropped",
                file=sys.stderr,
            )
        return wrote

    def stop(self) -> None:
        """The index is over: stop watching."""
        self._done.set()

    def _watch(self) -> None:
        for every in poll_intervals(local=self._store.is_local):
            if self._done.wait(every):
                return
            try:
                found = self._store.age(self._key) is not None
            except Exception as exc:  # storage trouble: keep running, as if not found
                print(f"k8s_executor.worker: cannot look for its outcome: {exc}", file=sys.stderr)
                continue
            if found and not self._writing.is_set():
                _stop(f"another copy of index {self._index} finished first; stopping this one")
