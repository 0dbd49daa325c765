"""``k8s-executor doctor`` on a shared namespace (issue 16): ResourceQuota headroom against
Resources x max_workers, LimitRange bounds, the PodSecurity level and Kueue's LocalQueues,
one line each, against kubesim through the official client.

Where doctor says the worker pod would be refused or admitted, kubesim's own admission
(a server-side dry-run create of that very pod) is asked too, and must agree."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from k8s_executor import PodOptions, Resources, _admin, cli
from k8s_executor.cli import _policy
from tests import helpers
from tests.kubesim.kubeconfig import Kubesim

NS = "default"
G, V = "kueue.x-k8s.io", "v1beta1"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "shared_cluster.py"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("K8S_EXECUTOR_QUEUE", "K8S_EXECUTOR_STORAGE", "K8S_EXECUTOR_REGISTRY",
                 "K8S_EXECUTOR_IMAGE", "KUBECONFIG"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("K8SX_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def core(kubesim: Kubesim) -> Iterator[Any]:
    with kubesim.api_client() as api:
        yield client.CoreV1Api(api)


def doctor(sim: Kubesim, capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, str]:
    """Each line of doctor's namespace checks: name -> mark and text."""
    cli.main(["doctor", "--timeout", "3", "--kubeconfig", str(sim.kubeconfig_path), *args])
    lines = {}
    for line in capsys.readouterr().out.splitlines():
        name = line[2:].split(" ", 1)[0]
        if name in ("quota", "LimitRange", "PodSecurity", "Kueue"):
            lines[name] = line[:1] + " " + line[2:].split(" ", 1)[1].strip()
    assert list(lines) == ["quota", "LimitRange", "PodSecurity", "Kueue"]
    return lines


def admitted(core: Any, resources: Resources, pod: PodOptions | None = None) -> str:
    """kubesim's admission of the worker pod (a dry-run create): "" or its refusal."""
    body = _admin.worker_pod(resources, pod)
    body["metadata"]["name"] = "doctor-dry-run"
    try:
        core.create_namespaced_pod(NS, body, dry_run="All")
    except ApiException as exc:
        if exc.status != 403:
            raise
        return str(exc.body)
    return ""


def quota(core: Any, name: str, hard: dict[str, str]) -> None:
    core.create_namespaced_resource_quota(NS, {"metadata": {"name": name}, "spec": {"hard": hard}})

    def in_force() -> bool:
        status = core.read_namespaced_resource_quota(name, NS).status
        return bool(status and status.hard)

    helpers.wait_for(in_force, 10, "the quota controller to fill the quota's status")


def limit_range(core: Any, item: dict[str, Any]) -> None:
    body = {"metadata": {"name": "bounds"}, "spec": {"limits": [{"type": "Container", **item}]}}
    core.create_namespaced_limit_range(NS, body)


# -- quota --------------------------------------------------------------------------------


def test_no_quota(kubesim: Kubesim, capsys: pytest.CaptureFixture[str]) -> None:
    lines = doctor(kubesim, capsys)
    assert lines["quota"] == (
        "✓ no ResourceQuota in default bounds the worker pods: only the nodes bound 16"
    )


def test_room_for_every_worker(kubesim: Kubesim, core: Any, capsys: Any) -> None:
    quota(core, "compute", {"requests.cpu": "32", "requests.memory": "64Gi", "pods": "50"})
    lines = doctor(kubesim, capsys, "--max-workers", "16")
    assert lines["quota"] == (
        "✓ room for all 16 workers (cpu 1, memory 2Gi each): compute: pods 50 of 50 free, "
        "requests.cpu 32 of 32 free, requests.memory 64Gi of 64Gi free"
    )


