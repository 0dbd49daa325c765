"""Warm workers: the storage protocol between the client (the only scheduler) and the
workers that stay alive after their own index (``Timeouts.keep_warm``).

No controller, no server and no connection from a pod to the client: everything goes
through the run's storage, under one folder per worker process::

    <run>/warm/<wid>/done-<k>.<code>   the worker finished assignment k (0: its own index)
                                       with exit code <code> (0, 83, 84): it is idle now
    <run>/warm/<wid>/run-<k>           the worker took assignment k (written before it runs)
    <run>/warm/<wid>/next              the client's latest assignment: {"seq": k, "batch":
                                       "b00003", "index": 2}, or {"seq": k, "stop": true}

``wid`` is ``<batch>-<index>-<nonce>``: the batch and index the worker was started for, and
a nonce that tells a retried pod of the same index from the first one.

Only the client writes ``next`` and only the worker writes its markers, so there is no race
to claim work. The worker polls ``next`` on an adaptive interval (:func:`poll_intervals`);
the client LISTs ``warm/`` while it waits for a marker, and learns of a worker's end from
its backend (pod or process gone). An assignment the worker never took (no ``run-<k>``)
when it ends is given to another worker; one it took and did not finish failed with the
worker (``WorkerLostError``), as a call of an ordinary index would.

``next`` is not signed, as skip markers are not: it names a batch and index whose inputs
are signed, so whoever can write it could only make a worker run a signed input of the run
again, or stop it; both are within reach of anyone who can write the run's storage anyway.

Imported by the worker: standard library only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

__all__ = [
    "FIRST_POLL",
    "LAST_POLL",
    "LOCAL_POLL",
    "Assignment",
    "Marker",
    "done_key",
    "next_key",
    "parse_assignment",
    "parse_marker",
    "poll_intervals",
    "reads_in",
    "run_key",
    "stop_assignment",
    "worker_id",
]

FOLDER: Final = "warm"
FIRST_POLL: Final = 0.02
"""Seconds between a worker's reads of ``next`` right after a call..."""
LAST_POLL: Final = 2.0
"""...growing by half each time up to this: about 30 GETs per idle minute."""
LOCAL_POLL: Final = 0.005
"""A worker of the local backend whose storage is a local directory reads ``next`` this
often, always: a read is a file open costing microseconds, no request to pay for, and
its latency is what a warm call waits (``submit`` of 200 calls after 0.3 s idle: 123 ms
median with the growing interval, most of it the wait for the next read)."""
_GROWTH: Final = 1.5

_WID = re.compile(r"^(b\d+)-(\d+)-([0-9a-f]+)$")
_MARKER = re.compile(r"^(done|run)-(\d+)(?:\.(\d+))?$")
_BATCH = re.compile(r"^b\d+$")


def worker_id(batch_id: str, index: int, nonce: str) -> str:
    """The folder name of a worker started for ``index`` of ``batch_id``."""
    return f"{batch_id}-{index}-{nonce}"


def next_key(wid: str) -> str:
    return f"{FOLDER}/{wid}/next"


def run_key(wid: str, seq: int) -> str:
    return f"{FOLDER}/{wid}/run-{seq}"


def done_key(wid: str, seq: int, code: int) -> str:
    return f"{FOLDER}/{wid}/done-{seq}.{code}"


@dataclass(frozen=True)
class Marker:
    """One marker a worker wrote, as a LIST of ``warm/`` shows it."""

    wid: str
    batch_id: str
    """The batch of the worker's own index."""
    index: int
    """The worker's own index."""
    kind: str
    """``done`` or ``run``."""
    seq: int
    code: int | None
    """The exit code of a ``done`` marker."""


def parse_marker(key: str) -> Marker | None:
    """A key listed under ``warm/`` (relative to the run), or None if it is no marker."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != FOLDER:
        return None
    wid_match, marker_match = _WID.match(parts[1]), _MARKER.match(parts[2])
    if wid_match is None or marker_match is None:
        return None
    kind, seq, code = marker_match.groups()
    if kind == "done" and code is None:
        return None
    return Marker(
        wid=parts[1],
        batch_id=wid_match.group(1),
        index=int(wid_match.group(2)),
        kind=kind,
        seq=int(seq),
        code=None if code is None else int(code),
    )


@dataclass(frozen=True)
class Assignment:
    """What the client asks of a warm worker: run ``index`` of ``batch_id``, or stop."""

    seq: int
    batch_id: str = ""
    index: int = -1
    stop: bool = False

    def encode(self) -> bytes:
        if self.stop:
            return json.dumps({"seq": self.seq, "stop": True}).encode()
        return json.dumps({"seq": self.seq, "batch": self.batch_id, "index": self.index}).encode()


def stop_assignment(seq: int) -> Assignment:
    return Assignment(seq, stop=True)


def parse_assignment(data: bytes | None) -> Assignment | None:
    """The assignment in ``next``, or None when there is none or it is malformed (the
    worker then waits on, as for a missing one: only the client writes ``next``)."""
    if not data:
        return None
    try:
        body = json.loads(data)
        seq = body["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            return None
        if body.get("stop") is True:
            return Assignment(seq, stop=True)
        batch_id, index = body["batch"], body["index"]
    except (ValueError, TypeError, KeyError):
        return None
    if not isinstance(batch_id, str) or not _BATCH.match(batch_id):
        return None
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        return None
    return Assignment(seq, batch_id, index)


def poll_intervals(*, local: bool = False) -> Iterator[float]:
    """Seconds between a worker's reads of ``next`` since its last call: fast at first
    (the next call of a notebook loop or a joblib wave comes soon), then ever slower;
    ``local`` (the local backend on a local directory): :data:`LOCAL_POLL` always."""
    delay = LOCAL_POLL if local else FIRST_POLL
    while True:
        yield delay
        if not local:
            delay = min(delay * _GROWTH, LAST_POLL)


def reads_in(seconds: float) -> int:
    """How many reads of ``next`` an idle worker makes in an idle window of ``seconds``
    (the documented cost of keeping it warm): one at once, one after each interval of
    :func:`poll_intervals`, and a last one when the window ends."""
    elapsed, reads = 0.0, 1
    for delay in poll_intervals():
        if elapsed + delay >= seconds:
            return reads + 1
        elapsed += delay
        reads += 1
    raise AssertionError("unreachable")
