"""The fault matrix (issue 19): one table of faults, each injected into the same work on
kubesim, and for each the same three checks: every future resolves within the row's
bound, with the row's expected outcome (its result, or a specific error and reason), and
after ``shutdown()`` no Job, pod, Secret or storage object of the run is left (listed
through the official client, and the storage).

The work: 50 calls with ``max_workers=4``, as two batches of 25 (``Batching(max_calls=25)``
closes each; submits rather than ``map`` so that every call's future can be checked).
Batch A's calls wait on a gate, so that A holds the 4 worker slots and batch B's Job waits
suspended: every verb of the executor is then due (B's resume is a PATCH, shutdown's
deletes follow). A row arms its fault ``before`` the first submit (creates) or ``during``
the run (A running, B waiting), then the gate opens and the bound starts.

Warm rows (``warm=True``, named ``warm: ...``) play the same scene on warm workers: a
first map of 4 quick calls (batch b00000) leaves 4 idle warm workers, batch A's four
indexes go to them (no new pod), and batch B waits in the engine's queue, with no Job,
until a worker is free again; the fault hits the warm pod that runs A's index 0.

Rows that do not hold yet are in ``PENDING_FIX`` below, which is not collected: the lead
moves a row to ``FAULTS`` when its fix lands. ``python -m tests.test_fault_matrix ROW...``
runs any rows (pending ones too) and prints their line of the closing table.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import (
    Batching,
    ClusterError,
    KubernetesExecutor,
    Resources,
    StorageError,
    Timeouts,
    WorkerLostError,
    cli,
)
from tests import helpers
from tests.helpers import SharedPath
from tests.kube_helpers import RUN_LABEL, ClusterUnderTest
from tests.s3server import S3Server, s3_server

CALLS = 25  # per batch; two batches
WORKERS = 4
BUCKET = "faults"


def _groups(n: int, slots: int) -> list[range]:
    """The calls of each index of a batch of ``n`` one-call tasks: the executor splits a
    batch into ``slots`` contiguous groups of about equal size (checked by every run:
    the first call of each group is the one seen starting)."""
    bounds = [0] + [-(-n * k // slots) for k in range(1, slots)] + [n]
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


GROUPS = _groups(CALLS, WORKERS)
HEADS = [g[0] for g in GROUPS]  # the calls A's four pods start with
VICTIM = GROUPS[0]  # the calls of A's index 0, whose pod the pod-killing rows hit


# -- what the workers run --------------------------------------------------------------


def gated(i: int, started: SharedPath, gate: SharedPath, action: str = "") -> int:
    """A call of batch A: say it started (with its index), wait for the gate, then do
    ``action`` (``oom:MB``: hold that much memory; ``raise:NAME``: raise it)."""
    (started / str(i)).write_text(os.environ.get("JOB_COMPLETION_INDEX", "?"))
    helpers.wait_for(gate.exists, 90, f"gate {gate}")
    if action.startswith("oom:"):
        data = b"x" * (int(action[4:]) << 20)  # written, so resident
        threading.Event().wait(60)
        return len(data)
    if action == "raise:KeyboardInterrupt":
        raise KeyboardInterrupt
    if action == "raise:SystemExit":
        raise SystemExit(3)
    return i * i


def quick(i: int) -> int:
    """A call of batch B."""
    return i * i


# -- expected outcomes -----------------------------------------------------------------


@dataclass
class Outcome:
    """What one call ended as: ``result``, ``error``, ``cancelled``, ``refused`` (submit
    raised) or ``unresolved`` (not within the bound); ``at``: seconds after the fault."""

    call: int
    kind: str
    value: Any = None
    error: BaseException | None = None
    at: float | None = None

    def __str__(self) -> str:
        if self.error is not None:
            return f"call {self.call}: {self.kind} {type(self.error).__name__}: {self.error}"
        return f"call {self.call}: {self.kind} {self.value!r}"


@dataclass(frozen=True)
class Result:
    """The call's own result."""

    def accepts(self, o: Outcome) -> bool:
        return o.kind == "result" and o.value == o.call * o.call

    def __str__(self) -> str:
        return "its result"


@dataclass(frozen=True)
class Raises:
    """The future raises ``type`` (with this ``reason``, ``signal``, message)."""

    type: type[BaseException]
    reason: str | None = None
    match: str | None = None
    signal: int | None = None
    status: int | None = None

    def accepts(self, o: Outcome) -> bool:
        e = o.error
        return (
            o.kind in ("error", "refused")
            and isinstance(e, self.type)
            and (self.reason is None or getattr(e, "reason", None) == self.reason)
            and (self.signal is None or getattr(e, "signal", None) == self.signal)
            and (self.status is None or getattr(e, "status", None) == self.status)
            and (self.match is None or re.search(self.match, str(e)) is not None)
        )

    def __str__(self) -> str:
        extra = [
            f"{k}={v!r}" for k in ("reason", "signal", "status", "match") if (v := getattr(self, k))
        ]
        return f"{self.type.__name__}({', '.join(extra)})"


@dataclass(frozen=True)
class Cancelled:
    def accepts(self, o: Outcome) -> bool:
        return o.kind == "cancelled"

    def __str__(self) -> str:
        return "cancelled"


@dataclass(frozen=True)
class Either:
    options: tuple[Result | Raises | Cancelled, ...]

    def accepts(self, o: Outcome) -> bool:
        return any(e.accepts(o) for e in self.options)

    def __str__(self) -> str:
        return " or ".join(map(str, self.options))


Expected = Result | Raises | Cancelled | Either
OK = Result()