def test_quota_used_by_pods_leaves_room_for_some_now(
    kubesim: Kubesim, core: Any, capsys: Any
) -> None:
    quota(core, "tight", {"requests.cpu": "8", "pods": "20"})
    for i in range(5):  # pending for ever (no node has the label), holding quota
        core.create_namespaced_pod(
            NS,
            {
                "metadata": {"name": f"other-{i}"},
                "spec": {
                    "nodeSelector": {"pool": "none"},
                    "containers": [
                        {"name": "c", "image": "x", "resources": {"requests": {"cpu": "1"}}}
                    ],
                },
            },
        )

    def used() -> str:
        status = core.read_namespaced_resource_quota("tight", NS).status
        return str((status.used or {}).get("requests.cpu"))

    helpers.wait_for(lambda: used() == "5", 10, "the quota to count the pods")
    lines = doctor(kubesim, capsys, "--max-workers", "8")
    assert lines["quota"] == (
        "✓ room for 3 of 8 workers (cpu 1, memory 2Gi each) now, 8 when default is idle: "
        "tight: pods 15 of 20 free, requests.cpu 3 of 8 free; the others wait for quota "
        "while pods use it (not an error, and no startup clock runs meanwhile)"
    )
    # Bigger than the quota's whole size: never more than it at once.
    lines = doctor(kubesim, capsys, "--max-workers", "8", "--cpu", "2")
    assert lines["quota"].startswith(
        "✓ room for 1 of 8 workers (cpu 2, memory 2Gi each) now, and never more than 4 at once"
    )


def test_a_worker_larger_than_the_quota_is_refused(
    kubesim: Kubesim, core: Any, capsys: Any
) -> None:
    quota(core, "small", {"requests.memory": "1Gi"})
    lines = doctor(kubesim, capsys)
    assert lines["quota"] == (
        "✗ one worker (cpu 1, memory 2Gi) asks more than ResourceQuota small allows in all "
        "(requests.memory 2Gi each, limited to 1Gi): every worker pod would be refused at "
        "once; ask for less (--cpu/--memory here, Resources in code) or for more quota "
        "(`kubectl describe resourcequota -n default small`)"
    )
    assert "exceeded quota: small" in admitted(core, Resources())
    assert doctor(kubesim, capsys, "--memory", "1Gi")["quota"].startswith(
        "✓ room for 1 of 16 workers (cpu 1, memory 1Gi each) now, and never more than 1 at once"
    )
    assert admitted(core, Resources(memory="1Gi")) == ""


def test_a_quota_on_limits_the_worker_does_not_set(
    kubesim: Kubesim, core: Any, capsys: Any
) -> None:
    quota(core, "limits", {"limits.cpu": "8"})
    lines = doctor(kubesim, capsys)
    assert lines["quota"].startswith(
        "✗ ResourceQuota limits requires limits.cpu on every container, which the worker pod "
        "does not set: every worker pod would be refused"
    )
    assert "must specify limits.cpu" in admitted(core, Resources())
    # A LimitRange default gives it: admitted, and counted with that limit.
    limit_range(core, {"default": {"cpu": "2"}})
    lines = doctor(kubesim, capsys)
    assert lines["quota"] == (
        "✓ room for 4 of 16 workers (cpu 1, memory 2Gi each) now, and never more than 4 at "
        "once: limits: limits.cpu 8 of 8 free; the others wait for quota (not an error: pods "
        "start as others end), or ask for less (Resources, max_workers)"
    )
    assert admitted(core, Resources()) == ""


def test_quota_not_readable_is_skipped(kubesim: Kubesim, capsys: Any) -> None:
    kubesim.faults.deny("list", "resourcequotas")
    lines = doctor(kubesim, capsys)
    assert lines["quota"].startswith(
        "- skipped (these credentials may not list resourcequotas in default"
    )


# -- LimitRange ---------------------------------------------------------------------------


def test_limit_range(kubesim: Kubesim, core: Any, capsys: Any) -> None:
    assert doctor(kubesim, capsys)["LimitRange"] == "✓ none in default"
    limit_range(core, {"max": {"memory": "1Gi"}, "min": {"cpu": "100m"}})
    lines = doctor(kubesim, capsys)
    assert lines["LimitRange"] == (
        "✗ bounds would refuse every worker pod: maximum memory usage per Container is 1Gi, "
        "but limit is 2Gi; ask for resources within its bounds (--cpu/--memory here, "
        "Resources in code) or see `kubectl describe limitrange -n default`"
    )
    assert "maximum memory usage per Container is 1Gi, but limit is 2Gi" in admitted(
        core, Resources()
    )
    lines = doctor(kubesim, capsys, "--memory", "512Mi")
    assert lines["LimitRange"] == (
        "✓ bounds: the worker pods are within its bounds (as admitted: requests cpu 1, "
        "memory 512Mi, limits memory 512Mi)"
    )
    assert admitted(core, Resources(memory="512Mi")) == ""


# -- PodSecurity --------------------------------------------------------------------------


def _label(core: Any, value: str | None) -> None:
    core.patch_namespace(NS, {"metadata": {"labels": {_policy.ENFORCE_LABEL: value}}})


