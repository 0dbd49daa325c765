"""``k8s-executor logs``: a run's indexes (state, attempts, pod) and their logs.

The indexes come from the run's Jobs (``completions``, completed and failed indexes) and
pods (one per attempt); logs are read from the API while the pods exist.
"""

from __future__ import annotations

import argparse
import codecs
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any

from .._admin import CONTAINER, Cluster, RunIndex, run_indexes
from ..errors import ClusterError, K8sExecutorError
from ._text import print_table

_Indexes = dict[tuple[str, int], RunIndex]
_INDEX_ARG = re.compile(r"^(?:(?P<batch>[a-z0-9-]+)/)?(?P<index>\d+)$")


def _state(task: RunIndex) -> str:
    """An index's state in a few words: its latest pod's, or what its Job says."""
    if task.pods:
        return _pod_state(task.pods[-1])
    if task.job_says:
        return f"{task.job_says} (pod gone)"
    return "waiting for a worker slot" if task.queued else "not started"


def usage_problem(args: argparse.Namespace) -> str:
    """What is wrong with the options given to ``logs`` ("" when nothing is); checked
    before connecting."""
    if args.all and args.index:
        return "give INDEX or --all, not both"
    if args.follow and not args.index:
        return (
            "-f follows one index: give INDEX (stream_logs=True on the executor prints "
            "every log as it comes)"
        )
    if args.attempt is not None and (not args.index or args.attempt < 1):
        return "--attempt N needs INDEX, and N >= 1"
    if args.tail is not None and args.tail < 0:
        return "--tail needs a number >= 0"
    return ""


