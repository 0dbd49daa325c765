"""LimitRange through the official client: CRUD and defaulting of the object, the LimitRanger
admission's defaults and its 403 refusals, before the quota admission."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import body_of, wait_for
from tests.kubesim_tests.job_helpers import NS, job_body, raw


@pytest.fixture
def core(kubesim: Kubesim) -> Iterator[Any]:
    with kubesim.api_client() as api:
        yield client.CoreV1Api(api)


def _limits(name: str, *items: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"limits": list(items)}}


def _pod(name: str, **resources: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": "python:3.12-slim",
        "command": [sys.executable, "-c", "pass"],
    }
    if resources:
        container["resources"] = resources
    return {
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [container]},
    }


def _refusal(core: Any, pod: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ApiException) as caught:
        core.create_namespaced_pod(NS, pod)
    assert caught.value.status == 403
    return body_of(caught.value)


def test_limit_range_crud_defaults_its_container_items(core: Any) -> None:
    created = core.create_namespaced_limit_range(
        NS, _limits("lr", {"type": "Container", "max": {"cpu": "2"}, "min": {"memory": "64Mi"}})
    )
    item = created.spec.limits[0]
    # SetDefaults_LimitRangeItem: default <- max, defaultRequest <- default, then <- min.
    assert item.default == {"cpu": "2"}
    assert item.default_request == {"cpu": "2", "memory": "64Mi"}
    assert [r.metadata.name for r in core.list_namespaced_limit_range(NS).items] == ["lr"]
    core.delete_namespaced_limit_range("lr", NS)
    assert core.list_namespaced_limit_range(NS).items == []


def test_defaults_are_applied_and_annotated(core: Any) -> None:
    core.create_namespaced_limit_range(
        NS,
        _limits(
            "defaults",
            {
                "type": "Container",
                "default": {"cpu": "1"},
                "defaultRequest": {"cpu": "250m", "memory": "128Mi"},
            },
        ),
    )
    pod = raw(core.create_namespaced_pod(NS, _pod("p"), _preload_content=False))
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources == {"limits": {"cpu": "1"}, "requests": {"cpu": "250m", "memory": "128Mi"}}
    assert pod["metadata"]["annotations"]["kubernetes.io/limit-ranger"] == (
        "LimitRanger plugin set: cpu, memory request for container main; "
        "cpu limit for container main"
    )


def test_max_min_and_ratio_refusals_name_the_bound(core: Any) -> None:
    core.create_namespaced_limit_range(
        NS,
        _limits(
            "bounds",
            {
                "type": "Container",
                "max": {"cpu": "2"},
                "min": {"memory": "64Mi"},
                "maxLimitRequestRatio": {"cpu": "4"},
            },
        ),
    )
    over = _refusal(core, _pod("big", limits={"cpu": "4", "memory": "1Gi"}, requests={"cpu": "4"}))
    assert over["reason"] == "Forbidden"
    assert (
        over["message"]
        == 'pods "big" is forbidden: maximum cpu usage per Container is 2, but limit is 4'
    )
    small = _refusal(
        core,
        _pod(
            "small", limits={"cpu": "1", "memory": "32Mi"}, requests={"cpu": "1", "memory": "32Mi"}
        ),
    )
    assert small["message"] == (
        'pods "small" is forbidden: minimum memory usage per Container is 64Mi, but request is 32Mi'
    )
    ratio = _refusal(
        core, _pod("ratio", limits={"cpu": "2", "memory": "1Gi"}, requests={"cpu": "100m"})
    )
    assert ratio["message"] == (
        'pods "ratio" is forbidden: cpu max limit to request ratio per Container is 4, '
        "but provided ratio is 20.000000"
    )
    both = _refusal(
        core,
        _pod(
            "both", limits={"cpu": "3", "memory": "32Mi"}, requests={"cpu": "3", "memory": "32Mi"}
        ),
    )
    assert both["message"] == (
        'pods "both" is forbidden: [minimum memory usage per Container is 64Mi, but request is '
        "32Mi, maximum cpu usage per Container is 2, but limit is 3]"
    )


def test_pod_type_bounds_the_sum_of_containers(core: Any) -> None:
    core.create_namespaced_limit_range(
        NS, _limits("pod", {"type": "Pod", "max": {"memory": "1Gi"}})
    )
    pod = _pod("two", limits={"memory": "768Mi"})
    pod["spec"]["containers"].append({**pod["spec"]["containers"][0], "name": "side"})
    assert _refusal(core, pod)["message"] == (
        'pods "two" is forbidden: maximum memory usage per Pod is 1Gi, but limit is 1536Mi'
    )


def test_quota_sees_the_limit_range_defaults(kubesim: Kubesim, core: Any) -> None:
    core.create_namespaced_limit_range(
        NS, _limits("d", {"type": "Container", "default": {"cpu": "1", "memory": "256Mi"}})
    )
    core.create_namespaced_resource_quota(
        NS, {"metadata": {"name": "q"}, "spec": {"hard": {"requests.cpu": "1", "limits.cpu": "1"}}}
    )
    wait_for(lambda: core.read_namespaced_resource_quota("q", NS).status.used or None, 10, "quota")
    # Without LimitRanger's defaults the quota would refuse: "must specify limits.cpu".
    core.create_namespaced_pod(NS, _pod("first"))
    refused = _refusal(core, _pod("second"))
    assert refused["message"].startswith(
        'pods "second" is forbidden: exceeded quota: q, requested: '
    )


def test_job_controller_reports_a_limit_range_refusal(kubesim: Kubesim, core: Any) -> None:
    core.create_namespaced_limit_range(
        NS, _limits("max", {"type": "Container", "max": {"cpu": "1"}})
    )
    with kubesim.api_client() as api:
        job: Any = job_body("lr-job", container={"resources": {"limits": {"cpu": "2"}}})
        client.BatchV1Api(api).create_namespaced_job(NS, job)

    def failed_create() -> Any:
        items = core.list_namespaced_event(NS, field_selector="involvedObject.name=lr-job").items
        return [e for e in items if e.reason == "FailedCreate"]

    events = wait_for(failed_create, 10, "FailedCreate")
    assert "is forbidden: maximum cpu usage per Container is 1, but limit is 2" in events[0].message
