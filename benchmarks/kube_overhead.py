"""Kubernetes backend overhead: API requests, storage operations and result latency on kubesim.

Runs the Kubernetes backend against kubesim (``tests/kubesim/``, started in this process,
with its ``process`` kubelet: a pod is a local ``python -m k8s_executor.worker`` process)
and measures, per executor lifetime (construct, workload, shutdown):

* the Kubernetes API requests the executor made, by verb and resource, counted on
  kubesim's side (its HTTP server records every request it receives);
* the executor's storage operations (writes, reads, deletes, lists), counted by wrapping
  the methods of ``k8s_executor._store.RunStore`` for the duration of the run;
* the delay from a pod terminating (the kubelet's status write, timed inside kubesim's
  store) to the futures of its index being resolved (a done callback on each future);
* wall time on kubesim beside ``backend="local"`` for the same workload.

    python benchmarks/kube_overhead.py              # print the tables
    python benchmarks/kube_overhead.py --write      # also update benchmarks/README.md
    python benchmarks/kube_overhead.py --repeat 1   # fewer repetitions (default 3)
    python benchmarks/kube_overhead.py --kubesim-as-is  # without TCP_NODELAY (see tcp_nodelay)
    python benchmarks/kube_overhead.py --load [--write]  # the load row (issue 19), below

The load row (``--load``): a 10 000-call map and 2 000 spaced submits, each in a client
process of its own (so that its peak resident memory is the client's alone; kubesim stays
in this process and counts the API requests), checking that no future is lost. About
15 minutes on 2 CPUs (kubesim starts 1 300 pods); its own README section.

Each repetition runs every (workload, backend) pair once, round-robin; the latency
workload (LATENCY_INDEXES pods) runs once, at the end. About 30 s per repetition on 2 CPUs.

Importing this module has no side effects; everything runs from :func:`main`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _report import README, load_average, machine, run_line, write_section

REPO = Path(__file__).resolve().parent.parent

MAP_CALLS = 10_000
SUBMITS = 200
# The latency workload: one call per index, so that every index is one pod and one
# future; few workers at once, so that the machine is not saturated by pod start-ups.
LATENCY_INDEXES = 300
LATENCY_WORKERS = 4
# Many Jobs at once: MANY_JOBS batches of CALLS_PER_JOB submits, launched back to back, so
# that later Jobs wait for worker slots (parallelism raised by PATCH as slots free up).
MANY_JOBS = 20
CALLS_PER_JOB = 4
# Submits spaced out, as by a caller doing a little work between them: SPACED_SUBMITS calls
# SPACED_GAP seconds apart: longer than the local backend's batching window (10 ms), shorter
# than the Kubernetes backend's (200 ms since this benchmark found one Job per submit).
SPACED_SUBMITS = 20
SPACED_GAP = 0.02

# The load row (issue 19): LOAD_SUBMITS submits LOAD_GAP seconds apart (the caller does a
# little work between them), and a map of MAP_CALLS; every future must end with its result.
LOAD_SUBMITS = 2_000
LOAD_GAP = 0.01
LOAD_PATIENCE = 1800.0  # seconds a load client waits for its futures before counting them lost

POD_LABEL_RUN = "k8s-executor.io/run"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def inc(x: int) -> int:
    """The trivial call of the map: any time beyond nothing is the executor's."""
    return x + 1


def inc_where(x: int) -> tuple[int, str]:
    """``x + 1`` and the pod it ran in (the kubelet sets ``HOSTNAME`` to the pod's
    hostname, ``<job>-<index>`` for an Indexed Job), to match futures with pods."""
    return x + 1, os.environ.get("HOSTNAME", "")


# -- kubesim's side: requests and pod / Job status writes ------------------------------------

_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<res>[a-z]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[a-z]+))?)?$"
)


