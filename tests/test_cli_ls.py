"""``k8s-executor ls``: a pod counts as running only once its worker runs. A pod stuck
before its start (a missing Secret, an image that cannot be pulled, no node for it) is
waiting, with the reason Kubernetes gives; a Job Kueue holds is queued, with Kueue's
words (issue 14 item 12, issue 16)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from k8s_executor import KubernetesExecutor, Timeouts, _admin, cli
from tests import helpers
from tests.kube_helpers import kubesim_kwargs

RUN = "k8s-executor.io/run"


def _job(run: str, name: str, *, suspend: bool = False, done: bool = False) -> dict[str, Any]:
    conditions = [{"type": "Complete", "status": "True"}] if done else []
    return {
        "metadata": {
            "name": name,
            "labels": {RUN: run},
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"suspend": suspend},
        "status": {"active": 0 if done or suspend else 1, "conditions": conditions},
    }


def _pod(run: str, phase: str, waiting: dict[str, str] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if waiting is not None:
        status["containerStatuses"] = [{"name": "worker", "state": {"waiting": waiting}}]
    return {"metadata": {"labels": {RUN: run}}, "status": status}


def test_a_pod_stuck_before_its_start_is_waiting_with_its_reason() -> None:
    jobs = [
        _job("rstuck", "j1"),
        _job("rok", "j2"),
        _job("rpull", "j3"),
        _job("rdone", "j4", done=True),
    ]
    missing = {"reason": "CreateContainerConfigError", "message": 'secret "s" not found'}
    pods = [
        _pod("rstuck", "Pending", missing),
        _pod("rok", "Running"),
        _pod("rok", "Pending", {"reason": "ContainerCreating"}),  # on its way: no reason
        _pod("rok", "Succeeded"),
        _pod("rpull", "Pending", {"reason": "ImagePullBackOff", "message": "Back-off pulling"}),
        _pod("rdone", "Succeeded"),
    ]
    runs = {r.run_id: r for r in _admin.summarize_runs(jobs, [], pods)}
    assert (runs["rstuck"].running, runs["rstuck"].waiting) == (0, 1)
    assert runs["rstuck"].state == 'waiting: CreateContainerConfigError: secret "s" not found'
    assert (runs["rok"].running, runs["rok"].waiting, runs["rok"].state) == (1, 1, "running")
    assert runs["rpull"].state == "waiting: ImagePullBackOff: Back-off pulling"
    assert (runs["rdone"].running, runs["rdone"].state) == (0, "finished")


def test_a_job_kueue_holds_is_queued_with_kueue_s_message() -> None:
    jobs = [_job("rq", "k8sx-rq-b00000", suspend=True), _job("rslot", "j9", suspend=True)]
    message = "couldn't assign flavors to pod set main: insufficient unused quota for cpu"
    workload = {
        "metadata": {"ownerReferences": [{"kind": "Job", "name": "k8sx-rq-b00000"}]},
        "status": {
            "conditions": [
                {
                    "type": "QuotaReserved",
                    "status": "False",
                    "reason": "Pending",
                    "message": message,
                }
            ]
        },
    }
    runs = {r.run_id: r for r in _admin.summarize_runs(jobs, [], [], [workload])}
    assert runs["rq"].state == f"queued: {message}"
    assert runs["rslot"].state == "queued"  # waiting for a worker slot of its executor


def _wait_for_pod(kubesim: Any, run_id: str, predicate: Any, what: str) -> None:
    def seen() -> bool:
        pods = kubesim.store.list("pods", "default", label_selector=f"{RUN}={run_id}")[0]
        return any(predicate(p.get("status") or {}) for p in pods)

    helpers.wait_for(seen, 60, what)


def _stuck_on_config(status: dict[str, Any]) -> bool:
    states = [cs.get("state") or {} for cs in status.get("containerStatuses") or []]
    return any(
        (s.get("waiting") or {}).get("reason") == "CreateContainerConfigError" for s in states
    )


def test_ls_shows_a_pod_waiting_for_a_missing_secret_as_waiting(
    kubesim: Any, tmp_path: Path, capsys: Any
) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    stuck_kw = kubesim_kwargs(kubesim, tmp_path / "storage", secrets=("no-such-secret",))
    # Long enough that the pod is still stuck when `ls` looks.
    stuck_kw["timeouts"] = Timeouts(startup=120, startup_error=120, heartbeat=1, heartbeat_grace=30)
    with KubernetesExecutor(**kubesim_kwargs(kubesim, tmp_path / "storage")) as ok:
        stuck = KubernetesExecutor(**stuck_kw)
        try:
            running = ok.submit(helpers.touch_then_wait, started, release)
            waiting = stuck.submit(helpers.square, 2)
            _wait_for_pod(
                kubesim, ok.run_id, lambda s: s.get("phase") == "Running", "a running pod"
            )
            _wait_for_pod(kubesim, stuck.run_id, _stuck_on_config, "CreateContainerConfigError")
            assert cli.main(["ls", "--kubeconfig", str(kubesim.kubeconfig_path)]) == 0
            out = capsys.readouterr().out
        finally:
            release.touch()
            # kill_workers: a cancelled call whose pod never starts would hold a plain
            # shutdown until Timeouts.startup_error (an engine matter, reported).
            stuck.shutdown(cancel_futures=True, kill_workers=True)
        assert running.result(timeout=60) > 0
    assert waiting.cancelled()
    header, *lines = out.splitlines()
    assert header.split() == [
        "RUN", "AGE", "OWNER", "JOBS", "RUNNING", "WAITING", "SUCCEEDED", "FAILED", "STATE"
    ]  # fmt: skip
    rows = {line.split()[0]: line.split(maxsplit=8) for line in lines}
    assert rows[ok.run_id][4:] == ["1", "0", "0", "0", "running"]
    assert rows[stuck.run_id][4:8] == ["0", "1", "0", "0"]
    assert rows[stuck.run_id][8].startswith("waiting: CreateContainerConfigError: ")
    assert "no-such-secret" in rows[stuck.run_id][8]


def test_ls_shows_kueue_s_message_for_a_queued_batch(
    kubesim: Any, tmp_path: Path, capsys: Any
) -> None:
    from kubernetes import client

    from tests.helpers import SharedPath
    from tests.test_kueue_runs import _kw, _queues, _suspended

    with kubesim.api_client() as api:
        _queues(client.CustomObjectsApi(api), cpu="1")
    started, release = tmp_path / "started", tmp_path / "release"
    ex = KubernetesExecutor(max_workers=2, **_kw(kubesim, SharedPath(str(tmp_path))))
    try:
        first = ex.submit(helpers.touch_then_wait, started, release)
        helpers.wait_for(first.running, 60, "the first batch to be admitted and run")
        ex.submit(helpers.square, 6)
        helpers.wait_for(
            lambda: _suspended(kubesim, ex.run_id, "b00001"), 60, "the second batch queued"
        )
        assert cli.main(["ls", "--kubeconfig", str(kubesim.kubeconfig_path)]) == 0
    finally:
        release.touch()
        ex.shutdown(cancel_futures=True, kill_workers=True)  # what runs after: test_kueue_runs
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith(ex.run_id)]
    state = line.split(maxsplit=8)[8]
    assert state.startswith("running; queued: "), state
    assert "insufficient unused quota for cpu in flavor default-flavor" in state, state
