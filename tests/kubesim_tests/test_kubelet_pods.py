"""§9.15, 9.16, 9.19 (kubelet half): pod lifecycle, stuck states, OOM, deletion, logs, faults."""

from __future__ import annotations

import functools
import json
import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from tests.helpers import alive
from tests.kubesim.clock import FakeClock
from tests.kubesim.errors import ApiError
from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import wait_for
from tests.kubesim_tests.job_helpers import NS, phase, raw


@pytest.fixture
def core(kubesim: Kubesim) -> Iterator[Any]:
    with kubesim.api_client() as api:
        yield client.CoreV1Api(api)


def _pod(name: str, code: str = "pass", **container: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "main",
        "image": "python:3.12-slim",
        "command": [sys.executable, "-c", code],
    }
    spec.update(container)
    return {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [spec]}}


def _get(core: Any, name: str) -> dict[str, Any]:
    return raw(core.read_namespaced_pod(name, NS, _preload_content=False))


def _wait_phase(core: Any, name: str, *phases: str) -> Any:
    return wait_for(
        lambda: (p := _get(core, name)) and phase(p) in phases and p, 15, f"{name} {phases}"
    )


def _up(sim: Kubesim, name: str) -> bool:
    """The pod's (first) container has printed ``up`` (waiting containers answer 400)."""
    try:
        return b"up" in b"".join(sim.kubelet.read_log(NS, name))
    except ApiError:
        return False


def _cond(pod: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in pod["status"].get("conditions") or [] if c["type"] == ctype)


def _state(pod: dict[str, Any], key: str = "containerStatuses") -> dict[str, Any]:
    # {} until the kubelet first reports (a poll may land between the binding and that report).
    statuses = pod["status"].get(key) or [{}]
    return dict(statuses[0].get("state") or {})