def request_kind(method: str, path: str, query: dict[str, str]) -> str:
    """``"<verb> <resource>"`` of one API request, as RBAC names them (``watch pods``)."""
    m = _PATH.match(path)
    if m is None:
        return f"{method} {path}"
    resource = m["res"]
    if m["sub"]:
        resource += "/" + m["sub"]
    named = m["name"] is not None
    if method == "GET" and query.get("watch") in ("true", "1"):
        verb = "watch"
    elif method == "GET":
        verb = "get" if named else "list"
    else:
        verb = {
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if named else "deletecollection",
        }.get(method, method)
    return f"{verb} {resource}"


def parse_indexes(text: str | None) -> set[int]:
    """A Job status index set (``"0,2-4"``) as a set of ints."""
    result: set[int] = set()
    for part in (text or "").split(","):
        if part:
            low, _, high = part.partition("-")
            result.update(range(int(low), int(high or low) + 1))
    return result


class KubesimSide:
    """What kubesim saw: every API request, and when pods terminated and Jobs counted them.

    Two hooks, both set up here, neither changing kubesim's behaviour:

    * ``ApiServer.requests`` (kubesim records every request it receives, for tests) is
      replaced by an unbounded deque, so that no request of a run falls out of it;
    * the store's commit step (``Store._commit``, which assigns the resourceVersion and
      appends to the watch history that watches are served from) is wrapped to stamp, with
      ``time.monotonic()`` of this process, the first write that shows a pod's container
      terminated and the first Job status that lists an index as completed. The stamps
      are taken under the store lock, before any watch can see the change.
    """

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.requests: collections.deque[Any] = collections.deque()
        sim.server.requests = self.requests
        self.pods_created: collections.Counter[str] = collections.Counter()  # by run id
        self.terminated: dict[str, float] = {}  # pod hostname -> first terminated write
        self.pod_index: dict[str, tuple[str, int]] = {}  # pod hostname -> (Job, index)
        self.completed: dict[tuple[str, int], float] = {}  # (Job, index) -> Job status write
        store = sim.store
        commit = store._commit

        def stamped_commit(event_type: str, resource: str, key: Any, obj: Any) -> None:
            commit(event_type, resource, key, obj)
            if resource == "pods":
                self._on_pod(event_type, obj)
            elif resource == "jobs" and event_type != "DELETED":
                self._on_job(obj)

        store._commit = stamped_commit

    def _on_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        host = (pod.get("spec") or {}).get("hostname") or meta.get("name", "")
        if event_type == "ADDED":
            self.pods_created[labels.get(POD_LABEL_RUN, "")] += 1
            index = labels.get(INDEX_LABEL)
            if index is not None and str(index).isdigit():
                self.pod_index[host] = (labels.get(JOB_NAME_LABEL, ""), int(index))
        if host in self.terminated:
            return
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed") or any(
            "terminated" in (cs.get("state") or {}) for cs in status.get("containerStatuses") or []
        ):
            self.terminated[host] = time.monotonic()

    def _on_job(self, job: dict[str, Any]) -> None:
        name = (job.get("metadata") or {}).get("name", "")
        now = time.monotonic()
        for i in parse_indexes((job.get("status") or {}).get("completedIndexes")):
            self.completed.setdefault((name, i), now)

    def take_requests(self) -> collections.Counter[str]:
        """Counts of the requests received since the last call, by verb and resource."""
        counts: collections.Counter[str] = collections.Counter()
        while self.requests:
            r = self.requests.popleft()
            counts[request_kind(r.method, r.path, r.query)] += 1
        return counts

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until the previous run's pods are gone (the GC deletes them after the
        Job), so that runs do not overlap."""
        deadline = time.monotonic() + timeout
        while self.sim.store.list("pods", None)[0] and time.monotonic() < deadline:
            time.sleep(0.05)


@contextlib.contextmanager
def tcp_nodelay(enabled: bool) -> Iterator[None]:
    """Serve kubesim's connections with or without TCP_NODELAY. kube-apiserver sets it
    (Go does on every TCP connection), and so does kubesim since this benchmark found
    it missing: its handler (``http.server``) writes a response's headers and body in two
    sends, and without TCP_NODELAY Nagle's algorithm holds the body until the client's
    delayed ACK of the headers, ~40 ms later, so every request with a body (create,
    patch, delete) took ~45 ms instead of ~1 ms. ``--kubesim-as-is`` is now a misnomer
    kept for comparison: it measures *without* TCP_NODELAY, as kubesim was before.
    """
    from tests.kubesim import server

    handler: Any = server._Handler
    before = handler.disable_nagle_algorithm
    handler.disable_nagle_algorithm = enabled
    try:
        yield
    finally:
        handler.disable_nagle_algorithm = before


# -- the client's side: storage operations ---------------------------------------------------


def _store_op_kind(op: str, key: str) -> str:
    """``"write in"`` for ``b00000/in/3``; ``"write heartbeat"`` for ``heartbeat``."""
    parts = key.split("/")
    what = parts[1] if len(parts) >= 2 and re.fullmatch(r"b\d+", parts[0]) else parts[0]
    return f"{op} {what}"


class StorageCounter:
    """Counts the executor's storage operations, by wrapping ``RunStore``'s methods.

    There is no public hook to observe (or inject) the executor's store, so the class's
    ``put`` / ``get`` / ``delete_all`` are wrapped while :meth:`counting` is active; this
    counts the client's logical operations (a retried write counts once), not those of the
    workers, which run in other processes. ``RunStore`` has no list operation: the
    executor never lists.
    """

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def _add(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        from k8s_executor._store import RunStore

        put, get, delete_all = RunStore.put, RunStore.get, RunStore.delete_all

        def counted_put(store: Any, key: str, data: bytes) -> None:
            self._add(_store_op_kind("write", key))
            put(store, key, data)

        def counted_get(store: Any, key: str) -> bytes:
            self._add(_store_op_kind("read", key))
            return get(store, key)

        def counted_delete_all(store: Any) -> None:
            self._add("delete run (recursive)")
            delete_all(store)

        originals = {"put": put, "get": get, "delete_all": delete_all}
        wrapped = {"put": counted_put, "get": counted_get, "delete_all": counted_delete_all}
        for name, fn in wrapped.items():
            setattr(RunStore, name, fn)
        try:
            yield
        finally:
            for name, fn in originals.items():
                setattr(RunStore, name, fn)

    def take(self) -> collections.Counter[str]:
        with self._lock:
            counts, self.counts = self.counts, collections.Counter()
        return counts


# -- workloads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # "map" or "submit"
    n: int
    max_workers: int | None = None  # None: the contender's
    max_calls: int | None = None  # Batching.max_calls: None for the default
    one_call_per_index: bool = False  # Batching.max_indexes = n
    gap: float = 0.0  # seconds between two submits
    cold: bool = False  # Timeouts(keep_warm=0): every pod ends with its index


WORKLOADS = (
    Workload(f"map {MAP_CALLS}", "map", MAP_CALLS),
    Workload(f"submit {SUBMITS}", "submit", SUBMITS),
    Workload(
        f"submit {MANY_JOBS * CALLS_PER_JOB}, Batching(max_calls={CALLS_PER_JOB})",
        "submit",
        MANY_JOBS * CALLS_PER_JOB,
        max_calls=CALLS_PER_JOB,
    ),
    Workload(
        f"submit {SPACED_SUBMITS}, {SPACED_GAP * 1000:g} ms apart",
        "submit",
        SPACED_SUBMITS,
        gap=SPACED_GAP,
    ),
)
LATENCY_WORKLOAD = Workload(
    f"submit {LATENCY_INDEXES}, 1 call/index, max_workers={LATENCY_WORKERS}",
    "submit",
    LATENCY_INDEXES,
    max_workers=LATENCY_WORKERS,
    one_call_per_index=True,
    # Pod terminated -> future resolved is the cold path: a warm worker reports its index
    # done in storage and its pod ends only when its idle window does, after the futures.
    cold=True,
)


@dataclass(frozen=True)
class Contender:
    """A backend, and max_workers (None: the backend's default)."""

    name: str
    backend: str  # "local" or "kubernetes"
    max_workers: int | None = None


LOCAL = Contender("local", "local")
KUBESIM = Contender("kubesim", "kubernetes")


def contenders() -> tuple[Contender, ...]:
    """Wall-time rows: the defaults, and kubesim with the local backend's max_workers."""
    workers = os.cpu_count() or 1
    return LOCAL, KUBESIM, Contender(f"kubesim, max_workers={workers}", "kubernetes", workers)


@dataclass
class Measurement:
    """One executor lifetime on one backend."""

    workload_s: float
    shutdown_s: float
    requests: collections.Counter[str]
    storage: collections.Counter[str]
    pods: int
    max_workers: int
    # Per index (pod) that ran, seconds: from its pod's terminated write to the last of its
    # futures being resolved, and, for comparison, to the Job status listing it completed
    # (which the executor no longer waits for when the pod succeeded).
    to_job_status: list[float] = field(default_factory=list)
    to_future: list[float] = field(default_factory=list)


def _executor(who: Contender, work: Workload, sim: Any, storage: Path) -> Any:
    return _executor_on(who, work, None if sim is None else sim.kubeconfig_path, storage)


def _executor_on(who: Contender, work: Workload, kubeconfig: str | None, storage: Path) -> Any:
    from k8s_executor import Batching, KubernetesExecutor, PodOptions, Timeouts

    options: dict[str, Any] = {}
    max_workers = work.max_workers or who.max_workers
    if max_workers is not None:
        options["max_workers"] = max_workers
    batching: dict[str, Any] = {}
    if work.one_call_per_index:
        batching["max_indexes"] = work.n
    if work.max_calls is not None:
        batching["max_calls"] = work.max_calls
    if batching:
        options["batching"] = Batching(**batching)
    if work.cold:
        options["timeouts"] = Timeouts(keep_warm=0)
    if who.backend == "local":
        return KubernetesExecutor(backend="local", **options)
    pythonpath = os.pathsep.join([str(REPO), *(p or os.getcwd() for p in sys.path)])
    # As tests/kube_helpers.kubesim_kwargs, but with the default Timeouts (its 1 s
    # heartbeat would add a storage write per second): the process kubelet runs the pod's
    # command as a local process, the "image" is this interpreter and this source tree.
    return KubernetesExecutor(
        backend="kubernetes",
        kubeconfig=str(kubeconfig),
        storage=str(storage),
        image="kubesim.local/process:latest",
        python=sys.executable,
        pod=PodOptions(env={"PYTHONPATH": pythonpath}),
        **options,
    )


def measure(
    who: Contender, work: Workload, sim: Any, side: KubesimSide, storage: StorageCounter, tmp: Path
) -> Measurement:
    side.wait_idle()
    side.take_requests()
    storage.take()
    done_at: dict[int, float] = {}

    def stamp(i: int) -> Callable[[Future[Any]], None]:
        def on_done(_: Future[Any]) -> None:
            done_at[i] = time.monotonic()

        return on_done

    hosts: dict[int, str] = {}
    with storage.counting():
        ex = _executor(who, work, sim, tmp / "storage")
        try:
            t0 = time.perf_counter()
            if work.kind == "map":
                results = list(ex.map(inc, range(work.n)))
            else:
                futures = []
                for i in range(work.n):
                    f = ex.submit(inc_where, i)
                    f.add_done_callback(stamp(i))
                    futures.append(f)
                    if work.gap:
                        time.sleep(work.gap)
                results = []
                for i, f in enumerate(futures):
                    value, hosts[i] = f.result()
                    results.append(value)
            workload_s = time.perf_counter() - t0
        finally:
            t1 = time.perf_counter()
            ex.shutdown(wait=True)
            shutdown_s = time.perf_counter() - t1
    if results != list(range(1, work.n + 1)):
        raise AssertionError(f"{work.name} on {who.name}: wrong results")
    kube = who.backend != "local"
    result = Measurement(
        workload_s,
        shutdown_s,
        side.take_requests() if kube else collections.Counter(),
        storage.take(),
        side.pods_created.pop(ex.run_id, 0),
        ex.max_workers,
    )
    if kube and hosts:
        # An index is resolved when the last of its futures is.
        resolved: dict[str, float] = {}
        for i, host in hosts.items():
            resolved[host] = max(resolved.get(host, 0.0), done_at[i])
        for host, t_done in resolved.items():
            t_term = side.terminated.get(host)
            job_index = side.pod_index.get(host)
            if t_term is None or job_index is None:
                raise AssertionError(f"{work.name}: kubesim never saw pod {host!r} terminate")
            result.to_future.append(t_done - t_term)
            t_job = side.completed.get(job_index)
            if t_job is not None:
                result.to_job_status.append(t_job - t_term)
    return result


Key = tuple[str, str]  # (workload name, contender name)


def run_all(repeat: int, sim: Any, side: KubesimSide, tmp: Path) -> dict[Key, list[Measurement]]:
    storage = StorageCounter()
    samples: dict[Key, list[Measurement]] = collections.defaultdict(list)
    pairs = [(w, c) for w in WORKLOADS for c in contenders()]
    for r in range(repeat):
        print(f"repetition {r + 1}/{repeat} ...", file=sys.stderr, flush=True)
        for work, who in pairs:
            samples[(work.name, who.name)].append(measure(who, work, sim, side, storage, tmp))
    # Once, at the end: it alone runs LATENCY_INDEXES pods.
    print(f"{LATENCY_WORKLOAD.name} ...", file=sys.stderr, flush=True)
    samples[(LATENCY_WORKLOAD.name, KUBESIM.name)].append(
        measure(KUBESIM, LATENCY_WORKLOAD, sim, side, storage, tmp)
    )
    return samples


# -- the load row ----------------------------------------------------------------------------

LOAD_WORKLOADS = (
    Workload(f"map {MAP_CALLS}", "map", MAP_CALLS),
    Workload(
        f"submit {LOAD_SUBMITS}, {LOAD_GAP * 1000:g} ms apart", "submit", LOAD_SUBMITS, gap=LOAD_GAP
    ),
)


def _rss_kib() -> int:
    """This process's resident memory now, in KiB (Linux: /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def load_client(name: str, kubeconfig: str, storage: str) -> dict[str, Any]:
    """Run one load workload in this (fresh) process; what became of every call, the
    client's resident memory (before the executor, at its peak) and the times."""
    import resource

    preload()
    work = next(w for w in LOAD_WORKLOADS if w.name == name)
    base_kib = _rss_kib()
    outcome: collections.Counter[str] = collections.Counter()
    errors: list[str] = []
    t0 = time.perf_counter()
    ex = _executor_on(KUBESIM, work, kubeconfig, Path(storage))
    try:
        if work.kind == "map":
            # map hands out no futures: a lost call would hang the iterator, which the
            # timeout turns into a TimeoutError (the calls left are counted lost).
            got = 0
            try:
                for i, value in enumerate(ex.map(inc, range(work.n), timeout=LOAD_PATIENCE)):
                    outcome["result" if value == i + 1 else "wrong"] += 1
                    got += 1
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
                outcome["error or lost"] += work.n - got
            submit_s = None
        else:
            futures = []
            for i in range(work.n):
                futures.append(ex.submit(inc, i))
                time.sleep(work.gap)  # the caller's own work between two submits
            submit_s = time.perf_counter() - t0
            deadline = time.monotonic() + LOAD_PATIENCE
            for i, f in enumerate(futures):
                try:
                    value = f.result(timeout=max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    outcome["lost (unresolved)"] += 1
                    continue
                except Exception as exc:
                    outcome["error"] += 1
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue
                outcome["result" if value == i + 1 else "wrong"] += 1
        workload_s = time.perf_counter() - t0
    finally:
        t1 = time.perf_counter()
        ex.shutdown(wait=True)
        shutdown_s = time.perf_counter() - t1
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "run_id": ex.run_id,
        "max_workers": ex.max_workers,
        "outcome": dict(outcome),
        "errors": errors[:5],
        "workload_s": workload_s,
        "submit_s": submit_s,
        "shutdown_s": shutdown_s,
        "base_kib": base_kib,
        "peak_kib": peak_kib,
    }


@dataclass
class LoadResult:
    work: Workload
    client: dict[str, Any]
    requests: collections.Counter[str]
    pods: int


def run_load(sim: Any, side: KubesimSide, tmp: Path) -> list[LoadResult]:
    """Each load workload in a client process of its own, against this process's kubesim."""
    results = []
    for work in LOAD_WORKLOADS:
        print(f"load: {work.name} ...", file=sys.stderr, flush=True)
        side.wait_idle()
        side.take_requests()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
        done = subprocess.run(
            [sys.executable, __file__, "--load-client", work.name, sim.kubeconfig_path,
             str(tmp / "storage")],
            env=env,
            capture_output=True,
            text=True,
            timeout=LOAD_PATIENCE * 2,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"load client {work.name!r} failed:\n{done.stderr[-3000:]}")
        client = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(
            LoadResult(
                work, client, side.take_requests(), side.pods_created.pop(client["run_id"], 0)
            )
        )
    return results


def load_section(
    results: list[LoadResult], command: str, load_before: str, load_after: str, took: float
) -> str:
    """The generated README section of the load row."""
    mib = 1024
    lines = [
        run_line(command, took),
        "",
        f"{machine()}; load average (1/5/15 min) {load_before} before, {load_after} after. "
        "kubesim served with TCP_NODELAY (as kube-apiserver), in the benchmark's process; "
        "each workload's client in a process of its own.",
        "",
        "| | " + " | ".join(r.work.name for r in results) + " |",
        "|---|" + "--:|" * len(results),
    ]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    n = [r.work.n for r in results]
    ok = [r.client["outcome"].get("result", 0) for r in results]
    row("calls", [f"{x:,}" for x in n])
    row("**ended with their result**", [f"{a:,}/{b:,}" for a, b in zip(ok, n, strict=True)])
    row(
        "lost, failed or wrong",
        [
            ", ".join(f"{k} {v}" for k, v in r.client["outcome"].items() if k != "result") or "0"
            for r in results
        ],
    )
    row("max_workers", [str(r.client["max_workers"]) for r in results])
    row("Jobs (batches)", [f"{r.requests['create jobs']:,}" for r in results])
    row("pods (indexes)", [f"{r.pods:,}" for r in results])
    kinds = sorted({k for r in results for k in r.requests}, key=_request_order)
    for kind in kinds:
        row(f"API: {kind}", [f"{r.requests[kind]:,}" for r in results])
    row("**API requests, total**", [f"{sum(r.requests.values()):,}" for r in results])
    row("API requests per call", [f"{sum(r.requests.values()) / r.work.n:.3f}" for r in results])
    row(
        "client memory (RSS) before the executor, MiB",
        [f"{r.client['base_kib'] / mib:.0f}" for r in results],
    )
    row("**client peak RSS, MiB**", [f"{r.client['peak_kib'] / mib:.0f}" for r in results])
    row(
        "peak above the baseline, MiB (per call)",
        [
            f"{(r.client['peak_kib'] - r.client['base_kib']) / mib:.0f} "
            f"({(r.client['peak_kib'] - r.client['base_kib']) / r.work.n:.1f} KiB)"
            for r in results
        ],
    )
    row(
        "submitting (s)",
        ["" if r.client["submit_s"] is None else f"{r.client['submit_s']:.1f}" for r in results],
    )
    row("workload, to the last result (s)", [f"{r.client['workload_s']:.1f}" for r in results])
    row("shutdown() (s)", [f"{r.client['shutdown_s']:.1f}" for r in results])
    errors = [e for r in results for e in r.client["errors"]]
    if errors:
        lines += ["", "Errors seen (first few): " + "; ".join(f"`{e}`" for e in errors[:5])]
    return "\n".join(lines)


# -- report ----------------------------------------------------------------------------------


def _span(values: Sequence[int]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


_VERB_ORDER = ("create", "get", "list", "watch", "patch", "update", "delete", "deletecollection")


def _request_order(kind: str) -> tuple[int, str]:
    verb, _, resource = kind.partition(" ")
    rank = _VERB_ORDER.index(verb) if verb in _VERB_ORDER else len(_VERB_ORDER)
    return rank, resource


def counts_table(samples: dict[Key, list[Measurement]]) -> str:
    """API requests and storage operations, one column per kubesim workload."""
    keys = [(w.name, KUBESIM.name) for w in (*WORKLOADS, LATENCY_WORKLOAD)]
    columns = [samples[k] for k in keys]
    lines = [
        "| per executor lifetime | " + " | ".join(f"{k[0]}" for k in keys) + " |",
        "|---|" + "--:|" * len(keys),
    ]

    def row(label: str, get: Callable[[Measurement], int]) -> None:
        lines.append(
            f"| {label} | " + " | ".join(_span([get(m) for m in ms]) for ms in columns) + " |"
        )

    def jobs(m: Measurement) -> int:
        return m.requests["create jobs"]

    row("Jobs (batches)", jobs)
    row("pods (indexes)", lambda m: m.pods)
    kinds = sorted({k for ms in columns for m in ms for k in m.requests}, key=_request_order)
    for kind in kinds:
        row(f"API: {kind}", lambda m, kind=kind: m.requests[kind])  # type: ignore[misc]
    row("**API requests, total**", lambda m: sum(m.requests.values()))
    ops = sorted({k for ms in columns for m in ms for k in m.storage})
    for op in ops:
        row(f"storage: {op}", lambda m, op=op: m.storage[op])  # type: ignore[misc]
    row("**storage operations, total**", lambda m: sum(m.storage.values()))
    return "\n".join(lines)


def latency_table(samples: dict[Key, list[Measurement]]) -> str:
    lines = [
        "| workload | indexes | pod terminated → futures resolved "
        "| (pod terminated → Job status lists it) |",
        "|---|--:|--:|--:|",
    ]

    def stats(values: list[float]) -> str:
        if not values:
            return "n/a"
        return " / ".join(_ms(_quantile(values, q)) for q in (0.5, 0.99, 1.0))

    for work in (*WORKLOADS, LATENCY_WORKLOAD):
        ms = samples.get((work.name, KUBESIM.name), [])
        to_future = [x for m in ms for x in m.to_future]
        if not to_future or not work.cold:
            continue  # warm: futures resolve before the pods end (see LATENCY_WORKLOAD)
        lines.append(
            f"| {work.name} | {len(to_future)} | {stats(to_future)} "
            f"| {stats([x for m in ms for x in m.to_job_status])} |"
        )
    return "\n".join(lines)


def wall_table(samples: dict[Key, list[Measurement]]) -> str:
    lines = [
        "| workload | backend (max_workers) | workload median ms | workload min ms "
        "| shutdown median ms | x local |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for work in WORKLOADS:
        local = statistics.median(m.workload_s for m in samples[(work.name, LOCAL.name)])
        for who in contenders():
            ms = samples[(work.name, who.name)]
            median = statistics.median(m.workload_s for m in ms)
            lines.append(
                f"| {work.name} | {who.name} ({_span([m.max_workers for m in ms])}) "
                f"| {_ms(median)} | {_ms(min(m.workload_s for m in ms))} "
                f"| {_ms(statistics.median(m.shutdown_s for m in ms))} "
                f"| {median / local:.1f} |"
            )
    return "\n".join(lines)


def findings(samples: dict[Key, list[Measurement]]) -> str:
    """Requests per Job and per pod: API traffic must follow batches, not calls."""
    parts = []
    for work in (*WORKLOADS, LATENCY_WORKLOAD):
        ms = samples[(work.name, KUBESIM.name)]
        total = statistics.median(sum(m.requests.values()) for m in ms)
        jobs = statistics.median(m.requests["create jobs"] for m in ms) or 1
        pods = statistics.median(m.pods for m in ms) or 1
        parts.append(
            f"{work.name}: {total:g} requests for {work.n:,} calls, {jobs:g} Job(s), "
            f"{pods:g} pods ({total / jobs:.1f} per Job, {total / work.n:.3f} per call)"
        )
    return "API requests per run (medians): " + "; ".join(parts) + "."


def section(
    samples: dict[Key, list[Measurement]],
    command: str,
    repeat: int,
    nodelay: bool,
    load_before: str,
    load_after: str,
    took: float,
) -> str:
    """The generated README section (between the markers)."""
    return "\n".join(
        (
            run_line(command, took),
            "",
            f"{machine()}; load average (1/5/15 min) {load_before} before, {load_after} after. "
            f"{repeat} repetition(s); counts are shown as a range when repetitions differ. "
            + (
                "kubesim served with TCP_NODELAY (as kube-apiserver)."
                if nodelay
                else "kubesim as is (no TCP_NODELAY: ~40 ms more per request with a body)."
            ),
            "",
            "**API requests (counted by kubesim) and the client's storage operations**, "
            "from constructing the executor to the end of `shutdown()`:",
            "",
            counts_table(samples),
            "",
            findings(samples),
            "",
            "**Pod terminated → future resolved**, p50 / p99 / max ms (kubesim's status "
            "writes vs a done callback, one clock; per index, the last of its futures; all "
            "repetitions pooled; with `Timeouts(keep_warm=0)`: a warm worker's futures "
            "resolve before its pod ends, at the end of its idle window):",
            "",
            latency_table(samples),
            "",
            "**Wall time**, kubesim beside the local backend (each with its default "
            "max_workers, and kubesim with the local backend's; the workload, then "
            "`shutdown()` alone; median and min over the repetitions):",
            "",
            wall_table(samples),
        )
    )


def preload() -> None:
    """Import what the first run would otherwise import inside its timed region (the
    Kubernetes client is imported when the first executor starts)."""
    for module in ("k8s_executor", "k8s_executor.backends.kubernetes", "kubernetes.client"):
        importlib.import_module(module)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update benchmarks/README.md")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--kubesim-as-is",
        action="store_true",
        help="serve kubesim's connections without TCP_NODELAY, as it was before (see tcp_nodelay)",
    )
    parser.add_argument(
        "--load",
        action="store_true",
        help="run the load row instead (10 000-call map, 2 000 spaced submits)",
    )
    parser.add_argument("--load-client", nargs=3, metavar=("WORKLOAD", "KUBECONFIG", "STORAGE"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.load_client:
        print(json.dumps(load_client(*args.load_client)), flush=True)
        return 0

    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # for tests.kubesim when run as a script
    from tests.kubesim.kubeconfig import Kubesim

    preload()
    tmp = Path(tempfile.mkdtemp(prefix="kube-overhead-"))
    load_before = load_average()
    t0 = time.perf_counter()
    command = "python benchmarks/kube_overhead.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    if args.load:
        try:
            with tcp_nodelay(not args.kubesim_as_is), Kubesim(runtime="process") as sim:
                results = run_load(sim, KubesimSide(sim), tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        generated = load_section(
            results, command.strip(), load_before, load_average(), time.perf_counter() - t0
        )
        print(generated)
        if args.write:
            write_section("kube_load", generated)
            print(f"\nwrote {README}", file=sys.stderr)
        lost = sum(r.work.n - r.client["outcome"].get("result", 0) for r in results)
        return 1 if lost else 0
    try:
        with tcp_nodelay(not args.kubesim_as_is), Kubesim(runtime="process") as sim:
            side = KubesimSide(sim)
            samples = run_all(args.repeat, sim, side, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    took = time.perf_counter() - t0
    load_after = load_average()

    generated = section(
        samples,
        command.strip(),
        args.repeat,
        not args.kubesim_as_is,
        load_before,
        load_after,
        took,
    )
    print(generated)
    if args.write:
        write_section("kube_overhead", generated)
        print(f"\nwrote {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