def plan(
    a: Expected = OK, b: Expected = OK, victim: Expected | None = None
) -> Callable[[int], Expected]:
    """Per call: batch A's (``victim``: those of A's index 0), batch B's."""

    def expected(call: int) -> Expected:
        if call >= CALLS:
            return b
        return victim if victim is not None and call in VICTIM else a

    return expected


def only(call: int, expected: Expected) -> Callable[[int], Expected]:
    """``call`` ends as ``expected``, every other call with its result."""
    return lambda c: expected if c == call else OK


# -- the table ---------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a row's fault reaches: the kubesim, the S3 proxy, the run."""

    sim: Any
    s3: S3Server | None
    run_id: str = ""
    # The completion index of the warm-up batch's pod that runs A's index 0 (warm rows).
    warm_victim: int | None = None
    _stops: list[Callable[[], None]] = field(default_factory=list)

    def pod(self, batch: str, index: int) -> str:
        """The name of the running pod of ``batch``'s ``index`` (read from the store)."""
        selector = (
            f"{RUN_LABEL}={self.run_id},k8s-executor.io/batch={batch},"
            f"batch.kubernetes.io/job-completion-index={index}"
        )
        names: list[str] = []

        def running() -> bool:
            pods = self.sim.store.list("pods", "default", label_selector=selector)[0]
            names[:] = [
                p["metadata"]["name"]
                for p in pods
                if (p.get("status") or {}).get("phase") == "Running"
                and not p["metadata"].get("deletionTimestamp")
            ]
            return bool(names)

        helpers.wait_for(running, 60, f"the pod of {batch} index {index} running")
        return names[0]

    def victim(self) -> str:
        """The pod running A's index 0: A's own (cold), or the warm pod that took it."""
        if self.warm_victim is None:
            return self.pod("b00000", 0)
        return self.pod("b00000", self.warm_victim)

    def repeat(self, every: float, action: Callable[[], object]) -> None:
        """Do ``action`` every ``every`` seconds until the futures have resolved."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(every):
                action()

        thread = threading.Thread(target=loop, name="fault-storm", daemon=True)
        thread.start()

        def end() -> None:
            stop.set()
            thread.join()

        self._stops.append(end)

    def stop(self) -> None:
        for stop in self._stops:
            stop()
        self._stops.clear()


Arm = Callable[[Ctx], object]


@dataclass(frozen=True)
class Fault:
    """One row: the fault, when it is armed, what every call ends as, and the bounds."""

    name: str
    before: Arm | None = None  # armed before the first submit
    during: Arm | None = None  # armed once A runs on every slot and B waits
    expect: Callable[[int], Expected] = lambda call: OK
    bound: float = 30.0  # seconds from `during` to the last future resolved
    shutdown_bound: float = 25.0  # _CLOSE_SECONDS (20 s) and slack
    open_gate: bool = True
    ready: bool = True  # whether A reaches its four slots (a refused create: not)
    kill_workers: bool = False  # shutdown(kill_workers=True) right after `during`
    in_with: bool = False  # take the results in a `with` block, raising what they raise
    usable_after: bool = False  # a call submitted once the fault is over runs
    # Every injected failure was met by a request (a fault nobody met proves nothing).
    all_met: bool = True
    actions: Mapping[int, str] = field(default_factory=dict)  # per call of A
    resources: Resources | None = None
    timeouts: Mapping[str, float] = field(default_factory=dict)
    storage: str = "local"  # or "s3": moto behind the fault proxy
    # The storage is down for good: what is left of it must be named (its URL) on
    # stderr, without a traceback; nothing else may be left.
    leaves_storage: bool = False
    runtime: str = "process"  # or "podman": real containers
    client: str = "here"  # or "subprocess": a client process SIGKILLed mid-run
    slow: bool = False
    warm: bool = False  # A runs in warm workers a first map left idle; B waits for them


def api(codes: int | tuple[int, ...], n: int, verb: str, resource: str = "jobs") -> Arm:
    """``n`` answers of each of ``codes`` in turn on ``verb``: POST/PATCH/DELETE (on
    ``resource``), LIST (a relist forced by compaction), WATCH (reconnections after every
    watch is dropped)."""

    def arm(ctx: Ctx) -> None:
        faults = ctx.sim.faults
        for code in (codes,) if isinstance(codes, int) else codes:
            if verb == "LIST":
                faults.fail_next(n, code, methods="GET", watch=False, path_regex=r"/(pods|jobs)$")
            elif verb == "WATCH":
                faults.fail_next(n, code, methods="GET", watch=True)
            else:
                faults.fail_next(n, code, methods=verb, path_regex=rf"/{resource}(/[^/]+)?$")
        if verb == "LIST":
            faults.compact()
        if verb in ("LIST", "WATCH"):
            faults.drop_watches()

    return arm


def lost(verb: str, resource: str = "jobs", code: int | None = 504) -> Arm:
    """The next ``verb`` on ``resource`` is carried out, and its answer lost."""
    return lambda ctx: ctx.sim.faults.lose_answers(
        1, code=code, methods=verb, path_regex=rf"/{resource}(/[^/]+)?$"
    )


def s3_fault(count: int, status: int, code: str, method: str | None = None) -> Arm:
    def arm(ctx: Ctx) -> None:
        assert ctx.s3 is not None
        f = ctx.s3.faults
        with f.lock:
            f.status, f.code, f.method, f.path_regex = status, code, method, ".*"
            f.count = count

    return arm


def kill_victim(sig: int) -> Arm:
    """Kill the worker of A's index 0 from outside, and wait until its container has
    ended (podman's kill is asynchronous: the gate would let the calls finish first)."""

    def arm(ctx: Ctx) -> None:
        name = ctx.victim()
        ctx.sim.kubelet.kill_pod("default", name, sig)

        def ended() -> bool:
            found = ctx.sim.store.list("pods", "default", field_selector=f"metadata.name={name}")[0]
            status = found[0].get("status") or {} if found else {}
            states = [c.get("state") or {} for c in status.get("containerStatuses") or []]
            return not found or any("terminated" in state for state in states)

        helpers.wait_for(ended, 60, f"pod {name} to be seen killed")

    return arm


def evict_victim(ctx: Ctx) -> None:
    ctx.sim.kubelet.evict("default", ctx.victim())


def lose_node(ctx: Ctx) -> None:
    ctx.sim.kubelet.lose_node()


def drop_repeatedly(ctx: Ctx) -> None:
    ctx.repeat(0.3, ctx.sim.faults.drop_watches)


def gone_repeatedly(ctx: Ctx) -> None:
    def expire() -> None:
        ctx.sim.faults.compact()
        ctx.sim.faults.drop_watches()

    ctx.repeat(0.5, expire)


def pools_refuse_work(ctx: Ctx) -> None:
    """What concurrent.futures' exit hook does at interpreter exit: every thread pool of
    the process refuses new work (until the row ends)."""
    import concurrent.futures.thread as cf_thread

    cf_thread._shutdown = True
    ctx._stops.append(lambda: setattr(cf_thread, "_shutdown", False))


def watch_cache_504(ctx: Ctx) -> None:
    ctx.sim.faults.watch_too_large_rv(6)
    ctx.sim.faults.drop_watches()


OOM_PROCESS = {"resources": Resources(memory="64Mi", memory_limit=None), "actions": {0: "oom:256"}}
OOM_PODMAN = {"resources": Resources(memory="256Mi", memory_limit=None), "actions": {0: "oom:1024"}}
# This VM's podman does not flag the container OOMKilled (its worker's child died of the
# cgroup's SIGKILL): then the message still points at memory.
OOM_PODMAN_LOST = Either(
    (
        Raises(WorkerLostError, reason="OOMKilled"),
        Raises(WorkerLostError, signal=signal.SIGKILL, match="run out of memory"),
    )
)
LOST_SIGKILL = Raises(WorkerLostError, signal=signal.SIGKILL, match="killed by SIGKILL")
LONG = 10  # the Kubernetes backend tries a request 8 times
MIXED = (429, 500, 503)

FAULTS = [
    Fault("none"),
    # -- the pod: the kubelet, the node, the Job ----------------------------------------
    Fault(
        "pod OOMKilled",
        expect=plan(victim=Raises(WorkerLostError, reason="OOMKilled", match="give it more")),
        **OOM_PROCESS,  # type: ignore[arg-type]
    ),
    Fault("pod SIGKILLed", during=kill_victim(signal.SIGKILL), expect=plan(victim=LOST_SIGKILL)),
    Fault("pod evicted (Eviction API): retried", during=evict_victim),
    Fault("node lost: retried", during=lose_node),
    Fault(
        "Job deadline exceeded",
        open_gate=False,
        timeouts={"job_deadline": 6},
        expect=plan(a=Raises(WorkerLostError, reason="DeadlineExceeded")),
        bound=40,
    ),
    Fault(
        "pod OOMKilled (podman)",
        runtime="podman",
        expect=plan(victim=OOM_PODMAN_LOST),
        bound=60,
        slow=True,
        **OOM_PODMAN,  # type: ignore[arg-type]
    ),
    Fault(
        "pod SIGKILLed (podman)",
        runtime="podman",
        during=kill_victim(signal.SIGKILL),
        expect=plan(victim=LOST_SIGKILL),
        bound=60,
        slow=True,
    ),
    # -- the API: a burst within the retry budget (429, 500, 503), on every verb -------
    Fault("API 429,500,503 on POST Job", before=api(MIXED, 1, "POST"), usable_after=True),
    Fault("API 429,500,503 on POST Secret", before=api(MIXED, 1, "POST", resource="secrets")),
    Fault("API 429,500,503 on PATCH Job", during=api(MIXED, 1, "PATCH")),
    Fault("API 429,500,503 on DELETE", during=api(MIXED, 1, "DELETE")),
    Fault("API 429,500,503 on LIST (relist)", during=api(MIXED, 1, "LIST")),
    Fault("API 429,500,503 on WATCH", during=api(MIXED, 1, "WATCH")),
    # -- ... and past it, where a later pass retries (the watch's own loop) -------------
    *(
        Fault(
            f"API {code} x{LONG} on LIST (relist)",
            during=api(code, LONG, "LIST"),
            bound=60,
            slow=True,
        )
        for code in (429, 500)
    ),
    *(
        Fault(f"API {code} x{LONG} on WATCH", during=api(code, LONG, "WATCH"), bound=60, slow=True)
        for code in (429, 500)
    ),
    # (503 takes the path of 429: Retry-After.)
    *(
        Fault(f"API {code} x{LONG} on PATCH Job", during=api(code, LONG, "PATCH"), slow=True)
        for code in (429, 500)
    ),
    Fault(f"API 429 x{LONG} on DELETE", during=api(429, LONG, "DELETE"), slow=True),
    # -- watches ----------------------------------------------------------------------
    Fault("watches dropped every 0.3 s", during=drop_repeatedly),
    Fault("410 Gone on watch (compacted every 0.5 s)", during=gone_repeatedly),
    Fault("watch cache 504 (too large RV) x6", during=watch_cache_504),
    # -- lost answers: the write happened, the client saw an error -----------------------
    Fault("lost answer to POST Job (504)", before=lost("POST")),
    Fault("lost answer to POST Job (connection cut)", before=lost("POST", code=None)),
    Fault("lost answer to POST Secret", before=lost("POST", "secrets")),
    Fault("lost answer to PATCH Job", during=lost("PATCH")),
    Fault("lost answer to DELETE Job", during=lost("DELETE")),
    Fault("lost answer to DELETE Secret", during=lost("DELETE", "secrets")),
    # -- the storage: moto S3 behind the fault proxy -------------------------------------
    Fault("S3 503 SlowDown x4", storage="s3", during=s3_fault(4, 503, "SlowDown")),
    Fault("S3 500 InternalError x4", storage="s3", during=s3_fault(4, 500, "InternalError")),
    # -- the client ---------------------------------------------------------------------
    # Thread pools refusing work (interpreter exit): the backend delivers finished
    # indexes itself (the events were lost, and their futures with them, before).
    Fault("thread pools refuse work mid-run", during=pools_refuse_work),
    # bound: no pod of the run runs any more, heartbeat_grace (3 s) and slack.
    Fault("client SIGKILLed mid-run", client="subprocess", bound=15),
    # A task raising KeyboardInterrupt / SystemExit inside `with`: as ProcessPoolExecutor,
    # the caller gets it and __exit__ waits for the rest (it killed the run before).
    *(
        Fault(
            f"task raises {name} inside with",
            in_with=True,
            actions={3: f"raise:{name}"},
            expect=only(3, Raises(exc)),
        )
        for name, exc in (("KeyboardInterrupt", KeyboardInterrupt), ("SystemExit", SystemExit))
    ),
    # Deletes at close retry until CLOSE_SECONDS (at most 2 s apart): nothing is left (it
    # took 17 s and left the first Job and its 4 pods before).
    Fault("API 500 x10 on DELETE", during=api(500, LONG, "DELETE"), slow=True),
    # With kill_workers: the calls running fail (Shutdown), those their workers have not
    # begun are cancelled (issue 14 item 3); nothing is left (52 s and leftovers before).
    Fault(
        "API 500 x10 on DELETE, shutdown(kill_workers=True)",
        during=api(500, LONG, "DELETE"),
        open_gate=False,
        kill_workers=True,
        expect=plan(
            a=Either((Raises(WorkerLostError, reason="Shutdown"), Cancelled())), b=Cancelled()
        ),
        shutdown_bound=25,  # nothing to wait for: every pod ends on SIGTERM at once
        bound=25,
        slow=True,
    ),
    # Past the retries, only the batch whose Job could not be created fails (ClusterError
    # with the status); the executor stays usable (it was broken for good before).
    *(
        Fault(
            f"API {code} x{LONG} on POST Job",
            before=api(code, LONG, "POST"),
            ready=False,
            # Honoured for longer, or only the batch whose create failed fails.
            expect=plan(
                a=Either((OK, Raises(ClusterError, status=code))),
                b=Either((OK, Raises(ClusterError, status=code))),
            ),
            bound=90,
            usable_after=True,
            slow=True,
        )
        for code in (429, 500, 503)
    ),
    # Storage refusing writes mid-run (a revoked permission, a read-only mount): every call
    # StorageError naming the URL and the 403 (the worker exits 88 and says why; before,
    # WorkerLostError "exited with code 1" with the StorageError only in a traceback).
    Fault(
        "S3 read-only mid-run (403 on PUT)",
        storage="s3",
        during=s3_fault(10**9, 403, "AccessDenied", method="PUT"),
        all_met=False,
        expect=plan(
            a=Raises(StorageError, match=rf"s3://{BUCKET}/.*(403|Access|Permission)"),
            b=Raises(StorageError, match=rf"s3://{BUCKET}/.*(403|Access|Permission)"),
        ),
    ),
    # S3 answering 503 SlowDown for good: every call StorageError naming the URL and the
    # cause. bound: a worker's retry budget (5 tries, each of s3fs's own 5: ~23 s) and a
    # read by the client. Once an operation has failed past its tries the store counts
    # as down and tries each later one once (_store), so shutdown() is bounded by one try
    # of the heartbeat write in flight and one of the deletion (~5 s each), not by two
    # full budgets (25-28 s before). What is left of the storage is named on stderr, in
    # one line saying how to delete it.
    Fault(
        "S3 down for good",
        storage="s3",
        during=s3_fault(10**9, 503, "SlowDown"),
        all_met=False,
        expect=plan(
            a=Raises(StorageError, match=rf"s3://{BUCKET}/.*(503|SlowDown|Unavailable)"),
            b=Raises(StorageError, match=rf"s3://{BUCKET}/.*(503|SlowDown|Unavailable)"),
        ),
        leaves_storage=True,
        bound=45,
        shutdown_bound=15,
        slow=True,
    ),
    # -- warm workers: the same scene on the workers a first map left idle ---------------
    Fault(
        "warm: pod OOMKilled",
        warm=True,
        expect=plan(victim=Raises(WorkerLostError, reason="OOMKilled", match="give it more")),
        **OOM_PROCESS,  # type: ignore[arg-type]
    ),
    Fault(
        "warm: pod SIGKILLed",
        warm=True,
        during=kill_victim(signal.SIGKILL),
        expect=plan(victim=LOST_SIGKILL),
    ),
    Fault("warm: pod evicted (Eviction API): retried", warm=True, during=evict_victim),
    Fault("warm: node lost: retried", warm=True, during=lose_node),
    Fault("warm: watches dropped every 0.3 s", warm=True, during=drop_repeatedly),
    Fault(
        "warm: S3 503 SlowDown x4",
        warm=True,
        storage="s3",
        during=s3_fault(4, 503, "SlowDown"),
    ),
    Fault(
        "warm: shutdown(kill_workers=True)",
        warm=True,
        open_gate=False,
        kill_workers=True,
        expect=plan(
            a=Either((Raises(WorkerLostError, reason="Shutdown"), Cancelled())), b=Cancelled()
        ),
        bound=25,
    ),
    Fault(
        "warm: pod OOMKilled (podman)",
        warm=True,
        runtime="podman",
        expect=plan(victim=OOM_PODMAN_LOST),
        bound=60,
        slow=True,
        **OOM_PODMAN,  # type: ignore[arg-type]
    ),
    Fault(
        "warm: pod SIGKILLed (podman)",
        warm=True,
        runtime="podman",
        during=kill_victim(signal.SIGKILL),
        expect=plan(victim=LOST_SIGKILL),
        bound=60,
        slow=True,
    ),
]

# Rows that do not hold today (issue 19): not collected, so CI stays green. Each says
# what happens now; when its fix lands, move it to FAULTS. `python -m
# tests.test_fault_matrix NAME` reproduces one.
PENDING_FIX: list[Fault] = []


# -- running a row ---------------------------------------------------------------------


@dataclass
class Env:
    """Where a row runs: a kubesim (process or podman kubelet), as the tests see it, a
    directory the workers reach too, and the S3 server when the row needs one."""

    cluster: ClusterUnderTest
    sim: Any
    shared: Path
    s3: S3Server | None = None


@dataclass
class Report:
    """What happened in one row: the closing table's line."""

    fault: Fault
    outcomes: list[Outcome] = field(default_factory=list)
    resolve_seconds: float | None = None  # the last future, after the fault
    shutdown_seconds: float | None = None  # None: did not return
    left: dict[str, list[str]] = field(default_factory=dict)
    heads: dict[int, str] = field(default_factory=dict)  # call -> index seen starting
    storage_url: str = ""  # the run's
    usable: str = ""  # what a call submitted after the fault ended as (usable_after)
    unmet: int = 0  # injected failures no request met
    stderr: str = ""  # what the executor printed
    notes: list[str] = field(default_factory=list)

    def unresolved(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == "unresolved"]

    def wrong(self) -> list[tuple[Outcome, Expected]]:
        return [
            (o, self.fault.expect(o.call))
            for o in self.outcomes
            if not self.fault.expect(o.call).accepts(o)
        ]

    def errors(self) -> str:
        seen: dict[str, int] = {}
        for o in self.outcomes:
            if o.kind == "result":
                continue
            if o.error is None:
                what = o.kind
            else:
                reason = getattr(o.error, "reason", None) or getattr(o.error, "status", None)
                what = type(o.error).__name__ + (f"({reason})" if reason else "")
                what += " at submit" if o.kind == "refused" else ""
            seen[what] = seen.get(what, 0) + 1
        return ", ".join(f"{k} x{n}" for k, n in seen.items()) or "none"

    def line(self) -> str:
        n = len(self.outcomes)
        resolved = n - len(self.unresolved())
        took = "-" if self.resolve_seconds is None else f"{self.resolve_seconds:.1f}s"
        stop = "hung" if self.shutdown_seconds is None else f"{self.shutdown_seconds:.1f}s"
        left = "; ".join(f"{k}: {len(v)}" for k, v in self.left.items()) or "nothing"
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return (
            f"| {self.fault.name} | {resolved}/{n} | {took} | {self.errors()} | "
            f"shutdown {stop} | {left} |{notes}"
        )


def run(fault: Fault, env: Env, patience: float | None = None) -> Report:
    """Run ``fault``'s row on ``env``; wait ``patience`` (default: the row's bound) for
    the futures and as long for shutdown() beyond its bound."""
    if fault.client == "subprocess":
        return _run_killed_client(fault, env)
    report = Report(fault)
    patience = fault.bound if patience is None else patience
    ctx = Ctx(env.sim, env.s3)
    shared = SharedPath(str(env.shared))
    gate, started = shared / "gate", shared / "started"
    started.mkdir()
    kw = _executor_kwargs(fault, env, shared)
    ex = KubernetesExecutor(**kw)
    ctx.run_id = ex.run_id
    report.storage_url = f"{kw['storage'].rstrip('/')}/{ex.run_id}"
    stderr = _Tee(sys.stderr)
    try:
        with contextlib.redirect_stderr(stderr):
            _drive(fault, ex, ctx, started, gate, report, patience)
    except BaseException:
        # A broken row still leaves nothing running for the next one.
        ctx.stop()
        env.sim.faults.clear()
        _timed_shutdown(ex, True, 60)
        raise
    finally:
        report.stderr = stderr.text.getvalue()
    report.unmet = env.sim.faults.pending() + (env.s3.faults.count if env.s3 else 0)
    report.left = _left(ctx, env, fault, kw)
    return report


class _Tee(io.TextIOBase):
    """Writes to ``other`` and keeps a copy."""

    def __init__(self, other: Any) -> None:
        self.other = other
        self.text = io.StringIO()

    def write(self, s: str) -> int:
        self.text.write(s)
        return int(self.other.write(s))

    def flush(self) -> None:
        self.other.flush()


def _drive(
    fault: Fault,
    ex: KubernetesExecutor,
    ctx: Ctx,
    started: SharedPath,
    gate: SharedPath,
    report: Report,
    patience: float,
) -> None:
    futures: dict[int, Future[Any]] = {}
    done_at: dict[int, float] = {}
    refused: dict[int, BaseException] = {}
    t0 = time.monotonic()
    if fault.before is not None:
        fault.before(ctx)

    def submit(i: int, fn: Callable[..., int], *args: Any) -> None:
        try:
            future = ex.submit(fn, *args)
        except Exception as exc:
            refused[i] = exc
            return
        futures[i] = future
        future.add_done_callback(lambda _: done_at.setdefault(i, time.monotonic()))

    if fault.warm:
        assert list(ex.map(quick, range(WORKERS), timeout=120)) == [0, 1, 4, 9]
    for i in range(CALLS):
        submit(i, gated, i, started, gate, fault.actions.get(i, ""))
    for i in range(CALLS, 2 * CALLS):
        submit(i, quick, i)
    if fault.ready:
        _wait_ready(ctx, futures, started, fault.warm)
        # A marker exists before its text is written (gated's write_text): read it whole.
        helpers.wait_for(
            lambda: all((started / n).read_text() for n in started.listdir()),
            10,
            "the started markers' contents",
        )
        report.heads = {int(n): (started / n).read_text() for n in started.listdir()}
        if fault.warm:
            ctx.warm_victim = int(report.heads[0])
            jobs = ctx.sim.store.list("jobs", "default", label_selector=f"{RUN_LABEL}={ex.run_id}")
            names = [j["metadata"]["name"] for j in jobs[0]]
            assert names == [f"k8sx-{ex.run_id}-b00000"], f"A or B got a Job of its own: {names}"

    t0 = time.monotonic()
    if fault.during is not None:
        fault.during(ctx)
    raised: BaseException | None = None
    if fault.in_with:
        stopping = time.monotonic()
        try:
            with ex:
                gate.touch()
                for i in sorted(futures):
                    futures[i].result(timeout=max(0.0, t0 + patience - time.monotonic()))
        except BaseException as exc:  # what a result raised, out of the `with` block
            raised = exc
        report.shutdown_seconds = time.monotonic() - stopping
        report.notes.append(f"`with` left by {type(raised).__name__ if raised else 'nothing'}")
    else:
        if fault.open_gate and not fault.kill_workers:
            gate.touch()
        if not fault.kill_workers:
            _wait_futures(futures, t0 + patience)
        ctx.stop()
        if fault.usable_after:
            try:
                report.usable = repr(list(ex.map(quick, [7], timeout=60)))
            except Exception as exc:
                report.usable = f"{type(exc).__name__}: {exc}"
            report.notes.append(f"a later call: {report.usable[:120]}")
        report.shutdown_seconds = _timed_shutdown(
            ex, fault.kill_workers, fault.shutdown_bound + patience
        )
    ctx.stop()
    for i in range(2 * CALLS):
        if i in refused:
            report.outcomes.append(Outcome(i, "refused", error=refused[i], at=0.0))
        elif i not in futures:
            report.outcomes.append(Outcome(i, "unresolved"))
        else:
            report.outcomes.append(_outcome(i, futures[i], done_at.get(i), t0))
    times = [o.at for o in report.outcomes if o.at is not None]
    if times and not report.unresolved():
        report.resolve_seconds = max(times)


def _executor_kwargs(fault: Fault, env: Env, shared: SharedPath) -> dict[str, Any]:
    kw = env.cluster.executor_kwargs(shared / "storage")
    if fault.storage == "s3":
        assert env.s3 is not None
        kw.update(
            storage=f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}",
            storage_options=env.s3.storage_options(),
            share_storage_options=True,  # the pods reach the same proxy with them
        )
    startup = 60 if fault.runtime == "podman" else 30
    # Cold (keep_warm=0) but for warm rows: the scene is batch A on every slot and batch
    # B's Job waiting suspended; warm workers would take B without a Job.
    timeouts = {
        "startup": startup,
        "heartbeat": 1,
        "heartbeat_grace": 10,
        "keep_warm": 60 if fault.warm else 0,
        **fault.timeouts,
    }
    kw["timeouts"] = Timeouts(**timeouts)  # type: ignore[arg-type]
    if fault.resources is not None:
        kw["resources"] = fault.resources
    return {
        **kw,
        "max_workers": WORKERS,
        # Each batch closes at its 25th call, however slowly the submits come.
        "batching": Batching(window=60, max_calls=CALLS),
    }