def test_s9_15_lifecycle_success_and_failure(core: Any, tmp_path: Any) -> None:
    gate = tmp_path / "go"
    code = "import os,time\nprint('hello', flush=True)\n"
    code += f"while not os.path.exists({str(gate)!r}): time.sleep(0.02)\n"
    core.create_namespaced_pod(NS, _pod("ok", code))
    running = _wait_phase(core, "ok", "Running")
    assert running["status"]["podIP"] == "127.0.0.1" and running["status"]["startTime"]
    assert "running" in _state(running)
    wait_for(lambda: _cond(_get(core, "ok"), "Ready")["status"] == "True", 10)
    gate.write_text("")
    done = _wait_phase(core, "ok", "Succeeded")
    term = _state(done)["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    assert term["startedAt"] and term["finishedAt"]
    core.create_namespaced_pod(NS, _pod("bad", "raise SystemExit(3)"))
    failed = _wait_phase(core, "bad", "Failed")
    assert _state(failed)["terminated"]["exitCode"] == 3
    assert _state(failed)["terminated"]["reason"] == "Error"


def test_s9_15_termination_message_truncated_and_fallback(core: Any) -> None:
    code = "import os\nopen(os.environ['KUBESIM_TERMINATION_MESSAGE_PATH'],'w').write('x'*5000)\n"
    core.create_namespaced_pod(NS, _pod("msg", code))
    term = _state(_wait_phase(core, "msg", "Succeeded"))["terminated"]
    assert term["message"] == "x" * 4096
    fallback = "print('line1'); print('boom'); raise SystemExit(1)"
    core.create_namespaced_pod(
        NS, _pod("fb", fallback, terminationMessagePolicy="FallbackToLogsOnError")
    )
    term = _state(_wait_phase(core, "fb", "Failed"))["terminated"]
    assert term["message"] == "line1\nboom\n"
    core.create_namespaced_pod(
        NS, _pod("nofb", "print('x')", terminationMessagePolicy="FallbackToLogsOnError")
    )
    assert "message" not in _state(_wait_phase(core, "nofb", "Succeeded"))["terminated"]


def test_s9_15_oom_killed(core: Any) -> None:
    # Touch every page so the 200 MiB are resident, not just reserved.
    code = "import time\nb = bytearray(200 * 1024 * 1024)\n"
    code += "b[::4096] = b'x' * len(b[::4096])\ntime.sleep(30)"
    core.create_namespaced_pod(NS, _pod("oom", code, resources={"limits": {"memory": "64Mi"}}))
    term = _state(_wait_phase(core, "oom", "Failed"))["terminated"]
    assert (term["reason"], term["exitCode"]) == ("OOMKilled", 137)


def test_s9_15_stuck_states_never_fail(kubesim: Kubesim, core: Any) -> None:
    core.create_namespaced_pod(NS, _pod("pull", image="registry.invalid/unpullable:1"))
    core.create_namespaced_pod(
        NS,
        _pod(
            "cfg",
            env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k"}}}],
        ),
    )
    big = _pod("big", resources={"requests": {"cpu": "1000"}})
    core.create_namespaced_pod(NS, big)
    wait_for(
        lambda: _state(_get(core, "pull")).get("waiting", {}).get("reason") == "ImagePullBackOff",
        10,
    )
    waiting = _state(_get(core, "pull"))["waiting"]
    assert waiting["message"].startswith('Back-off pulling image "registry.invalid/unpullable:1"')
    cfg = wait_for(
        lambda: (
            _state(_get(core, "cfg")).get("waiting", {}).get("reason")
            == "CreateContainerConfigError"
            and _get(core, "cfg")
        ),
        10,
    )
    assert _state(cfg)["waiting"]["message"] == 'secret "missing" not found'
    sched = wait_for(
        lambda: [
            c
            for c in _get(core, "big")["status"].get("conditions") or []
            if c["type"] == "PodScheduled"
        ],
        10,
    )[0]
    assert (sched["status"], sched["reason"]) == ("False", "Unschedulable")
    assert sched["message"] == (
        "0/1 nodes are available: 1 Insufficient cpu. no new claims to deallocate, preemption: "
        "0/1 nodes are available: 1 Preemption is not helpful for scheduling."
    )
    for name in ("pull", "cfg", "big"):
        assert phase(_get(core, name)) == "Pending"
    # Logs of a waiting container: the kubelet's 400.
    with pytest.raises(ApiException) as info:
        core.read_namespaced_pod_log("pull", NS)
    assert info.value.status == 400
    assert json.loads(info.value.body or "{}")["message"] in (
        'container "main" in pod "pull" is waiting to start: trying and failing to pull image',
        'container "main" in pod "pull" is waiting to start: image can\'t be pulled',
    )
    # A Secret appearing unblocks the config error.
    core.create_namespaced_secret(NS, {"metadata": {"name": "missing"}, "stringData": {"k": "v"}})
    _wait_phase(core, "cfg", "Succeeded")


def test_s9_16_delete_sigterm_grace_then_terminal(kubesim: Kubesim, core: Any) -> None:
    code = (
        "import signal,sys,time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('term', flush=True), sys.exit(0)))\n"
        "print('up', flush=True)\ntime.sleep(60)"
    )
    pod = _pod("gr", code)
    pod["metadata"]["finalizers"] = ["example.com/hold"]
    core.create_namespaced_pod(NS, pod)
    wait_for(lambda: _up(kubesim, "gr"), 10)
    answer = raw(core.delete_namespaced_pod("gr", NS, _preload_content=False))
    assert answer["metadata"]["deletionTimestamp"]
    assert answer["metadata"]["deletionGracePeriodSeconds"] == 30
    # SIGTERM handled → exit 0 → Succeeded; the finalizer keeps the object visible.
    done = _wait_phase(core, "gr", "Succeeded")
    assert _state(done)["terminated"]["exitCode"] == 0
    core.patch_namespaced_pod("gr", NS, {"metadata": {"finalizers": None}})
    wait_for(lambda: not core.list_namespaced_pod(NS).items, 10, "pod removed")


def test_logs_params_and_multi_container(kubesim: Kubesim, core: Any) -> None:
    code = "for i in range(5): print('line', i)"
    pod = _pod("logs", code)
    pod["spec"]["containers"].append(
        {
            "name": "side",
            "image": "python:3.12-slim",
            "command": [sys.executable, "-c", "print('s')"],
        }
    )
    core.create_namespaced_pod(NS, pod)
    _wait_phase(core, "logs", "Succeeded")
    with pytest.raises(ApiException) as info:
        core.read_namespaced_pod_log("logs", NS)
    assert json.loads(info.value.body or "{}")["message"] == (
        "a container name must be specified for pod logs, choose one of: [main side]"
    )
    assert core.read_namespaced_pod_log("logs", NS, container="main") == "".join(
        f"line {i}\n" for i in range(5)
    )
    assert (
        core.read_namespaced_pod_log("logs", NS, container="main", tail_lines=2)
        == "line 3\nline 4\n"
    )
    assert core.read_namespaced_pod_log("logs", NS, container="main", limit_bytes=8) == "line 0\nl"
    stamped = core.read_namespaced_pod_log("logs", NS, container="side", timestamps=True)
    stamp, _, text = stamped.partition(" ")
    assert text == "s\n" and stamp.endswith("Z") and "T" in stamp


def test_faults_kill_evict_lose_node(kubesim: Kubesim, core: Any) -> None:
    sleeper = "import time\nprint('up', flush=True)\ntime.sleep(60)"
    core.create_namespaced_pod(NS, _pod("k", sleeper))
    wait_for(lambda: _up(kubesim, "k"), 10)
    kubesim.kubelet.kill_pod(NS, "k", signal.SIGKILL)
    term = _state(_wait_phase(core, "k", "Failed"))["terminated"]
    assert (term["exitCode"], term["reason"]) == (137, "Error")
    # No SIGTERM handler: PID 1 ignores the SIGTERM, the end of the (short) grace period kills.
    evicted = _pod("ev", sleeper)
    evicted["metadata"]["finalizers"] = ["example.com/hold"]
    evicted["spec"]["terminationGracePeriodSeconds"] = 1
    core.create_namespaced_pod(NS, evicted)
    wait_for(lambda: _up(kubesim, "ev"), 10)
    kubesim.kubelet.evict(NS, "ev")
    gone = _wait_phase(core, "ev", "Failed")
    target = _cond(gone, "DisruptionTarget")
    assert (target["status"], target["reason"]) == ("True", "EvictionByEvictionAPI")
    assert _state(gone)["terminated"]["exitCode"] == 137
    # Losing the node fails *every* pod still running on it: the held ones stay visible (Failed,
    # force-deleted), the free one is removed at once. Terminal pods ("k", "ev") are untouched.
    held = ["lost-0", "lost-1", "lost-2"]
    for name in held:
        lost = _pod(name, sleeper)
        lost["metadata"]["finalizers"] = ["example.com/hold"]
        core.create_namespaced_pod(NS, lost)
    core.create_namespaced_pod(NS, _pod("lost-free", sleeper))
    for name in [*held, "lost-free"]:
        wait_for(functools.partial(_up, kubesim, name), 10, f"{name} up")
    kubesim.kubelet.lose_node()
    for name in held:
        pod = _wait_phase(core, name, "Failed")
        target = _cond(pod, "DisruptionTarget")
        assert (target["status"], target["reason"], target["message"]) == (
            "True",
            "DeletionByPodGC",
            "PodGC: node no longer exists",
        )
        assert pod["metadata"]["deletionTimestamp"]
        assert pod["metadata"]["deletionGracePeriodSeconds"] == 0
    wait_for(
        lambda: "lost-free" not in {p.metadata.name for p in core.list_namespaced_pod(NS).items},
        10,
        "unheld lost pod removed",
    )
    killed = _get(core, "k")
    assert phase(killed) == "Failed" and not [
        c for c in killed["status"].get("conditions") or [] if c["type"] == "DisruptionTarget"
    ]
    assert _cond(_get(core, "ev"), "DisruptionTarget")["reason"] == "EvictionByEvictionAPI"
    for name in ["ev", *held]:
        core.patch_namespaced_pod(name, NS, {"metadata": {"finalizers": None}})
    # The replacement node runs new pods at once.
    core.create_namespaced_pod(NS, _pod("after"))
    _wait_phase(core, "after", "Succeeded")


# --- PID 1 semantics (the traces delete-running-pid1 and delete-running-handler) -------------

_BEATING = (
    "import itertools, pathlib, signal, sys, time\n"
    "{setup}"
    "beat = pathlib.Path({beat!r})\n"
    "for n in itertools.count():\n"
    "    beat.write_text(str(n))\n"
    "    time.sleep(0.02)\n"
)


def _beats(path: Any) -> int:
    try:
        return int(path.read_text() or -1)
    except (OSError, ValueError):
        return -1


def _beating_pod(name: str, beat: Any, setup: str = "", grace: int = 30) -> dict[str, Any]:
    pod = _pod(name, _BEATING.format(setup=setup, beat=str(beat)))
    pod["spec"]["terminationGracePeriodSeconds"] = grace
    pod["metadata"]["finalizers"] = ["example.com/hold"]  # the terminal pod stays to be read
    return pod


@pytest.fixture
def fake_sim(kubesim_factory: Any) -> Kubesim:
    sim: Kubesim = kubesim_factory(clock=FakeClock())
    return sim


def test_pid1_without_handler_runs_through_the_grace_period(
    fake_sim: Kubesim, tmp_path: Any
) -> None:
    with fake_sim.api_client() as api:
        core: Any = client.CoreV1Api(api)
        beat = tmp_path / "beat"
        core.create_namespaced_pod(NS, _beating_pod("pid1", beat))
        wait_for(lambda: _beats(beat) >= 0, 15, "the process to run")
        answer = raw(core.delete_namespaced_pod("pid1", NS, _preload_content=False))
        assert answer["metadata"]["deletionGracePeriodSeconds"] == 30
        # Once the kubelet has seen the deletion its SIGTERM is sent (and dropped: no handler).
        assert fake_sim.store.sync()
        seen = _beats(beat)
        wait_for(lambda: _beats(beat) > seen + 1, 10, "the process to live on after SIGTERM")
        pod = _get(core, "pid1")
        assert phase(pod) == "Running" and "running" in _state(pod)
        # The end of the grace period: SIGKILL, 137, as on a real node.
        fake_sim.clock.advance(30)
        term = _state(_wait_phase(core, "pid1", "Failed"))["terminated"]
        assert (term["exitCode"], term["reason"]) == (137, "Error")
        core.patch_namespaced_pod("pid1", NS, {"metadata": {"finalizers": None}})
        wait_for(lambda: not core.list_namespaced_pod(NS).items, 10, "the pod removed")


def test_pid1_with_handler_gets_sigterm(fake_sim: Kubesim, tmp_path: Any) -> None:
    with fake_sim.api_client() as api:
        core: Any = client.CoreV1Api(api)
        beat = tmp_path / "beat"
        setup = "signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))\n"
        core.create_namespaced_pod(NS, _beating_pod("handler", beat, setup))
        wait_for(lambda: _beats(beat) >= 0, 15, "the process to run")
        core.delete_namespaced_pod("handler", NS)
        # No clock time passes: the handler ran on SIGTERM.
        term = _state(_wait_phase(core, "handler", "Failed"))["terminated"]
        assert (term["exitCode"], term["reason"]) == (143, "Error")
        core.patch_namespaced_pod("handler", NS, {"metadata": {"finalizers": None}})


def test_sigterm_reaches_the_main_process_only_and_sigkill_the_whole_tree(
    fake_sim: Kubesim, tmp_path: Any
) -> None:
    with fake_sim.api_client() as api:
        core: Any = client.CoreV1Api(api)
        beat, child_pid = tmp_path / "beat", tmp_path / "child"
        # The main process forwards nothing: its SIGTERM handler only notes it. The child
        # (same process group, default SIGTERM action) must not be signalled at all.
        setup = (
            "import subprocess\n"
            f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"pathlib.Path({str(child_pid)!r}).write_text(str(c.pid))\n"
            f"signal.signal(signal.SIGTERM, lambda *a: pathlib.Path({str(tmp_path / 'term')!r})"
            ".touch())\n"
        )
        core.create_namespaced_pod(NS, _beating_pod("tree", beat, setup, grace=5))
        wait_for(lambda: _beats(beat) >= 0, 15, "the process to run")
        pid = int(child_pid.read_text())
        core.delete_namespaced_pod("tree", NS)
        wait_for((tmp_path / "term").exists, 10, "the main process's handler")
        assert alive(pid) and phase(_get(core, "tree")) == "Running"
        fake_sim.clock.advance(5)
        term = _state(_wait_phase(core, "tree", "Failed"))["terminated"]
        assert term["exitCode"] == 137
        wait_for(lambda: not alive(pid), 10, "the child killed with its container")


def test_the_container_ends_with_its_main_process(core: Any, tmp_path: Any) -> None:
    child_pid = tmp_path / "child"
    code = (
        "import pathlib, subprocess, sys\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        f"pathlib.Path({str(child_pid)!r}).write_text(str(c.pid))\n"
    )
    core.create_namespaced_pod(NS, _pod("orphan", code))
    assert _state(_wait_phase(core, "orphan", "Succeeded"))["terminated"]["exitCode"] == 0
    pid = int(child_pid.read_text())
    wait_for(lambda: not alive(pid), 10, "the orphan killed with PID 1")


def test_pod_start_delay_models_a_real_nodes_start(
    kubesim_factory: Any,
) -> None:
    # A real node takes about 3 s from a pod's creation to its container running with a
    # cached image; benchmarks of round trips need kubesim to pay it too.
    clock = FakeClock()
    sim = kubesim_factory(clock=clock, pod_start_delay=3.0)
    with sim.api_client() as api:
        core: Any = client.CoreV1Api(api)
        core.create_namespaced_pod(NS, _pod("slow", "print('up')"))

        def sandbox_ready() -> bool:
            conditions = _get(core, "slow")["status"].get("conditions") or []
            return any(
                c["type"] == "PodReadyToStartContainers" and c["status"] == "True"
                for c in conditions
            )

        wait_for(sandbox_ready, what="the pod's sandbox")
        clock.advance(2.9)  # due callbacks run in advance(): the start is not due yet
        pod = _get(core, "slow")
        assert phase(pod) == "Pending"
        (status,) = pod["status"]["containerStatuses"]
        assert list(status["state"]) == ["waiting"]
        clock.advance(0.2)
        wait_for(lambda: phase(_get(core, "slow")) == "Succeeded", what="the pod to run")


def test_graceful_deletion_seen_after_the_pod_ended_by_itself_completes_at_once(
    kubesim: Kubesim, core: Any
) -> None:
    # The race the fault matrix's client-SIGKILL row met: a graceful delete is issued while
    # the pod runs (deletionTimestamp + 30 s), its process exits by itself at that moment,
    # and the kubelet sees the deletion only after it published the terminal phase. The real
    # kubelet then deletes the terminal pod at once; kubesim's left it (its grace timer only
    # kills). The late order is replayed here: terminal first, then the deletion stamp.
    core.create_namespaced_pod(NS, _pod("late"))
    _wait_phase(core, "late", "Succeeded")

    def stamp(pod: dict[str, Any]) -> None:
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:30Z"
        pod["metadata"]["deletionGracePeriodSeconds"] = 30

    kubesim.store.mutate("pods", NS, "late", stamp)
    wait_for(lambda: not core.list_namespaced_pod(NS).items, 10, "the terminal pod removed")
