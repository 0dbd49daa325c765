"""Admission of ``batch/v1`` Jobs: defaulting, generated selector, and the Job-specific 422s.

Registered on the store for ``"jobs"`` as ``admit_job(op, old, new) -> new``. It reproduces,
from kubernetes-jobs.md §2 and §9.1-9.3:

- the v1 defaults (DEF) and the registry strategy (STRAT): generated selector and the four
  template labels, ``generation``, status cleared on create and preserved on spec updates;
- the validation rules of VAL that the OpenAPI schema cannot express, with the API server's
  own wording (``field.Error`` bodies such as ``Required value: when completion mode is
  Indexed``) and the ``Job.batch "NAME" is invalid: ...`` aggregate message.

Known deviation: where Go prints a bad struct value with ``%#v`` (e.g. ``spec.template: Invalid
value: core.PodTemplateSpec{...}: field is immutable``) we print compact JSON instead; the
field path, error type and detail text are the server's.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import defaults
from .errors import ApiError
from .indexes import IndexFormatError, validate_indexes

__all__ = [
    "CONTROLLER_UID_LABEL",
    "JOB_NAME_LABEL",
    "LEGACY_CONTROLLER_UID_LABEL",
    "LEGACY_JOB_NAME_LABEL",
    "FieldError",
    "admit_job",
    "default_job",
    "invalid_error",
    "validate_job",
    "validate_job_update",
]

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
LEGACY_JOB_NAME_LABEL = "job-name"
LEGACY_CONTROLLER_UID_LABEL = "controller-uid"

MAX_INT32 = 2147483647
MAX_PARALLELISM_INDEXED = 100_000
MAX_FAILED_INDEXES = 100_000
COMPLETIONS_SOFT_LIMIT = 100_000
PARALLELISM_LIMIT_HIGH_COMPLETIONS = 10_000
MAX_FAILED_INDEXES_HIGH_COMPLETIONS = 10_000
MAX_POD_FAILURE_POLICY_RULES = 20
MAX_ON_EXIT_CODES_VALUES = 255
MAX_ON_POD_CONDITIONS = 20
MAX_MANAGED_BY_LENGTH = 63
MAX_SUCCEEDED_INDEXES_LENGTH = 64 * 1024
MAX_SUCCESS_POLICY_RULES = 20

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

_DNS1123_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)

_OMIT = object()  # field.OmitValueType: the body prints no value


def _go_value(value: Any) -> str:
    """Render a bad value the way ``field.Error.ErrorBody`` does for simple types."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class FieldError:
    """One ``field.Error``: ``reason`` is the StatusCause type (``FieldValueInvalid`` …)."""

    reason: str
    field: str
    body: str

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"

    def cause(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.body, "field": self.field}


def _required(path: str, detail: str = "") -> FieldError:
    body = "Required value" + (f": {detail}" if detail else "")
    return FieldError("FieldValueRequired", path, body)


def _invalid(path: str, value: Any, detail: str) -> FieldError:
    if value is _OMIT:
        return FieldError("FieldValueInvalid", path, f"Invalid value: {detail}")
    return FieldError("FieldValueInvalid", path, f"Invalid value: {_go_value(value)}: {detail}")


def _not_supported(path: str, value: Any, supported: Iterable[str]) -> FieldError:
    values = ", ".join(json.dumps(v) for v in supported)
    return FieldError(
        "FieldValueNotSupported",
        path,
        f"Unsupported value: {_go_value(value)}: supported values: {values}",
    )


def _duplicate(path: str, value: Any) -> FieldError:
    return FieldError("FieldValueDuplicate", path, f"Duplicate value: {_go_value(value)}")


def _too_many(path: str, actual: int, limit: int) -> FieldError:
    return FieldError(
        "FieldValueTooMany", path, f"Too many: {actual}: must have at most {limit} items"
    )


def _too_long(path: str, limit: int) -> FieldError:
    return FieldError("FieldValueTooLong", path, f"Too long: may not be more than {limit} bytes")


def _nonnegative(value: Any, path: str) -> list[FieldError]:
    if isinstance(value, int) and value < 0:
        return [_invalid(path, value, "must be greater than or equal to 0")]
    return []