def _wait_ready(
    ctx: Ctx, futures: Mapping[int, Future[Any]], started: SharedPath, warm: bool = False
) -> None:
    """A runs on every slot (its first calls started, the executor saw them), B's Job
    exists, waiting (warm: B waits in the engine, with no Job)."""
    job_b = f"k8sx-{ctx.run_id}-b00001"

    def ready() -> bool:
        jobs = ctx.sim.store.list("jobs", "default", label_selector=f"{RUN_LABEL}={ctx.run_id}")
        return (
            len(started.listdir()) >= WORKERS
            and all(futures[i].running() or futures[i].done() for i in HEADS if i in futures)
            and (warm or any(j["metadata"]["name"] == job_b for j in jobs[0]))
        )

    helpers.wait_for(ready, 120, "batch A on every slot and batch B's Job waiting")


def _wait_futures(futures: Mapping[int, Future[Any]], deadline: float) -> None:
    for future in futures.values():
        with contextlib.suppress(BaseException):
            future.exception(timeout=max(0.0, deadline - time.monotonic()))


def _timed_shutdown(ex: KubernetesExecutor, kill: bool, patience: float) -> float | None:
    began = time.monotonic()
    thread = threading.Thread(
        target=ex.shutdown, kwargs={"wait": True, "kill_workers": kill}, daemon=True
    )
    thread.start()
    thread.join(patience)
    return None if thread.is_alive() else time.monotonic() - began


