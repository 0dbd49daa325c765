"""The kubelet of kubesim: runs the pods bound to the node and reports their status.

Runtimes:

- ``process``: each container's ``command + args`` runs as a local subprocess (own process
  group, cwd = a per-pod temp dir) with the container's resolved ``env``/``envFrom``. The image
  is not used, except that images matching ``unpullable`` (a regex) behave like an image that
  cannot be pulled: ``ErrImagePull`` then ``ImagePullBackOff`` forever.
- ``podman``: the image is pulled (``--tls-verify=false`` for loopback registries) and run
  attached with ``podman run --network host --rm=false``, ``--memory`` / ``--cpus`` from the
  limits; OOM is read back from ``podman inspect``. The attached output is the log (what
  ``podman logs`` would return).

Termination messages: a local process cannot write ``/dev/termination-log``, so each container
gets a per-pod file whose path is in the environment variable ``KUBESIM_TERMINATION_MESSAGE_PATH``
(podman bind-mounts the same file at the container's ``terminationMessagePath``). The kubelet
reads at most 4096 bytes; ``FallbackToLogsOnError`` uses the last 80 lines / 2048 bytes of the
log when the file is empty and the exit code is non-zero (§5).

OOM in the process runtime: the kubelet polls the resident set size of the container's process
tree every ``oom_poll_s`` and SIGKILLs the group when it exceeds ``limits.memory``, reporting
``OOMKilled`` / 137. RSS polling rather than ``RLIMIT_AS``: the cgroup OOM killer acts on
resident memory and kills with SIGKILL, while ``RLIMIT_AS`` caps *virtual* address space (which
CPython threads and malloc arenas reserve generously) and makes allocations fail with
``MemoryError`` inside the program instead of killing it.

Stuck states that never end on their own: unpullable images, ``CreateContainerConfigError``
(missing Secret/ConfigMap or key; retried every 10 s and on every Secret/ConfigMap change).
Deletion: SIGTERM, SIGKILL after ``deletionGracePeriodSeconds`` of clock time, terminal phase,
then ``delete(grace_period_seconds=0)``.

PID 1 in the process runtime: a container's command is PID 1 of its PID namespace, and the
kernel delivers a signal other than SIGKILL/SIGSTOP to it only if it installed a handler. So
before signalling, the kubelet reads the ``SigCgt`` mask of ``/proc/PID/status`` and signals the
main process (not its group, as ``StopContainer`` signals PID 1 only) only if the bit is set: a
program without a SIGTERM handler runs through the grace period and ends with SIGKILL (137).
SIGKILL takes the whole container down (process group and process tree), and so does the main
process exiting. The podman runtime gets all of this from the real PID namespace.

Fault injection: :meth:`Kubelet.kill_pod`, :meth:`Kubelet.evict`, :meth:`Kubelet.lose_node`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from . import eviction
from .clock import Clock, TimerHandle
from .errors import ApiError
from .events import go_duration
from .events import record as record_event
from .scheduler import parse_quantity

__all__ = ["TERMINATION_ENV", "Kubelet", "LogLine", "resolve_env"]

_log = logging.getLogger(__name__)

Obj = dict[str, Any]

TERMINATION_ENV = "KUBESIM_TERMINATION_MESSAGE_PATH"
MAX_TERMINATION_MESSAGE = 4096
FALLBACK_LOG_BYTES = 2048
FALLBACK_LOG_LINES = 80
IMAGE_BACKOFF_INITIAL_S = 10.0
IMAGE_BACKOFF_MAX_S = 300.0
CRASH_BACKOFF_INITIAL_S = 10.0
CRASH_BACKOFF_MAX_S = 300.0
CONFIG_RETRY_S = 10.0
DEFAULT_UNPULLABLE = r"(^|/)(unpullable|does-not-exist|nonexistent)[^/]*$"


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamp_nano(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


class ConfigError(Exception):
    """A container cannot be configured (CreateContainerConfigError); the text is kubelet's."""


def _field_path_value(pod: Obj, path: str) -> str:
    meta = pod.get("metadata") or {}
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName", ""),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName", ""),
        "status.hostIP": "127.0.0.1",
        "status.podIP": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path])
    raise ConfigError(f"unsupported fieldPath: {path}")


def _lookup(store: Any, kind: str, namespace: str, name: str) -> Obj | None:
    resource = "secrets" if kind == "Secret" else "configmaps"
    try:
        obj: Obj = store.get(resource, namespace, name)
    except ApiError as exc:
        if exc.code == 404:
            return None
        raise
    return obj


def _data(obj: Obj, kind: str) -> dict[str, str]:
    import base64

    if kind == "Secret":
        result = {
            k: base64.b64decode(v).decode("utf-8", "replace")
            for k, v in (obj.get("data") or {}).items()
        }
        result.update(obj.get("stringData") or {})
        return result
    return dict(obj.get("data") or {})


