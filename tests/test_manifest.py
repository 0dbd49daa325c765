"""Manifests are pure data: built from options, checked without a server, and valid
against the official Kubernetes OpenAPI schema (strict: no unknown fields)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from k8s_executor import ConfigError
from k8s_executor._options import PodOptions, Resources, Scheduling, Timeouts, VolumeMount
from k8s_executor.backends import _manifest as m

SCHEMA_VERSION = "1.33.0"


def validate(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, SCHEMA_VERSION, strict=True)


def params(**changes: Any) -> m.JobParams:
    base: dict[str, Any] = {
        "run_id": "r0123456789a",
        "batch_id": "b00003",
        "indexes": 8,
        "parallelism": 4,
        "image": "registry.example/k8sx@sha256:" + "0" * 64,
        "batch_url": "s3://bucket/k8sx/r0123456789a/b00003",
        "owner": "alice@laptop",
    }
    base.update(changes)
    return m.JobParams(**base)


def container(job: dict[str, Any]) -> dict[str, Any]:
    containers = job["spec"]["template"]["spec"]["containers"]
    assert containers[0]["name"] == "worker"
    result: dict[str, Any] = containers[0]
    return result


def test_default_job_is_valid_and_indexed() -> None:
    job = m.job_manifest(params())
    validate(job)
    spec = job["spec"]
    assert job["metadata"]["name"] == "k8sx-r0123456789a-b00003"
    assert spec["completionMode"] == "Indexed"
    assert (spec["completions"], spec["parallelism"]) == (8, 4)
    assert spec["backoffLimitPerIndex"] == 0
    assert spec["ttlSecondsAfterFinished"] == 300
    assert spec["activeDeadlineSeconds"] == 86400
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert container(job)["command"] == [
        "python",
        "-m",
        "k8s_executor.worker",
        "s3://bucket/k8sx/r0123456789a/b00003",
    ]
    assert container(job)["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_labels_select_run_and_batch() -> None:
    job = m.job_manifest(params(pod=PodOptions(labels={"team": "vision"})))
    for labels in (job["metadata"]["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["app.kubernetes.io/managed-by"] == "k8s-executor"
        assert labels["k8s-executor.io/run"] == "r0123456789a"
        assert labels["k8s-executor.io/batch"] == "b00003"
        assert labels["team"] == "vision"
    assert m.run_selector("r0123456789a") == (
        "app.kubernetes.io/managed-by=k8s-executor,k8s-executor.io/run=r0123456789a"
    )
    assert job["metadata"]["annotations"]["k8s-executor.io/owner"] == "alice@laptop"


def test_failure_policy_user_errors_not_retried_disruptions_ignored() -> None:
    rules = m.job_manifest(params(retries=2))["spec"]["podFailurePolicy"]["rules"]
    by_action = {r["action"]: r for r in rules}
    assert by_action["FailIndex"]["onExitCodes"]["values"] == [83, 84, 85, 88]
    assert by_action["FailJob"]["onExitCodes"]["values"] == [87]
    assert by_action["Ignore"]["onPodConditions"] == [
        {"type": "DisruptionTarget", "status": "True"}
    ]


def test_key_comes_from_secret_never_plain_env() -> None:
    job = m.job_manifest(params(storage_options_in_secret=True))
    env = {e["name"]: e for e in container(job)["env"]}
    for name in ("K8S_EXECUTOR_KEY", "K8S_EXECUTOR_STORAGE_OPTIONS"):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "k8sx-r0123456789a"


def test_secret_manifest_is_valid() -> None:
    secret = m.secret_manifest("r0123456789a", b"\x01" * 32, {"anon": False})
    validate(secret)
    assert secret["stringData"]["key"] == "01" * 32
    assert secret["stringData"]["storage-options"] == '{"anon": false}'


@pytest.mark.parametrize(
    ("resources", "requests", "limits"),
    [
        (Resources(), {"cpu": "1", "memory": "2Gi"}, {"memory": "2Gi"}),
        (
            Resources(cpu=8, memory="32Gi", qos="Guaranteed"),
            {"cpu": "8", "memory": "32Gi"},
            {"cpu": "8", "memory": "32Gi"},
        ),
        (
            Resources(cpu="500m", memory="1Gi", memory_limit="4Gi", disk="20Gi", gpu=2),
            {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "20Gi"},
            {"memory": "4Gi", "ephemeral-storage": "20Gi", "nvidia.com/gpu": "2"},
        ),
        (Resources(cpu=None, memory=None, gpu=1, gpu_vendor="amd"), None, {"amd.com/gpu": "1"}),
    ],
)
def test_resources(
    resources: Resources, requests: dict[str, str] | None, limits: dict[str, str]
) -> None:
    job = m.job_manifest(params(resources=resources))
    validate(job)
    block = container(job)["resources"]
    assert block.get("requests") == requests
    assert block["limits"] == limits


def test_every_option_lands_and_validates() -> None:
    pod = PodOptions(
        labels={"team": "ml"},
        annotations={"note": "any text: allowed"},
        env={"OMP_NUM_THREADS": "4"},
        secrets=("aws-creds",),
        service_account="trainer",
        image_pull_policy="IfNotPresent",
        image_pull_secrets=("regcred",),
        volumes=(VolumeMount("datasets", "/data", read_only=True, sub_path="imagenet"),),
        shared_memory="8Gi",
        tmpfs="1Gi",
    )
    scheduling = Scheduling(
        node_selector={"pool": "gpu"},
        tolerations=({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},),
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        },
        priority_class="batch-low",
    )
    job = m.job_manifest(
        params(pod=pod, scheduling=scheduling, timeouts=Timeouts(job_deadline=None))
    )
    validate(job)
    spec = job["spec"]["template"]["spec"]
    c = container(job)
    assert "activeDeadlineSeconds" not in job["spec"]
    assert {"name": "OMP_NUM_THREADS", "value": "4"} in c["env"]
    assert c["envFrom"] == [{"secretRef": {"name": "aws-creds"}}]
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert spec["serviceAccountName"] == "trainer"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["nodeSelector"] == {"pool": "gpu"}
    assert spec["tolerations"][0]["key"] == "gpu"
    assert spec["priorityClassName"] == "batch-low"
    assert spec["affinity"]["nodeAffinity"]
    mounts = {v["mountPath"]: v for v in c["volumeMounts"]}
    assert mounts["/data"]["subPath"] == "imagenet"
    assert mounts["/dev/shm"]["name"] == "dshm"
    assert mounts["/tmp"]["name"] == "tmpfs"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["pvc-0"]["persistentVolumeClaim"]["claimName"] == "datasets"
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}


def test_non_root_by_default_root_on_request() -> None:
    job = m.job_manifest(params())
    spec = job["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container(job)["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["automountServiceAccountToken"] is False
    root = m.job_manifest(params(pod=PodOptions(run_as_root=True)))
    assert "securityContext" not in root["spec"]["template"]["spec"]


def test_pod_template_merges_by_name() -> None:
    template = {
        "hostIPC": True,
        "containers": [
            {"name": "worker", "env": [{"name": "EXTRA", "value": "1"}], "workingDir": "/w"},
            {"name": "sidecar", "image": "busybox", "command": ["sleep", "1"]},
        ],
        "securityContext": {"runAsUser": 1000},
    }
    job = m.job_manifest(params(pod=PodOptions(pod_template=template)))
    validate(job)
    spec = job["spec"]["template"]["spec"]
    assert spec["hostIPC"] is True
    assert [c["name"] for c in spec["containers"]] == ["worker", "sidecar"]
    worker = spec["containers"][0]
    assert worker["workingDir"] == "/w"
    env_names = [e["name"] for e in worker["env"]]
    assert "K8S_EXECUTOR_KEY" in env_names
    assert "EXTRA" in env_names
    assert spec["securityContext"]["runAsUser"] == 1000
    assert spec["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: Resources(cpu="lots"),
            r"Resources.cpu='lots' is not allowed: expected a Kubernetes quantity",
        ),
        (lambda: Resources(memory="2GB"), r"Resources.memory='2GB' is not allowed"),
        (lambda: Resources(gpu=-1), r"Resources.gpu=-1 is not allowed: expected an integer >= 0"),
        (lambda: Resources(gpu_vendor="intel"), r"Resources.gpu_vendor='intel'"),
        (lambda: Resources(qos="BestEffort"), r"Resources.qos='BestEffort'"),
        (lambda: Resources(cpu=None, qos="Guaranteed"), r"'Guaranteed' needs both cpu and memory"),
        (lambda: Scheduling(node_selector={"bad key!": "x"}), r"node_selector\['bad key!'\]"),
        (lambda: Scheduling(priority_class="Not_DNS"), r"priority_class='Not_DNS'"),
        (
            lambda: PodOptions(env={"A": 1}),  # type: ignore[dict-item]
            r"PodOptions.env\['A'\]=1 is not allowed: expected a str",
        ),
        (
            lambda: PodOptions(secrets="creds"),  # type: ignore[arg-type]
            r"PodOptions.secrets='creds' is not allowed: expected a tuple",
        ),
        (lambda: PodOptions(image_pull_policy="Sometimes"), r"image_pull_policy='Sometimes'"),
        (lambda: PodOptions(labels={"a": "x" * 64}), r"PodOptions.labels\['a'\]"),
        (lambda: VolumeMount("data", "relative/path"), r"VolumeMount.path='relative/path'"),
        (lambda: Timeouts(startup=0), r"Timeouts.startup=0 is not allowed"),
        (lambda: Timeouts(heartbeat=60, heartbeat_grace=90), r"heartbeat_grace=90 is not allowed"),
        (lambda: Timeouts(termination_grace=-1), r"Timeouts.termination_grace=-1 is not allowed"),
        (lambda: Resources(memory=4), r"Resources.memory=4 .*bytes.*\"4Gi\""),
        (lambda: Resources(disk=10), r"Resources.disk=10 .*\"10Gi\" or \"10Mi\""),
        (lambda: Timeouts(termination_grace=2.5), r"termination_grace=2.5 .*expected an int"),  # type: ignore[arg-type]
        (
            lambda: PodOptions(pod_template={"spec": {"shareProcessNamespace": True}}),
            r"pod_template has a 'spec' key: it takes the fields of a pod spec",
        ),
        (
            lambda: PodOptions(pod_template={"metadata": {}, "spec": {}}),
            r"pod_template has a 'metadata' key",
        ),
    ],
)
def test_bad_options_name_option_value_and_allowed(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_queued_job_carries_the_kueue_label_and_waits_suspended() -> None:
    job = m.job_manifest(params(scheduling=Scheduling(queue="team-a")))
    validate(job)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True  # Kueue admits it (parallelism stays as planned)
    assert job["spec"]["parallelism"] == 4
    with pytest.raises(ConfigError, match="Scheduling.queue='Team A'"):
        Scheduling(queue="Team A")


def test_integer_memory_is_bytes_as_in_kubernetes() -> None:
    job = m.job_manifest(params(resources=Resources(memory=1 << 30, memory_limit=3 << 30)))
    validate(job)
    block = container(job)["resources"]
    assert block["requests"]["memory"] == str(1 << 30)
    assert block["limits"]["memory"] == str(3 << 30)


def test_workers_run_as_init_with_the_grace_period_asked_for() -> None:
    job = m.job_manifest(params())
    env = {e["name"]: e.get("value") for e in container(job)["env"]}
    assert env["K8S_EXECUTOR_INIT"] == "1"
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 30
    short = m.job_manifest(params(timeouts=Timeouts(termination_grace=5)))
    validate(short)
    assert short["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 5


def test_merge_rules() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "env": [{"name": "X", "value": "1"}]}
    overlay = {"a": {"c": [3]}, "env": [{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}]}
    assert m.merge(base, overlay) == {
        "a": {"b": 1, "c": [3]},
        "env": [{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}],
    }
    assert base["env"] == [{"name": "X", "value": "1"}]  # inputs untouched