def _outcome(i: int, future: Future[Any], done_at: float | None, t0: float) -> Outcome:
    at = None if done_at is None else max(0.0, done_at - t0)
    if not future.done():
        return Outcome(i, "unresolved")
    if future.cancelled():
        return Outcome(i, "cancelled", error=CancelledError(), at=at)
    error = future.exception(timeout=0)
    if error is not None:
        return Outcome(i, "error", error=error, at=at)
    return Outcome(i, "result", value=future.result(timeout=0), at=at)


def _left(ctx: Ctx, env: Env, fault: Fault, kw: Mapping[str, Any]) -> dict[str, list[str]]:
    """The run's Jobs, pods, Secrets (through the official client) and storage objects
    still there; pods deleted with their Job get a few seconds to go."""
    ctx.sim.faults.clear()
    if env.s3 is not None:
        with env.s3.faults.lock:
            env.s3.faults.count = 0
    cluster = env.cluster
    with contextlib.suppress(AssertionError):
        helpers.wait_for(
            lambda: not any(cluster.run_objects(ctx.run_id).values()), 15, "the run's objects"
        )
    left = {k: v for k, v in cluster.run_objects(ctx.run_id).items() if v}
    if left.get("pods"):
        # Say what holds each one up (its phase, deletion, containers), for the failure.
        left["pods"] = [_pod_state(ctx, name) for name in left["pods"]]
    storage = _storage_left(kw["storage"], kw.get("storage_options") or {}, ctx.run_id)
    if storage:
        left["storage"] = storage
    return left


