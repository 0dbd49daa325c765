"""Warm workers (``Timeouts.keep_warm``): later calls run in the processes of earlier ones,
on the local backend and on kubesim, and every way a warm worker can end leaves nothing
behind and strands no call."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import KubernetesExecutor, Resources, Timeouts, WorkerLostError
from k8s_executor import _warm as warm
from k8s_executor import worker as worker_module
from k8s_executor._store import RunStore
from tests import helpers
from tests.helpers import SharedPath
from tests.kube_helpers import kubesim_kwargs


def pid_of(_: object = None) -> int:
    return os.getpid()


def kill_myself_on(value: int, bad: int) -> int:
    if value == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return value


@pytest.fixture(params=["local", "kubernetes"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """An executor factory for the local backend and for kubesim (process kubelet)."""
    made: list[KubernetesExecutor] = []

    def factory(**kw: Any) -> KubernetesExecutor:
        if request.param == "local":
            base: dict[str, Any] = {"backend": "local", "progress": False}
        else:
            sim = request.getfixturevalue("kubesim")
            base = kubesim_kwargs(sim, tmp_path / "storage")
        timeouts = kw.pop("keep_warm", None)
        if timeouts is not None:
            base["timeouts"] = dataclasses.replace(
                base.get("timeouts") or Timeouts(), keep_warm=timeouts
            )
        ex = KubernetesExecutor(**{**base, **kw})
        made.append(ex)
        return ex

    factory.backend = request.param  # type: ignore[attr-defined]
    yield factory
    for ex in made:
        ex.shutdown(wait=True, kill_workers=True)


def test_later_batches_run_in_the_first_batchs_workers(make: Any) -> None:
    with make(max_workers=2) as ex:
        first = set(ex.map(pid_of, range(2)))
        second = set(ex.map(pid_of, range(2)))
        loop = {ex.submit(pid_of).result(timeout=60) for _ in range(5)}
    assert len(first) == 2
    assert second <= first
    assert loop <= first


def test_keep_warm_zero_starts_new_workers(make: Any) -> None:
    with make(max_workers=2, keep_warm=0) as ex:
        first = set(ex.map(pid_of, range(2)))
        second = set(ex.map(pid_of, range(2)))
    assert not first & second


def test_initializer_runs_once_per_worker(make: Any, shared_dir: SharedPath) -> None:
    calls = shared_dir / "init"
    calls.mkdir()
    with make(max_workers=1, initializer=helpers.counting_initializer, initargs=(calls,)) as ex:
        pids = {ex.submit(pid_of).result(timeout=60) for _ in range(3)}
    assert len(pids) == 1
    assert len(calls.listdir()) == 1


def test_max_workers_bounds_warm_and_new(make: Any, shared_dir: SharedPath) -> None:
    calls, release = shared_dir / "calls", shared_dir / "release"
    calls.mkdir()
    with make(max_workers=2) as ex:
        blocking = ex.map(helpers.record_then_wait, [calls] * 2, [release] * 2)
        helpers.wait_for(lambda: len(calls.listdir()) == 2, 60, "two workers busy")
        later = [ex.submit(pid_of) for _ in range(4)]
        # Both workers are busy and none may be added: the later calls wait.
        assert not any(f.running() or f.done() for f in later)
        release.touch()
        busy = set(blocking)
        pids = {f.result(timeout=60) for f in later}
    assert len(busy) == 2
    assert len(pids) <= 2


def test_a_warm_worker_killed_mid_call_fails_only_its_call(make: Any) -> None:
    with make(max_workers=2) as ex:
        assert len(set(ex.map(pid_of, range(2)))) == 2  # two warm workers now
        futures = [ex.submit(kill_myself_on, v, 1) for v in range(2)]
        assert futures[0].result(timeout=60) == 0
        with pytest.raises(WorkerLostError):
            futures[1].result(timeout=60)
        # The executor goes on: a new worker takes the next call.
        assert ex.submit(kill_myself_on, 5, 1).result(timeout=60) == 5


def test_shutdown_ends_idle_workers_at_once(make: Any) -> None:
    ex = make(max_workers=2, keep_warm=3600)
    pids = set(ex.map(pid_of, range(2)))
    began = time.monotonic()
    ex.shutdown(wait=True)
    # Not after the idle window (an hour), nor a pod's termination grace (30 s).
    assert time.monotonic() - began < 15
    if make.backend == "local":
        assert not any(helpers.alive(p) for p in pids)


def test_idle_expiry_ends_the_pod_by_itself(kubesim: Any, tmp_path: Path) -> None:
    from kubernetes import client

    kw = kubesim_kwargs(kubesim, tmp_path / "storage")
    kw["timeouts"] = dataclasses.replace(kw["timeouts"], keep_warm=1)
    with KubernetesExecutor(max_workers=1, **kw) as ex:
        assert ex.submit(pid_of).result(timeout=60) > 0

        def phases() -> list[str]:
            with kubesim.api_client() as api:
                pods = client.CoreV1Api(api).list_namespaced_pod(
                    "default", label_selector=f"k8s-executor.io/run={ex.run_id}"
                )
            return [str(p.status.phase) for p in pods.items if p.status is not None]

        # The idle window passes: the pod ends Succeeded, with its own index done.
        helpers.wait_for(lambda: phases() == ["Succeeded"], 60, "the warm pod to end")
        # A call after that starts a new worker.
        assert ex.submit(pid_of).result(timeout=60) > 0
        run_id = ex.run_id
    with kubesim.api_client() as api:
        core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
        selector = f"k8s-executor.io/run={run_id}"
        assert not core.list_namespaced_pod("default", label_selector=selector).items
        assert not batch.list_namespaced_job("default", label_selector=selector).items


CLIENT = """
import dataclasses, sys, time
from pathlib import Path
from k8s_executor import KubernetesExecutor, Timeouts
from tests.test_warm import pid_of
if sys.argv[1] == "local":
    kw = {"backend": "local", "progress": False, "timeouts": Timeouts(keep_warm=3600)}