def _pod_state(pod: dict[str, Any]) -> str:
    """A pod's state in a few words: ``Running``, ``Failed (OOMKilled, exit 137)``..."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    statuses = status.get("containerStatuses") or []
    container = next((c for c in statuses if c.get("name") == CONTAINER), None)
    container = container or (statuses[0] if statuses else {})
    state = container.get("state") or {}
    if phase == "Pending":
        waiting = (state.get("waiting") or {}).get("reason")
        unschedulable = any(
            c.get("type") == "PodScheduled" and c.get("status") == "False"
            for c in status.get("conditions") or []
        )
        reason = waiting or ("Unschedulable" if unschedulable else "")
        return f"Pending ({reason})" if reason else "Pending"
    if phase in ("Succeeded", "Failed"):
        ended = state.get("terminated") or {}
        reason = status.get("reason") or ended.get("reason") or ""
        details = [
            "" if reason in ("Completed", "Error") else reason,  # those say what phase says
            f"exit {ended['exitCode']}" if phase == "Failed" and "exitCode" in ended else "",
        ]
        details = [d for d in details if d]
        return f"{phase} ({', '.join(details)})" if details else phase
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "Terminating"
    return str(phase)


def _pod_name(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name") or "?")


def _no_run(cluster: Cluster, run_id: str) -> int:
    print(
        f"k8s-executor logs: no run {run_id} in namespace {cluster.namespace}: `k8s-executor ls` "
        "lists the runs there. An executor deletes its Jobs and pods when it shuts down, so "
        "logs are there while it runs (or after its client died, until cleanup); "
        "stream_logs=True prints them as they come",
        file=sys.stderr,
    )
    return 1


def run(cluster: Cluster, args: argparse.Namespace) -> int:
    """``k8s-executor logs``: list a run's indexes, or print one's log (or every one's)."""
    jobs, pods = cluster.run_objects(args.run)
    tasks = run_indexes(jobs, pods)
    if not jobs and not pods:
        return _no_run(cluster, args.run)
    if args.all:
        return _print_all(cluster, tasks, args.tail)
    if args.index is None:
        return _list_indexes(args.run, tasks)
    key = _choose(args.run, args.index, tasks)
    if key is None:
        return 1
    if args.follow:
        return _follow(cluster, args, key)
    return _print_one(cluster, tasks[key], args.attempt, args.tail)


def _list_indexes(run_id: str, tasks: _Indexes) -> int:
    rows = [("INDEX", "STATE", "ATTEMPTS", "POD")]
    for key in sorted(tasks):
        task = tasks[key]
        pod = _pod_name(task.pods[-1]) if task.pods else "-"
        rows.append((task.name, _state(task), str(len(task.pods)), pod))
    print_table(rows)
    if len(rows) > 1:
        print(
            f"`k8s-executor logs {run_id} {rows[1][0]}` prints one index's log, --all every one",
            file=sys.stderr,
        )
    return 0


def _choose(run_id: str, text: str, tasks: _Indexes) -> tuple[str, int] | None:
    """The (batch, index) that INDEX names, or None after saying why there is none."""
    match = _INDEX_ARG.match(text)
    if match is None:
        print(
            f"k8s-executor logs: {text!r} is not an index: N, or BATCH/N (b00000/3)",
            file=sys.stderr,
        )
        return None
    index = int(match["index"])
    batches = sorted({b for b, _ in tasks})
    if match["batch"]:
        key = (match["batch"], index)
        if key in tasks:
            return key
        print(
            f"k8s-executor logs: run {run_id} has no index {text}"
            + (f" (its batches: {_describe(tasks)})" if tasks else ""),
            file=sys.stderr,
        )
        return None
    having = [b for b in batches if (b, index) in tasks]
    if len(having) == 1:
        return having[0], index
    if not having:
        print(
            f"k8s-executor logs: run {run_id} has no index {index} "
            f"(its batches: {_describe(tasks)})",
            file=sys.stderr,
        )
    else:
        print(
            f"k8s-executor logs: run {run_id} has an index {index} in batches "
            f"{', '.join(having)}: name one, as in {having[-1]}/{index}",
            file=sys.stderr,
        )
    return None


def _describe(tasks: _Indexes) -> str:
    counts: dict[str, int] = {}
    for batch, index in tasks:
        counts[batch] = max(counts.get(batch, 0), index + 1)
    return ", ".join(
        f"{b} with indexes 0-{n - 1}" if n > 1 else f"{b} with index 0"
        for b, n in sorted(counts.items())
    )


def _pick_attempt(
    task: RunIndex, attempt: int | None, *, note: bool = True
) -> dict[str, Any] | None:
    """The pod of the chosen attempt (default: the latest); ``note``: mention the others
    on stderr."""
    if not task.pods:
        return None
    if attempt is not None and attempt > len(task.pods):
        raise K8sExecutorError(
            f"{task.name} has {len(task.pods)} attempt{'s' if len(task.pods) > 1 else ''} "
            "whose pods are still there"
        )
    number = attempt or len(task.pods)
    if note and len(task.pods) > 1:
        others = "; ".join(
            f"attempt {i} ({_pod_name(p)}: {_pod_state(p)})"
            for i, p in enumerate(task.pods, 1)
            if i != number
        )
        print(
            f"note: {task.name} ran {len(task.pods)} times; this is attempt {number} "
            f"({_pod_name(task.pods[number - 1])}: {_pod_state(task.pods[number - 1])}). "
            f"Others: {others}; --attempt N shows one",
            file=sys.stderr,
        )
    return task.pods[number - 1]


def _write(chunks: Iterable[bytes], prefix: str = "") -> None:
    """Copy log bytes to stdout as they come (with ``prefix``: line by line)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    for chunk in chunks:
        text = decoder.decode(chunk)
        if not prefix:
            sys.stdout.write(text)
            sys.stdout.flush()
            continue
        pending += text
        *lines, pending = pending.split("\n")
        for line in lines:
            print(prefix + line)
    tail = pending + decoder.decode(b"", final=True)
    if prefix and tail:
        print(prefix + tail)
    elif tail:
        sys.stdout.write(tail)
    sys.stdout.flush()


def _not_running(task: RunIndex, pod: dict[str, Any] | None, exc: ClusterError | None) -> str:
    if pod is None:
        if task.job_says:
            return f"{task.name} {task.job_says.lower()}, but its pod is gone: no log left"
        if task.queued:
            return (
                f"{task.name} has not started yet: its Job waits for a free worker slot "
                "(the run's other tasks use all max_workers)"
            )
        return f"{task.name} has not started yet (no pod)"
    detail = f": {exc}" if exc is not None and exc.status not in (400, 404) else ""
    return f"{task.name} has no log yet: pod {_pod_name(pod)} is {_pod_state(pod)}{detail}"


def _print_one(cluster: Cluster, task: RunIndex, attempt: int | None, tail: int | None) -> int:
    pod = _pick_attempt(task, attempt)
    if pod is None:
        print(
            f"k8s-executor logs: {_not_running(task, None, None)}; -f waits for it", file=sys.stderr
        )
        return 1
    try:
        chunks = cluster.pod_log(_pod_name(pod), tail_lines=tail)
    except ClusterError as exc:
        if exc.status not in (400, 404):
            raise
        print(
            f"k8s-executor logs: {_not_running(task, pod, exc)}; -f waits for it", file=sys.stderr
        )
        return 1
    _write(chunks)
    return 0


def _print_all(cluster: Cluster, tasks: _Indexes, tail: int | None) -> int:
    for key in sorted(tasks):
        task = tasks[key]
        prefix = f"[{task.name}] "
        pod = task.pods[-1] if task.pods else None
        if pod is None:
            print(f"{prefix}({_state(task)}: no log)", file=sys.stderr)
            continue
        try:
            _write(cluster.pod_log(_pod_name(pod), tail_lines=tail), prefix)
        except ClusterError as exc:
            if exc.status not in (400, 404):
                raise
            print(f"{prefix}({_pod_state(pod)}: no log yet)", file=sys.stderr)
    return 0


def _follow(cluster: Cluster, args: argparse.Namespace, key: tuple[str, int]) -> int:
    """Print the index's log as it is written until its container ends; first wait for
    the index to start when it has not (no pod yet, or a pod still pending)."""
    said = ""
    delay = 0.2
    wait = threading.Event()
    while True:
        jobs, pods = cluster.run_objects(args.run)
        task = run_indexes(jobs, pods).get(key)
        if task is None:
            if not jobs and not pods:
                return _no_run(cluster, args.run)
            print(
                f"k8s-executor logs: {key[0]}/{key[1]} is gone from run {args.run}", file=sys.stderr
            )
            return 1
        pod = _pick_attempt(task, args.attempt, note=False)
        problem: ClusterError | None = None
        if pod is not None:
            try:
                chunks = cluster.pod_log(_pod_name(pod), follow=True, tail_lines=args.tail)
            except ClusterError as exc:
                if exc.status not in (400, 404):
                    raise
                problem = exc
            else:
                _pick_attempt(task, args.attempt)  # the note about other attempts
                _write(chunks)
                return _ended(cluster, args.run, key, _pod_name(pod))
        elif task.job_says:
            print(f"k8s-executor logs: {_not_running(task, None, None)}", file=sys.stderr)
            return 1
        message = _not_running(task, pod, problem)
        if message != said:
            print(f"{message}; waiting for it (Ctrl-C to stop)", file=sys.stderr, flush=True)
            said = message
        wait.wait(delay)
        delay = min(delay * 2, 2.0)


def _ended(cluster: Cluster, run_id: str, key: tuple[str, int], name: str) -> int:
    """After a follow: say how the pod ended when it did not succeed."""
    _, pods = cluster.run_objects(run_id)
    pod = next((p for p in pods if _pod_name(p) == name), None)
    state = _pod_state(pod) if pod is not None else "deleted"
    if state != "Succeeded":
        print(f"pod {name} of {key[0]}/{key[1]}: {state}", file=sys.stderr)
    return 0