def _pod_state(ctx: Ctx, name: str) -> str:
    """``name`` with its phase, deletion time and container states (kubesim's store)."""
    try:
        pod = ctx.sim.store.get("pods", "default", name)
    except Exception as exc:  # gone meanwhile, or not kubesim's
        return f"{name} ({type(exc).__name__})"
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    states = [c.get("state") for c in status.get("containerStatuses") or []]
    return (
        f"{name} (phase {status.get('phase')}, deletionTimestamp "
        f"{meta.get('deletionTimestamp')}, containers {states})"
    )


def _storage_left(root: str, options: Mapping[str, Any], run_id: str) -> list[str]:
    import fsspec.core

    fs, path = fsspec.core.url_to_fs(f"{root.rstrip('/')}/{run_id}", **options)
    fs.invalidate_cache()
    try:
        return sorted(str(p).removeprefix(path.rstrip("/") + "/") for p in fs.find(path))
    except FileNotFoundError:
        return []


CLIENT = """
import pickle, sys
from k8s_executor import KubernetesExecutor
from tests import test_fault_matrix as matrix
from tests.helpers import SharedPath

kwargs = pickle.loads(open(sys.argv[1], "rb").read())
started, gate = SharedPath(sys.argv[2]), SharedPath(sys.argv[3])
ex = KubernetesExecutor(**kwargs)
for i in range(matrix.CALLS):
    ex.submit(matrix.gated, i, started, gate)
for i in range(matrix.CALLS, 2 * matrix.CALLS):
    ex.submit(matrix.quick, i)
print(ex.run_id, flush=True)
import threading; threading.Event().wait()
"""


