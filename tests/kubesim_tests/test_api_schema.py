"""Schema validation of created/replaced objects against the official 1.33 OpenAPI schema.

Unknown fields follow ``fieldValidation`` (server default ``Warn``; the Python client sends
none, kubectl ≥1.27 sends ``Strict``): Strict → 400 ``strict decoding error``, Warn → dropped
with a ``Warning`` header, Ignore → dropped silently. Type errors fail decoding (400); missing
required fields and unsupported enum values are 422 with the field path.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.kubesim_tests.conftest import body_of, job_manifest, pod_manifest
from tests.kubesim_tests.test_api_crud import raw

JOBS = "/apis/batch/v1/namespaces/default/jobs"


def _with_unknown_field() -> dict[str, Any]:
    manifest = job_manifest("j")
    manifest["spec"]["bogus"] = 1
    manifest["spec"]["template"]["spec"]["containers"][0]["extra"] = "x"
    return manifest


def test_unknown_fields_strict_is_400(api: Any) -> None:
    code, body, _ = raw(
        api, "POST", JOBS, _with_unknown_field(), query=[("fieldValidation", "Strict")]
    )
    assert code == 400
    assert body["reason"] == "BadRequest"
    assert body["message"] == (
        'Job in version "v1" cannot be handled as a Job: strict decoding error: unknown field '
        '"spec.bogus", unknown field "spec.template.spec.containers[0].extra"'
    )


def test_unknown_fields_warn_by_default_and_dropped(api: Any) -> None:
    code, body, headers = raw(api, "POST", JOBS, _with_unknown_field())
    assert code == 201
    assert "bogus" not in body["spec"]
    assert "extra" not in body["spec"]["template"]["spec"]["containers"][0]
    # One Warning header per dropped field.
    assert headers["Warning"] == (
        '299 - "unknown field \\"spec.bogus\\"", '
        '299 - "unknown field \\"spec.template.spec.containers[0].extra\\""'
    )


def test_unknown_fields_ignore_is_silent(api: Any) -> None:
    code, body, headers = raw(
        api, "POST", JOBS, _with_unknown_field(), query=[("fieldValidation", "Ignore")]
    )
    assert code == 201
    assert "bogus" not in body["spec"]
    assert "Warning" not in headers


def test_wrong_type_is_400_decode_error(api: Any) -> None:
    manifest = job_manifest("j", completions="three")
    code, body, _ = raw(api, "POST", JOBS, manifest)
    assert code == 400
    assert body["message"].startswith(
        'Job in version "v1" cannot be handled as a Job: json: cannot unmarshal string'
    )


def test_missing_required_field_is_422_with_path(api: Any) -> None:
    manifest = job_manifest("j")
    del manifest["spec"]["template"]["spec"]["containers"][0]["name"]
    code, body, _ = raw(api, "POST", JOBS, manifest)
    assert code == 422
    assert body["reason"] == "Invalid"
    assert (
        body["message"]
        == 'Job.batch "j" is invalid: spec.template.spec.containers[0].name: Required value'
    )
    assert body["details"] == {
        "name": "j",
        "group": "batch",
        "kind": "Job",
        "causes": [
            {
                "reason": "FieldValueRequired",
                "message": "Required value",
                "field": "spec.template.spec.containers[0].name",
            }
        ],
    }


def test_replace_is_validated_too(api: Any, batch: Any) -> None:
    job = api.sanitize_for_serialization(batch.create_namespaced_job("default", job_manifest("j")))
    job["spec"]["parallelism"] = "two"
    code, _, _ = raw(api, "PUT", f"{JOBS}/j", job)
    assert code == 400
    job["spec"]["parallelism"] = 2
    job["spec"]["template"]["spec"]["containers"][0].pop("name")
    code, _, _ = raw(api, "PUT", f"{JOBS}/j", job)
    assert code == 422


def test_patch_result_is_validated(batch: Any) -> None:
    batch.create_namespaced_job("default", job_manifest("j"))
    with pytest.raises(client.ApiException) as caught:
        batch.patch_namespaced_job(
            "j", "default", [{"op": "replace", "path": "/spec/parallelism", "value": "x"}]
        )
    assert caught.value.status == 400


def test_invalid_pod_and_secret(api: Any) -> None:
    pod = pod_manifest("p")
    pod["spec"]["containers"] = "not-a-list"
    code, _, _ = raw(api, "POST", "/api/v1/namespaces/default/pods", pod)
    assert code == 400
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": 1}}
    code, _, _ = raw(api, "POST", "/api/v1/namespaces/default/secrets", secret)
    assert code == 400


def test_job_rules_beyond_the_schema_are_422(batch: Any) -> None:
    # kubernetes-jobs.md §9.2: Indexed without completions (Job admission of kubesim). With
    # parallelism set, defaulting does not fill completions (it does only when both are unset).
    with pytest.raises(client.ApiException) as caught:
        batch.create_namespaced_job(
            "default", job_manifest("j", completionMode="Indexed", parallelism=2)
        )
    assert caught.value.status == 422
    assert "spec.completions" in body_of(caught.value)["message"]


def test_invalid_label_value_is_422(api: Any) -> None:
    manifest = job_manifest("j")
    manifest["metadata"]["labels"] = {"app": "not valid!"}
    code, body, _ = raw(api, "POST", JOBS, manifest)
    assert code == 422
    assert body["details"]["causes"][0]["field"] == "metadata.labels"


def test_long_job_name_warns(api: Any) -> None:
    code, _, headers = raw(api, "POST", JOBS, job_manifest("a.b"))
    assert code == 201
    assert "a DNS label is recommended" in headers["Warning"]