def test_pod_security(kubesim: Kubesim, core: Any, capsys: Any) -> None:
    assert doctor(kubesim, capsys)["PodSecurity"] == (
        "✓ default enforces no level (privileged): any pod is admitted"
    )
    _label(core, "restricted")
    assert doctor(kubesim, capsys)["PodSecurity"] == (
        '✓ default enforces "restricted": the worker pods are admitted'
    )
    assert admitted(core, Resources()) == ""
    line = doctor(kubesim, capsys, "--run-as-root")["PodSecurity"]
    assert line.startswith(
        '✗ default enforces "restricted", which the worker pod violates: '
        "allowPrivilegeEscalation != false"
    )
    refusal = admitted(core, Resources(), PodOptions(run_as_root=True))
    assert 'violates PodSecurity \\"restricted:latest\\"' in refusal
    # The same rules broken, as kubesim's admission names them.
    mine = _policy.pod_security_violations(
        "restricted", _admin.worker_pod(Resources(), PodOptions(run_as_root=True))
    )
    assert [v.split(" (")[0] for v in mine] == [
        "allowPrivilegeEscalation != false",
        "unrestricted capabilities",
        "runAsNonRoot != true",
        "seccompProfile",
    ]
    for rule in mine:
        assert rule.split(" (")[0] in refusal
    _label(core, "baseline")  # root is fine at baseline
    assert doctor(kubesim, capsys, "--run-as-root")["PodSecurity"] == (
        '✓ default enforces "baseline": the worker pods are admitted'
    )
    assert admitted(core, Resources(), PodOptions(run_as_root=True)) == ""


def test_pod_security_of_a_namespace_it_cannot_read(kubesim: Kubesim, capsys: Any) -> None:
    kubesim.faults.deny("get", "namespaces")
    assert doctor(kubesim, capsys)["PodSecurity"] == (
        "- skipped (these credentials may not read namespace default, whose "
        "pod-security.kubernetes.io/enforce label sets the level)"
    )


def test_privileged_pod_template_violates_baseline() -> None:
    pod = _admin.worker_pod(
        Resources(),
        PodOptions(
            pod_template={
                "hostNetwork": True,
                "containers": [{"name": "worker", "securityContext": {"privileged": True}}],
            }
        ),
    )
    assert _policy.pod_security_violations("baseline", pod) == [
        "host namespaces (hostNetwork=true)",
        'privileged (container "worker" must not set securityContext.privileged=true)',
    ]
    assert _policy.enforce_level({_policy.ENFORCE_LABEL: "strict"}) == "restricted"


# -- Kueue --------------------------------------------------------------------------------


def _queues(kubesim: Kubesim, local: dict[str, str]) -> None:
    with kubesim.api_client() as api:
        crd = client.CustomObjectsApi(api)
        flavor = {"name": "default-flavor", "resources": [{"name": "cpu", "nominalQuota": "4"}]}
        crd.create_cluster_custom_object(
            G, V, "resourceflavors",
            {"apiVersion": f"{G}/{V}", "kind": "ResourceFlavor",
             "metadata": {"name": "default-flavor"}, "spec": {}},
        )  # fmt: skip
        crd.create_cluster_custom_object(
            G, V, "clusterqueues",
            {"apiVersion": f"{G}/{V}", "kind": "ClusterQueue", "metadata": {"name": "cq"},
             "spec": {"namespaceSelector": {},
                      "resourceGroups": [{"coveredResources": ["cpu"], "flavors": [flavor]}]}},
        )  # fmt: skip
        for name, target in local.items():
            crd.create_namespaced_custom_object(
                G, V, NS, "localqueues",
                {"apiVersion": f"{G}/{V}", "kind": "LocalQueue", "metadata": {"name": name},
                 "spec": {"clusterQueue": target}},
            )  # fmt: skip

        def active() -> bool:
            listed: Any = crd.list_namespaced_custom_object(G, V, NS, "localqueues")
            found = listed["items"]
            return all((q.get("status") or {}).get("conditions") for q in found)

        helpers.wait_for(active, 10, "Kueue to fill the LocalQueues' status")