def _run_killed_client(fault: Fault, env: Env) -> Report:
    """A client process SIGKILLed while A runs and B waits: its workers give up within
    the heartbeat grace (3 s), and `k8s-executor cleanup` removes everything else. Its
    futures die with it: ``resolve_seconds`` is how long until no pod of the run runs."""
    import pickle

    report = Report(fault)
    shared = SharedPath(str(env.shared))
    started, gate = shared / "started", shared / "gate"
    started.mkdir()
    kw = _executor_kwargs(fault, env, shared)
    kw["timeouts"] = Timeouts(startup=30, heartbeat=0.5, heartbeat_grace=3)
    (env.shared / "kw").write_bytes(pickle.dumps(kw))
    client_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(env.shared / "kw"), started.url, gate.url],
        env=client_env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    run_id = client.stdout.readline().strip()
    ctx = Ctx(env.sim, env.s3, run_id)
    try:
        helpers.wait_for(lambda: len(started.listdir()) >= WORKERS, 120, "A on every slot")
    finally:
        t0 = time.monotonic()
        client.send_signal(signal.SIGKILL)
        client.wait()
        client.stdout.close()
    report.heads = {int(n): (started / n).read_text() for n in started.listdir()}

    def no_pod_runs() -> bool:
        pods = env.sim.store.list("pods", "default", label_selector=f"{RUN_LABEL}={run_id}")[0]
        return not [
            p for p in pods if (p.get("status") or {}).get("phase") in ("Pending", "Running")
        ]

    with contextlib.suppress(AssertionError):
        helpers.wait_for(no_pod_runs, fault.bound, "the abandoned workers to stop")
        report.resolve_seconds = time.monotonic() - t0
    out = io.StringIO()
    began = time.monotonic()
    options = json.dumps(dict(kw.get("storage_options") or {}))
    cleanup = ["cleanup", run_id, "--yes", *env.cluster.cli_args(), "--storage-options", options]
    with contextlib.redirect_stdout(out):
        code = cli.main(cleanup)
    report.shutdown_seconds = time.monotonic() - began  # the cleanup's, here
    text = out.getvalue()
    if code != 0 or f"deleted run {run_id}" not in text or "deleted storage" not in text:
        report.notes.append(f"cleanup said ({code}): {text.strip()}")
    report.notes.append("futures died with the client; time: until no pod of the run runs")
    report.left = _left(ctx, env, fault, kw)
    return report


