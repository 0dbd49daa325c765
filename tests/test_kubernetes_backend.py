"""What only the Kubernetes backend does, against kubesim through the real API flow:
Kubernetes failure reasons, stuck pods, API storms, cleanup, credentials, logs.

The tests that take ``cluster`` and ``shared_dir`` also run on a real cluster
(``K8SX_TEST_CLUSTER``, ``docs/testing.md``): they look at objects through the Kubernetes
API and meet their workers through the shared directory. Those that take ``kubesim`` need
its internals (evictions, a lost node, injected API faults) and run on kubesim only."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import (
    ClusterError,
    ConfigError,
    ExecutorBrokenError,
    KubernetesExecutor,
    PodStartError,
    Resources,
    Timeouts,
    WorkerLostError,
    cli,
)
from tests import helpers
from tests.helpers import SharedPath
from tests.kube_helpers import ClusterUnderTest, cold, kubesim_kwargs


def hold_memory(megabytes: int) -> int:
    data = b"x" * (megabytes << 20)  # written, so resident (a calloc'd buffer may not be)
    threading.Event().wait(60)
    return len(data)


def print_lines(n: int) -> int:
    for i in range(n):
        print(f"line {i} from the task", flush=True)
    return n


@pytest.fixture
def kw(cluster: ClusterUnderTest, shared_dir: SharedPath) -> dict[str, Any]:
    return cluster.executor_kwargs(shared_dir / "storage")


def test_oom_killed_worker_is_reported_with_reason(
    cluster: ClusterUnderTest, kw: dict[str, Any]
) -> None:
    # A real pod's worker imports more (an S3 client, say) than fits in kubesim's 64Mi.
    limit, megabytes = ("64Mi", 256) if cluster.local_workers else ("256Mi", 1024)
    kw["resources"] = dataclasses.replace(
        kw.get("resources", Resources()), memory=limit, memory_limit=None
    )
    with KubernetesExecutor(**kw) as ex:
        future = ex.submit(hold_memory, megabytes)
        with pytest.raises(WorkerLostError, match="OOMKilled.*give it more") as info:
            future.result(timeout=90)
        assert info.value.reason == "OOMKilled"
        assert ex.submit(helpers.square, 3).result(timeout=60) == 9


def _disrupted_then_retried(
    kw: dict[str, Any], shared_dir: SharedPath, disrupt: Callable[[], None]
) -> None:
    """A running call's pod is disrupted (``DisruptionTarget``): the pod failure policy
    does not count it, so the index runs again and the call gets its result."""
    calls, release = shared_dir / "calls", shared_dir / "release"
    calls.mkdir()
    with KubernetesExecutor(max_workers=1, **kw) as ex:
        future = ex.submit(helpers.record_then_wait, calls, release)
        helpers.wait_for(lambda: len(calls.listdir()) == 1, 60, "the first attempt")
        disrupt()
        helpers.wait_for(lambda: len(calls.listdir()) == 2, 60, "the retry")
        release.touch()
        assert isinstance(future.result(timeout=60), int)


def test_evicted_worker_is_retried_not_failed(
    kubesim: Any, kw: dict[str, Any], shared_dir: SharedPath
) -> None:
    def running_pods() -> list[Any]:
        pods: list[Any] = kubesim.store.list(
            "pods", "default", field_selector="status.phase=Running"
        )[0]
        return pods

    def evict() -> None:
        # The kubelet starts the worker, then publishes the phase: the call may run first.
        helpers.wait_for(lambda: len(running_pods()) == 1, 60, "the pod to be seen Running")
        (pod,) = running_pods()
        kubesim.kubelet.evict("default", pod["metadata"]["name"])

    _disrupted_then_retried(kw, shared_dir, evict)


def test_lost_node_is_a_disruption_and_retried(
    kubesim: Any, kw: dict[str, Any], shared_dir: SharedPath
) -> None:
    # DisruptionTarget DeletionByPodGC: not counted.
    _disrupted_then_retried(kw, shared_dir, kubesim.kubelet.lose_node)


def test_crash_is_retried_when_retries_allow(kw: dict[str, Any], shared_dir: SharedPath) -> None:
    calls = shared_dir / "calls"
    calls.mkdir()
    with KubernetesExecutor(retries=1, **kw) as ex:
        # Dies on its first run (no outcome, counted failure), succeeds on the retry.
        assert ex.submit(helpers.crash_first_time, calls).result(timeout=60) == "second try"
    assert len(calls.listdir()) == 2


@pytest.mark.parametrize(
    ("options", "reason", "text"),
    [
        ({"resources": Resources(cpu=1000)}, "Unschedulable", "Insufficient cpu"),
        ({"pod_secrets": ("no-such-secret",)}, "CreateContainerConfigError", "no-such-secret"),
    ],
)
def test_pod_that_cannot_start_fails_its_batch(
    cluster: ClusterUnderTest,
    shared_dir: SharedPath,
    options: dict[str, Any],
    reason: str,
    text: str,
) -> None:
    options = dict(options)
    secrets = options.pop("pod_secrets", ())
    kw = cluster.executor_kwargs(shared_dir / "storage", secrets=secrets)
    kw["timeouts"] = Timeouts(startup=2, heartbeat=1, heartbeat_grace=30)
    with KubernetesExecutor(**{**kw, **options}) as ex:
        future = ex.submit(helpers.square, 2)
        with pytest.raises(PodStartError, match=text) as info:
            future.result(timeout=60)
        assert info.value.reason == reason
        helpers.wait_for(
            lambda: not cluster.run_objects(ex.run_id)["jobs"], 30, "the stuck Job deleted"
        )


def test_unpullable_image_breaks_the_executor(
    cluster: ClusterUnderTest, shared_dir: SharedPath
) -> None:
    kw = cluster.executor_kwargs(shared_dir / "storage")
    kw.update(image="registry.example/team/unpullable:1")
    kw["timeouts"] = Timeouts(startup=2, heartbeat=1, heartbeat_grace=30)
    with KubernetesExecutor(**kw) as ex:
        future = ex.submit(helpers.square, 2)
        with pytest.raises(ExecutorBrokenError) as info:
            future.result(timeout=60)
        cause = info.value.__cause__
        assert isinstance(cause, PodStartError)
        assert cause.reason in ("ErrImagePull", "ImagePullBackOff")
        with pytest.raises(ExecutorBrokenError):
            ex.submit(helpers.square, 3)


def test_job_deadline_reported(kw: dict[str, Any], shared_dir: SharedPath) -> None:
    kw["timeouts"] = Timeouts(job_deadline=2, heartbeat=1, heartbeat_grace=30)
    with KubernetesExecutor(**kw) as ex:
        future = ex.submit(helpers.touch_then_block, shared_dir / "started")
        with pytest.raises(WorkerLostError, match="DeadlineExceeded") as info:
            future.result(timeout=60)
        assert info.value.reason == "DeadlineExceeded"


def test_api_storm_and_dropped_watches_lose_no_future(kubesim: Any, kw: dict[str, Any]) -> None:
    faults = kubesim.faults
    faults.fail_next(3, 429, retry_after=1, methods="POST")
    faults.fail_next(3, 503, retry_after=1, methods="GET")
    faults.fail_next(2, 500, methods="GET")
    with KubernetesExecutor(max_workers=2, **kw) as ex:
        first = list(ex.map(helpers.square, range(20)))
        faults.drop_watches()
        faults.compact()  # resuming from the last resourceVersion now gets 410: relist
        futures = [ex.submit(helpers.add, i, 1) for i in range(10)]
        faults.drop_watches()
        assert first == [i * i for i in range(20)]
        assert [f.result(timeout=60) for f in futures] == list(range(1, 11))


def test_watch_cache_504_is_retried(kubesim: Any, kw: dict[str, Any]) -> None:
    # A real apiserver answers a watch with "Too large resource version" (504) while its
    # watch cache lags behind the list it just served: retry, do not give up.
    kubesim.faults.watch_too_large_rv(4)
    with KubernetesExecutor(max_workers=2, **kw) as ex:
        assert list(ex.map(helpers.square, range(8))) == [i * i for i in range(8)]


def _quota(kubesim: Any, hard: dict[str, str]) -> None:
    from kubernetes import client

    body: Any = {"metadata": {"name": "tight"}, "spec": {"hard": hard}}
    with kubesim.api_client() as api:
        client.CoreV1Api(api).create_namespaced_resource_quota("default", body)


def _run_jobs(kubesim: Any, run_id: str) -> list[Any]:
    selector = f"k8s-executor.io/run={run_id}"
    jobs: list[Any] = kubesim.store.list("jobs", "default", label_selector=selector)[0]
    return jobs


def test_pod_larger_than_the_quota_fails_at_once_with_its_message(
    kubesim: Any, kw: dict[str, Any]
) -> None:
    # Issue 16: one pod asks more than the quota will ever allow. The Job controller's
    # FailedCreate event says so at once; waiting Timeouts.startup would only delay it.
    _quota(kubesim, {"pods": "0"})
    with KubernetesExecutor(**kw) as ex:  # startup is 30 s in these tests
        future = ex.submit(helpers.square, 3)
        with pytest.raises(PodStartError, match="exceeded quota: tight.*limited: pods=0") as info:
            future.result(timeout=20)
        assert info.value.reason == "FailedCreate"
        assert "ask for less (Resources) or for more quota" in str(info.value)
        run_id = ex.run_id
    assert _run_jobs(kubesim, run_id) == []


def test_pod_security_refusal_fails_at_once_with_its_message(
    kubesim: Any, kw: dict[str, Any]
) -> None:
    # Issue 16: a namespace at PodSecurity level baseline refuses a privileged
    # pod_template; the FailedCreate event carries the violation, within seconds.
    from kubernetes import client

    label = {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "baseline"}}}
    with kubesim.api_client() as api:
        client.CoreV1Api(api).patch_namespace("default", label)
    privileged = {"containers": [{"name": "worker", "securityContext": {"privileged": True}}]}
    kw["pod"] = dataclasses.replace(kw["pod"], pod_template=privileged)
    began = time.monotonic()
    with KubernetesExecutor(**kw) as ex:  # startup is 30 s in these tests
        future = ex.submit(helpers.square, 3)
        with pytest.raises(PodStartError, match="violates PodSecurity") as info:
            future.result(timeout=20)
        assert time.monotonic() - began < 10
        assert "the namespace's PodSecurity level forbids the pod" in str(info.value)
        run_id = ex.run_id
    assert _run_jobs(kubesim, run_id) == []


def test_without_events_refused_pods_fail_after_startup(kubesim: Any, kw: dict[str, Any]) -> None:
    # A Role without list/watch on events (older `k8s-executor rbac`): no pod ever exists
    # to be stuck, so the startup clock runs from the Job's creation.
    kubesim.faults.deny("list", "events")
    kubesim.faults.deny("watch", "events")
    _quota(kubesim, {"pods": "0"})
    kw["timeouts"] = dataclasses.replace(kw["timeouts"], startup=3)
    with KubernetesExecutor(**kw) as ex:
        future = ex.submit(helpers.square, 3)
        with pytest.raises(PodStartError, match="NoPodCreated.*FailedCreate") as info:
            future.result(timeout=60)
        assert info.value.reason == "NoPodCreated"
        run_id = ex.run_id
    assert _run_jobs(kubesim, run_id) == []


@pytest.mark.parametrize("keep_warm", [0, 60], ids=["cold", "warm"])
def test_full_quota_waits_for_room_and_finishes(
    kubesim: Any, kw: dict[str, Any], shared_dir: SharedPath, keep_warm: float
) -> None:
    # The quota is full only because the run's own pod uses it: the second batch's pods are
    # refused ("used: pods=1, limited: pods=1") for longer than Timeouts.startup, then
    # room comes and they run. Waiting for room is not an error.
    from kubernetes import client

    _quota(kubesim, {"pods": "1"})
    # Warm: the first worker, idle once its call returns, leaves for the refused pod
    # (it would hold the quota for its whole idle window otherwise).
    kw["timeouts"] = dataclasses.replace(kw["timeouts"], startup=2, keep_warm=keep_warm)
    started, release = shared_dir / "started", shared_dir / "release"
    with KubernetesExecutor(max_workers=2, **kw) as ex:
        first = ex.submit(helpers.touch_then_wait, started, release)
        helpers.wait_for(first.running, 60, "the first call to run")
        second = ex.submit(helpers.square, 5)

        def refusals() -> int:
            with kubesim.api_client() as api:
                events = client.CoreV1Api(api).list_namespaced_event(
                    "default", field_selector="reason=FailedCreate"
                )
            return sum(e.count or 1 for e in events.items)

        # Refused for longer than the startup timeout (2 s): the backoff is 1, 2, 4 s.
        helpers.wait_for(lambda: refusals() >= 3, 60, "the second batch's pods to be refused")
        assert not second.done()
        release.touch()
        assert second.result(timeout=60) == 25
        assert first.result(timeout=60) is not None


def test_close_while_a_watch_answer_is_held(kubesim_factory: Any, tmp_path: Path) -> None:
    # The race of the real cluster's slow exits: close() runs while a watch request is on
    # its way. When its answer comes, that connection carries a live stream; given back to
    # the pool, the run Secret's DELETE was written on it and waited behind the stream for
    # minutes. Bookmarks as rare as a real apiserver's (about a minute), so that nothing
    # is waiting to be read on the stranded connection (urllib3 drops such connections).
    sim = kubesim_factory(bookmark_interval=600)
    held = sim.faults.delay(600, watch=True)
    ex = KubernetesExecutor(**kubesim_kwargs(sim, tmp_path / "storage"))
    try:
        assert list(ex.map(helpers.square, [])) == []
        assert held.wait_held(2, timeout=30)
        secret = f"k8sx-{ex.run_id}"
        releaser = threading.Timer(1.0, held.release)  # the answers arrive during close()
        releaser.start()
        began = time.monotonic()
        ex.shutdown(wait=True)
        took = time.monotonic() - began
    finally:
        held.release()
    # The stated bound of close() (docs/kubernetes.md), not a speed goal: the Secret's
    # DELETE did not wait behind a watch stream.
    assert took < 20
    secrets = sim.store.list("secrets", "default", field_selector=f"metadata.name={secret}")
    assert secrets[0] == []


def test_shutdown_leaves_no_job_pod_secret_or_storage(
    cluster: ClusterUnderTest, kw: dict[str, Any], shared_dir: SharedPath
) -> None:
    with KubernetesExecutor(**kw) as ex:
        assert list(ex.map(helpers.square, range(6))) == [0, 1, 4, 9, 16, 25]
        run_id = ex.run_id
        seen = cluster.run_objects(run_id)
        assert seen["jobs"]
        assert seen["secrets"] == [f"k8sx-{run_id}"]
    helpers.wait_for(
        lambda: cluster.run_objects(run_id) == {"jobs": [], "pods": [], "secrets": []},
        30,
        "the run's objects to be gone",
    )
    assert not (shared_dir / "storage" / run_id).exists()


@pytest.mark.kubesim_only  # a local directory the pods see: kubesim's process kubelet
def test_relative_storage_path_reaches_the_pods(
    kw: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pods start in another working directory: they must get the path made absolute.
    monkeypatch.chdir(tmp_path)
    with KubernetesExecutor(**{**kw, "storage": "relative-runs"}) as ex:
        assert list(ex.map(helpers.square, range(4))) == [0, 1, 4, 9]
        assert (tmp_path / "relative-runs" / ex.run_id).is_dir()


def test_max_workers_bounds_pods_across_batches(
    cluster: ClusterUnderTest, kw: dict[str, Any], shared_dir: SharedPath
) -> None:
    calls, release = shared_dir / "calls", shared_dir / "release"
    calls.mkdir()

    # Cold: the backend's own slot plan (test_warm.py has the warm workers' bound).
    with KubernetesExecutor(max_workers=2, **cold(kw)) as ex:

        def live_pods() -> list[Any]:
            pods = cluster.pods(ex.run_id)
            return [p for p in pods if p.status and p.status.phase in ("Pending", "Running")]

        blocking = ex.map(helpers.record_then_wait, [calls] * 2, [release] * 2)
        helpers.wait_for(lambda: len(calls.listdir()) == 2, 60, "two workers busy")
        later = ex.map(helpers.square, range(4))  # a second batch, two more indexes
        helpers.wait_for(lambda: len(cluster.jobs(ex.run_id)) == 2, 30, "Job 2")
        second = next(
            j
            for j in cluster.jobs(ex.run_id)
            if j.metadata.labels["k8s-executor.io/batch"] != "b00000"
        )
        # No slot is free: the second Job is created paused, and no pod of it exists.
        assert second.spec.parallelism == 0
        assert len(live_pods()) == 2
        release.touch()
        assert list(later) == [0, 1, 4, 9]
        assert len(list(blocking)) == 2


def test_kill_workers_ends_running_pods(
    cluster: ClusterUnderTest, kw: dict[str, Any], shared_dir: SharedPath
) -> None:
    started = shared_dir / "started"
    ex = KubernetesExecutor(**kw)
    future = ex.submit(helpers.touch_then_block, started)
    helpers.wait_for(started.exists, 60, "the task to start")
    # The executor learns of the start from the watch (pod Running), maybe after the
    # task has begun; until then a kill would count the call as not started: cancelled.
    helpers.wait_for(future.running, 60, "the watch to report the pod running")
    pid = int(helpers.wait_for_text(started, 60, "the task to write its pid"))
    ex.shutdown(wait=True, kill_workers=True)
    with pytest.raises(WorkerLostError):
        future.result(timeout=0)
    assert cluster.run_objects(ex.run_id)["pods"] == []
    if cluster.local_workers:
        helpers.wait_for(lambda: not helpers.alive(pid), 60, "the worker process to be gone")


def test_forbidden_create_says_which_verbs(kubesim: Any, kw: dict[str, Any]) -> None:
    kubesim.faults.deny("create", "secrets")
    ex = KubernetesExecutor(**kw)
    with pytest.raises(
        ClusterError, match=r"refused it \(403.*create, get, list, delete on secrets"
    ) as info:
        ex.submit(helpers.square, 1)
    assert info.value.status == 403
    assert "k8s-executor rbac" in str(info.value)
    kubesim.faults.clear()
    ex.shutdown()


def test_forbidden_job_creation_breaks_the_executor(kubesim: Any, kw: dict[str, Any]) -> None:
    kubesim.faults.deny("create", "jobs")
    with KubernetesExecutor(**kw) as ex:
        future = ex.submit(helpers.square, 1)
        with pytest.raises(ExecutorBrokenError) as info:
            future.result(timeout=60)
        assert isinstance(info.value.__cause__, ClusterError)
        assert "jobs.batch" in str(info.value.__cause__)


def test_refused_watch_breaks_the_executor_instead_of_hanging(
    kubesim: Any, kw: dict[str, Any]
) -> None:
    kubesim.faults.deny("watch", "pods")
    with KubernetesExecutor(**kw) as ex:
        # The refusal may break the executor before submit returns, or after.
        with pytest.raises(ExecutorBrokenError) as info:
            ex.submit(helpers.square, 1).result(timeout=60)
        cause = info.value.__cause__
        assert isinstance(cause, ClusterError)
        assert cause.status == 403
        assert "watch" in str(cause)


def test_unreachable_cluster_is_a_clear_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
    )
    ex = KubernetesExecutor(
        backend="kubernetes", kubeconfig=str(kubeconfig), image="x", storage=str(tmp_path)
    )
    with pytest.raises(ClusterError, match="nothing answers at.*kubectl cluster-info"):
        ex.submit(helpers.square, 1)
    ex.shutdown()


def test_stream_logs_prefixes_batch_and_index(
    kw: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    with KubernetesExecutor(stream_logs=True, **kw) as ex:
        assert ex.submit(print_lines, 3).result(timeout=60) == 3
    err = capfd.readouterr().err
    assert "[b00000/0] line 0 from the task" in err
    assert "[b00000/0] line 2 from the task" in err


def print_long_lines() -> str:
    # Lines longer than a read of the log stream, with characters of several bytes.
    for n in (5000, 9000):
        print("é" * n + "|end", flush=True)
    print("no newline at the end", end="", flush=True)
    return "done"


def test_stream_logs_prints_whole_lines_of_any_length(
    kw: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    with KubernetesExecutor(stream_logs=True, **kw) as ex:
        assert ex.submit(print_long_lines).result(timeout=60) == "done"
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("[b00000/0]")]
    assert lines == [
        "[b00000/0] " + "é" * 5000 + "|end",
        "[b00000/0] " + "é" * 9000 + "|end",
        "[b00000/0] no newline at the end",
    ]


CLIENT = """
import pickle, sys
from k8s_executor import KubernetesExecutor
from tests import helpers