def resolve_env(store: Any, pod: Obj, container: Obj) -> dict[str, str]:
    """The container's environment as kubelet ``makeEnvironmentVariables`` builds it."""
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(key)
            if ref is None:
                continue
            obj = _lookup(store, kind, namespace, ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind.lower()} "{ref.get("name", "")}" not found')
            for k, v in _data(obj, kind).items():
                env[prefix + k] = v
    for var in container.get("env") or []:
        name = var.get("name", "")
        if "valueFrom" not in var:
            env[name] = _expand(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"] or {}
        if "fieldRef" in source:
            env[name] = _field_path_value(pod, source["fieldRef"].get("fieldPath", ""))
            continue
        for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
            ref = source.get(key)
            if ref is None:
                continue
            obj = _lookup(store, kind, namespace, ref.get("name", ""))
            optional = bool(ref.get("optional"))
            if obj is None:
                if optional:
                    break
                raise ConfigError(f'{kind.lower()} "{ref.get("name", "")}" not found')
            data = _data(obj, kind)
            if ref.get("key") not in data:
                if optional:
                    break
                raise ConfigError(
                    f"couldn't find key {ref.get('key')} in {kind} {namespace}/{ref.get('name')}"
                )
            env[name] = data[ref["key"]]
            break
        else:
            if "resourceFieldRef" in source:
                env[name] = _resource_field(container, source["resourceFieldRef"])
    return env


def _resource_field(container: Obj, ref: Obj) -> str:
    resource = str(ref.get("resource", ""))
    kind, _, name = resource.partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if value is None:
        return "0"
    divisor = parse_quantity(ref.get("divisor", "1") or "1")
    amount = parse_quantity(value) / divisor
    return str(int(-(-amount // 1)))  # ceil, as resource.Quantity division does


def _expand(value: str, env: dict[str, str]) -> str:
    """``$(VAR)`` references to earlier variables; ``$$`` escapes (kubelet expansion)."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", repl, value)


@dataclass
class LogLine:
    at: datetime
    data: bytes


@dataclass
class _Container:
    name: str
    spec: Obj
    init: bool = False
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    image_id: str = ""
    container_id: str = ""
    log: list[LogLine] = field(default_factory=list)
    previous_log: list[LogLine] | None = None
    running: bool = False  # an instance is executing now (log may still grow)
    proc: subprocess.Popen[bytes] | None = None
    oom_killed: bool = False
    termination_file: Path | None = None
    ever_started: bool = False


class _PodRun:
    def __init__(self, pod: Obj, workdir: Path) -> None:
        meta = pod["metadata"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.pod = pod
        spec = pod.get("spec") or {}
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.init = [_Container(c["name"], c, init=True) for c in spec.get("initContainers") or []]
        self.containers = [_Container(c["name"], c) for c in spec.get("containers") or []]
        self.dir = workdir
        self.cond = threading.Condition()
        self.deleting = False
        self.terminated = False  # its terminal phase is published (under cond, with deleting)
        self.grace_timer: TimerHandle | None = None
        self.grace_over = False  # the deletion's grace period ended (SIGKILL was sent)
        self.lost = False
        self.phase = "Pending"
        self.start_time: str | None = None
        self.initialized = not self.init
        self.sandbox_ready = False  # PodReadyToStartContainers: False until the first start
        self.thread: threading.Thread | None = None
        self.config_changed = False
        self.done = False

    def all_containers(self) -> list[_Container]:
        return self.init + self.containers

    def find(self, name: str) -> _Container | None:
        for c in self.all_containers():
            if c.name == name:
                return c
        return None


def _signal_group(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` installed a handler for ``sig`` (``SigCgt`` of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` in the process tree, from /proc."""
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    children = [int(x) for x in fh.read().split()]
                found.extend(children)
                pending.extend(children)
        except (OSError, ValueError):
            continue
    return found


def _kill_container(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL the whole container: its main process, its process group and its tree.

    Also after the main process has exited: when PID 1 of a PID namespace dies, the kernel
    kills every other process of the namespace.
    """
    if proc is None:
        return
    tree = _descendants(proc.pid) if proc.returncode is None else []
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _signal_pid1(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Signal a container's main process as the kernel treats PID 1 of a PID namespace.

    SIGKILL takes the whole container down. Any other signal reaches the main process only,
    and only if it installed a handler for it: the kernel drops signals whose action is the
    default for a namespace's init (a Python program without a SIGTERM handler runs on
    through a graceful delete and is SIGKILLed when the grace period ends, exit 137).
    """
    if proc is None or proc.poll() is not None:
        return
    if sig in (signal.SIGKILL, signal.SIGSTOP):
        if sig == signal.SIGKILL:
            _kill_container(proc)
        else:
            _signal_group(proc, sig)
        return
    if _catches(proc.pid, sig):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, sig)


def _tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, from /proc."""
    total = 0
    pending = [pid]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            with open(f"/proc/{current}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    pending.extend(int(x) for x in fh.read().split())
        except (OSError, ValueError, IndexError):
            continue
    return total


class Kubelet:
    """Runs pods bound to ``node_name`` (see the module docstring)."""

    def __init__(
        self,
        store: Any,
        clock: Clock,
        runtime: str = "process",
        *,
        node_name: str = "kubesim-node",
        node: Any = None,
        podman_cmd: Sequence[str] = ("podman",),
        unpullable: str = DEFAULT_UNPULLABLE,
        workdir: str | os.PathLike[str] | None = None,
        oom_poll_s: float = 0.05,
        base_env: dict[str, str] | None = None,
        pod_start_delay: float = 0.0,
    ) -> None:
        if runtime not in ("process", "podman"):
            raise ValueError(f"unknown runtime {runtime!r}: use 'process' or 'podman'")
        self.store = store
        self.clock = clock
        self.runtime = runtime
        # ``node`` (a scheduler.Node) wins over ``node_name`` so both halves agree on it.
        self.node_name = str(node.name) if node is not None else node_name
        self.podman_cmd = list(podman_cmd)
        self.unpullable = re.compile(unpullable) if unpullable else None
        self.oom_poll_s = oom_poll_s
        # Seconds between a pod's sandbox and its containers starting: what a real node
        # spends on scheduling, pulling a cached image and starting the container (about
        # 3 s measured on a real 1.36 node). 0: at once.
        self.pod_start_delay = pod_start_delay
        self.base_env = (
            dict(base_env)
            if base_env is not None
            else {k: os.environ[k] for k in ("PATH", "LANG", "TZ") if k in os.environ}
        )
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kubesim-kubelet-"))
        self._runs: dict[tuple[str, str], _PodRun] = {}
        self._lock = threading.RLock()
        self._stopping = False
        self._unsubscribe: Any = None
        self._threads: list[threading.Thread] = []

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._unsubscribe = self.store.subscribe(self._on_event)
        pods, _ = self.store.list("pods")
        for pod in pods:
            self._observe(pod)

    def stop(self) -> None:
        """Kill every process, join every thread; nothing outlives this call."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        with self._lock:
            self._stopping = True
            runs = list(self._runs.values())
        for run in runs:
            with run.cond:
                for c in run.all_containers():
                    self._kill(c)
                run.cond.notify_all()
            if run.grace_timer is not None:
                run.grace_timer.cancel()
        for run in runs:
            if run.thread is not None:
                run.thread.join(timeout=10)
        for thread in list(self._threads):
            thread.join(timeout=10)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- events ----------------------------------------------------------------------------

    def _on_event(self, event_type: str, resource: str, obj: Obj) -> None:
        if resource in ("secrets", "configmaps"):
            with self._lock:
                runs = list(self._runs.values())
            for run in runs:
                with run.cond:
                    run.config_changed = True
                    run.cond.notify_all()
            return
        if resource != "pods":
            return
        if event_type == "DELETED":
            key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
            with self._lock:
                gone = self._runs.get(key)
            if gone is not None and gone.uid == obj["metadata"].get("uid"):
                # Force-deleted (or removed after termination): nothing may keep running.
                run = gone
                with run.cond:
                    run.lost = True
                    for c in run.all_containers():
                        self._kill(c)
                    run.cond.notify_all()
            return
        self._observe(obj)

    def _observe(self, pod: Obj) -> None:
        if (pod.get("spec") or {}).get("nodeName") != self.node_name:
            return
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if self._stopping:
                return
            run = self._runs.get(key)
            if run is not None and run.uid != meta["uid"]:
                run = None  # a new pod with the old name
            if run is None:
                phase = (pod.get("status") or {}).get("phase")
                if phase in ("Succeeded", "Failed"):
                    if meta.get("deletionTimestamp"):
                        self._spawn(self._finish_delete, key)
                    return
                run = _PodRun(
                    pod, self.workdir / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
                )
                self._runs[key] = run
                run.thread = threading.Thread(
                    target=self._run_pod, args=(run,), name=f"kubelet-{meta['name']}", daemon=True
                )
                run.thread.start()
        if meta.get("deletionTimestamp"):
            if not run.deleting:
                for c in run.all_containers():
                    if c.running:
                        self._event(run, c, "Normal", "Killing", f"Stopping container {c.name}")
            self._begin_delete(run, int(meta.get("deletionGracePeriodSeconds") or 0))

    def _spawn(self, fn: Any, *args: Any) -> None:
        thread = threading.Thread(target=fn, args=args, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _finish_delete(self, key: tuple[str, str]) -> None:
        with contextlib.suppress(ApiError):
            self.store.delete("pods", key[0], key[1], grace_period_seconds=0)

    def _begin_delete(self, run: _PodRun, grace: int) -> None:
        with run.cond:
            if run.deleting:
                return
            run.deleting = True
            terminated = run.terminated
            for c in run.all_containers():
                self._stop_container(c, signal.SIGTERM)
            run.cond.notify_all()
        if terminated:
            # It ended by itself just before the deletion came (its _terminate saw no
            # deletion): a terminal pod's deletion completes at once, as the real kubelet's
            # status manager does, not when the grace period ends (nor never).
            self._spawn(self._finish_delete, (run.namespace, run.name))
            return

        def kill() -> None:
            with run.cond:
                run.grace_over = True
                for c in run.all_containers():
                    self._stop_container(c, signal.SIGKILL)
                run.cond.notify_all()

        run.grace_timer = self.clock.call_later(grace, kill)

    def _kill(self, c: _Container) -> None:
        """SIGKILL a container at once (the whole container for the process runtime)."""
        if self.runtime == "process":
            _kill_container(c.proc)
        else:
            _signal_group(c.proc, signal.SIGKILL)

    def _stop_container(self, c: _Container, sig: int) -> None:
        if self.runtime == "podman" and c.proc is not None and c.proc.poll() is None:
            name = c.container_id.partition("://")[2]
            if name:
                self._spawn(self._podman_quiet, ["kill", "--signal", str(int(sig)), name])
                return
        if self.runtime == "process":
            _signal_pid1(c.proc, sig)
        else:
            _signal_group(c.proc, sig)

    # --- fault injection -------------------------------------------------------------------

    def _run_for(self, namespace: str, name: str) -> _PodRun:
        with self._lock:
            run = self._runs.get((namespace, name))
        if run is None:
            raise KeyError(f"pod {namespace}/{name} is not running on {self.node_name}")
        return run

    def kill_pod(self, namespace: str, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to every running container of the pod (as if the process crashed)."""
        run = self._run_for(namespace, name)
        with run.cond:
            for c in run.all_containers():
                self._stop_container(c, sig)

    def evict(self, namespace: str, name: str, delete_options: Obj | None = None) -> None:
        """The Eviction API (as ``POST .../pods/NAME/eviction``): DisruptionTarget
        (EvictionByEvictionAPI), then a graceful delete; see :mod:`eviction`."""
        eviction.evict(self.store, namespace, name, delete_options)

    def lose_node(self) -> None:
        """The node vanishes: every pod on it is killed, then PodGC fails and deletes it.

        Reason choice: when a node is gone, PodGC's orphaned-pod collection marks the pods
        Failed with ``DisruptionTarget`` reason ``DeletionByPodGC`` ("PodGC: node no longer
        exists") and force-deletes them (KEP-3329). ``TerminationByKubelet`` needs a live
        kubelet, and ``DeletionByTaintManager`` only follows after the 300 s not-ready
        toleration. Container statuses stay as last reported, since no kubelet reports again.
        The simulated node itself is usable again at once (a replacement node).
        """
        with self._lock:
            runs = list(self._runs.values())
        now = _stamp(self.clock.now())
        for run in runs:
            with run.cond:
                if run.done or run.phase in ("Succeeded", "Failed"):
                    continue
                run.lost = True
                for c in run.all_containers():
                    self._stop_container(c, signal.SIGKILL)
                run.cond.notify_all()

            def fail(pod: Obj) -> bool:
                status = pod.setdefault("status", {})
                if status.get("phase") in ("Succeeded", "Failed"):
                    return False
                status["phase"] = "Failed"
                _set_condition(
                    pod,
                    "DisruptionTarget",
                    "True",
                    now,
                    "DeletionByPodGC",
                    "PodGC: node no longer exists",
                )
                return True

            with contextlib.suppress(ApiError):
                self.store.mutate("pods", run.namespace, run.name, fail)
                self.store.delete("pods", run.namespace, run.name, grace_period_seconds=0)

    # --- the pod worker --------------------------------------------------------------------

    def _wait(self, run: _PodRun, seconds: float, *, config: bool = False) -> None:
        """Sleep ``seconds`` of clock time, waking early on deletion/stop (and config changes)."""
        fired = threading.Event()

        def wake() -> None:
            fired.set()
            with run.cond:
                run.cond.notify_all()

        handle = self.clock.call_later(seconds, wake)
        with run.cond:
            run.config_changed = False
            while not (
                fired.is_set()
                or run.deleting
                or run.lost
                or self._stopping
                or (config and run.config_changed)
            ):
                run.cond.wait(1.0)
        handle.cancel()

    def _interrupted(self, run: _PodRun) -> bool:
        return run.deleting or run.lost or self._stopping

    def _run_pod(self, run: _PodRun) -> None:
        try:
            self._run_pod_inner(run)
        except Exception:
            _log.exception("kubelet worker for %s/%s crashed", run.namespace, run.name)
        finally:
            with run.cond:
                for c in run.all_containers():
                    self._kill(c)
            run.done = True

    def _run_pod_inner(self, run: _PodRun) -> None:
        run.dir.mkdir(parents=True, exist_ok=True)
        run.start_time = _stamp(self.clock.now())
        # The real kubelet reports the pod before its sandbox is up, then again once it is
        # (PodReadyToStartContainers False, then True), before pulling any image.
        self._publish(run)
        run.sandbox_ready = True
        self._publish(run)
        if self.pod_start_delay > 0:
            self._wait(run, self.pod_start_delay)
            if self._interrupted(run):
                return self._terminate(run)
        # 1. images
        for c in run.all_containers():
            if not self._pull(run, c):
                return self._terminate(run)
        # 2. init containers, one after the other
        for c in run.init:
            while True:
                env = self._configure(run, c)
                if env is None:
                    return self._terminate(run)
                code = self._execute(run, c, env)
                if code == 0 or self._interrupted(run):
                    break
                if run.restart_policy == "Never":
                    run.phase = "Failed"
                    return self._terminate(run)
                if not self._crash_backoff(run, c):
                    return self._terminate(run)
            if self._interrupted(run):
                return self._terminate(run)
        run.initialized = True
        # 3. app containers, all at once
        envs: dict[str, dict[str, str]] = {}
        for c in run.containers:
            env = self._configure(run, c)
            if env is None:
                return self._terminate(run)
            envs[c.name] = env
        threads = [
            threading.Thread(target=self._container_loop, args=(run, c, envs[c.name]), daemon=True)
            for c in run.containers
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._terminate(run)
        return None

    def _container_loop(self, run: _PodRun, c: _Container, env: dict[str, str]) -> None:
        while True:
            code = self._execute(run, c, env)
            if self._interrupted(run):
                return
            if run.restart_policy == "Never" or (run.restart_policy == "OnFailure" and code == 0):
                return
            if not self._crash_backoff(run, c):
                return

    def _crash_backoff(self, run: _PodRun, c: _Container) -> bool:
        delay = min(CRASH_BACKOFF_INITIAL_S * 2**c.restart_count, CRASH_BACKOFF_MAX_S)
        c.last_state = {"terminated": dict(c.state.get("terminated") or {})}
        c.previous_log = c.log
        c.log = []
        c.restart_count += 1
        c.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {int(delay)}s restarting failed container={c.name} "
                f"pod={run.name}_{run.namespace}({run.uid})",
            }
        }
        c.ready = False
        c.started = False
        self._event(
            run,
            c,
            "Warning",
            "BackOff",
            f"Back-off restarting failed container {c.name} in pod "
            f"{run.name}_{run.namespace}({run.uid})",
        )
        self._publish(run)
        self._wait(run, delay)
        return not self._interrupted(run)

    def _event(self, run: _PodRun, c: _Container, type_: str, reason: str, message: str) -> None:
        """Record an Event about container ``c`` of the pod, as this node's kubelet."""
        field_path = f"spec.{'initContainers' if c.init else 'containers'}{{{c.name}}}"
        record_event(
            self.store,
            run.pod,
            type_,
            reason,
            message,
            "kubelet",
            self.node_name,
            field_path=field_path,
        )

    def _image_present(self, run: _PodRun, c: _Container) -> None:
        image = c.spec.get("image", "")
        self._event(
            run,
            c,
            "Normal",
            "Pulled",
            f'Container image "{image}" already present on machine and can be accessed by the pod',
        )

    def _pull(self, run: _PodRun, c: _Container) -> bool:
        image = str(c.spec.get("image", ""))
        backoff = IMAGE_BACKOFF_INITIAL_S
        while not self._interrupted(run):
            error = self._try_pull(image, c, run)
            if error is None:
                return True
            if error.endswith("pull policy of Never"):
                self._event(run, c, "Warning", "ErrImageNeverPull", error)
            else:
                self._event(run, c, "Warning", "Failed", f'Failed to pull image "{image}": {error}')
            self._event(run, c, "Warning", "Failed", "Error: ErrImagePull")
            c.state = {"waiting": {"reason": "ErrImagePull", "message": error}}
            self._publish(run)
            # The kubelet reports ErrImagePull until the next sync, then backs off.
            self._wait(run, 1.0)
            if self._interrupted(run):
                break
            c.state = {
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": f'Back-off pulling image "{image}": ErrImagePull: {error}',
                }
            }
            self._event(run, c, "Normal", "BackOff", f'Back-off pulling image "{image}"')
            self._event(run, c, "Warning", "Failed", "Error: ImagePullBackOff")
            self._publish(run)
            self._wait(run, backoff)
            backoff = min(backoff * 2, IMAGE_BACKOFF_MAX_S)
        return False

    def _try_pull(self, image: str, c: _Container, run: _PodRun) -> str | None:
        policy = c.spec.get("imagePullPolicy", "IfNotPresent")
        if self.unpullable is not None and self.unpullable.search(image):
            self._event(run, c, "Normal", "Pulling", f'Pulling image "{image}"')
            return (
                f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
                f'failed to resolve reference "{image}": {image}: not found'
            )
        if self.runtime != "podman":
            c.image_id = f"kubesim-process://{image}"
            if policy == "Always":
                # Nothing to fetch for a local process: the pull is instant and its size unknown.
                self._event(run, c, "Normal", "Pulling", f'Pulling image "{image}"')
                self._event(
                    run,
                    c,
                    "Normal",
                    "Pulled",
                    f'Successfully pulled image "{image}" in 0s (0s including waiting). '
                    "Image size: 0 bytes.",
                )
            else:
                self._image_present(run, c)
            return None
        present = self._podman_quiet(["image", "exists", image]) == 0
        if present and policy != "Always":
            c.image_id = image
            self._image_present(run, c)
            return None
        if policy == "Never":
            return f'Container image "{image}" is not present with pull policy of Never'
        self._event(run, c, "Normal", "Pulling", f'Pulling image "{image}"')
        pull_started = self.clock.monotonic()
        args = ["pull", "--quiet"]
        host = image.split("/", 1)[0]
        if host.startswith(("127.0.0.1", "localhost")):
            args.append("--tls-verify=false")
        result = subprocess.run(
            [*self.podman_cmd, *args, image], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            detail = result.stderr.strip().splitlines()[-1:] or ["pull failed"]
            return f'rpc error: code = Unknown desc = failed to pull image "{image}": {detail[0]}'
        c.image_id = result.stdout.strip() or image
        took = go_duration(self.clock.monotonic() - pull_started)
        size = subprocess.run(
            [*self.podman_cmd, "image", "inspect", "--format", "{{.Size}}", image],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        self._event(
            run,
            c,
            "Normal",
            "Pulled",
            f'Successfully pulled image "{image}" in {took} ({took} including waiting). '
            f"Image size: {size or 0} bytes.",
        )
        return None

    def _podman_quiet(self, args: list[str]) -> int:
        return subprocess.run(
            [*self.podman_cmd, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        ).returncode

    def _configure(self, run: _PodRun, c: _Container) -> dict[str, str] | None:
        """Resolve the environment; wait in CreateContainerConfigError while it fails."""
        while not self._interrupted(run):
            try:
                pod = self.store.get("pods", run.namespace, run.name)
                return resolve_env(self.store, pod, c.spec)
            except ConfigError as exc:
                c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
                self._event(run, c, "Warning", "Failed", f"Error: {exc}")
                self._publish(run)
                self._wait(run, CONFIG_RETRY_S, config=True)
                if not self._interrupted(run):
                    # The next pod sync goes through EnsureImageExists again.
                    self._image_present(run, c)
            except ApiError:
                return None
        return None

    def _execute(self, run: _PodRun, c: _Container, env: dict[str, str]) -> int:
        """Run one instance of a container to completion; returns its exit code."""
        spec = c.spec
        c.termination_file = run.dir / f"{c.name}.termination-log"
        c.termination_file.write_bytes(b"")
        full_env = {**self.base_env, "HOSTNAME": run.pod["spec"].get("hostname") or run.name}
        full_env.update(env)
        full_env[TERMINATION_ENV] = str(c.termination_file)
        limits = (spec.get("resources") or {}).get("limits") or {}
        memory_limit = parse_quantity(limits["memory"]) if "memory" in limits else None
        started = self.clock.now()
        try:
            argv = self._argv(run, c, full_env, limits)
            self._event(run, c, "Normal", "Created", "Container created")
            proc = subprocess.Popen(
                argv,
                cwd=run.dir,
                env=full_env if self.runtime == "process" else None,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            finished = self.clock.now()
            c.state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": f"failed to create containerd task: failed to create shim task: "
                    f"OCI runtime create failed: runc create failed: unable to start container "
                    f"process: exec: {exc}: unknown",
                    "startedAt": "1970-01-01T00:00:00Z",
                    "finishedAt": _stamp(finished),
                }
            }
            self._event(run, c, "Warning", "Failed", f"Error: {c.state['terminated']['message']}")
            self._publish(run)
            return 128
        with run.cond:
            c.proc = proc
            c.running = True
            c.oom_killed = False
            c.ever_started = True
            c.container_id = (
                f"kubesim-process://{proc.pid}"
                if self.runtime == "process"
                else f"podman://{self._podman_name(run, c)}"
            )
            c.state = {"running": {"startedAt": _stamp(started)}}
            c.ready = not c.init
            c.started = True
            if run.deleting:
                self._stop_container(c, signal.SIGKILL if run.grace_over else signal.SIGTERM)
        self._event(run, c, "Normal", "Started", "Container started")
        run.phase = "Running" if not c.init else run.phase
        self._publish(run)
        readers = [
            threading.Thread(target=self._read, args=(run, c, stream), daemon=True)
            for stream in (proc.stdout, proc.stderr)
        ]
        for t in readers:
            t.start()
        if memory_limit is not None and self.runtime == "process":
            self._watch_memory(run, c, proc, memory_limit)
        code = proc.wait()
        if self.runtime == "process":
            # The main process is PID 1: when it exits, the rest of the container dies.
            _kill_container(proc)
        for t in readers:
            t.join()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if code < 0:
            code = 128 - code  # killed by a signal: the runtime reports 128 + signal
        if self.runtime == "podman":
            c.oom_killed = self._podman_oom(run, c) or c.oom_killed
            self._podman_quiet(["rm", "-f", self._podman_name(run, c)])
        finished = self.clock.now()
        with run.cond:
            c.running = False
            c.proc = None
            run.cond.notify_all()
        if c.oom_killed:
            reason = "OOMKilled"
            code = 137 if code in (0, 137) or self.runtime == "process" else code
        else:
            reason = "Completed" if code == 0 else "Error"
        terminated: Obj = {
            "exitCode": code,
            "reason": reason,
            "startedAt": _stamp(started),
            "finishedAt": _stamp(finished),
            "containerID": c.container_id,
        }
        message = self._termination_message(c, code)
        if message:
            terminated["message"] = message
        c.state = {"terminated": terminated}
        c.ready = False
        c.started = False
        if not run.lost:
            self._publish(run)
        return code

    def _podman_name(self, run: _PodRun, c: _Container) -> str:
        return f"kubesim-{run.uid[:12]}-{c.name}-{c.restart_count}"

    def _argv(self, run: _PodRun, c: _Container, env: dict[str, str], limits: Obj) -> list[str]:
        command = [str(x) for x in c.spec.get("command") or []]
        args = [str(x) for x in c.spec.get("args") or []]
        if self.runtime == "process":
            if not command and not args:
                raise ValueError('"": the process runtime needs a command (images are not used)')
            return command + args
        argv = [*self.podman_cmd, "run", "--rm=false", "--network", "host"]
        argv += ["--name", self._podman_name(run, c), "--pull", "never"]
        for key, value in env.items():
            if key == TERMINATION_ENV or key in self.base_env:
                continue
            argv += ["--env", f"{key}={value}"]
        path = c.spec.get("terminationMessagePath", "/dev/termination-log")
        argv += ["--volume", f"{c.termination_file}:{path}:rw,z"]
        argv += self._host_path_mounts(run, c)
        if run.pod["spec"].get("hostname"):
            argv += ["--hostname", str(run.pod["spec"]["hostname"])]
        if "memory" in limits:
            argv += ["--memory", str(int(parse_quantity(limits["memory"])))]
        if "cpu" in limits:
            argv += ["--cpus", f"{parse_quantity(limits['cpu']):g}"]
        if c.spec.get("workingDir"):
            argv += ["--workdir", str(c.spec["workingDir"])]
        if command:
            argv += ["--entrypoint", json.dumps(command)]
        argv.append(str(c.spec.get("image", "")))
        return argv + args

    @staticmethod
    def _host_path_mounts(run: _PodRun, c: _Container) -> list[str]:
        """``hostPath`` volumes, bind-mounted as a kubelet does (the only volume type
        the podman runtime mounts; the process runtime sees the host's files anyway)."""
        volumes = {v.get("name"): v for v in run.pod["spec"].get("volumes") or []}
        argv: list[str] = []
        for mount in c.spec.get("volumeMounts") or []:
            host = (volumes.get(mount.get("name")) or {}).get("hostPath")
            if host is None:
                continue
            mode = "ro" if mount.get("readOnly") else "rw"
            argv += ["--volume", f"{host['path']}:{mount['mountPath']}:{mode}"]
        return argv

    def _podman_oom(self, run: _PodRun, c: _Container) -> bool:
        result = subprocess.run(
            [
                *self.podman_cmd,
                "inspect",
                "--format",
                "{{.State.OOMKilled}}",
                self._podman_name(run, c),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.strip() == "true"

    def _watch_memory(
        self, run: _PodRun, c: _Container, proc: subprocess.Popen[bytes], limit: float
    ) -> None:
        def poll() -> None:
            stop = threading.Event()
            while proc.poll() is None and not self._stopping:
                if _tree_rss_bytes(proc.pid) > limit:
                    c.oom_killed = True
                    _kill_container(proc)
                    return
                stop.wait(self.oom_poll_s)

        self._spawn(poll)

    def _read(self, run: _PodRun, c: _Container, stream: Any) -> None:
        for line in iter(stream.readline, b""):
            with run.cond:
                c.log.append(LogLine(self.clock.now(), line))
                run.cond.notify_all()

    def _termination_message(self, c: _Container, code: int) -> str:
        data = b""
        if c.termination_file is not None and c.termination_file.exists():
            with open(c.termination_file, "rb") as fh:
                data = fh.read(MAX_TERMINATION_MESSAGE)
        if (
            not data
            and code != 0
            and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            lines = [entry.data for entry in c.log][-FALLBACK_LOG_LINES:]
            data = b"".join(lines)[-FALLBACK_LOG_BYTES:]
        return data.decode("utf-8", "replace")

    def _terminate(self, run: _PodRun) -> None:
        """All containers are done (or the pod is going away): terminal phase, then cleanup."""
        if run.lost:
            return
        failed = False
        for c in run.all_containers():
            terminated = c.state.get("terminated")
            if terminated is None:
                # Never ran (stuck, or the pod was deleted first).
                if c.init and run.initialized:
                    continue
                c.state = {
                    "terminated": {
                        "exitCode": 137,
                        "reason": "ContainerStatusUnknown",
                        "message": "The container could not be located when the pod was terminated",
                        "startedAt": None,
                        "finishedAt": None,
                    }
                }
                failed = True
            elif int(terminated.get("exitCode", 0)) != 0 and (not c.init or not run.initialized):
                failed = True
            c.ready = False
        run.phase = "Failed" if failed or run.phase == "Failed" else "Succeeded"
        self._publish(run)
        with run.cond:  # one of this and _begin_delete sees the other's flag
            run.terminated = True
            deleting = run.deleting
        if deleting and not self._stopping:
            self._finish_delete((run.namespace, run.name))

    # --- status ----------------------------------------------------------------------------

    def _container_status(self, c: _Container) -> Obj:
        status: Obj = {
            "name": c.name,
            "image": c.spec.get("image", ""),
            "imageID": c.image_id,
            "ready": c.ready,
            "restartCount": c.restart_count,
            "started": c.started,
            "state": json.loads(json.dumps(c.state)),
            "lastState": json.loads(json.dumps(c.last_state)),
        }
        if c.container_id:
            status["containerID"] = c.container_id
        return status

    def _publish(self, run: _PodRun) -> None:
        if self._stopping or run.lost:
            return
        now = _stamp(self.clock.now())
        terminal = run.phase in ("Succeeded", "Failed")
        not_ready = [c.name for c in run.containers if not c.ready]
        all_ready = not not_ready and not terminal

        def apply(pod: Obj) -> bool:
            if pod["metadata"].get("uid") != run.uid:
                return False
            status = pod.setdefault("status", {})
            if status.get("phase") in ("Succeeded", "Failed") and not terminal:
                return False  # a terminal phase never reverts
            status["phase"] = run.phase
            status["hostIP"] = "127.0.0.1"
            status["hostIPs"] = [{"ip": "127.0.0.1"}]
            if run.phase != "Pending" or any(c.ever_started for c in run.all_containers()):
                status["podIP"] = "127.0.0.1"
                status["podIPs"] = [{"ip": "127.0.0.1"}]
            status["startTime"] = run.start_time
            if run.init:
                status["initContainerStatuses"] = [self._container_status(c) for c in run.init]
            status["containerStatuses"] = [self._container_status(c) for c in run.containers]
            # The kubelet's reason for a terminal pod: PodFailed when it failed (as the
            # real-cluster traces show), PodCompleted when it succeeded.
            if terminal:
                reason = "PodFailed" if run.phase == "Failed" else "PodCompleted"
            else:
                reason = "ContainersNotReady"
            message = (
                None if terminal else f"containers with unready status: [{' '.join(not_ready)}]"
            )
            sandbox = run.sandbox_ready and not terminal
            _set_condition(pod, "PodReadyToStartContainers", "True" if sandbox else "False", now)
            initialized_reason: str | None = "ContainersNotInitialized"
            if run.initialized:
                # As the real kubelet: PodCompleted once the pod succeeded, no reason before.
                initialized_reason = "PodCompleted" if run.phase == "Succeeded" else None
            _set_condition(
                pod,
                "Initialized",
                "True" if run.initialized else "False",
                now,
                initialized_reason,
                None
                if run.initialized
                else "containers with incomplete status: "
                f"[{' '.join(c.name for c in run.init if 'terminated' not in c.state)}]",
            )
            for ctype in ("Ready", "ContainersReady"):
                if all_ready:
                    _set_condition(pod, ctype, "True", now)
                else:
                    _set_condition(pod, ctype, "False", now, reason, message)
            _order_conditions(pod)
            return True

        with contextlib.suppress(ApiError):
            self.store.mutate("pods", run.namespace, run.name, apply)

    # --- logs ------------------------------------------------------------------------------

    def read_log(
        self,
        namespace: str,
        pod: str,
        *,
        container: str | None = None,
        follow: bool = False,
        tail_lines: int | None = None,
        since_seconds: int | None = None,
        timestamps: bool = False,
        limit_bytes: int | None = None,
        previous: bool = False,
    ) -> Iterator[bytes]:
        """The ``/log`` subresource. Errors are raised before the first chunk is yielded."""
        obj = self.store.get("pods", namespace, pod)
        spec = obj.get("spec") or {}
        names = [c["name"] for c in spec.get("containers") or []]
        init_names = [c["name"] for c in spec.get("initContainers") or []]
        if container is None:
            if len(names) != 1:
                message = (
                    f"a container name must be specified for pod {pod}, "
                    f"choose one of: [{' '.join(names)}]"
                )
                if init_names:
                    message += f" or one of the init containers: [{' '.join(init_names)}]"
                raise ApiError(400, "BadRequest", message)
            container = names[0]
        if container not in names and container not in init_names:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {pod}")
        if not spec.get("nodeName"):
            raise ApiError(400, "BadRequest", f"pod {pod} does not have a host assigned")
        with self._lock:
            run = self._runs.get((namespace, pod))
        if run is None or run.uid != obj["metadata"]["uid"]:
            raise _waiting_error(obj, container, pod)
        c = run.find(container)
        assert c is not None
        with run.cond:
            if previous:
                if c.previous_log is None:
                    raise ApiError(
                        400,
                        "BadRequest",
                        f'previous terminated container "{container}" in pod "{pod}" not found',
                    )
                lines = list(c.previous_log)
                source = None
            else:
                if not c.ever_started:
                    raise _waiting_error(obj, container, pod)
                lines = list(c.log)
                source = c
        return self._stream(
            run, source, lines, follow, tail_lines, since_seconds, timestamps, limit_bytes
        )

    def _stream(
        self,
        run: _PodRun,
        c: _Container | None,
        lines: list[LogLine],
        follow: bool,
        tail_lines: int | None,
        since_seconds: int | None,
        timestamps: bool,
        limit_bytes: int | None,
    ) -> Iterator[bytes]:
        # `lines` is c.log as read_log copied it under run.cond; the follow resumes right after
        # that copy (not at len(c.log) when this generator first runs), so a line written in
        # between is neither lost nor sent twice.
        start = len(lines)
        if since_seconds is not None:
            cutoff = self.clock.now() - timedelta(seconds=since_seconds)
            lines = [entry for entry in lines if entry.at >= cutoff]
        if tail_lines is not None:
            lines = lines[-tail_lines:] if tail_lines > 0 else []
        budget = limit_bytes
        if follow:
            # The server pulls the first chunk before it answers: this empty one lets it send
            # the headers at once, as the kubelet does, even when the container is silent
            # (a follow of `tailLines=0`, or of a task that prints nothing for a while).
            yield b""

        def render(entry: LogLine) -> bytes:
            data = entry.data
            if timestamps:
                data = _stamp_nano(entry.at).encode() + b" " + data
            return data

        for entry in lines:
            chunk = render(entry)
            if budget is not None:
                chunk = chunk[:budget]
                budget -= len(chunk)
            if chunk:
                yield chunk
            if budget is not None and budget <= 0:
                return
        if not follow or c is None:
            return
        position = start
        while True:
            with run.cond:
                while position >= len(c.log) and c.running and not self._stopping and not run.lost:
                    run.cond.wait(0.5)
                new = c.log[position:]
                position = len(c.log)
                finished = not c.running or self._stopping or run.lost
            for entry in new:
                chunk = render(entry)
                if budget is not None:
                    chunk = chunk[:budget]
                    budget -= len(chunk)
                if chunk:
                    yield chunk
                if budget is not None and budget <= 0:
                    return
            if finished and not new:
                return


def _waiting_error(pod: Obj, container: str, pod_name: str) -> ApiError:
    status = pod.get("status") or {}
    reason = "ContainerCreating"
    for cs in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
        if cs.get("name") == container and "waiting" in (cs.get("state") or {}):
            reason = cs["state"]["waiting"].get("reason") or reason
    detail = {
        "ErrImagePull": "image can't be pulled",
        "ImagePullBackOff": "trying and failing to pull image",
    }.get(reason, reason)
    return ApiError(
        400,
        "BadRequest",
        f'container "{container}" in pod "{pod_name}" is waiting to start: {detail}',
    )


_CONDITION_ORDER = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
    "DisruptionTarget",
]


def _set_condition(
    pod: Obj,
    ctype: str,
    status: str,
    now: str,
    reason: str | None = None,
    message: str | None = None,
) -> None:
    conditions = pod.setdefault("status", {}).setdefault("conditions", [])
    for cond in conditions:
        if cond.get("type") == ctype:
            if cond.get("status") != status:
                cond["lastTransitionTime"] = now
            cond["status"] = status
            for key, value in (("reason", reason), ("message", message)):
                if value is None:
                    cond.pop(key, None)
                else:
                    cond[key] = value
            return
    new: Obj = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": now}
    if reason is not None:
        new["reason"] = reason
    if message is not None:
        new["message"] = message
    conditions.append(new)


def _order_conditions(pod: Obj) -> None:
    conditions = pod["status"]["conditions"]
    conditions.sort(
        key=lambda c: _CONDITION_ORDER.index(c["type"]) if c["type"] in _CONDITION_ORDER else 99
    )