else:
    from tests.kube_helpers import kubesim_kwargs
    class Sim:
        kubeconfig_path = sys.argv[1]
    kw = kubesim_kwargs(Sim, Path(sys.argv[2]))
    kw["timeouts"] = dataclasses.replace(kw["timeouts"], keep_warm=3600, heartbeat_grace=3)
with KubernetesExecutor(max_workers=2, **kw) as ex:
    print(*sorted(set(ex.map(pid_of, range(2)))), flush=True)
    time.sleep(3600)
"""


@pytest.mark.parametrize("backend", ["local", "kubernetes"])
def test_client_killed_with_idle_warm_workers(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # The workers watch their parent (local) or the client's heartbeat (pods): they must
    # not wait out the idle window (an hour) once the client is gone.
    args = ["local"]
    if backend == "kubernetes":
        sim = request.getfixturevalue("kubesim")
        args = [str(sim.kubeconfig_path), str(tmp_path / "storage")]
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert client.stdout is not None
        pids = [int(p) for p in client.stdout.readline().split()]
        assert len(pids) == 2 and all(helpers.alive(p) for p in pids)
    finally:
        client.kill()
        client.wait()
        if client.stdout is not None:
            client.stdout.close()
    # Local: within the parent watch's poll (0.5 s); pods: the heartbeat grace (3 s).
    helpers.wait_for(lambda: not any(helpers.alive(p) for p in pids), 20, "the workers to exit")


def test_idle_worker_reads_within_the_documented_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's own polling loop, on a clock of its own: one idle minute.
    clock = [0.0]
    # The worker's module calls time.monotonic and time.sleep through the time module.
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    reads = []

    class Counting(RunStore):
        def get_or_none(self, key: str) -> bytes | None:
            reads.append(key)
            return super().get_or_none(key)

    store = Counting(str(tmp_path))
    assert worker_module._wait_for_work(store, "b00000-0-abc", 0, 60.0) is None
    assert set(reads) == {warm.next_key("b00000-0-abc")}
    # docs/architecture.md: about 40 reads in the first idle minute, 30 a minute after.
    assert len(reads) == warm.reads_in(60) <= 41
    assert warm.reads_in(120) - warm.reads_in(60) <= 31


def test_idle_workers_leave_when_the_runs_own_pods_find_no_node(
    kubesim: Any, tmp_path: Path
) -> None:
    # kubesim's node has 8 CPUs: two 4-CPU workers fit, the Job's other two stay Pending
    # (Unschedulable). Once the first two are done and idle, they leave to make room (they
    # held it for their whole idle window before: 60 s here).
    kw = kubesim_kwargs(kubesim, tmp_path / "storage")
    kw["timeouts"] = dataclasses.replace(kw["timeouts"], keep_warm=60)
    with KubernetesExecutor(max_workers=4, resources=Resources(cpu="4"), **kw) as ex:
        pids = list(ex.map(pid_of, range(4), timeout=40))
    assert len(set(pids)) == 4  # four workers: two, then two more once room was made