kwargs = pickle.loads(open(sys.argv[1], "rb").read())
ex = KubernetesExecutor(**kwargs)
ex.submit(helpers.touch_then_block, sys.argv[2])
print(ex.run_id, flush=True)
import threading; threading.Event().wait()
"""


def test_killed_client_leaves_nothing_running_then_cleanup(
    cluster: ClusterUnderTest,
    shared_dir: SharedPath,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import pickle

    kw = cluster.executor_kwargs(shared_dir / "storage")
    kw["timeouts"] = Timeouts(heartbeat=0.5, heartbeat_grace=3)
    (tmp_path / "kw").write_bytes(pickle.dumps(kw))
    started = shared_dir / "started"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, str(tmp_path / "kw"), started.url],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdout is not None
    run_id = client.stdout.readline().strip()
    worker_pid = int(helpers.wait_for_text(started, 60, "the task to start"))
    client.send_signal(signal.SIGKILL)
    client.wait()
    client.stdout.close()
    # No heartbeat for 3 s: the worker gives up (exit 87), the pod failure policy fails
    # the Job, and nothing of the run is running any more.
    if cluster.local_workers:
        helpers.wait_for(lambda: not helpers.alive(worker_pid), 30, "the abandoned worker to exit")

    def job_failed() -> bool:
        jobs = cluster.jobs(run_id)
        conditions = (jobs[0].status.conditions or []) if jobs and jobs[0].status else []
        return any(c.type == "Failed" and c.reason == "PodFailurePolicy" for c in conditions)

    helpers.wait_for(job_failed, 30, "the Job to fail by the pod failure policy")
    # What is left (the failed Job, the Secret) is what `k8s-executor cleanup` is for.
    config = cluster.cli_args()
    assert cli.main(["ls", *config]) == 0
    listing = capsys.readouterr().out
    assert run_id in listing
    assert "finished" in listing
    assert cli.main(["cleanup", run_id, *config]) == 0
    assert "would delete run" in capsys.readouterr().out
    assert cluster.run_objects(run_id)["jobs"]  # dry run deleted nothing
    # The killed client could not delete its storage prefix either: cleanup does.
    prefix = shared_dir / "storage" / run_id
    assert prefix.exists()
    storage_options = ["--storage-options", json.dumps(dict(prefix.storage_options or {}))]
    assert cli.main(["cleanup", run_id, "--yes", *config, *storage_options]) == 0
    out = capsys.readouterr().out
    assert f"deleted run {run_id}" in out
    assert f"deleted storage {prefix.url}" in out
    assert not prefix.exists()
    helpers.wait_for(
        lambda: cluster.run_objects(run_id) == {"jobs": [], "pods": [], "secrets": []},
        30,
        "cleanup to remove everything",
    )


def print_then_raise(clue: str) -> None:
    print(f"looking at {clue}", flush=True)
    raise ValueError("bad input")


def test_task_error_carries_what_the_task_printed(kw: dict[str, Any]) -> None:
    with KubernetesExecutor(**kw) as ex:
        future = ex.submit(print_then_raise, "row 42")
        with pytest.raises(ValueError, match="bad input") as info:
            future.result(timeout=60)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "the last lines of its worker's log (batch b00000, index 0)" in notes
    assert "looking at row 42" in notes


def test_task_error_with_streamed_logs_does_not_repeat_them(
    kw: dict[str, Any], capfd: pytest.CaptureFixture[str]
) -> None:
    with KubernetesExecutor(stream_logs=True, **kw) as ex:
        future = ex.submit(print_then_raise, "row 7")
        with pytest.raises(ValueError, match="bad input") as info:
            future.result(timeout=60)
    assert not getattr(info.value, "__notes__", [])
    assert "[b00000/0] looking at row 7" in capfd.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("just a string\n", "is not a kubeconfig: it holds a str"),
        ("apiVersion: v1\nclusters: [\n", r"is not valid YAML: .* \(line 3, column 1\)"),
    ],
    ids=["bare string", "broken yaml"],
)
def test_bad_kubeconfig_is_a_config_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(text)
    ex = KubernetesExecutor(kubeconfig=str(kubeconfig), image="x", storage=str(tmp_path / "s"))
    try:
        with pytest.raises(ConfigError, match=f"the kubeconfig {kubeconfig} {message}"):
            ex.submit(helpers.square, 1)
    finally:
        ex.shutdown()
    # The command line says the same, as an error line rather than a traceback.
    assert cli.main(["ls", "--kubeconfig", str(kubeconfig)]) == 1
    assert f"the kubeconfig {kubeconfig} " in capsys.readouterr().err
