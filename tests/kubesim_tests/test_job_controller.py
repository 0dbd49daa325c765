"""§9.4-9.7, 9.9-9.11, 9.13, 9.14, 9.17: the Job controller driven through the official client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.kubesim.clock import FakeClock
from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import wait_for
from tests.kubesim_tests.job_helpers import (
    NS,
    assert_ended,
    condition,
    get_job,
    index_of,
    job_body,
    job_pods,
    phase,
    raw,
    wait_job,
)

# Pods that block until the test lets them go: they poll for a file in their cwd... which is
# per pod; so they wait on a marker path passed by the test instead.
BLOCK = "import os,time\nwhile not os.path.exists({path!r}): time.sleep(0.02)\n"


@pytest.fixture
def live(kubesim: Kubesim) -> Iterator[tuple[Any, Any, Kubesim]]:
    with kubesim.api_client() as api:
        yield client.BatchV1Api(api), client.CoreV1Api(api), kubesim


@pytest.fixture
def fake(
    kubesim_factory: Callable[..., Kubesim],
) -> Iterator[tuple[Any, Any, Kubesim]]:
    """kubesim on a FakeClock: replacement backoff only passes when the test moves time."""
    sim = kubesim_factory(clock=FakeClock())
    with sim.api_client() as api:
        yield client.BatchV1Api(api), client.CoreV1Api(api), sim


def flying(clock: FakeClock, predicate: Callable[[], Any], step: float = 2.0) -> Callable[[], Any]:
    """A predicate that also moves the fake clock ``step`` seconds per poll."""

    def check() -> Any:
        value = predicate()
        if not value:
            clock.advance(step)
        return value

    return check


def _stamp(clock: FakeClock) -> str:
    """The clock's current time as the API serialises it."""
    return clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")


def _create(batch: Any, body: dict[str, Any]) -> dict[str, Any]:
    return raw(batch.create_namespaced_job(NS, body, _preload_content=False))


def test_s9_04_pod_shape_and_lowest_indexes_first(live: Any, tmp_path: Any) -> None:
    batch, core, _ = live
    gate = tmp_path / "go"
    job = _create(
        batch,
        job_body(
            "shape",
            BLOCK.format(path=str(gate)),
            completions=5,
            parallelism=2,
            backoffLimitPerIndex=1,
        ),
    )
    uid = job["metadata"]["uid"]
    pods = wait_for(lambda: len(job_pods(core, job)) == 2 and job_pods(core, job), 10)
    assert sorted(index_of(p) for p in pods) == [0, 1]
    for pod in pods:
        ix = index_of(pod)
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["generateName"] == f"shape-{ix}-"
        assert (
            meta["name"].startswith(f"shape-{ix}-") and len(meta["name"]) == len(f"shape-{ix}-") + 5
        )
        assert spec["hostname"] == f"shape-{ix}"
        assert meta["labels"]["batch.kubernetes.io/job-completion-index"] == str(ix)
        assert meta["labels"]["batch.kubernetes.io/controller-uid"] == uid
        assert meta["labels"]["job-name"] == "shape"
        assert meta["annotations"]["batch.kubernetes.io/job-completion-index"] == str(ix)
        assert meta["annotations"]["batch.kubernetes.io/job-index-failure-count"] == "0"
        assert "batch.kubernetes.io/job-index-ignored-failure-count" not in meta["annotations"]
        assert meta["finalizers"] == ["batch.kubernetes.io/job-tracking"]
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": "shape",
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        env = spec["containers"][0]["env"]
        assert {
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {
                "fieldRef": {
                    "apiVersion": "v1",
                    "fieldPath": "metadata.labels['batch.kubernetes.io/job-completion-index']",
                }
            },
        } in env
    # Never more than parallelism active; the rest follow in index order.
    status = wait_for(lambda: get_job(batch, "shape")["status"].get("active") == 2, 10)
    assert status
    gate.write_text("")
    done = wait_job(batch, "shape")
    assert done["status"]["completedIndexes"] == "0-4"
    assert done["status"]["succeeded"] == 5