def test_kueue_local_queues(kubesim: Kubesim, capsys: Any, monkeypatch: Any) -> None:
    assert doctor(kubesim, capsys)["Kueue"] == (
        "✓ installed; no LocalQueue in default: runs are not queued"
    )
    _queues(kubesim, {"team-a": "cq", "orphan": "no-such-cq"})
    listing = (
        "orphan (ClusterQueue no-such-cq: 0 pending, 0 admitted), "
        "team-a (ClusterQueue cq: 0 pending, 0 admitted)"
    )
    assert doctor(kubesim, capsys)["Kueue"] == (
        f"✓ LocalQueues in default: {listing}; runs are not queued unless given one "
        "(K8S_EXECUTOR_QUEUE=NAME, Scheduling(queue=NAME), --queue here)"
    )
    monkeypatch.setenv("K8S_EXECUTOR_QUEUE", "team-a")
    assert doctor(kubesim, capsys)["Kueue"] == (
        "✓ runs use team-a (ClusterQueue cq: 0 pending, 0 admitted); LocalQueues in default: "
        f"{listing}"
    )
    assert doctor(kubesim, capsys, "--queue", "team-b")["Kueue"] == (
        "✗ the LocalQueue 'team-b' runs would use (--queue, K8S_EXECUTOR_QUEUE) is not in "
        f"default: every batch would be refused at once; LocalQueues in default: {listing}"
    )
    assert doctor(kubesim, capsys, "--queue", "orphan")["Kueue"] == (
        "✗ the LocalQueue 'orphan' cannot take work: Can't submit new workloads to "
        f"clusterQueue; LocalQueues in default: {listing}"
    )


def test_kueue_not_installed(kubesim: Kubesim, capsys: Any, monkeypatch: Any) -> None:
    kubesim.faults.fail_next(1, 404, path_regex="localqueues")
    assert doctor(kubesim, capsys)["Kueue"] == (
        "- skipped (Kueue is not installed: runs are not queued)"
    )
    monkeypatch.setenv("K8S_EXECUTOR_QUEUE", "team-a")
    kubesim.faults.fail_next(1, 404, path_regex="localqueues")
    assert doctor(kubesim, capsys)["Kueue"] == (
        "✗ runs would ask Kueue's LocalQueue 'team-a' (--queue, K8S_EXECUTOR_QUEUE), but this "
        "cluster has no Kueue (no kueue.x-k8s.io API): unset the queue"
    )


def test_every_line_is_skipped_without_a_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli.main(["doctor", "--kubeconfig", str(tmp_path / "missing")])
    out = capsys.readouterr().out
    for name in ("quota", "LimitRange", "PodSecurity", "Kueue"):
        assert f"- {name:<12} skipped (no cluster)" in out


def test_default_max_workers_is_the_backends() -> None:
    from k8s_executor.backends.kubernetes import KubernetesBackend

    backend = object.__new__(KubernetesBackend)  # the default needs no settings
    assert backend.default_max_workers() == _admin.DEFAULT_MAX_WORKERS


# -- the example ----------------------------------------------------------------------------


def _run_example(sim: Kubesim, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("K8S_EXECUTOR_")}
    env.update(
        KUBECONFIG=str(sim.kubeconfig_path),
        K8S_EXECUTOR_BACKEND="kubernetes",
        K8S_EXECUTOR_STORAGE=str(tmp_path / "storage"),
        K8S_EXECUTOR_IMAGE="kubesim.local/process:latest",  # this interpreter and checkout
        K8S_EXECUTOR_PYTHON=sys.executable,
        PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path),
    )
    return subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_example_waits_out_a_full_quota(kubesim: Kubesim, core: Any, tmp_path: Path) -> None:
    # Room for 2 of its 4 workers: the other pods are refused until room comes, and wait.
    quota(core, "two-pods", {"pods": "2"})
    done = _run_example(kubesim, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "24 fits on the kubernetes backend" in done.stdout
    refusals = core.list_namespaced_event(NS, field_selector="reason=FailedCreate").items
    assert any("exceeded quota: two-pods" in (e.message or "") for e in refusals)


def test_the_example_reports_a_refusal_at_once(kubesim: Kubesim, core: Any, tmp_path: Path) -> None:
    quota(core, "small", {"requests.memory": "512Mi"})  # one worker asks 1Gi: never fits
    done = _run_example(kubesim, tmp_path)
    assert done.returncode == 1, done.stderr
    assert "the cluster cannot run the workers: " in done.stderr
    assert "exceeded quota: small" in done.stderr
    assert "k8s-executor doctor --cpu 1 --memory 1Gi --max-workers 4" in done.stderr
