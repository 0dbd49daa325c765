"""§9.1-9.3: Job defaults, generated selector/labels, 422 rules and update rules (API only)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client import ApiException

from tests.kubesim_tests.job_helpers import NS, job_body, raw


def _create(batch: Any, body: dict[str, Any]) -> dict[str, Any]:
    return raw(batch.create_namespaced_job(NS, body, _preload_content=False))


def _invalid(batch: Any, body: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ApiException) as info:
        batch.create_namespaced_job(NS, body)
    assert info.value.status == 422
    status: dict[str, Any] = json.loads(info.value.body or "{}")
    assert status["reason"] == "Invalid"
    assert status["details"]["kind"] == "Job" and status["details"]["group"] == "batch"
    return status


def test_s9_01_defaults_selector_and_labels(batch: Any) -> None:
    body = job_body("", backoffLimitPerIndex=1, completions=4, parallelism=None)
    body["metadata"] = {"generateName": "cfx-"}
    body["spec"].pop("parallelism")
    body["spec"]["podFailurePolicy"] = {
        "rules": [
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            }
        ]
    }
    job = _create(batch, body)
    meta, spec = job["metadata"], job["spec"]
    name, uid = meta["name"], meta["uid"]
    assert name.startswith("cfx-") and len(name) == 9
    assert meta["generation"] == 1
    assert job["status"] == {}
    assert spec["parallelism"] == 1
    assert spec["backoffLimit"] == 2147483647  # backoffLimitPerIndex set
    assert spec["podReplacementPolicy"] == "Failed"  # podFailurePolicy set
    assert spec["suspend"] is False and spec["manualSelector"] is False
    assert spec["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    labels = spec["template"]["metadata"]["labels"]
    assert labels == {
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
        "controller-uid": uid,
        "job-name": name,
    }
    assert meta["labels"] == labels  # Job labels default from the template when empty


def test_s9_01_nonindexed_defaults(batch: Any) -> None:
    body = job_body("plain", indexed=False)
    job = _create(batch, body)
    spec = job["spec"]
    assert (spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (1, 1, 6)
    assert spec["completionMode"] == "NonIndexed"
    assert spec["podReplacementPolicy"] == "TerminatingOrFailed"


def test_s9_01_user_template_labels_become_job_labels(batch: Any) -> None:
    body = job_body("lbl")
    body["spec"]["template"]["metadata"] = {"labels": {"app": "x"}}
    job = _create(batch, body)
    assert job["metadata"]["labels"] == {"app": "x"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            # With neither completions nor parallelism both default to 1 (valid); with
            # parallelism alone, completions stays unset and Indexed requires it.
            {"completions": None, "parallelism": 2},
            'Job.batch "bad" is invalid: spec.completions: Required value: '
            "when completion mode is Indexed",
        ),
        (
            {"completions": 4, "parallelism": 100001},
            "spec.parallelism: Invalid value: 100001: must be less than or equal to 100000 "
            "when completion mode is Indexed",
        ),
        (
            {"maxFailedIndexes": 1},
            "spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified",
        ),
        (
            {"completions": 2, "backoffLimitPerIndex": 1, "maxFailedIndexes": 3},
            "spec.maxFailedIndexes: Invalid value: 3: must be less than or equal to completions",
        ),
        (
            {
                "podFailurePolicy": {
                    "rules": [
                        {
                            "action": "FailIndex",
                            "onExitCodes": {"operator": "In", "values": [3]},
                        }
                    ]
                }
            },
            'spec.podFailurePolicy.rules[0].action: Invalid value: "FailIndex": '
            "requires the backoffLimitPerIndex to be set",
        ),
        (
            {
                "podFailurePolicy": {
                    "rules": [
                        {
                            "action": "Ignore",
                            "onExitCodes": {"operator": "In", "values": [3]},
                            "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                        }
                    ]
                }
            },
            "spec.podFailurePolicy.rules[0]: Invalid value: "
            "specifying both OnExitCodes and OnPodConditions is not supported",
        ),
        (
            {"podFailurePolicy": {"rules": [{"action": "Ignore"}]}},
            "spec.podFailurePolicy.rules[0]: Invalid value: "
            "specifying one of OnExitCodes and OnPodConditions is required",
        ),
        (
            {"completionMode": "NonIndexed", "successPolicy": {"rules": [{"succeededCount": 1}]}},
            "spec.successPolicy: Invalid value: ",
        ),
    ],
)
def test_s9_02_rejected_specs(batch: Any, spec: dict[str, Any], message: str) -> None:
    body = job_body("bad")
    for key, value in spec.items():
        if value is None:
            body["spec"].pop(key, None)
        else:
            body["spec"][key] = value
    status = _invalid(batch, body)
    assert message in status["message"]
    assert status["message"].startswith('Job.batch "bad" is invalid: ')


def test_s9_02_pod_failure_policy_requires_never(batch: Any) -> None:
    body = job_body("onfail")
    body["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    body["spec"]["podFailurePolicy"] = {
        "rules": [{"action": "Count", "onExitCodes": {"operator": "In", "values": [1]}}]
    }
    status = _invalid(batch, body)
    assert status["message"] == (
        'Job.batch "onfail" is invalid: spec.template.spec.restartPolicy: Invalid value: '
        '"OnFailure": only "Never" is supported when podFailurePolicy is specified'
    )
    cause = status["details"]["causes"][0]
    assert cause["field"] == "spec.template.spec.restartPolicy"
    assert cause["reason"] == "FieldValueInvalid"


def test_s9_02_restart_policy_always(batch: Any) -> None:
    body = job_body("always")
    body["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    status = _invalid(batch, body)
    assert status["message"] == (
        'Job.batch "always" is invalid: spec.template.spec.restartPolicy: Required value: '
        'valid values: "OnFailure", "Never"'
    )
    assert status["details"]["causes"][0]["reason"] == "FieldValueRequired"


def test_s9_02_indexed_hostname_must_be_dns_label(batch: Any) -> None:
    name = "j" * 60
    status = _invalid(batch, job_body(name, completions=1000))
    assert (
        f'metadata.name: Invalid value: "{name}": will not able to create pod with invalid '
        f"DNS label: {name}-999"
    ) in status["message"]


def test_s9_02_job_name_over_63_chars(batch: Any) -> None:
    name = "n" * 64
    status = _invalid(batch, job_body(name, indexed=False))
    assert "must be no more than 63 characters" in status["message"]


def test_s9_03_immutable_fields(batch: Any) -> None:
    _create(batch, job_body("imm", completions=3, parallelism=1, suspend=True))
    for patch, fragment in [
        ({"spec": {"completionMode": "NonIndexed"}}, "spec.completionMode: Invalid value"),
        ({"spec": {"backoffLimitPerIndex": 2}}, "spec.backoffLimitPerIndex: Invalid value"),
        (
            {"spec": {"template": {"spec": {"containers": [{"name": "task", "image": "other"}]}}}},
            "spec.template: Invalid value",
        ),
    ]:
        with pytest.raises(ApiException) as info:
            batch.patch_namespaced_job("imm", NS, patch)
        assert info.value.status == 422
        assert fragment in json.loads(info.value.body or "{}")["message"]
        assert "field is immutable" in json.loads(info.value.body or "{}")["message"]


def test_s9_03_indexed_completions_only_with_parallelism(batch: Any) -> None:
    _create(batch, job_body("elastic", completions=4, parallelism=2, suspend=True))
    with pytest.raises(ApiException) as info:
        batch.patch_namespaced_job("elastic", NS, {"spec": {"completions": 3}})
    assert info.value.status == 422
    assert (
        "spec.completions: Invalid value: 3: can only be modified in tandem with spec.parallelism"
    ) in json.loads(info.value.body or "{}")["message"]
    job = raw(
        batch.patch_namespaced_job(
            "elastic", NS, {"spec": {"completions": 3, "parallelism": 3}}, _preload_content=False
        )
    )
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (3, 3)
    assert job["metadata"]["generation"] == 2


def test_s9_03_nonindexed_completions_immutable(batch: Any) -> None:
    _create(batch, job_body("nonidx", indexed=False, completions=2, suspend=True))
    with pytest.raises(ApiException) as info:
        batch.patch_namespaced_job("nonidx", NS, {"spec": {"completions": 3, "parallelism": 3}})
    assert (
        "spec.completions: Invalid value: 3: field is immutable"
        in json.loads(info.value.body or "{}")["message"]
    )


def test_s9_03_scheduling_fields_only_while_suspended_and_never_started(
    batch: Any,
) -> None:
    _create(batch, job_body("sched", suspend=True))
    patch = {"spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}}
    job = raw(batch.patch_namespaced_job("sched", NS, patch, _preload_content=False))
    assert job["spec"]["template"]["spec"]["nodeSelector"] == {"disk": "ssd"}
    # Once it is not suspended the template is frozen.
    batch.patch_namespaced_job("sched", NS, {"spec": {"suspend": False}})
    with pytest.raises(ApiException) as info:
        batch.patch_namespaced_job(
            "sched", NS, {"spec": {"template": {"spec": {"nodeSelector": {"disk": "hdd"}}}}}
        )
    assert info.value.status == 422
    assert "spec.template" in json.loads(info.value.body or "{}")["message"]
