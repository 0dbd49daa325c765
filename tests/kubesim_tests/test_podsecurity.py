"""PodSecurity admission through the official client: enforce refusals with the library's
message shape, warn-mode warnings on pods and Job templates, and the Job controller's
FailedCreate for a refused pod."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.kubesim import podsecurity
from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import body_of, wait_for
from tests.kubesim_tests.job_helpers import job_body


@pytest.fixture
def apis(kubesim: Kubesim) -> Iterator[tuple[Any, Any]]:
    with kubesim.api_client() as api:
        yield client.CoreV1Api(api), client.BatchV1Api(api)


def _namespace(core: Any, name: str, **labels: str) -> str:
    full = {f"pod-security.kubernetes.io/{k.replace('_', '-')}": v for k, v in labels.items()}
    core.create_namespace({"metadata": {"name": name, "labels": full}})
    return name


def _pod(name: str, container: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    main: dict[str, Any] = {
        "name": "worker",
        "image": "python:3.12-slim",
        "command": [sys.executable, "-c", "pass"],
    }
    main.update(container or {})
    return {
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [main], **spec},
    }


RESTRICTED_OK = {
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
}


def _refused(core: Any, ns: str, pod: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_pod(ns, pod)
    assert caught.value.status == 403
    body = body_of(caught.value)
    assert body["reason"] == "Forbidden"
    return str(body["message"])


def test_restricted_refuses_a_default_pod_with_every_reason(apis: tuple[Any, Any]) -> None:
    core, _ = apis
    ns = _namespace(core, "strict", enforce="restricted")
    assert _refused(core, ns, _pod("plain")) == (
        'pods "plain" is forbidden: violates PodSecurity "restricted:latest": '
        'allowPrivilegeEscalation != false (container "worker" must set '
        "securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "
        '"worker" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod '
        'or container "worker" must set securityContext.runAsNonRoot=true), seccompProfile (pod '
        'or container "worker" must set securityContext.seccompProfile.type to "RuntimeDefault" '
        'or "Localhost")'
    )
    created = core.create_namespaced_pod(ns, _pod("hardened", RESTRICTED_OK))
    assert created.metadata.name == "hardened"


def test_baseline_refuses_privileged_host_and_hostpath(apis: tuple[Any, Any]) -> None:
    core, _ = apis
    ns = _namespace(core, "base", enforce="baseline", enforce_version="v1.33")
    pod = _pod(
        "wild",
        {
            "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}},
            "ports": [{"containerPort": 80, "hostPort": 8080}],
        },
        hostNetwork=True,
        hostPID=True,
        volumes=[{"name": "root", "hostPath": {"path": "/"}}],
    )
    assert _refused(core, ns, pod) == (
        'pods "wild" is forbidden: violates PodSecurity "baseline:v1.33": host namespaces '
        '(hostNetwork, hostPID), hostPort (container "worker" uses hostPort 8080), privileged '
        '(container "worker" must not set securityContext.privileged=true), non-default '
        'capabilities (container "worker" must not include "SYS_ADMIN" in '
        'securityContext.capabilities.add), hostPath volumes (volume "root")'
    )
    # Baseline admits what only restricted forbids.
    assert core.create_namespaced_pod(ns, _pod("ordinary")).metadata.name == "ordinary"


def test_warn_label_gives_a_warning_not_a_refusal(kubesim: Kubesim, apis: tuple[Any, Any]) -> None:
    core, batch = apis
    ns = _namespace(core, "warned", warn="restricted")
    with warnings.catch_warnings(record=True):
        response = core.create_namespaced_pod(ns, _pod("p"), _preload_content=False)
    warning = response.headers.get("Warning", "")
    assert warning.startswith(
        '299 - "would violate PodSecurity \\"restricted:latest\\": allowPrivilegeEscalation'
    )
    # A Job's template is checked against warn (never enforce): the Job is created.
    response = batch.create_namespaced_job(ns, job_body("j"), _preload_content=False)
    assert response.status == 201
    assert "would violate PodSecurity" in response.headers.get("Warning", "")


def test_job_pods_refused_become_failed_create_events(apis: tuple[Any, Any]) -> None:
    core, batch = apis
    ns = _namespace(core, "locked", enforce="restricted")
    batch.create_namespaced_job(
        ns, job_body("priv", container={"securityContext": {"privileged": True}})
    )

    def failed() -> Any:
        items = core.list_namespaced_event(ns, field_selector="involvedObject.name=priv").items
        return [e for e in items if e.reason == "FailedCreate"]

    event = wait_for(failed, 10, "FailedCreate")[0]
    assert event.type == "Warning"
    assert event.message.startswith('Error creating: pods "priv-0-')
    assert (
        'violates PodSecurity "restricted:latest": privileged (container "task" must not set '
        in event.message
    )


def test_levels_and_versions_parse_as_the_library() -> None:
    modes = podsecurity.policy(
        {"pod-security.kubernetes.io/enforce": "bogus", "pod-security.kubernetes.io/warn": "bogus"}
    )
    assert modes["enforce"] == ("restricted", None)  # fail closed
    assert modes["warn"] == ("privileged", None)  # fail open
    spec = {
        "containers": [
            {"name": "c", "securityContext": {"runAsUser": 0, **RESTRICTED_OK["securityContext"]}}
        ]
    }
    assert podsecurity.evaluate("restricted", 22, {}, spec) is None  # runAsUser=0 checked from 1.23
    assert podsecurity.evaluate("restricted", None, {}, spec) == (
        'runAsUser=0 (container "c" must not set runAsUser=0)'
    )