def invalid_error(name: str, errors: list[FieldError], kind: str = "Job") -> ApiError:
    """The 422 ``Invalid`` StatusError of apimachinery ``NewInvalid`` for ``Job.batch``."""
    messages: list[str] = []
    for err in errors:
        # ToAggregate() drops repeated messages; the causes keep every entry.
        if str(err) not in messages:
            messages.append(str(err))
    aggregate = messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"
    qualified = f"{kind}.batch"
    return ApiError(
        422,
        "Invalid",
        f'{qualified} "{name}" is invalid: {aggregate}',
        details={
            "name": name,
            "group": "batch",
            "kind": kind,
            "causes": [err.cause() for err in errors],
        },
    )


# --------------------------------------------------------------------------------- defaults


def default_job(job: dict[str, Any]) -> None:
    """``SetDefaults_Job`` (DEF) plus the scheme defaults of the pod template."""
    spec = job.setdefault("spec", {})
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
        spec["parallelism"] = 1
    if spec.get("parallelism") is None:
        spec["parallelism"] = 1
    if spec.get("backoffLimit") is None:
        spec["backoffLimit"] = MAX_INT32 if spec.get("backoffLimitPerIndex") is not None else 6
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("manualSelector", False)
    policy = spec.get("podFailurePolicy")
    if policy is not None:
        for rule in policy.get("rules") or []:
            for pattern in rule.get("onPodConditions") or []:
                if not pattern.get("status"):
                    pattern["status"] = "True"
    if spec.get("podReplacementPolicy") is None:
        spec["podReplacementPolicy"] = "Failed" if policy is not None else "TerminatingOrFailed"
    template = spec.setdefault("template", {})
    metadata = job.setdefault("metadata", {})
    if not metadata.get("labels"):
        # Copies the template labels *as the user sent them* (defaulting runs at decode time,
        # before the strategy adds the generated labels).
        labels = (template.get("metadata") or {}).get("labels")
        if labels:
            metadata["labels"] = dict(labels)
    defaults.default_pod_spec(template.setdefault("spec", {}))


def _generate_selector(job: dict[str, Any]) -> None:
    """Strategy ``generateSelector``: user-set label values are kept (validation rejects them)."""
    spec = job["spec"]
    if spec.get("manualSelector"):
        return
    name = job["metadata"].get("name", "")
    uid = job["metadata"].get("uid", "")
    template_meta = spec["template"].setdefault("metadata", {})
    labels = template_meta.setdefault("labels", {})
    for key in (LEGACY_JOB_NAME_LABEL, JOB_NAME_LABEL):
        labels.setdefault(key, name)
    for key in (LEGACY_CONTROLLER_UID_LABEL, CONTROLLER_UID_LABEL):
        labels.setdefault(key, uid)
    selector = spec.get("selector")
    if selector is None:
        selector = spec["selector"] = {}
    match_labels = selector.setdefault("matchLabels", {})
    match_labels.setdefault(CONTROLLER_UID_LABEL, uid)


# ------------------------------------------------------------------------------- validation