def check(report: Report) -> None:
    """The row's three promises."""
    fault, line = report.fault, report.line()
    if fault.ready:
        expected_heads = {i: str(k) for k, i in enumerate(HEADS)}
        heads = {i: report.heads.get(i) for i in HEADS}
        if fault.warm:
            # In the warm-up batch's four pods, one index of A each.
            assert sorted(heads) == HEADS, f"the calls A started with: {report.heads} ({line})"
            assert sorted(map(str, heads.values())) == ["0", "1", "2", "3"], line
        else:
            assert heads == expected_heads, f"the calls A started with: {report.heads} ({line})"
    if fault.client == "subprocess":
        assert report.resolve_seconds is not None, f"workers still running: {line}"
        assert not report.notes[:-1], line
        assert report.left == {}, f"left after cleanup: {report.left} ({line})"
        return
    if fault.all_met:
        assert report.unmet == 0, f"{report.unmet} injected failures never met: {line}"
    unresolved = report.unresolved()
    assert not unresolved, f"{len(unresolved)} futures never resolved: {line}"
    late = [o for o in report.outcomes if o.at is not None and o.at > fault.bound]
    assert not late, f"{len(late)} futures resolved after {fault.bound}s: {line}"
    wrong = report.wrong()
    assert not wrong, "\n".join(
        [line, *(f"{o} -- expected {e}" for o, e in wrong[:6]), f"({len(wrong)} in all)"]
    )
    if fault.usable_after:
        assert report.usable == "[49]", f"the executor is not usable after the fault: {line}"
    assert report.shutdown_seconds is not None, f"shutdown() did not return: {line}"
    assert report.shutdown_seconds <= fault.shutdown_bound, line
    left = dict(report.left)
    if fault.leaves_storage and "storage" in left:
        said = [s for s in report.stderr.splitlines() if report.storage_url in s and "left" in s]
        assert said, f"storage left unsaid: {line}\n{report.stderr}"
        assert re.search(r"delete them with `[^`]+`", said[0]), f"what to do unsaid: {said[0]}"
        assert "Traceback" not in report.stderr, f"{report.stderr} ({line})"
        del left["storage"]
    assert left == {}, f"left after shutdown(): {left} ({line})"