def test_s9_04_nonindexed_completions_parallelism_and_shape(live: Any, tmp_path: Any) -> None:
    batch, core, sim = live
    gate = tmp_path / "go"
    job = _create(
        batch,
        job_body(
            "plain", BLOCK.format(path=str(gate)), indexed=False, completions=3, parallelism=2
        ),
    )
    assert job["spec"]["completionMode"] == "NonIndexed"
    uid = job["metadata"]["uid"]
    wait_for(lambda: get_job(batch, "plain")["status"].get("ready") == 2, 15, "2 pods ready")
    # parallelism caps the active pods: with every sync so far done, no third pod exists.
    assert sim.settle()
    pods = job_pods(core, job)
    assert len(pods) == 2
    for pod in pods:
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["generateName"] == "plain-"
        assert len(meta["name"]) == len("plain-") + 5
        assert "batch.kubernetes.io/job-completion-index" not in meta.get("annotations", {})
        assert "batch.kubernetes.io/job-completion-index" not in meta["labels"]
        assert meta["labels"]["batch.kubernetes.io/controller-uid"] == uid
        assert meta["labels"]["job-name"] == "plain"
        assert "hostname" not in spec
        env = spec["containers"][0].get("env") or []
        assert not [e for e in env if e["name"] == "JOB_COMPLETION_INDEX"]
        assert meta["finalizers"] == ["batch.kubernetes.io/job-tracking"]
        assert meta["ownerReferences"][0]["uid"] == uid
    running = get_job(batch, "plain")["status"]
    assert running["active"] == 2
    assert "succeeded" not in running and "completedIndexes" not in running
    gate.write_text("")
    done = wait_job(batch, "plain")
    status = done["status"]
    assert status["succeeded"] == 3
    assert "failed" not in status and "active" not in status
    assert "completedIndexes" not in status and "failedIndexes" not in status
    assert status["uncountedTerminatedPods"] == {} and status["completionTime"]
    assert [c["type"] for c in status["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    assert_ended(
        done,
        ("SuccessCriteriaMet", "Complete"),
        "CompletionsReached",
        "Reached expected number of succeeded pods",
    )
    # Exactly one pod per completion, all succeeded and untracked.
    pods = job_pods(core, job)
    assert len(pods) == 3
    assert all(phase(p) == "Succeeded" and not p["metadata"].get("finalizers") for p in pods)


def test_s9_11_nonindexed_backoff_limit(fake: Any) -> None:
    batch, core, sim = fake
    body = job_body(
        "plainfail",
        "raise SystemExit(1)",
        indexed=False,
        completions=2,
        parallelism=1,
        backoffLimit=1,
    )
    job = _create(batch, body)
    # One failure is within the limit (a replacement follows the 10 s backoff), two are not.
    wait_for(flying(sim.clock, lambda: condition(get_job(batch, "plainfail"), "Failed")), 15)
    assert sim.settle()
    job = get_job(batch, "plainfail")
    status = job["status"]
    assert_ended(
        job,
        ("FailureTarget", "Failed"),
        "BackoffLimitExceeded",
        "Job has reached the specified backoff limit",
    )
    assert status["failed"] == 2
    assert "succeeded" not in status and "active" not in status
    assert "completionTime" not in status and condition(job, "Complete") is None
    assert status["uncountedTerminatedPods"] == {} and status["terminating"] == 0
    pods = job_pods(core, job)
    assert len(pods) == 2  # no replacement after the limit
    assert all(phase(p) == "Failed" and not p["metadata"].get("finalizers") for p in pods)


def test_s9_05_status_presence_rules(live: Any, tmp_path: Any) -> None:
    batch, _, _ = live
    gate = tmp_path / "go"
    _create(batch, job_body("presence", BLOCK.format(path=str(gate)), completions=2, parallelism=2))
    running = wait_for(
        lambda: (
            get_job(batch, "presence")["status"].get("ready") == 2 and get_job(batch, "presence")
        ),
        10,
    )
    status = running["status"]
    assert status["active"] == 2 and status["terminating"] == 0
    assert status["uncountedTerminatedPods"] == {}
    assert "succeeded" not in status and "failed" not in status
    assert "failedIndexes" not in status  # no backoffLimitPerIndex
    assert "completedIndexes" not in status
    assert status["startTime"]
    gate.write_text("")
    done = wait_job(batch, "presence")["status"]
    assert "active" not in done and "failed" not in done
    assert done["ready"] == 0 and done["terminating"] == 0
    assert done["completionTime"]
    # failedIndexes is "" (present) with backoffLimitPerIndex.
    _create(batch, job_body("perindex", "pass", backoffLimitPerIndex=1))
    assert wait_job(batch, "perindex")["status"]["failedIndexes"] == ""


def test_s9_06_duplicate_pod_deleted_and_success_counted_once(live: Any, tmp_path: Any) -> None:
    batch, core, _ = live
    gate = tmp_path / "go"
    job = _create(
        batch, job_body("dup", BLOCK.format(path=str(gate)), completions=2, parallelism=1)
    )
    first = wait_for(lambda: job_pods(core, job), 10)[0]
    # A second pod for index 0, shaped like the controller's own.
    clone = {
        "metadata": {
            "generateName": "dup-0-",
            "labels": first["metadata"]["labels"],
            "annotations": first["metadata"]["annotations"],
            "finalizers": ["batch.kubernetes.io/job-tracking"],
            "ownerReferences": first["metadata"]["ownerReferences"],
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": first["spec"]["containers"],
        },
    }
    core.create_namespaced_pod(NS, clone)
    # One of the two is deleted (which one depends on their readiness and age).
    wait_for(
        lambda: (
            len([p for p in job_pods(core, job) if not p["metadata"].get("deletionTimestamp")]) == 1
        ),
        10,
        "duplicate deleted",
    )
    gate.write_text("")
    done = wait_job(batch, "dup")
    assert done["status"]["succeeded"] == 2
    assert done["status"]["completedIndexes"] == "0,1"


def test_s9_07_deleted_pod_counts_failed_and_is_replaced(fake: Any, tmp_path: Any) -> None:
    batch, core, sim = fake
    gate = tmp_path / "go"
    job = _create(batch, job_body("repl", BLOCK.format(path=str(gate)), completions=1))
    pod = wait_for(lambda: [p for p in job_pods(core, job) if phase(p) == "Running"], 10)[0]
    core.delete_namespaced_pod(pod["metadata"]["name"], NS, grace_period_seconds=30)
    # TerminatingOrFailed: counted at once (deletionTimestamp), replaced at once.
    wait_for(lambda: get_job(batch, "repl")["status"].get("failed") == 1, 10, "failed=1")
    # Replaced after the 10 s replacement backoff (fake clock).
    wait_for(
        flying(
            sim.clock,
            lambda: any(
                p["metadata"]["name"] != pod["metadata"]["name"]
                and not p["metadata"].get("deletionTimestamp")
                for p in job_pods(core, job)
            ),
        ),
        10,
        "replacement",
    )
    gate.write_text("")
    assert wait_job(batch, "repl")["status"]["failed"] == 1


def test_s9_07_failed_policy_waits_for_terminal_phase(fake: Any, tmp_path: Any) -> None:
    batch, core, sim = fake
    gate = tmp_path / "go"
    ready = tmp_path / "ready"
    # Ignore SIGTERM so the pod stays terminating for the whole grace period; say so in a
    # file, since "Running" only means the process started, not that the handler is set.
    code = (
        "import signal, pathlib\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n" + BLOCK.format(path=str(gate))
    )
    job = _create(batch, job_body("waitf", code, podReplacementPolicy="Failed"))
    pod = wait_for(lambda: [p for p in job_pods(core, job) if phase(p) == "Running"], 10)[0]
    wait_for(ready.exists, 20, "SIGTERM ignored")
    core.delete_namespaced_pod(pod["metadata"]["name"], NS, grace_period_seconds=30)
    wait_for(lambda: get_job(batch, "waitf")["status"]["terminating"] == 1, 10, "terminating=1")
    status = get_job(batch, "waitf")["status"]
    assert "failed" not in status
    assert len([p for p in job_pods(core, job) if not p["metadata"].get("deletionTimestamp")]) == 0
    # After the grace period (SIGKILL) the pod is Failed: now it counts and is replaced.
    sim.clock.advance(30)
    wait_for(lambda: get_job(batch, "waitf")["status"].get("failed") == 1, 15, "failed=1")
    check = flying(sim.clock, lambda: get_job(batch, "waitf")["status"].get("active") == 1)
    wait_for(check, 10, "replaced")
    gate.write_text("")
    wait_job(batch, "waitf")


def _policy_job(name: str, code: str, rules: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return job_body(name, code, podFailurePolicy={"rules": rules}, **spec)


def test_s9_09_fail_job_rule_on_exit_code(live: Any) -> None:
    batch, core, _ = live
    rules = [
        {"action": "Ignore", "onExitCodes": {"operator": "In", "values": [1]}},
        {
            "action": "FailJob",
            "onExitCodes": {"containerName": "task", "operator": "In", "values": [42]},
        },
    ]
    _create(batch, _policy_job("failjob", "raise SystemExit(42)", rules, backoffLimit=5))
    job = wait_job(batch, "failjob", "Failed")
    pod = job_pods(core, job)[0]
    target = condition(job, "FailureTarget")
    failed = condition(job, "Failed")
    assert target is not None and failed is not None
    expected = (
        f"Container task for pod default/{pod['metadata']['name']} failed with exit code 42 "
        "matching FailJob rule at index 1"
    )
    assert (target["reason"], target["message"]) == ("PodFailurePolicy", expected)
    assert (failed["reason"], failed["message"]) == ("PodFailurePolicy", expected)
    assert job["status"]["failed"] == 1
    assert "completionTime" not in job["status"]


def test_s9_09_ignore_rule_does_not_count(fake: Any, tmp_path: Any) -> None:
    batch, core, sim = fake
    # First attempt exits 1 (ignored), the retry succeeds: failed stays absent (0).
    once = tmp_path / "once"
    code = f"import pathlib\np = pathlib.Path({str(once)!r})\nif not p.exists():\n"
    code += "    p.write_text('x'); raise SystemExit(1)\n"
    rules = [{"action": "Ignore", "onExitCodes": {"operator": "In", "values": [1]}}]
    _create(batch, _policy_job("ignore", code, rules, backoffLimit=0))
    wait_for(flying(sim.clock, lambda: condition(get_job(batch, "ignore"), "Complete")), 15)
    job = get_job(batch, "ignore")
    assert "failed" not in job["status"]
    assert len(job_pods(core, job)) == 2


def test_s9_09_count_on_pod_condition(live: Any, tmp_path: Any) -> None:
    batch, core, sim = live
    gate = tmp_path / "go"
    rules = [
        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]
    job = _create(batch, _policy_job("cond", BLOCK.format(path=str(gate)), rules, grace=1))
    pod = wait_for(lambda: [p for p in job_pods(core, job) if phase(p) == "Running"], 10)[0]
    sim.kubelet.evict(NS, pod["metadata"]["name"])
    failed = wait_job(batch, "cond", "Failed")
    assert condition(failed, "Failed")["message"] == (
        f"Pod default/{pod['metadata']['name']} has condition DisruptionTarget matching FailJob "
        "rule at index 0"
    )


def test_s9_10_per_index_backoff(fake: Any) -> None:
    batch, core, sim = fake
    # Index 1 always fails; the others succeed. backoffLimitPerIndex=1: two attempts.
    code = "import os\nraise SystemExit(1 if os.environ['JOB_COMPLETION_INDEX'] == '1' else 0)"
    body = job_body("perix", code, completions=3, parallelism=3, backoffLimitPerIndex=1)
    _create(batch, body)
    wait_for(flying(sim.clock, lambda: condition(get_job(batch, "perix"), "Failed")), 15)
    job = get_job(batch, "perix")
    status = job["status"]
    assert status["failedIndexes"] == "1"
    assert status["completedIndexes"] == "0,2"
    assert status["succeeded"] == 2 and status["failed"] == 2
    assert condition(job, "Failed")["reason"] == "FailedIndexes"
    assert condition(job, "Failed")["message"] == "Job has failed indexes"
    counts = sorted(
        p["metadata"]["annotations"]["batch.kubernetes.io/job-index-failure-count"]
        for p in job_pods(core, job)
        if index_of(p) == 1
    )
    assert counts == ["0", "1"]


def test_s9_10_fail_index_rule_stops_only_that_index(live: Any) -> None:
    batch, core, _ = live
    code = "import os\nraise SystemExit(3 if os.environ['JOB_COMPLETION_INDEX'] == '0' else 0)"
    rules = [{"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [3]}}]
    body = _policy_job("failix", code, rules, completions=3, parallelism=1, backoffLimitPerIndex=5)
    _create(batch, body)
    job = wait_job(batch, "failix", "Failed", timeout=20)
    assert job["status"]["failedIndexes"] == "0"
    assert job["status"]["completedIndexes"] == "1,2"
    assert len([p for p in job_pods(core, job) if index_of(p) == 0]) == 1


def test_s9_10_max_failed_indexes_exceeded(live: Any, tmp_path: Any) -> None:
    batch, core, _ = live
    gate = tmp_path / "go"
    # Indexes 0 and 1 fail (no retry with backoffLimitPerIndex 0); 2 and 3 run on. Two failed
    # indexes exceed maxFailedIndexes 1: the Job fails without waiting for 2 and 3.
    code = (
        "import os,time\nif os.environ['JOB_COMPLETION_INDEX'] in ('0','1'): raise SystemExit(1)\n"
        + BLOCK.format(path=str(gate))
    )
    body = job_body(
        "maxfi",
        code,
        completions=4,
        parallelism=4,
        backoffLimitPerIndex=0,
        maxFailedIndexes=1,
        grace=1,
    )
    _create(batch, body)
    job = wait_job(batch, "maxfi", "Failed", timeout=20)
    assert_ended(
        job,
        ("FailureTarget", "Failed"),
        "MaxFailedIndexesExceeded",
        "Job has exceeded the specified maximal number of failed indexes",
    )
    status = job["status"]
    assert status["failedIndexes"] == "0,1"
    assert "completedIndexes" not in status and "succeeded" not in status
    assert status["failed"] == 4  # the two running pods were killed and count as failed
    assert status["terminating"] == 0
    assert condition(job, "Complete") is None and "completionTime" not in status
    # One pod each for the failed indexes (no retry); the killed pods of 2 and 3 are Failed,
    # or already removed (deleted and untracked).
    pods = job_pods(core, job)
    assert sorted(ix for p in pods if (ix := index_of(p)) < 2) == [0, 1]
    assert all(phase(p) == "Failed" for p in pods)


def test_s9_11_backoff_limit_and_terminal_after_pods_terminal(live: Any, tmp_path: Any) -> None:
    batch, core, _ = live
    gate = tmp_path / "go"
    # Index 0 fails at once; index 1 runs until killed. backoffLimit 0 → the Job fails and the
    # running pod is deleted and counted.
    code = (
        "import os,time\nif os.environ['JOB_COMPLETION_INDEX']=='0': raise SystemExit(2)\n"
        + BLOCK.format(path=str(gate))
    )
    _create(batch, job_body("bol", code, completions=2, parallelism=2, backoffLimit=0, grace=1))
    job = wait_job(batch, "bol", "Failed", timeout=20)
    assert condition(job, "FailureTarget")["reason"] == "BackoffLimitExceeded"
    assert condition(job, "Failed")["message"] == "Job has reached the specified backoff limit"
    assert job["status"]["failed"] == 2  # the killed pod counts
    assert job["status"]["terminating"] == 0
    assert all(phase(p) in ("Failed", "Succeeded") for p in job_pods(core, job))
    assert condition(job, "Complete") is None and "completionTime" not in job["status"]


def test_s9_11_indexed_completions_reached(live: Any) -> None:
    batch, core, _ = live
    job = _create(batch, job_body("reach", "pass", completions=3, parallelism=3))
    done = wait_job(batch, "reach")
    status = done["status"]
    # SuccessCriteriaMet first, then Complete, both with the §4 reason and message.
    assert [c["type"] for c in status["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    assert_ended(
        done,
        ("SuccessCriteriaMet", "Complete"),
        "CompletionsReached",
        "Reached expected number of succeeded pods",
    )
    met, complete = status["conditions"]
    assert met["lastTransitionTime"] <= complete["lastTransitionTime"]
    assert status["completedIndexes"] == "0-2" and status["succeeded"] == 3
    assert status["completionTime"] and "failed" not in status
    assert condition(done, "Failed") is None and condition(done, "FailureTarget") is None
    assert sorted(index_of(p) for p in job_pods(core, job)) == [0, 1, 2]


def test_s9_11_success_policy(live: Any, tmp_path: Any) -> None:
    batch, core, _ = live
    gate = tmp_path / "go"
    code = "import os\nif os.environ['JOB_COMPLETION_INDEX']!='0':\n    " + BLOCK.format(
        path=str(gate)
    ).replace("\n", "\n    ")
    body = job_body(
        "sp",
        code,
        completions=3,
        parallelism=3,
        successPolicy={"rules": [{"succeededIndexes": "0"}]},
        grace=1,
    )
    _create(batch, body)
    job = wait_job(batch, "sp", "Complete", timeout=20)
    assert_ended(
        job, ("SuccessCriteriaMet", "Complete"), "SuccessPolicy", "Matched rules at index 0"
    )
    assert job["status"]["completionTime"]
    assert "failed" not in job["status"]  # pods stopped by success are not failures
    assert all(
        p["metadata"].get("deletionTimestamp") or phase(p) != "Running" for p in job_pods(core, job)
    )


def test_s9_13_suspend_and_resume(fake: Any, tmp_path: Any) -> None:
    batch, core, sim = fake
    clock: FakeClock = sim.clock
    gate = tmp_path / "go"
    job = _create(
        batch, job_body("susp", BLOCK.format(path=str(gate)), completions=2, parallelism=2)
    )
    wait_for(lambda: get_job(batch, "susp")["status"].get("active") == 2, 10)
    start1 = get_job(batch, "susp")["status"]["startTime"]
    assert start1 == _stamp(clock)
    batch.patch_namespaced_job("susp", NS, {"spec": {"suspend": True}})
    suspended = wait_for(
        lambda: (
            (j := get_job(batch, "susp"))["status"].get("active") is None
            and condition(j, "Suspended")
            and j
        ),
        10,
    )
    cond = condition(suspended, "Suspended")
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "True",
        "JobSuspended",
        "Job suspended",
    )
    assert "failed" not in suspended["status"]  # suspend deletions are not failures
    wait_for(
        lambda: (
            not [
                p
                for p in job_pods(core, job)
                if not p["metadata"].get("deletionTimestamp") and phase(p) in ("Running", "Pending")
            ]
        ),
        10,
    )
    # Time passes while suspended; resuming restarts startTime at the resume instant (a wall
    # clock could resume within the same second, which would hide a missing reset).
    clock.advance(45)
    batch.patch_namespaced_job("susp", NS, {"spec": {"suspend": False}})
    resumed = wait_for(
        lambda: (
            (j := get_job(batch, "susp")) and condition(j, "Suspended")["status"] == "False" and j
        ),
        10,
    )
    cond = condition(resumed, "Suspended")
    assert (cond["reason"], cond["message"]) == ("JobResumed", "Job resumed")
    assert resumed["status"]["startTime"] == _stamp(clock) != start1
    assert cond["lastTransitionTime"] == _stamp(clock)
    gate.write_text("")
    assert "failed" not in wait_job(batch, "susp")["status"]


def test_s9_14_elastic_scale_down(live: Any, tmp_path: Any) -> None:
    batch, core, _ = live
    gate = tmp_path / "go"
    # Indexes 0 and 4 succeed at once; 1-3 run until the gate opens.
    code = (
        "import os\nif os.environ['JOB_COMPLETION_INDEX'] not in ('0','4'):\n    "
        + BLOCK.format(path=str(gate)).replace("\n", "\n    ")
    )
    job = _create(batch, job_body("scale", code, completions=5, parallelism=5))
    wait_for(
        lambda: (
            (s := get_job(batch, "scale")["status"]).get("completedIndexes") == "0,4"
            and s.get("ready") == 3
        ),
        15,
        "indexes 0,4 done, 1-3 running",
    )
    batch.patch_namespaced_job("scale", NS, {"spec": {"completions": 3, "parallelism": 3}})
    # Index 4 falls out of completedIndexes (succeeded may decrease), index 3's pod is deleted.
    trimmed = wait_for(
        lambda: (
            (j := get_job(batch, "scale"))["status"].get("completedIndexes") == "0"
            and j["status"].get("active") == 2
            and j
        ),
        10,
        "completedIndexes trimmed to 0",
    )
    assert trimmed["status"]["succeeded"] == 1
    assert "failed" not in trimmed["status"]  # scale-down deletions are not failures
    wait_for(
        lambda: all(
            p["metadata"].get("deletionTimestamp") or phase(p) != "Running"
            for p in job_pods(core, job)
            if index_of(p) == 3
        ),
        10,
        "index 3 deleted",
    )
    gate.write_text("")
    done = wait_job(batch, "scale")
    assert done["status"]["completedIndexes"] == "0-2"
    assert done["status"]["succeeded"] == 3
    assert "failed" not in done["status"]
    # One pod per index: index 3 was stopped, not retried (its pod may already be removed).
    assert sorted(index_of(p) for p in job_pods(core, job)) in ([0, 1, 2, 4], [0, 1, 2, 3, 4])


@pytest.mark.parametrize("policy", ["Orphan", "Background", "Foreground"])
def test_s9_17_delete_propagation(live: Any, tmp_path: Any, policy: str) -> None:
    batch, core, _ = live
    gate = tmp_path / "go"
    job = _create(
        batch, job_body("del", BLOCK.format(path=str(gate)), completions=2, parallelism=2, grace=1)
    )
    wait_for(lambda: len([p for p in job_pods(core, job) if phase(p) == "Running"]) == 2, 10)
    response = raw(
        batch.delete_namespaced_job("del", NS, propagation_policy=policy, _preload_content=False)
    )
    if policy == "Orphan":
        pods = wait_for(
            lambda: (
                (ps := job_pods(core, job))
                and all(not p["metadata"].get("finalizers") for p in ps)
                and ps
            ),
            10,
        )
        assert all(phase(p) == "Running" and not p["metadata"].get("ownerReferences") for p in pods)
        return
    if policy == "Foreground":
        # The answer is the Job itself, kept with the foreground finalizer.
        assert response["kind"] == "Job"
        assert response["metadata"]["deletionTimestamp"]
        assert "foregroundDeletion" in response["metadata"]["finalizers"]
    wait_for(lambda: not job_pods(core, job), 20, "pods gone")
    wait_for(lambda: not batch.list_namespaced_job(NS).items, 10, "job gone")


def test_s9_17_default_delete_is_orphan(live: Any, tmp_path: Any) -> None:
    batch, core, _ = live
    gate = tmp_path / "go"
    job = _create(batch, job_body("orph", BLOCK.format(path=str(gate))))
    wait_for(lambda: [p for p in job_pods(core, job) if phase(p) == "Running"], 10)
    batch.delete_namespaced_job("orph", NS)
    pods = wait_for(
        lambda: (ps := job_pods(core, job)) and not ps[0]["metadata"].get("finalizers") and ps, 10
    )
    assert phase(pods[0]) == "Running"
    gate.write_text("")
    wait_for(lambda: phase(job_pods(core, job)[0]) == "Succeeded", 10)
