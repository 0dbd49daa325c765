"""What a named run's calls came to, read from its storage alone (no client of the run,
no cluster): ``k8s-executor results RUN`` and ``k8s-executor ls --named``.

A call (a submit, or one chunk of a map) is, by its latest launch (``_sessions``):

``done``      its result is stored (``results`` reads it with this machine's key);
``failed``    its worker wrote the index's outcome, and no result: the call raised, or
              its index could not run; running the script again runs it again;
``running``   neither, and its worker refreshed its marker lately (or, detached, has
              been launched lately: its pod may still be starting);
``lost``      neither, and its worker is gone (killed, its deadline passed): running the
              script again runs it again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ._durable import CALLS, StoredResults, alive_key, copy_alive, key_path, run_url
from ._sessions import LaunchRecord, deadline, read_launches, read_sessions
from ._store import RunStore

__all__ = ["CallState", "RunReport", "call_states", "report"]


@dataclass(frozen=True)
class CallState:
    """One task of a named run, in submission order."""

    identity: str
    function: str
    state: str
    calls: int
    single: bool
    results: list[Any] | None = None
    """The task's results (``done``, when read with the run's key)."""


@dataclass(frozen=True)
class RunReport:
    """One named run, for ``k8s-executor ls --named``."""

    name: str
    started: float | None
    deadline: float | None
    counts: dict[str, int]


def call_states(
    root: str, name: str, options: dict[str, Any], *, read_results: bool = False
) -> list[CallState]:
    """The state of every task the run launched, in submission order (its first launch);
    with ``read_results``, the results of the done ones (this machine's key: results
    that do not verify count as ``failed``)."""
    root = root.rstrip("/")
    named = RunStore(run_url(root, name), options)
    stored = {k.rsplit("/", 1)[-1] for k in named.list_keys(CALLS)}
    first: dict[str, tuple[str, int, bool]] = {}
    latest: dict[str, tuple[LaunchRecord, int]] = {}
    for record in read_launches(named):
        for identity, index, function, n, single in record.calls:
            first.setdefault(identity, (function, n, single))
            latest[identity] = (record, index)
    reader = None
    if read_results and key_path(root, name).exists():
        from ._durable import load_or_create_key

        reader = StoredResults(named, load_or_create_key(root, name))
    looks = _Looks(root, options)
    now = time.time()
    states = []
    for identity, (function, n, single) in first.items():
        results = None
        if identity in stored:
            state = "done"
            if read_results:
                results = None if reader is None else reader.load(identity, function)
                state = "done" if results is not None else "failed"
        else:
            record, index = latest[identity]
            state = looks.state(record, index, now)
        states.append(CallState(identity, function, state, n, single, results))
    return states


class _Looks:
    """Reads each launched batch's outcomes and markers once."""

    def __init__(self, root: str, options: dict[str, Any]) -> None:
        self._root = root
        self._options = options
        self._ended: dict[str, set[str]] = {}
        self._fresh: dict[tuple[str, int], bool] = {}

    def state(self, record: LaunchRecord, index: int, now: float) -> str:
        batch = RunStore(f"{self._root}/{record.run_id}/{record.batch_id}", self._options)
        if batch.url not in self._ended:
            self._ended[batch.url] = {k.rsplit("/", 1)[-1] for k in batch.list_keys("out")}
        if str(index) in self._ended[batch.url]:
            return "failed"
        if record.deadline is not None and record.deadline < now:
            return "lost"
        where = (batch.url, index)
        if where not in self._fresh:
            age = batch.age(alive_key(index))
            detached = record.deadline is not None
            self._fresh[where] = copy_alive(age, now - record.started, detached=detached)
        return "running" if self._fresh[where] else "lost"


def report(root: str, name: str, options: dict[str, Any]) -> RunReport:
    """The counts of a named run's tasks by state, when it started and its deadline."""
    sessions = read_sessions(RunStore(run_url(root, name), options))
    counts = dict.fromkeys(("done", "running", "failed", "lost"), 0)
    for call in call_states(root, name, options):
        counts[call.state] += 1
    started = min((s.started for s in sessions), default=None)
    return RunReport(name, started, deadline(sessions), counts)