def _selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _validate_label_values(labels: dict[str, Any] | None, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    for value in (labels or {}).values():
        if not isinstance(value, str):
            continue
        if len(value) > 63:
            errors.append(_invalid(path, value, "must be no more than 63 characters"))
        if not _LABEL_VALUE.match(value):
            errors.append(_invalid(path, value, _LABEL_VALUE_MSG))
    return errors


def _validate_name(name: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if not name:
        return [_required("metadata.name", "name or generateName is required")]
    if len(name) > 253:
        errors.append(_invalid("metadata.name", name, "must be no more than 253 characters"))
    if not _DNS1123_SUBDOMAIN.match(name):
        errors.append(_invalid("metadata.name", name, _DNS1123_SUBDOMAIN_MSG))
    return errors


def _validate_generated_selector(job: dict[str, Any]) -> list[FieldError]:
    spec = job["spec"]
    if spec.get("manualSelector") or spec.get("selector") is None:
        return []
    errors: list[FieldError] = []
    uid = job["metadata"].get("uid", "")
    name = job["metadata"].get("name", "")
    if not uid:
        errors.append(_required("metadata.uid"))
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    expected = {
        LEGACY_CONTROLLER_UID_LABEL: uid,
        LEGACY_JOB_NAME_LABEL: name,
        CONTROLLER_UID_LABEL: uid,
        JOB_NAME_LABEL: name,
    }
    for key, value in expected.items():
        path = f"spec.template.metadata.labels[{key}]"
        if key not in labels:
            errors.append(_required(path))
        elif labels[key] != value:
            errors.append(_invalid(path, labels[key], f"must be '{value}'"))
    if not _selector_matches(spec.get("selector"), expected):
        errors.append(
            _invalid("spec.selector", spec.get("selector"), "`selector` not auto-generated")
        )
    return errors


def _validate_exit_codes(
    req: dict[str, Any], path: str, container_names: set[str]
) -> list[FieldError]:
    errors: list[FieldError] = []
    operator = req.get("operator")
    if not operator:
        errors.append(_required(f"{path}.operator", 'valid values: ["In" "NotIn"]'))
    elif operator not in ("In", "NotIn"):
        errors.append(_not_supported(f"{path}.operator", operator, ["In", "NotIn"]))
    name = req.get("containerName")
    if name is not None and name not in container_names:
        errors.append(
            _invalid(
                f"{path}.containerName",
                name,
                "must be one of the container or initContainer names in the pod template",
            )
        )
    values = req.get("values") or []
    if not values:
        errors.append(_invalid(f"{path}.values", values, "at least one value is required"))
    elif len(values) > MAX_ON_EXIT_CODES_VALUES:
        errors.append(_too_many(f"{path}.values", len(values), MAX_ON_EXIT_CODES_VALUES))
    seen: set[int] = set()
    ordered = True
    for j, value in enumerate(values):
        if operator == "In" and value == 0:
            errors.append(
                _invalid(f"{path}.values[{j}]", value, "must not be 0 for the In operator")
            )
        if value in seen:
            errors.append(_duplicate(f"{path}.values[{j}]", value))
        seen.add(value)
        if j > 0 and values[j - 1] > value:
            ordered = False
    if not ordered:
        errors.append(_invalid(f"{path}.values", values, "must be ordered"))
    return errors


def _validate_pod_failure_policy(spec: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    path = "spec.podFailurePolicy.rules"
    rules = spec["podFailurePolicy"].get("rules") or []
    if len(rules) > MAX_POD_FAILURE_POLICY_RULES:
        errors.append(_too_many(path, len(rules), MAX_POD_FAILURE_POLICY_RULES))
    pod_spec = spec.get("template", {}).get("spec", {})
    names = {c.get("name") for c in pod_spec.get("containers") or []}
    names |= {c.get("name") for c in pod_spec.get("initContainers") or []}
    actions = ["Count", "FailIndex", "FailJob", "Ignore"]
    for i, rule in enumerate(rules):
        rule_path = f"{path}[{i}]"
        action = rule.get("action")
        if not action:
            errors.append(
                _required(
                    f"{rule_path}.action", 'valid values: ["Count" "FailIndex" "FailJob" "Ignore"]'
                )
            )
        elif action == "FailIndex":
            if spec.get("backoffLimitPerIndex") is None:
                errors.append(
                    _invalid(
                        f"{rule_path}.action", action, "requires the backoffLimitPerIndex to be set"
                    )
                )
        elif action not in actions:
            errors.append(_not_supported(f"{rule_path}.action", action, actions))
        on_exit = rule.get("onExitCodes")
        on_conditions = rule.get("onPodConditions") or []
        if on_exit is not None:
            errors.extend(_validate_exit_codes(on_exit, f"{rule_path}.onExitCodes", names))
        if on_conditions:
            cond_path = f"{rule_path}.onPodConditions"
            if len(on_conditions) > MAX_ON_POD_CONDITIONS:
                errors.append(_too_many(cond_path, len(on_conditions), MAX_ON_POD_CONDITIONS))
            for j, pattern in enumerate(on_conditions):
                ctype = pattern.get("type") or ""
                if not _QUALIFIED_NAME_PART.match(ctype.rsplit("/", 1)[-1]):
                    errors.append(
                        _invalid(
                            f"{cond_path}[{j}].type",
                            ctype,
                            "name part must consist of "
                            "alphanumeric characters, '-', '_' or '.', and must start and "
                            "end with an alphanumeric character",
                        )
                    )
                status = pattern.get("status")
                if status not in ("False", "True", "Unknown"):
                    errors.append(
                        _not_supported(
                            f"{cond_path}[{j}].status", status, ["False", "True", "Unknown"]
                        )
                    )
        if on_exit is not None and on_conditions:
            errors.append(
                _invalid(
                    rule_path,
                    _OMIT,
                    "specifying both OnExitCodes and OnPodConditions is not supported",
                )
            )
        if on_exit is None and not on_conditions:
            errors.append(
                _invalid(
                    rule_path,
                    _OMIT,
                    "specifying one of OnExitCodes and OnPodConditions is required",
                )
            )
    return errors


def _validate_success_policy(spec: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    path = "spec.successPolicy.rules"
    rules = spec["successPolicy"].get("rules") or []
    if not rules:
        errors.append(
            _required(
                path, "at least one rules must be specified when the successPolicy is specified"
            )
        )
    if len(rules) > MAX_SUCCESS_POLICY_RULES:
        errors.append(_too_many(path, len(rules), MAX_SUCCESS_POLICY_RULES))
    completions = spec.get("completions") or 0
    for i, rule in enumerate(rules):
        rule_path = f"{path}[{i}]"
        indexes = rule.get("succeededIndexes")
        count = rule.get("succeededCount")
        if indexes is None and count is None:
            errors.append(
                _required(
                    rule_path,
                    "at least one of succeededCount or succeededIndexes must be specified",
                )
            )
        total = 0
        if indexes is not None:
            if len(indexes) > MAX_SUCCEEDED_INDEXES_LENGTH:
                errors.append(
                    _too_long(f"{rule_path}.succeededIndexes", MAX_SUCCEEDED_INDEXES_LENGTH)
                )
            try:
                total = validate_indexes(indexes, completions)
            except IndexFormatError as exc:
                errors.append(
                    _invalid(
                        f"{rule_path}.succeededIndexes",
                        indexes,
                        f"error parsing succeededIndexes: {exc}",
                    )
                )
        if count is not None:
            count_path = f"{rule_path}.succeededCount"
            errors.extend(_nonnegative(count, count_path))
            if count > completions:
                errors.append(
                    _invalid(
                        count_path,
                        count,
                        f"must be less than or equal to {completions} "
                        "(the number of specified completions)",
                    )
                )
            if indexes is not None and count > total:
                errors.append(
                    _invalid(
                        count_path,
                        count,
                        f"must be less than or equal to {total} "
                        "(the number of indexes in the specified succeededIndexes field)",
                    )
                )
    return errors


def _validate_spec(spec: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    for key in (
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
        "backoffLimitPerIndex",
    ):
        errors.extend(_nonnegative(spec.get(key), f"spec.{key}"))
    parallelism = spec.get("parallelism")
    completions = spec.get("completions")
    per_index = spec.get("backoffLimitPerIndex")
    max_failed = spec.get("maxFailedIndexes")
    if max_failed is not None:
        errors.extend(_nonnegative(max_failed, "spec.maxFailedIndexes"))
        if per_index is None:
            errors.append(
                _required("spec.backoffLimitPerIndex", "when maxFailedIndexes is specified")
            )
    managed_by = spec.get("managedBy")
    if managed_by is not None:
        if "/" not in managed_by or managed_by.startswith("/"):
            errors.append(
                _invalid(
                    "spec.managedBy",
                    managed_by,
                    'must be a domain-prefixed path (such as "acme.io/foo")',
                )
            )
        if len(managed_by) > MAX_MANAGED_BY_LENGTH:
            errors.append(_too_long("spec.managedBy", MAX_MANAGED_BY_LENGTH))
    mode = spec.get("completionMode")
    if mode not in (None, "NonIndexed", "Indexed"):
        errors.append(_not_supported("spec.completionMode", mode, ["NonIndexed", "Indexed"]))
    if mode == "Indexed":
        if completions is None:
            errors.append(_required("spec.completions", "when completion mode is Indexed"))
        if parallelism is not None and parallelism > MAX_PARALLELISM_INDEXED:
            errors.append(
                _invalid(
                    "spec.parallelism",
                    parallelism,
                    f"must be less than or equal to {MAX_PARALLELISM_INDEXED} "
                    "when completion mode is Indexed",
                )
            )
        if completions is not None and max_failed is not None and max_failed > completions:
            errors.append(
                _invalid(
                    "spec.maxFailedIndexes", max_failed, "must be less than or equal to completions"
                )
            )
        if max_failed is not None and max_failed > MAX_FAILED_INDEXES:
            errors.append(
                _invalid(
                    "spec.maxFailedIndexes",
                    max_failed,
                    f"must be less than or equal to {MAX_FAILED_INDEXES}",
                )
            )
        if (
            completions is not None
            and completions > COMPLETIONS_SOFT_LIMIT
            and per_index is not None
        ):
            if max_failed is None:
                errors.append(
                    _required(
                        "spec.maxFailedIndexes",
                        f"must be specified when completions is above {COMPLETIONS_SOFT_LIMIT}",
                    )
                )
            if parallelism is not None and parallelism > PARALLELISM_LIMIT_HIGH_COMPLETIONS:
                errors.append(
                    _invalid(
                        "spec.parallelism",
                        parallelism,
                        f"must be less than or equal to {PARALLELISM_LIMIT_HIGH_COMPLETIONS} "
                        f"when completions are above {COMPLETIONS_SOFT_LIMIT} "
                        "and used with backoff limit per index",
                    )
                )
            if max_failed is not None and max_failed > MAX_FAILED_INDEXES_HIGH_COMPLETIONS:
                errors.append(
                    _invalid(
                        "spec.maxFailedIndexes",
                        max_failed,
                        f"must be less than or equal to {MAX_FAILED_INDEXES_HIGH_COMPLETIONS} "
                        f"when completions are above {COMPLETIONS_SOFT_LIMIT} "
                        "and used with backoff limit per index",
                    )
                )
    else:
        if per_index is not None:
            errors.append(
                _invalid("spec.backoffLimitPerIndex", per_index, "requires indexed completion mode")
            )
        if max_failed is not None:
            errors.append(
                _invalid("spec.maxFailedIndexes", max_failed, "requires indexed completion mode")
            )
    if spec.get("podFailurePolicy") is not None:
        errors.extend(_validate_pod_failure_policy(spec))
    if spec.get("successPolicy") is not None:
        if mode != "Indexed":
            errors.append(
                _invalid(
                    "spec.successPolicy", spec["successPolicy"], "requires indexed completion mode"
                )
            )
        else:
            errors.extend(_validate_success_policy(spec))
    replacement = spec.get("podReplacementPolicy")
    if replacement is not None:
        if spec.get("podFailurePolicy") is not None:
            if replacement != "Failed":
                errors.append(_not_supported("spec.podReplacementPolicy", replacement, ["Failed"]))
        elif replacement not in ("Failed", "TerminatingOrFailed"):
            errors.append(
                _not_supported(
                    "spec.podReplacementPolicy", replacement, ["Failed", "TerminatingOrFailed"]
                )
            )
    template = spec.get("template") or {}
    errors.extend(
        _validate_label_values(
            (template.get("metadata") or {}).get("labels"), "spec.template.labels"
        )
    )
    restart = (template.get("spec") or {}).get("restartPolicy", "")
    restart_path = "spec.template.spec.restartPolicy"
    if restart in ("Always", ""):
        errors.append(_required(restart_path, 'valid values: "OnFailure", "Never"'))
    elif restart not in ("OnFailure", "Never"):
        errors.append(_not_supported(restart_path, restart, ["OnFailure", "Never"]))
    elif spec.get("podFailurePolicy") is not None and restart != "Never":
        errors.append(
            _invalid(
                restart_path,
                restart,
                'only "Never" is supported when podFailurePolicy is specified',
            )
        )
    if spec.get("selector") is None:
        errors.append(_required("spec.selector"))
    elif not _selector_matches(
        spec.get("selector"), (template.get("metadata") or {}).get("labels") or {}
    ):
        errors.append(
            _invalid(
                "spec.template.metadata.labels",
                (template.get("metadata") or {}).get("labels"),
                "`selector` does not match template `labels`",
            )
        )
    return errors


def validate_job(job: dict[str, Any]) -> list[FieldError]:
    """``ValidateJob`` of VAL (object meta parts that matter for Jobs, generated selector, spec)."""
    metadata = job.get("metadata") or {}
    name = metadata.get("name", "")
    errors = _validate_name(name)
    errors.extend(_validate_label_values(metadata.get("labels"), "metadata.labels"))
    errors.extend(_validate_generated_selector(job))
    spec = job.get("spec") or {}
    errors.extend(_validate_spec(spec))
    completions = spec.get("completions")
    if spec.get("completionMode") == "Indexed" and completions:
        # The controller names pod hostnames "<job>-<index>"; reject names it could not use.
        hostname = f"{name}-{completions - 1}"
        if len(hostname) > 63 or not _DNS1123_LABEL.match(hostname):
            errors.append(
                _invalid(
                    "metadata.name",
                    name,
                    f"will not able to create pod with invalid DNS label: {hostname}",
                )
            )
    return errors


_SCHEDULING_TEMPLATE_FIELDS = ("nodeSelector", "tolerations", "schedulingGates")


def _template_without_scheduling(template: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(template)
    meta = result.setdefault("metadata", {})
    meta.pop("labels", None)
    meta.pop("annotations", None)
    pod_spec = result.setdefault("spec", {})
    for key in _SCHEDULING_TEMPLATE_FIELDS:
        pod_spec.pop(key, None)
    affinity = pod_spec.get("affinity")
    if affinity is not None:
        affinity.pop("nodeAffinity", None)
        if not affinity:
            pod_spec.pop("affinity")
    if not meta:
        result.pop("metadata")
    return result


def _immutable(new: Any, old: Any, path: str) -> list[FieldError]:
    if new != old:
        return [_invalid(path, new, "field is immutable")]
    return []


def validate_job_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    """``ValidateJobSpecUpdate`` of VAL (plus the strategy's scheduling-directive exception)."""
    spec, old_spec = new.get("spec") or {}, old.get("spec") or {}
    errors: list[FieldError] = []
    if spec.get("completionMode") == "Indexed":
        # Completions of an Indexed Job are elastic, but only together with parallelism.
        if (
            spec.get("completions") != old_spec.get("completions")
            and spec.get("completions") is not None
            and spec.get("completions") != spec.get("parallelism")
        ):
            errors.append(
                _invalid(
                    "spec.completions",
                    spec.get("completions"),
                    "can only be modified in tandem with spec.parallelism",
                )
            )
    else:
        errors.extend(
            _immutable(spec.get("completions"), old_spec.get("completions"), "spec.completions")
        )
    errors.extend(_immutable(spec.get("selector"), old_spec.get("selector"), "spec.selector"))
    template, old_template = spec.get("template") or {}, old_spec.get("template") or {}
    suspended = bool(old_spec.get("suspend"))
    never_started = not (old.get("status") or {}).get("startTime")
    if suspended and never_started:
        # STRAT AllowMutableSchedulingDirectives: node affinity, nodeSelector, tolerations,
        # labels, annotations and scheduling gates may change before the Job ever ran.
        if _template_without_scheduling(template) != _template_without_scheduling(old_template):
            errors.append(_invalid("spec.template", template, "field is immutable"))
    else:
        errors.extend(_immutable(template, old_template, "spec.template"))
    for key in (
        "completionMode",
        "podFailurePolicy",
        "backoffLimitPerIndex",
        "managedBy",
        "successPolicy",
    ):
        errors.extend(_immutable(spec.get(key), old_spec.get(key), f"spec.{key}"))
    return errors


# -------------------------------------------------------------------------------- admission


def admit_job(op: str, old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Default, complete and validate a Job; raise the server's 422 when it is invalid.

    ``new`` must already carry its final ``metadata.name`` (generateName resolved) and
    ``metadata.uid`` on CREATE, because the generated selector and the Indexed hostname rule
    depend on them. The store keeps ``status`` and bumps ``generation`` on updates.
    """
    job = copy.deepcopy(new)
    metadata = job.setdefault("metadata", {})
    default_job(job)
    if op == "CREATE" or old is None:
        job["status"] = {}
        _generate_selector(job)
        if not metadata.get("labels"):
            # What a read back from storage shows: decoding re-runs the label defaulting, now
            # with the generated template labels present.
            labels = job["spec"]["template"].get("metadata", {}).get("labels")
            if labels:
                metadata["labels"] = dict(labels)
        errors = validate_job(job)
    else:
        errors = validate_job(job) + validate_job_update(job, old)
    if errors:
        raise invalid_error(metadata.get("name", ""), errors)
    return job
