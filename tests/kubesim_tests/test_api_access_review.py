"""SelfSubjectAccessReview (``kubectl auth can-i``): validated as kube-apiserver does, and
answered with the very decision the server makes for the request it describes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import job_manifest, pod_manifest
from tests.kubesim_tests.test_api_crud import raw

REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


def review(api: Any, spec: dict[str, Any], **extra: Any) -> tuple[int, Any]:
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": spec,
        **extra,
    }
    code, answer, _ = raw(api, "POST", REVIEWS, body)
    return code, answer


def can_i(
    api: Any,
    verb: str,
    resource: str,
    namespace: str = "",
    *,
    group: str = "",
    subresource: str = "",
) -> bool:
    attributes = {"verb": verb, "group": group, "resource": resource}
    if namespace:
        attributes["namespace"] = namespace
    if subresource:
        attributes["subresource"] = subresource
    code, answer = review(api, {"resourceAttributes": attributes})
    assert code == 201, answer
    allowed = answer["status"]["allowed"]
    assert isinstance(allowed, bool)
    return allowed


def test_answer_has_the_upstream_shape(sim: Kubesim, api: Any) -> None:
    spec = {"resourceAttributes": {"namespace": "default", "verb": "create", "resource": "pods"}}
    code, answer = review(api, spec)
    assert code == 201
    assert answer == {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "metadata": {"creationTimestamp": None},
        "spec": spec,
        "status": {"allowed": True},
    }
    sim.faults.deny("create", "pods")
    code, answer = review(api, spec)
    # RBAC has no deny rules: a missing grant is "no opinion" (allowed false, no denied).
    assert answer["status"] == {"allowed": False}


def test_official_client_reads_it(sim: Kubesim, api: Any) -> None:
    from kubernetes import client

    authz: Any = client.AuthorizationV1Api(api)
    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": "get", "resource": "pods", "subresource": "log"}},
    }
    assert authz.create_self_subject_access_review(body).status.allowed is True
    sim.faults.deny("get", "pods/log")
    status = authz.create_self_subject_access_review(body).status
    assert status.allowed is False
    assert not status.denied


def _status(api: Any, method: str, path: str, body: Any = None) -> int:
    code, _, _ = raw(api, method, path, body)
    return code


@pytest.mark.parametrize(
    ("verb", "resource", "subresource", "group", "namespace", "method", "path", "body"),
    [
        ("create", "jobs", "", "batch", "default", "POST", "/apis/batch/v1/namespaces/default/jobs",
         job_manifest("j")),
        ("list", "jobs", "", "batch", "default", "GET", "/apis/batch/v1/namespaces/default/jobs",
         None),
        ("get", "pods", "log", "", "default", "GET", "/api/v1/namespaces/default/pods/p/log",
         None),
        ("get", "pods", "", "", "default", "GET", "/api/v1/namespaces/default/pods/p", None),
        ("list", "secrets", "", "", "ml", "GET", "/api/v1/namespaces/ml/secrets", None),
        ("list", "secrets", "", "", "default", "GET", "/api/v1/namespaces/default/secrets", None),
        # Across all namespaces: refused as soon as one namespace is.
        ("list", "secrets", "", "", "", "GET", "/api/v1/secrets", None),
        ("list", "pods", "", "", "", "GET", "/api/v1/pods", None),
        ("delete", "secrets", "", "", "ml", "DELETE", "/api/v1/namespaces/ml/secrets/s", None),
    ],
)  # fmt: skip
def test_review_agrees_with_what_the_server_does(
    sim: Kubesim,
    api: Any,
    verb: str,
    resource: str,
    subresource: str,
    group: str,
    namespace: str,
    method: str,
    path: str,
    body: Any,
) -> None:
    raw(api, "POST", "/api/v1/namespaces", {"metadata": {"name": "ml"}})
    raw(api, "POST", "/api/v1/namespaces/default/pods", pod_manifest("p"))
    sim.faults.deny("create", "jobs")
    sim.faults.deny("get", "pods/log")
    sim.faults.deny("list", "secrets", "ml")
    sim.faults.deny("delete", "secrets")
    allowed = can_i(api, verb, resource, namespace, group=group, subresource=subresource)
    refused = _status(api, method, path, body) == 403
    assert allowed is not refused


def test_wildcards_and_other_groups(sim: Kubesim, api: Any) -> None:
    sim.faults.deny("create", "jobs")
    assert not can_i(api, "*", "jobs", "default", group="batch")
    assert can_i(api, "*", "pods", "default")
    assert not can_i(api, "create", "*", "default", group="batch")
    assert can_i(api, "create", "*", "default")  # the core group has no denial
    assert not can_i(api, "create", "jobs", "default", group="*")
    # Another group's "jobs" (or a resource kubesim does not serve) is not what was denied.
    assert can_i(api, "create", "jobs", "default")
    assert can_i(api, "create", "deployments", "default", group="apps")
    code, answer = review(api, {"nonResourceAttributes": {"path": "/healthz", "verb": "get"}})
    assert (code, answer["status"]) == (201, {"allowed": True})


def test_invalid_reviews_are_422(api: Any) -> None:
    code, answer = review(api, {})
    assert code == 422
    assert answer["reason"] == "Invalid"
    assert answer["message"] == (
        'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: spec.resourceAttributes: '
        'Invalid value: "null": exactly one of nonResourceAttributes or resourceAttributes must '
        "be specified"
    )
    assert answer["details"]["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": 'Invalid value: "null": exactly one of nonResourceAttributes or '
            "resourceAttributes must be specified",
            "field": "spec.resourceAttributes",
        }
    ]
    both = {
        "resourceAttributes": {"verb": "get", "resource": "pods"},
        "nonResourceAttributes": {"path": "/healthz", "verb": "get"},
    }
    code, answer = review(api, both)
    assert code == 422
    assert "spec.nonResourceAttributes: Invalid value: " in answer["message"]
    assert answer["message"].endswith("cannot be specified in combination with resourceAttributes")
    code, answer = review(
        api,
        {"resourceAttributes": {"verb": "get", "resource": "pods"}},
        metadata={"name": "mine"},
    )
    assert code == 422
    assert answer["message"].startswith(
        'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: metadata: Invalid value: '
    )
    assert answer["message"].endswith(": must be empty")
    code, answer = review(api, {"resourceAttributes": {}}, kind="SubjectAccessReview")
    assert code == 400


def test_creating_reviews_can_be_refused_too(sim: Kubesim, api: Any) -> None:
    sim.faults.deny("create", "selfsubjectaccessreviews")
    code, answer = review(api, {"resourceAttributes": {"verb": "get", "resource": "pods"}})
    assert code == 403
    assert answer["message"] == (
        'selfsubjectaccessreviews.authorization.k8s.io is forbidden: User "kubesim-admin" '
        'cannot create resource "selfsubjectaccessreviews" in API group '
        '"authorization.k8s.io" at the cluster scope'
    )