# -- the test ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server(buckets=(BUCKET,)) as server:
        yield server


def _param(fault: Fault) -> Any:
    marks: list[Any] = [pytest.mark.timeout(int(fault.bound + fault.shutdown_bound + 150))]
    if fault.slow:
        marks.append(pytest.mark.slow)
    return pytest.param(fault, id=re.sub(r"[^\w.-]+", "-", fault.name).strip("-"), marks=marks)


@pytest.mark.parametrize("fault", [_param(f) for f in FAULTS])
def test_fault(
    fault: Fault,
    request: pytest.FixtureRequest,
    kubesim_factory: Callable[..., Any],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    env = _env(fault, request, kubesim_factory, tmp_path, tmp_path_factory)
    try:
        report = run(fault, env)
    finally:
        env.cluster.close()
    check(report)


def _env(
    fault: Fault,
    request: pytest.FixtureRequest,
    kubesim_factory: Callable[..., Any],
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Env:
    from tests.kube_helpers import KubesimCluster, KubesimPodmanCluster, podman_cmd

    s3 = request.getfixturevalue("s3") if fault.storage == "s3" else None
    if fault.runtime == "podman":
        from tests.behaviour.conftest import need_podman

        need_podman()
        sim = kubesim_factory(runtime="podman", kubelet_options={"podman_cmd": podman_cmd()})
        cluster: ClusterUnderTest = KubesimPodmanCluster(sim, tmp_path_factory.getbasetemp())
    else:
        sim = kubesim_factory()
        cluster = KubesimCluster(sim)
    return Env(cluster, sim, tmp_path, s3)


def _main(names: list[str]) -> int:
    """Run rows by name (pending ones too) and print their lines of the closing table;
    ``--patience SECONDS`` waits longer than the rows' bounds for what they hold up."""
    patience = None
    if names[:1] == ["--patience"]:
        patience, names = float(names[1]), names[2:]
    import logging

    from tests.kube_helpers import KubesimCluster, KubesimPodmanCluster, podman_cmd
    from tests.kubesim.kubeconfig import Kubesim

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    rows = {f.name: f for f in [*FAULTS, *PENDING_FIX]}
    unknown = [n for n in names if n not in rows]
    if unknown or not names:
        print("rows:\n  " + "\n  ".join(rows), file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        server = None
        if any(rows[n].storage == "s3" for n in names):
            server = stack.enter_context(s3_server(buckets=(BUCKET,)))
        for name in names:
            fault = rows[name]
            shared = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="faults-")))
            if fault.runtime == "podman":
                sim = Kubesim(runtime="podman", kubelet_options={"podman_cmd": podman_cmd()})
                cluster: ClusterUnderTest = KubesimPodmanCluster(sim.start(), shared)
            else:
                sim = Kubesim(runtime="process")
                cluster = KubesimCluster(sim.start())
            try:
                report = run(fault, Env(cluster, sim, shared, server), patience=patience)
                print(report.line(), flush=True)
                for o, e in report.wrong()[:4]:
                    print(f"    {o} -- expected {e}", flush=True)
                try:
                    check(report)
                except AssertionError as exc:
                    print(f"    FAILS its checks: {str(exc).splitlines()[0]}", flush=True)
            finally:
                cluster.close()
                sim.close()
    return 0


if __name__ == "__main__":
    code = _main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)  # a hung shutdown() leaves a thread behind: do not wait for it
