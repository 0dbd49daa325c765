"""Record a Job scenario on kubesim or on a real cluster, in the trace format of traces.py.

:func:`record` creates a fresh namespace, watches its Jobs, pods and Events, creates the
scenario's setup objects and Job, performs its timed actions and writes every watch event, as
the API server sent it, one JSON line each. The same code records on kubesim (the tests
replay the real-cluster traces with it) and on a real cluster (docs/testing.md, "Recording a
scenario")::

    K8SX_TEST_CLUSTER=cluster.json .venv/bin/python -m tests.kubesim.recorder \\
        --from-trace tests/kubesim_tests/real_traces/evicted.jsonl --out evicted.jsonl

Time: ``t`` is in scenario seconds, read from ``clock`` (by default the wall clock). On kubesim
with a :class:`~tests.kubesim.clock.ScaledClock`, pass its ``monotonic`` and ``speed`` so that
``t``, the action times and the duration are all in the cluster's own (faster) time.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.kubesim.traces import Scenario, load_trace, scenario_from_trace

__all__ = ["ACTIONS", "Recorder", "Sink", "record", "with_images"]

Obj = dict[str, Any]

ACTIONS = ("delete-pods", "evict", "suspend", "resume", "delete-job")

# The Job was created at about 0.5 s in the recorded traces: the watches are running by then.
JOB_CREATED_AT = 0.5
_WATCH_TIMEOUT_S = 30  # a watch that sees nothing ends after this, and is resumed

# The client's watch module is untyped.
_Watch: Any = watch.Watch


class Sink(Protocol):
    """Where the lines go as they come (an open text file will do)."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class Recorder:
    """Watches one namespace and keeps every line of the trace (see :func:`record`)."""

    def __init__(
        self,
        api: Any,
        namespace: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        speed: float = 1.0,
        out: Sink | None = None,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.core: Any = client.CoreV1Api(api)
        self.batch: Any = client.BatchV1Api(api)
        self._clock = clock
        self._speed = speed
        self._origin = clock()
        self._out = out
        self._lines: list[Obj] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watches: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._ready = threading.Barrier(4)

    # --- time ------------------------------------------------------------------------------

    def now(self) -> float:
        """Scenario seconds since the recorder was built."""
        return self._clock() - self._origin

    def wait_until(self, t: float, *, until: Callable[[], bool] | None = None) -> bool:
        """Wait until scenario time ``t`` (or until ``until()`` holds); whether ``until`` held."""
        while True:
            if until is not None and until():
                return True
            left = t - self.now()
            if left <= 0:
                return False
            step = left / self._speed
            if until is not None:
                step = min(step, 0.05)
            self._stop.wait(step)

    # --- lines -----------------------------------------------------------------------------

    def emit(self, line: Obj) -> None:
        line = {"t": round(self.now(), 3), **line}
        with self._lock:
            self._lines.append(line)
            if self._out is not None:
                self._out.write(json.dumps(line) + "\n")
                self._out.flush()

    def lines(self) -> list[Obj]:
        with self._lock:
            return list(self._lines)

    # --- watches ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the three watches; returns once each has listed the (empty) namespace."""
        lists = {
            "jobs": self.batch.list_namespaced_job,
            "pods": self.core.list_namespaced_pod,
            "events": self.core.list_namespaced_event,
        }
        for name, fn in lists.items():
            thread = threading.Thread(
                target=self._watch_loop, args=(name, fn), name=f"recorder-{name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        try:
            self._ready.wait(timeout=60)
        except threading.BrokenBarrierError:
            errors = [line["error"] for line in self.lines() if "error" in line][-3:]
            raise RuntimeError(
                f"the watches of namespace {self.namespace} did not start within 60 s: "
                f"{errors or 'no answer'}"
            ) from None

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            watches = list(self._watches)
        for w in watches:
            w.stop()
        for thread in self._threads:
            thread.join(timeout=_WATCH_TIMEOUT_S + 5)

    def _list(self, fn: Any) -> tuple[dict[str, Obj], str]:
        body = json.loads(fn(self.namespace, _preload_content=False).data)
        items = {str(o["metadata"]["uid"]): o for o in body.get("items") or []}
        return items, str(body["metadata"]["resourceVersion"])

    def _watch_loop(self, name: str, fn: Any) -> None:
        known: dict[str, Obj] = {}
        # The last resourceVersion seen ("" = list first), kept across a watch that breaks
        # midway, so the next one resumes after the last event recorded, not before.
        state = {"rv": ""}
        first = True
        failures = 0
        while not self._stop.is_set():
            try:
                if not state["rv"]:
                    # A fresh start, or the history is gone (410): list, and report what
                    # changed since the last state seen, as an informer's relist does.
                    listed, state["rv"] = self._list(fn)
                    for uid, obj in listed.items():
                        old = known.get(uid)
                        if old is None:
                            self.emit({"watch": name, "type": "ADDED", "object": obj})
                        elif old["metadata"].get("resourceVersion") != obj["metadata"].get(
                            "resourceVersion"
                        ):
                            self.emit({"watch": name, "type": "MODIFIED", "object": obj})
                    for uid in set(known) - set(listed):
                        self.emit({"watch": name, "type": "DELETED", "object": known[uid]})
                    known = listed
                if first:
                    first = False
                    with contextlib.suppress(threading.BrokenBarrierError):
                        self._ready.wait(timeout=60)
                self._watch_once(name, fn, state, known)
                failures = 0
                continue
            except ApiException as exc:
                if self._stop.is_set():
                    break
                self.emit({"watch": name, "error": f"({exc.status})\nReason: {exc.reason}\n"})
                if exc.status == 410:
                    state["rv"] = ""
            except Exception as exc:  # a dropped connection: resume from the last version
                if self._stop.is_set():
                    break
                self.emit({"watch": name, "error": f"{type(exc).__name__}: {exc}"})
            # Resume at once after one failure; back off when they repeat (a refused watch).
            self._stop.wait(min(5.0, 0.05 * 2**failures) if failures else 0.0)
            failures += 1

    def _watch_once(self, name: str, fn: Any, state: dict[str, str], known: dict[str, Obj]) -> None:
        w = _Watch()
        with self._lock:
            self._watches.append(w)
        try:
            if self._stop.is_set():
                return
            for event in w.stream(
                fn,
                self.namespace,
                resource_version=state["rv"],
                allow_watch_bookmarks=True,
                timeout_seconds=_WATCH_TIMEOUT_S,
            ):
                # The object as the server sent it (the client's ERROR handling needs the
                # deserialising mode, which keeps the raw object beside the model).
                obj = event.get("raw_object") or {}
                state["rv"] = str((obj.get("metadata") or {}).get("resourceVersion") or state["rv"])
                if event.get("type") == "BOOKMARK":
                    continue
                uid = str(obj["metadata"]["uid"])
                if event["type"] == "DELETED":
                    known.pop(uid, None)
                else:
                    known[uid] = obj
                self.emit({"watch": name, "type": event["type"], "object": obj})
        finally:
            with self._lock:
                self._watches.remove(w)

    # --- actions ---------------------------------------------------------------------------

    def job_pods(self, job_name: str) -> list[Obj]:
        body = json.loads(
            self.core.list_namespaced_pod(
                self.namespace,
                label_selector=f"batch.kubernetes.io/job-name={job_name}",
                _preload_content=False,
            ).data
        )
        pods: list[Obj] = body.get("items") or []
        return pods

    def _live_pods(self, job_name: str) -> list[Obj]:
        return [
            p
            for p in self.job_pods(job_name)
            if not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]

    def all_running(self, job_name: str) -> bool:
        pods = self._live_pods(job_name)
        return bool(pods) and all((p.get("status") or {}).get("phase") == "Running" for p in pods)

    def all_started(self, job_name: str) -> bool:
        """Every live pod of the Job is Running, and each whose command prints a line before
        it sleeps (the delete-running scenarios print once their SIGTERM handler is in
        place) has printed it: Running only says the container started, and a loaded
        machine may take seconds more to get the interpreter that far."""
        pods = self._live_pods(job_name)
        if not pods or any((p.get("status") or {}).get("phase") != "Running" for p in pods):
            return False
        return all(self._has_printed(p) for p in pods if _prints_first(p))

    def _has_printed(self, pod: Obj) -> bool:
        try:
            log = self.core.read_namespaced_pod_log(
                pod["metadata"]["name"], self.namespace, _request_timeout=10
            )
        except ApiException:
            return False  # not readable yet (the container is still being created)
        return bool(str(log).strip())

    def act(self, action: str, job_name: str) -> None:
        """Do ``action`` to the Job now; a refused call is recorded, not raised."""
        self.emit({"action": action})
        try:
            if action == "delete-pods":
                for pod in self._live_pods(job_name):
                    self.core.delete_namespaced_pod(pod["metadata"]["name"], self.namespace)
            elif action == "evict":
                for pod in self._live_pods(job_name):
                    name = pod["metadata"]["name"]
                    body = {
                        "apiVersion": "policy/v1",
                        "kind": "Eviction",
                        "metadata": {"name": name, "namespace": self.namespace},
                    }
                    self.core.create_namespaced_pod_eviction(name, self.namespace, body)
            elif action in ("suspend", "resume"):
                patch = {"spec": {"suspend": action == "suspend"}}
                self.batch.patch_namespaced_job(job_name, self.namespace, patch)
            elif action == "delete-job":
                # What ``kubectl delete job`` does: background propagation.
                self.batch.delete_namespaced_job(
                    job_name, self.namespace, propagation_policy="Background"
                )
            else:
                raise ValueError(f"unknown action {action!r}: one of {', '.join(ACTIONS)}")
        except ApiException as exc:
            self.emit({"action": action, "error": f"({exc.status})\nReason: {exc.reason}\n"})

    def create(self, obj: Obj) -> None:
        """Create a setup object or the Job; a refused call is recorded, not raised."""
        kind = obj.get("kind")
        try:
            if kind == "Job":
                self.batch.create_namespaced_job(self.namespace, obj)
            elif kind == "ResourceQuota":
                self.core.create_namespaced_resource_quota(self.namespace, obj)
            elif kind == "Secret":
                self.core.create_namespaced_secret(self.namespace, obj)
            elif kind == "ConfigMap":
                self.core.create_namespaced_config_map(self.namespace, obj)
            else:
                raise ValueError(f"cannot create a {kind} in a scenario")
        except ApiException as exc:
            self.emit({"setup": kind, "error": f"({exc.status})\nReason: {exc.reason}\n"})


_PRINTS_FIRST = re.compile(r"print\(.*time\.sleep\(", re.DOTALL)


def _prints_first(pod: Obj) -> bool:
    """Whether the pod's (first) container runs ``python3 -c`` code that prints before it
    sleeps."""
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    command = [str(c) for c in containers[0].get("command") or []]
    return len(command) >= 3 and command[1] == "-c" and bool(_PRINTS_FIRST.search(command[2]))


def record(
    api: Any,
    scenario: Scenario,
    out: Sink | None = None,
    *,
    namespace: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    speed: float = 1.0,
    extra: float = 0.0,
    until: Callable[[list[Obj]], bool] | None = None,
    running_timeout: float = 60.0,
    delete_namespace: bool = True,
) -> list[Obj]:
    """Run ``scenario`` in a new namespace through the client ``api``; return the trace lines.

    ``delete-pods`` and ``evict`` happen at their time but not before the Job's live pods are
    all Running, and have printed their first line if their command prints before it sleeps
    (at most ``running_timeout`` scenario seconds later): they stand for "while the task
    runs", which a slow start must not turn into "before it started". The recording
    ends at ``scenario.duration``; with ``until``, it goes on for up to ``extra`` more seconds
    until ``until(lines)`` holds (a slower cluster gets the time to catch up, a matching one
    stops at once).
    """
    namespace = namespace or f"trace-{scenario.name}-{uuid.uuid4().hex[:5]}"[:63]
    core: Any = client.CoreV1Api(api)
    core.create_namespace(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
    )
    recorder = Recorder(api, namespace, clock=clock, speed=speed, out=out)
    job_name = str(scenario.job["metadata"]["name"])
    try:
        recorder.start()
        for obj in scenario.setup:
            recorder.create(obj)
        recorder.wait_until(JOB_CREATED_AT)
        recorder.create(scenario.job)
        for t, action in scenario.actions:
            recorder.wait_until(t)
            if action in ("delete-pods", "evict"):
                recorder.wait_until(
                    recorder.now() + running_timeout, until=lambda: recorder.all_started(job_name)
                )
            recorder.act(action, job_name)
        recorder.wait_until(scenario.duration)
        if until is not None:
            recorder.wait_until(
                max(scenario.duration, recorder.now()) + extra,
                until=lambda: until(recorder.lines()),
            )
    finally:
        recorder.stop()
        if delete_namespace:
            with contextlib.suppress(ApiException):
                core.delete_namespace(namespace)
    return recorder.lines()


def with_images(scenario: Scenario, mapping: dict[str, str]) -> Scenario:
    """``scenario`` with its containers' images renamed by ``mapping`` (others kept)."""
    job = copy.deepcopy(scenario.job)
    for container in job["spec"]["template"]["spec"].get("containers") or []:
        container["image"] = mapping.get(container.get("image", ""), container.get("image"))
    return dataclasses.replace(scenario, job=job)


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.kubesim.recorder",
        description="Record a Job scenario on a cluster as a JSONL trace (docs/testing.md).",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--cluster",
        default=os.environ.get("K8SX_TEST_CLUSTER"),
        help="the cluster.json of the real-cluster mode (default: $K8SX_TEST_CLUSTER)",
    )
    where.add_argument("--kubeconfig", help="a kubeconfig instead of --cluster")
    parser.add_argument("--context", help="with --kubeconfig: its context")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-trace", help="replay the scenario of this trace")
    source.add_argument("--scenario", help="a scenario JSON: name, job, actions, duration, setup")
    parser.add_argument("--name", help="the scenario's name (default: the file's stem)")
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="run image NEW where the scenario says OLD (repeatable)",
    )
    parser.add_argument("--namespace", help="default: trace-<name>-<random>")
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--keep-namespace", action="store_true")
    args = parser.parse_args(argv)

    if args.kubeconfig:
        kubeconfig, context = args.kubeconfig, args.context
    elif args.cluster:
        from tests.kube_helpers import load_cluster_config

        cluster = load_cluster_config(args.cluster)
        kubeconfig, context = cluster.kubeconfig, args.context or cluster.context
    else:
        parser.error("which cluster? --cluster cluster.json, K8SX_TEST_CLUSTER or --kubeconfig")
    if args.from_trace:
        path = Path(args.from_trace)
        scenario = scenario_from_trace(args.name or path.stem, load_trace(path))
    else:
        scenario = Scenario.from_json(json.loads(Path(args.scenario).read_text()))
    try:
        images = dict(item.split("=", 1) for item in args.image)
    except ValueError:
        parser.error("--image takes OLD=NEW")
    scenario = with_images(scenario, images)
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, context=context, client_configuration=configuration
    )
    with client.ApiClient(configuration) as api, open(args.out, "w", encoding="utf-8") as out:
        lines = record(
            api,
            scenario,
            out,
            namespace=args.namespace,
            delete_namespace=not args.keep_namespace,
        )
    print(f"{args.out}: {len(lines)} lines, {scenario.duration:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
