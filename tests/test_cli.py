"""The k8s-executor command: its parts that need no cluster, then ``doctor`` and ``logs``
against kubesim (``ls`` and ``cleanup`` are exercised in test_kubernetes_backend.py)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import kubernetes_validate
import pytest
import yaml

from k8s_executor import KubernetesExecutor, cli
from tests import helpers
from tests.containers import AuthRegistry, missing
from tests.image.infra import BASE_IMAGE, PodmanService, RegistryServer
from tests.kube_helpers import KubesimCluster, cold, kubesim_kwargs
from tests.kubesim.kubeconfig import Kubesim
from tests.s3server import S3Server, s3_server


def test_rbac_prints_valid_role_and_binding(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["rbac", "-n", "ml", "--service-account", "alice"]) == 0
    role, binding = yaml.safe_load_all(capsys.readouterr().out)
    for doc in (role, binding):
        kubernetes_validate.validate(doc, "1.33.0", strict=True)
    rules = {(r["apiGroups"][0], r["resources"][0]): r["verbs"] for r in role["rules"]}
    assert "create" in rules[("batch", "jobs")]
    assert "watch" in rules[("", "pods")]
    assert rules[("", "pods/log")] == ["get"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "alice", "namespace": "ml"}]


def test_cleanup_needs_a_selection(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["cleanup", "--older-than", "soon"])
    assert info.value.code == 2
    assert "not a duration like 30m, 2h or 7d" in capsys.readouterr().err


def test_console_script_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "k8s_executor.cli", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    for command in ("doctor", "ls", "logs", "cleanup", "rbac", "build"):
        assert command in done.stdout


def test_no_cluster_config_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    assert cli.main(["ls"]) == 1
    err = capsys.readouterr().err
    assert "no kubeconfig: /nonexistent/kubeconfig does not exist" in err
    assert "KUBECONFIG" in err


# -- doctor ------------------------------------------------------------------------------
# Each test runs `doctor` against its own kubesim; registry and podman tests use real ones
# (tests/containers.py), skipped locally and failing under CI=true when missing.


@pytest.fixture(scope="session")
def podman(podman_service: PodmanService) -> PodmanService:
    """tests/containers.py's podman service, with the base image `doctor` checks."""
    if podman_service.cli("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        missing(f"the base image {BASE_IMAGE} is not in podman's store")
    return podman_service


@dataclass
class Doctor:
    code: int
    lines: dict[str, str]
    """Check name -> its line (mark, name and text)."""
    out: str

    def mark(self, name: str) -> str:
        return self.lines[name].split(" ", 1)[0]

    def text(self, name: str) -> str:
        return self.lines[name].split(" ", 1)[1].removeprefix(name).strip()


CHECKS = (
    "cluster", "namespace", "permissions", "quota", "LimitRange", "PodSecurity", "Kueue",
    "storage", "registry", "podman", "base Python",
)  # fmt: skip


def doctor(capsys: pytest.CaptureFixture[str], *args: str) -> Doctor:
    code = cli.main(["doctor", "--timeout", "3", *args])
    out = capsys.readouterr().out
    checks = (*CHECKS, "pod") if "--pod" in args else CHECKS
    lines: dict[str, str] = {}
    for line in out.splitlines():
        for name in checks:
            if line[2:].startswith(name + " "):
                lines[name] = line
    assert list(lines) == list(checks), out  # every check has its line, in order
    return Doctor(code, lines, out)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No option from this machine's environment, and a private image cache."""
    for name in ("K8S_EXECUTOR_STORAGE", "K8S_EXECUTOR_REGISTRY", "K8S_EXECUTOR_BASE_IMAGE",
                 "K8S_EXECUTOR_IMAGE", "CONTAINER_HOST", "KUBECONFIG"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("K8SX_CACHE_DIR", str(tmp_path / "cache"))


def kubeconfig(sim: Kubesim) -> list[str]:
    return ["--kubeconfig", str(sim.kubeconfig_path)]


@pytest.mark.usefixtures("clean_env")
@pytest.mark.podman
def test_doctor_all_green(
    kubesim: Kubesim,
    oci_registry: RegistryServer,
    podman: PodmanService,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    storage = tmp_path / "storage"
    result = doctor(
        capsys,
        *kubeconfig(kubesim),
        "--storage", str(storage),
        "--registry", f"{oci_registry.host}/team",
        "--base-image", BASE_IMAGE,
        "--podman-url", podman.url,
    )  # fmt: skip
    assert result.code == 0, result.out
    assert [result.mark(name) for name in CHECKS] == ["✓"] * len(CHECKS), result.out
    assert "Kubernetes v1.33.0-kubesim" in result.text("cluster")
    assert "(context kubesim)" in result.text("cluster")
    assert result.text("namespace") == "default exists"
    assert result.text("permissions").startswith("all 19 verbs the executor needs")
    assert "pull and push allowed (anonymously)" in result.text("registry")
    assert podman.url in result.text("podman")
    assert "has Python 3.11" in result.text("base Python")
    assert (
        result.out.splitlines()[-1] == "all checks that ran passed (11 passed, 0 failed, 0 skipped)"
    )
    assert list(storage.iterdir()) == []  # the probe is gone


@pytest.mark.usefixtures("clean_env")
def test_doctor_without_registry_says_how_to_set_one(
    kubesim: Kubesim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = doctor(capsys, *kubeconfig(kubesim), "--storage", f"file://{tmp_path}")
    assert result.code == 1, result.out
    assert [result.mark(n) for n in CHECKS] == ["✓"] * 8 + ["✗", "-", "-"]
    registry = result.text("registry")
    assert registry.startswith("not set: your environment is copied into an image")
    assert "K8S_EXECUTOR_REGISTRY" in registry and "K8S_EXECUTOR_IMAGE" in registry
    assert result.text("podman") == "skipped (no registry: no image is built here)"
    assert "a local path: pods see it only where the same directory is mounted" in result.text(
        "storage"
    )


@pytest.mark.usefixtures("clean_env")
def test_doctor_with_a_ready_image_builds_nothing(
    kubesim: Kubesim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = doctor(
        capsys, *kubeconfig(kubesim), "--storage", str(tmp_path), "--image", "team/env:1"
    )
    assert result.code == 0, result.out
    assert [result.mark(n) for n in CHECKS] == ["✓"] * 8 + ["-"] * 3
    assert result.text("registry") == (
        "skipped (image team/env:1: pods run it as is, nothing is built here)"
    )


@pytest.mark.usefixtures("clean_env")
def test_doctor_reads_the_executor_environment(
    kubesim: Kubesim,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("K8S_EXECUTOR_STORAGE", str(tmp_path))
    monkeypatch.setenv("K8S_EXECUTOR_IMAGE", "registry.example/team/env:1")
    result = doctor(capsys, *kubeconfig(kubesim))
    assert result.code == 0, result.out
    assert result.text("storage").startswith(f"{tmp_path}: wrote, read back and deleted")
    for name in ("registry", "podman", "base Python"):
        assert result.text(name) == (
            "skipped (image registry.example/team/env:1: pods run it as is, nothing is built here)"
        )


@pytest.mark.usefixtures("clean_env")
def test_doctor_unreachable_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: far\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: far, context: {cluster: c, user: u}}]\n"
    )
    result = doctor(capsys, "--kubeconfig", str(config), "--storage", str(tmp_path / "s"))
    assert result.code == 1
    assert result.mark("cluster") == "✗"
    text = result.text("cluster")
    assert text.startswith(
        "cannot talk to the Kubernetes API: nothing answers at http://127.0.0.1:9"
    )
    assert "(context far)" in text
    assert "Connection refused" in text
    assert "`kubectl cluster-info`" in text
    assert result.text("namespace") == "skipped (the cluster did not answer)"
    assert result.text("permissions") == "skipped (the cluster did not answer)"
    assert result.mark("storage") == "✓"  # does not depend on the cluster
    assert result.out.splitlines()[-1] == "some checks failed (1 passed, 2 failed, 8 skipped)"


@pytest.mark.usefixtures("clean_env")
def test_doctor_refused_credentials(
    kubesim: Kubesim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(Path(kubesim.kubeconfig_path).read_text().replace(kubesim.token, "expired"))
    result = doctor(capsys, "--kubeconfig", str(config))
    assert result.code == 1
    assert result.text("cluster").startswith(
        "cannot talk to the Kubernetes API: the Kubernetes API did not accept our credentials "
        "(401: Unauthorized)"
    )
    assert result.text("namespace") == "skipped (the cluster did not answer)"


def test_a_check_that_hangs_fails_at_its_deadline() -> None:
    stuck = threading.Event()
    try:
        status, text = cli.doctor.bounded(lambda: str(stuck.wait(30)), 0.2)
    finally:
        stuck.set()  # let the check's thread end
    assert (status, text) == ("fail", "no answer within 0.2s")


@pytest.mark.usefixtures("clean_env")
def test_doctor_without_kubeconfig(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    result = doctor(capsys)
    assert result.code == 1
    assert result.mark("cluster") == "✗"
    assert "no kubeconfig: /nonexistent/kubeconfig does not exist" in result.text("cluster")
    assert result.text("namespace") == "skipped (no cluster)"
    assert result.mark("storage") == "✗"
    assert result.text("storage").startswith("not set: the client and the pods exchange")
    assert "K8S_EXECUTOR_STORAGE" in result.text("storage")


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("can_read_namespaces", [True, False])
def test_doctor_missing_namespace(
    kubesim: Kubesim, capsys: pytest.CaptureFixture[str], can_read_namespaces: bool
) -> None:
    if not can_read_namespaces:
        # Common outside admin accounts: then a dry-run create of a Secret tells.
        kubesim.faults.deny("get", "namespaces")
    result = doctor(capsys, *kubeconfig(kubesim), "-n", "ml")
    assert result.code == 1
    assert result.mark("cluster") == "✓"
    assert result.mark("namespace") == "✗"
    assert result.text("namespace").startswith(
        "namespace 'ml' does not exist: create it (`kubectl create namespace ml`)"
    )
    assert result.text("permissions") == "skipped (namespace 'ml' is not usable)"
    assert kubesim.store.list("secrets", None)[0] == []  # the dry run created nothing


@pytest.mark.usefixtures("clean_env")
def test_doctor_namespace_it_cannot_read_but_exists(
    kubesim: Kubesim, capsys: pytest.CaptureFixture[str]
) -> None:
    kubesim.faults.deny("get", "namespaces")
    result = doctor(capsys, *kubeconfig(kubesim))
    assert result.mark("namespace") == "✓", result.out
    assert result.text("namespace") == "default exists"


@pytest.mark.usefixtures("clean_env")
def test_doctor_forbidden_verbs(kubesim: Kubesim, capsys: pytest.CaptureFixture[str]) -> None:
    kubesim.faults.deny("create", "jobs")
    kubesim.faults.deny("get", "pods/log", "default")
    kubesim.faults.deny("list", "secrets", "elsewhere")  # not where the executor runs
    result = doctor(capsys, *kubeconfig(kubesim))
    assert result.code == 1
    assert result.mark("permissions") == "✗"
    text = result.text("permissions")
    assert text.startswith("not allowed in namespace 'default': create jobs.batch, get pods/log;")
    assert "`k8s-executor rbac -n default --service-account ACCOUNT | kubectl apply -f -`" in text
    assert "secrets" not in text.split(";")[0]


@pytest.mark.usefixtures("clean_env")
def test_doctor_events_are_optional(kubesim: Kubesim, capsys: pytest.CaptureFixture[str]) -> None:
    kubesim.faults.deny("watch", "events")
    result = doctor(capsys, *kubeconfig(kubesim))
    assert result.mark("permissions") == "✓", result.out
    text = result.text("permissions")
    assert text.startswith("all 18 verbs the executor needs")
    assert "not watch events (optional: pods the cluster refuses to create are then" in text


@pytest.mark.usefixtures("clean_env")
def test_doctor_cannot_even_ask(kubesim: Kubesim, capsys: pytest.CaptureFixture[str]) -> None:
    kubesim.faults.deny("create", "selfsubjectaccessreviews")
    result = doctor(capsys, *kubeconfig(kubesim))
    assert result.code == 1
    assert result.mark("permissions") == "✗"
    assert "cannot ask whether we may" in result.text("permissions")
    assert "403" in result.text("permissions")


@pytest.mark.usefixtures("clean_env")
def test_doctor_unwritable_storage(
    kubesim: Kubesim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # unwritable below it, even for root
    result = doctor(capsys, *kubeconfig(kubesim), "--storage", str(blocker / "runs"))
    assert result.code == 1
    assert [result.mark(n) for n in CHECKS[:8]] == ["✓"] * 7 + ["✗"]
    text = result.text("storage")
    assert text.startswith("cannot write probe at ")
    assert "NotADirectoryError" in text
    assert "the bucket or directory exists and is writable" in text


@pytest.mark.usefixtures("clean_env")
def test_doctor_unreachable_registry(kubesim: Kubesim, capsys: pytest.CaptureFixture[str]) -> None:
    result = doctor(
        capsys,
        *kubeconfig(kubesim),
        "--registry", "127.0.0.1:9/team",
        "--base-image", "127.0.0.1:9/team/python:3.11",
    )  # fmt: skip
    assert result.code == 1
    assert result.mark("registry") == "✗"
    assert result.text("registry").startswith(
        "cannot reach the registry at http://127.0.0.1:9 (ConnectionError): is it running"
    )
    assert result.text("podman") == (
        "skipped (not needed: the base image 127.0.0.1:9/team/python:3.11 is in a registry)"
    )
    assert result.text("base Python") == (
        "skipped (the registry holding 127.0.0.1:9/team/python:3.11 failed its check)"
    )


@pytest.mark.usefixtures("clean_env")
@pytest.mark.podman  # a real registry (Debian's docker-registry), with htpasswd
def test_doctor_registry_refusing_anonymous_push(
    kubesim: Kubesim,
    auth_registry: AuthRegistry,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = auth_registry.server
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "no-auth.json"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no stored login of this machine
    result = doctor(
        capsys,
        *kubeconfig(kubesim),
        "--registry", f"{server.host}/team",
        "--base-image", f"{server.host}/team/python:3.11",
    )  # fmt: skip
    assert result.code == 1
    assert result.mark("registry") == "✗"
    assert f"`podman login {server.host}`" in result.text("registry")
    assert result.text("base Python") == (
        f"skipped (the registry holding {server.host}/team/python:3.11 failed its check)"
    )


@pytest.mark.usefixtures("clean_env")
def test_doctor_podman_not_answering(kubesim: Kubesim, capsys: pytest.CaptureFixture[str]) -> None:
    result = doctor(
        capsys,
        *kubeconfig(kubesim),
        "--registry", "127.0.0.1:9/team",
        "--base-image", BASE_IMAGE,
        "--podman-url", "unix:///nonexistent/podman.sock",
    )  # fmt: skip
    assert result.code == 1
    assert result.mark("registry") == "✗"
    assert result.mark("podman") == "✗"  # a base image in podman's store needs podman
    text = result.text("podman")
    if shutil.which("podman"):
        assert text.startswith(
            "podman's service does not answer at unix:///nonexistent/podman.sock"
        )
        assert "podman system service --time=0" in text
    else:
        assert text.startswith("podman is not installed")
    assert result.text("base Python") == f"skipped (podman is needed to read {BASE_IMAGE})"


# -- doctor --pod: one worker pod against an S3 server (moto) ------------------------------

POD_BUCKET = "k8sx-doctor"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server(buckets=(POD_BUCKET,)) as server:
        yield server


@pytest.fixture
def pod_doctor_env(clean_env: None, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """This machine reaches the S3 server with K8S_EXECUTOR_STORAGE_OPTIONS; the pods run
    this interpreter (kubesim's process kubelet). Returns doctor's arguments."""
    for name in ("K8S_EXECUTOR_POD_SECRETS", "K8S_EXECUTOR_SHARE_STORAGE_OPTIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("K8S_EXECUTOR_STORAGE_OPTIONS", json.dumps(s3.storage_options()))
    monkeypatch.setenv("K8S_EXECUTOR_PYTHON", sys.executable)
    image = "kubesim.local/process:latest"
    return [
        "--storage",
        f"s3://{POD_BUCKET}/runs",
        "--image",
        image,
        "--pod",
        "--pod-timeout",
        "30",
    ]


def make_secret(sim: Kubesim, name: str, data: dict[str, str]) -> None:
    cluster = KubesimCluster(sim)
    try:
        cluster.core.create_namespaced_secret(
            "default", {"metadata": {"name": name}, "stringData": data}
        )
    finally:
        cluster.close()


def nothing_left(sim: Kubesim, s3: S3Server) -> bool:
    """No Job, pod or Secret of a run in the cluster, nothing under the storage."""
    import s3fs

    cluster = KubesimCluster(sim)
    try:
        selector = "app.kubernetes.io/managed-by=k8s-executor"
        left = [
            *cluster.batch.list_namespaced_job("default", label_selector=selector).items,
            *cluster.core.list_namespaced_pod("default", label_selector=selector).items,
            *cluster.core.list_namespaced_secret("default", label_selector=selector).items,
        ]
    finally:
        cluster.close()
    fs = s3fs.S3FileSystem(**s3.storage_options())
    return not left and not fs.find(f"{POD_BUCKET}/runs")


# Where the pods find the S3 server (and no instance metadata: nothing leaves this machine).
ENDPOINT = {"AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def test_doctor_pod_with_a_pod_secret(
    kubesim: Kubesim,
    s3: S3Server,
    pod_doctor_env: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    make_secret(kubesim, "s3-credentials", {**keys, **ENDPOINT, "AWS_ENDPOINT_URL": s3.endpoint})
    monkeypatch.setenv("K8S_EXECUTOR_POD_SECRETS", "s3-credentials")
    result = doctor(capsys, *kubeconfig(kubesim), *pod_doctor_env)
    assert result.code == 0, result.out
    text = result.text("pod")
    assert result.mark("pod") == "✓", text
    assert text.startswith("pod k8sx-") and f"read its call from s3://{POD_BUCKET}/runs" in text
    assert "/doctor-probe there (deleted with the run), with its environment: " in text
    assert "AWS_ACCESS_KEY_ID, AWS_DEFAULT_REGION, AWS_EC2_METADATA_DISABLED" in text
    assert "testing" not in text  # names, never values
    assert nothing_left(kubesim, s3)


def test_doctor_pod_with_shared_storage_options(
    kubesim: Kubesim,
    s3: S3Server,
    pod_doctor_env: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("K8S_EXECUTOR_SHARE_STORAGE_OPTIONS", "1")
    result = doctor(capsys, *kubeconfig(kubesim), *pod_doctor_env)
    assert result.code == 0, result.out
    assert "with the storage options shared through the run's Secret" in result.text("pod")
    assert nothing_left(kubesim, s3)


def test_doctor_pod_without_credentials_says_how_to_give_them(
    kubesim: Kubesim,
    s3: S3Server,
    pod_doctor_env: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The pods know where the server is, but have no keys: this machine has them.
    make_secret(kubesim, "s3-endpoint", {**ENDPOINT, "AWS_ENDPOINT_URL": s3.endpoint})
    monkeypatch.setenv("K8S_EXECUTOR_POD_SECRETS", "s3-endpoint")
    result = doctor(capsys, *kubeconfig(kubesim), *pod_doctor_env)
    assert result.code == 1, result.out
    assert [result.mark(n) for n in (*CHECKS, "pod")] == ["✓"] * 8 + ["-"] * 3 + ["✗"]
    text = result.text("pod")
    assert text.startswith(f"the pod could not use the storage s3://{POD_BUCKET}/runs: ")
    assert "Unable to locate credentials" in text, text
    for fix in ("K8S_EXECUTOR_POD_SECRETS=NAME", "K8S_EXECUTOR_SHARE_STORAGE_OPTIONS=1"):
        assert fix in text
    assert "\n" not in text.strip()  # one line, as every check
    assert nothing_left(kubesim, s3)


def test_doctor_pod_with_a_missing_secret(
    kubesim: Kubesim,
    pod_doctor_env: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("K8S_EXECUTOR_POD_SECRETS", "s3-credentials")  # never created
    result = doctor(capsys, *kubeconfig(kubesim), *pod_doctor_env[:-1], "5")
    assert result.code == 1, result.out
    text = result.text("pod")
    assert text.startswith("the pod did not start: "), text
    assert "s3-credentials" in text


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan"])
def test_doctor_pod_timeout_must_be_seconds(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["doctor", "--pod", "--pod-timeout", value])
    assert info.value.code == 2
    assert f"{value!r} is not a number of seconds > 0" in capsys.readouterr().err


@pytest.mark.usefixtures("clean_env")
def test_doctor_pod_is_skipped_when_an_earlier_check_failed(
    kubesim: Kubesim, capsys: pytest.CaptureFixture[str]
) -> None:
    result = doctor(capsys, *kubeconfig(kubesim), "--pod")
    assert result.text("pod") == "skipped (needs the storage and image checks to pass)"
    assert kubesim.store.list("jobs", "default")[0] == []


def test_doctor_help_says_what_it_checks() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "k8s_executor.cli", "doctor", "--help"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0
    for option in ("--storage", "--registry", "--base-image", "--podman-url", "--timeout"):
        assert option in done.stdout
    assert "Exit code 0 when every check that ran passed" in " ".join(done.stdout.split())


# -- logs --------------------------------------------------------------------------------


def print_lines(n: int) -> int:
    for i in range(n):
        print(f"line {i} of {n}", flush=True)
    return n


def chat_until(release: str) -> str:
    print("started", flush=True)
    helpers.wait_for(lambda: os.path.exists(release), 60, "the release file")
    print("released", flush=True)
    return "done"


def crash_once(marker: str) -> str:
    if not os.path.exists(marker):
        Path(marker).touch()
        print("first attempt", flush=True)
        os._exit(3)
    print("second attempt", flush=True)
    return "ok"


def test_logs_of_finished_indexes(
    kubesim: Kubesim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kubeconfig(kubesim)
    # Cold: a warm pod's log also holds the later calls it took (docs/cli.md).
    kw = cold(kubesim_kwargs(kubesim, tmp_path / "storage"))
    with KubernetesExecutor(retries=1, **kw) as ex:
        assert list(ex.map(print_lines, [2, 3])) == [2, 3]
        assert ex.submit(crash_once, str(tmp_path / "marker")).result(timeout=60) == "ok"
        run = ex.run_id

        assert cli.main(["logs", run, "b00000/1", *config]) == 0
        assert capsys.readouterr().out == "line 0 of 3\nline 1 of 3\nline 2 of 3\n"

        # Two attempts: the latest, with a note about the other.
        assert cli.main(["logs", run, "b00001/0", *config]) == 0
        captured = capsys.readouterr()
        assert captured.out == "second attempt\n"
        assert "note: b00001/0 ran 2 times; this is attempt 2" in captured.err
        assert "attempt 1 (" in captured.err
        assert "Failed (exit 3)" in captured.err
        assert cli.main(["logs", run, "b00001/0", "--attempt", "1", *config]) == 0
        assert capsys.readouterr().out == "first attempt\n"

        # Without INDEX: the indexes and their states.
        assert cli.main(["logs", run, *config]) == 0
        table = [line.split() for line in capsys.readouterr().out.splitlines()]
        assert table[0] == ["INDEX", "STATE", "ATTEMPTS", "POD"]
        assert [row[:3] for row in table[1:]] == [
            ["b00000/0", "Succeeded", "1"],
            ["b00000/1", "Succeeded", "1"],
            ["b00001/0", "Succeeded", "2"],
        ]
        assert all(row[3].startswith(f"k8sx-{run}-") for row in table[1:])

        assert cli.main(["logs", run, "--all", "--tail", "1", *config]) == 0
        assert capsys.readouterr().out == (
            "[b00000/0] line 1 of 2\n[b00000/1] line 2 of 3\n[b00001/0] second attempt\n"
        )

        # A bare index is enough when only one batch has it.
        assert cli.main(["logs", run, "1", *config]) == 0
        assert capsys.readouterr().out.startswith("line 0 of 3")
        assert cli.main(["logs", run, "0", *config]) == 1
        assert "has an index 0 in batches b00000, b00001: name one" in capsys.readouterr().err
        assert cli.main(["logs", run, "b00000/7", *config]) == 1
        assert f"run {run} has no index b00000/7" in capsys.readouterr().err


def _lines_of(stream: IO[str]) -> queue.Queue[str]:
    """The lines of a child's pipe, as they come (read by a thread that ends with it)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(stream, lines), daemon=True).start()
    return lines


def _next_matching(lines: queue.Queue[str], text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        if text in line:
            return line


def _job_of(kubesim: Kubesim, batch: str) -> bool:
    return bool(
        kubesim.store.list("jobs", "default", label_selector=f"k8s-executor.io/batch={batch}")[0]
    )


def _running(kubesim: Kubesim, batch: str) -> bool:
    pods = kubesim.store.list("pods", "default", label_selector=f"k8s-executor.io/batch={batch}")
    return any((p.get("status") or {}).get("phase") == "Running" for p in pods[0])


def test_logs_follow_waits_for_the_task_then_ends_with_its_pod(
    kubesim: Kubesim, tmp_path: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    # Cold: the second call gets a Job of its own (a warm worker would take it).
    kw = cold(kubesim_kwargs(kubesim, tmp_path / "storage"))
    with KubernetesExecutor(max_workers=1, **kw) as ex:
        busy = ex.submit(chat_until, str(first))
        helpers.wait_for(lambda: _running(kubesim, "b00000"), 60, "the first task to run")
        queued = ex.submit(chat_until, str(second))
        # The second task's Job waits (suspended) for the only worker slot.
        helpers.wait_for(lambda: _job_of(kubesim, "b00001"), 60, "the second task's Job")
        command = [sys.executable, "-m", "k8s_executor.cli", "logs", ex.run_id, "b00001/0",
                   "-f", *kubeconfig(kubesim)]  # fmt: skip
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as follower:
            assert follower.stdout is not None
            assert follower.stderr is not None
            out, err = _lines_of(follower.stdout), _lines_of(follower.stderr)
            waiting = _next_matching(err, "has not started yet")
            assert waiting.startswith("b00001/0 has not started yet: its Job waits for a free")
            assert out.empty()
            first.touch()  # the slot frees, the second task starts: -f follows it
            assert out.get(timeout=60) == "started\n"
            assert follower.poll() is None  # still following the running task
            second.touch()
            assert out.get(timeout=60) == "released\n"
            # The pod ends, so does the stream, so does the command.
            assert follower.wait(timeout=60) == 0
        assert busy.result(timeout=60) == queued.result(timeout=60) == "done"


def _pump(stream: IO[str], into: queue.Queue[str]) -> None:
    with contextlib.suppress(ValueError, OSError):  # closed under us once the child ended
        for line in stream:
            into.put(line)


def test_logs_of_a_missing_run(kubesim: Kubesim, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["logs", "rnosuchrun00", *kubeconfig(kubesim)]) == 1
    err = capsys.readouterr().err
    assert "no run rnosuchrun00 in namespace default" in err
    assert "`k8s-executor ls`" in err


def test_logs_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["logs", "r1", "-f"]) == 2
    assert "-f follows one index: give INDEX" in capsys.readouterr().err
    assert cli.main(["logs", "r1", "0", "--all"]) == 2
    assert "give INDEX or --all, not both" in capsys.readouterr().err


def test_cleanup_deletes_only_a_run_shaped_storage_prefix(
    kubesim: Kubesim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The storage annotation is data anyone allowed to edit Secrets could change:
    cleanup deletes a prefix only if it ends with the run id."""
    from k8s_executor.backends import _manifest as m

    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "data").write_text("keep me")
    run_prefix = tmp_path / "storage" / "rcleanme0001"
    run_prefix.mkdir(parents=True)
    (run_prefix / "heartbeat").write_text("1")

    def leave_run(run_id: str, url: Path) -> None:
        secret = m.secret_manifest(run_id, b"k" * 32, run_url=str(url), owner="me@host")
        kubesim.store.create("secrets", "default", secret)

    leave_run("rcleanme0001", run_prefix)
    leave_run("rforged00001", victim)

    config = kubeconfig(kubesim)
    assert cli.main(["cleanup", "rcleanme0001", "rforged00001", *config]) == 0
    out = capsys.readouterr().out
    assert f"would delete run rcleanme0001 (0 Jobs, owner me@host) and storage {run_prefix}" in out
    assert run_prefix.exists()  # a dry run

    assert cli.main(["cleanup", "rcleanme0001", "rforged00001", "--yes", *config]) == 1
    out, err = capsys.readouterr()
    assert f"deleted storage {run_prefix}" in out
    assert not run_prefix.exists()
    assert "does not end with the run id rforged00001" in err
    assert (victim / "data").read_text() == "keep me"

    # --keep-storage: the Kubernetes objects only.
    run_prefix.mkdir()
    leave_run("rcleanme0001", run_prefix)
    assert cli.main(["cleanup", "rcleanme0001", "--yes", "--keep-storage", *config]) == 0
    out = capsys.readouterr().out
    assert "deleted run rcleanme0001: 0 Jobs (and their pods), 1 Secret" in out
    assert "deleted storage" not in out
    assert run_prefix.exists()


def test_cleanup_expired_waits_the_clocks_margin_past_the_deadline(
    kubesim: Kubesim, capsys: pytest.CaptureFixture[str]
) -> None:
    """A detached run just past its deadline by this clock may still run by its nodes'
    (review finding 4): `cleanup --expired` chooses it only past the margin."""
    from k8s_executor import _contract
    from k8s_executor.backends import _manifest as m

    now = time.time()
    for run_id, deadline in (("rrecent00001", now - 60), ("rlongago0001", now - 3600)):
        secret = m.secret_manifest(run_id, b"k" * 32, named="grid", deadline=deadline)
        kubesim.store.create("secrets", "default", secret)
    assert 60 < _contract.EXPIRY_MARGIN < 3600  # what the deadlines above are chosen for
    assert cli.main(["cleanup", "--expired", *kubeconfig(kubesim)]) == 0
    out = capsys.readouterr().out
    assert "would delete run rlongago0001" in out
    assert "rrecent00001" not in out


@pytest.mark.usefixtures("clean_env")
def test_cleanup_finished_never_touches_a_live_idle_run(
    kubesim: Kubesim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 14 item 8: an idle run's Jobs have all ended, so it showed as finished, and
    # `cleanup --finished` deleted it under its live client (its next map then failed).
    from k8s_executor._admin import Cluster

    config = kubeconfig(kubesim)
    # Cold: the Job ends with its call, as before warm workers (a warm worker's Job runs
    # until its keep_warm window ends, 60 s, and the run is not finished meanwhile).
    with KubernetesExecutor(**cold(kubesim_kwargs(kubesim, tmp_path / "storage"))) as ex:
        assert ex.submit(helpers.square, 3).result(timeout=60) == 9

        def jobs_ended() -> bool:
            runs = {r.run_id: r for r in Cluster(str(kubesim.kubeconfig_path)).runs()}
            return ex.run_id in runs and runs[ex.run_id].finished

        helpers.wait_for(jobs_ended, 60, "the run's Job to end")
        assert cli.main(["cleanup", "--finished", "--all-mine", "--yes", *config]) == 0
        assert f"{ex.run_id}: its client is alive (fresh heartbeat): not touched" in (
            capsys.readouterr().out
        )
        assert ex.submit(helpers.square, 4).result(timeout=60) == 16  # still usable


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cleanup", "--older-than", "-5m"], "'-5m' is not a duration like 30m, 2h or 7d"),
        (["cleanup", "--older-than", "soon"], "'soon' is not a duration"),
        (["doctor", "--timeout", "0"], "'0' is not a number of seconds > 0"),
        (["rbac", "-n", "Bad_NS"], "'Bad_NS' is not a namespace name"),
        (["rbac", "--service-account", "a b"], "'a b' is not a service account name"),
    ],
    ids=["negative age", "no unit", "zero timeout", "bad namespace", "bad account"],
)
def test_bad_arguments_are_usage_errors_saying_what_is_expected(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 14 item 14: argparse's "expected one argument", a pydantic dump, or invalid
    # manifests printed as if all was well.
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.usefixtures("clean_env")
def test_cleanup_of_a_missing_run_fails_and_zero_age_is_an_age(
    kubesim: Kubesim, capsys: pytest.CaptureFixture[str]
) -> None:
    config = kubeconfig(kubesim)
    assert cli.main(["cleanup", "rnosuchrun01", "--yes", *config]) == 1
    assert "rnosuchrun01: no such run in namespace default" in capsys.readouterr().out
    assert cli.main(["cleanup", "--older-than", "0s", *config]) == 0  # every run: none here
    assert "name runs, or use --older-than" not in capsys.readouterr().err
