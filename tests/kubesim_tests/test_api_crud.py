"""CRUD through the official client: every verb, every resource, and the exact Status bodies."""

from __future__ import annotations

import http.client
import json
import re
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim_tests.conftest import batch_api, body_of, core_api, job_manifest, pod_manifest

GENERATED = re.compile(r"^[bcdfghjklmnpqrstvwxz2456789]{5}$")


def status_of(exc: ApiException) -> dict[str, Any]:
    body = body_of(exc)
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == exc.status
    return body


def raw(
    api: Any,
    method: str,
    path: str,
    body: Any = None,
    *,
    content_type: str = "application/json",
    query: list[tuple[str, str]] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """Send one request with the client's server and credentials, but any body and content type
    (the client itself refuses to send some of the malformed requests tested here)."""
    configuration = api.configuration
    url = urlsplit(configuration.host)
    request_headers = {
        "Content-Type": content_type,
        "Accept": "application/json",
        "Authorization": configuration.api_key["BearerToken"],  # from the kubeconfig
    }
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    target = path + ("?" + urlencode(query) if query else "")
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        connection.request(method, target, body=data, headers=request_headers)
        response = connection.getresponse()
        payload = response.read()
        headers: dict[str, str] = {}
        for key, value in response.getheaders():  # repeated headers (Warning) joined by ", "
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return response.status, json.loads(payload) if payload else None, headers
    finally:
        connection.close()


# --- Jobs ------------------------------------------------------------------------------------


def test_job_create_get_list_with_defaults_and_generated_name(batch: Any) -> None:
    created = batch.create_namespaced_job("default", job_manifest(None))
    name = created.metadata.name
    assert name.startswith("job-")
    assert GENERATED.match(name[len("job-") :])
    assert created.metadata.generation == 1
    assert created.metadata.uid
    assert created.metadata.resource_version
    assert created.metadata.creation_timestamp is not None
    assert created.spec.template.spec.termination_grace_period_seconds == 30
    assert (
        created.spec.template.spec.containers[0].termination_message_path == "/dev/termination-log"
    )

    fetched = batch.read_namespaced_job(name, "default")
    assert fetched.metadata.uid == created.metadata.uid
    listed = batch.list_namespaced_job("default")
    assert [j.metadata.name for j in listed.items] == [name]
    assert int(listed.metadata.resource_version) >= int(created.metadata.resource_version)
    everywhere = batch.list_job_for_all_namespaces()
    assert [j.metadata.name for j in everywhere.items] == [name]


def test_generate_name_prefix_is_cut_to_58_characters(batch: Any) -> None:
    manifest = job_manifest(None)
    manifest["metadata"]["generateName"] = "a" * 62 + "-"
    created = batch.create_namespaced_job("default", manifest)
    assert created.metadata.name[:58] == "a" * 58
    assert GENERATED.match(created.metadata.name[58:])
    assert len(created.metadata.name) == 63


def test_create_existing_name_is_409_already_exists(batch: Any) -> None:
    batch.create_namespaced_job("default", job_manifest("dup"))
    with pytest.raises(ApiException) as caught:
        batch.create_namespaced_job("default", job_manifest("dup"))
    body = status_of(caught.value)
    assert caught.value.status == 409
    assert body["reason"] == "AlreadyExists"
    assert body["message"] == 'jobs.batch "dup" already exists'
    assert body["details"] == {"name": "dup", "group": "batch", "kind": "jobs"}


@pytest.mark.parametrize(
    ("call", "message", "details"),
    [
        ("job", 'jobs.batch "nope" not found', {"name": "nope", "group": "batch", "kind": "jobs"}),
        ("pod", 'pods "nope" not found', {"name": "nope", "kind": "pods"}),
        ("secret", 'secrets "nope" not found', {"name": "nope", "kind": "secrets"}),
        ("configmap", 'configmaps "nope" not found', {"name": "nope", "kind": "configmaps"}),
        ("namespace", 'namespaces "nope" not found', {"name": "nope", "kind": "namespaces"}),
    ],
)
def test_not_found_bodies(api: Any, call: str, message: str, details: dict[str, str]) -> None:
    core = core_api(api)
    calls = {
        "job": lambda: batch_api(api).read_namespaced_job("nope", "default"),
        "pod": lambda: core.read_namespaced_pod("nope", "default"),
        "secret": lambda: core.read_namespaced_secret("nope", "default"),
        "configmap": lambda: core.read_namespaced_config_map("nope", "default"),
        "namespace": lambda: core.read_namespace("nope"),
    }
    with pytest.raises(ApiException) as caught:
        calls[call]()
    body = status_of(caught.value)
    assert caught.value.status == 404
    assert body["reason"] == "NotFound"
    assert body["message"] == message
    assert body["details"] == details


def test_create_in_missing_namespace_is_404(batch: Any) -> None:
    with pytest.raises(ApiException) as caught:
        batch.create_namespaced_job("elsewhere", job_manifest("j"))
    assert caught.value.status == 404
    assert status_of(caught.value)["message"] == 'namespaces "elsewhere" not found'


def test_replace_with_stale_resource_version_is_409_conflict(batch: Any) -> None:
    job = batch.create_namespaced_job("default", job_manifest("j", parallelism=1))
    job.spec.parallelism = 2
    updated = batch.replace_namespaced_job("j", "default", job)
    assert updated.spec.parallelism == 2
    assert updated.metadata.generation == 2
    assert updated.metadata.resource_version != job.metadata.resource_version
    job.spec.parallelism = 3  # still carries the old resourceVersion
    with pytest.raises(ApiException) as caught:
        batch.replace_namespaced_job("j", "default", job)
    body = status_of(caught.value)
    assert caught.value.status == 409
    assert body["reason"] == "Conflict"
    assert body["message"] == (
        'Operation cannot be fulfilled on jobs.batch "j": the object has been modified; please '
        "apply your changes to the latest version and try again"
    )


def test_replace_keeps_status_and_status_subresource_keeps_spec(batch: Any) -> None:
    batch.create_namespaced_job("default", job_manifest("j", parallelism=1))
    current = batch.read_namespaced_job("j", "default")
    current.status = client.V1JobStatus(active=5)
    replaced = batch.replace_namespaced_job("j", "default", current)
    assert replaced.status.active is None  # main resource ignores .status

    current = batch.read_namespaced_job("j", "default")
    current.status = client.V1JobStatus(active=1)
    current.spec.parallelism = 7
    after = batch.replace_namespaced_job_status("j", "default", current)
    assert after.status.active == 1
    assert after.spec.parallelism == 1  # /status ignores .spec
    assert after.metadata.generation == 1


def test_job_patches_of_all_three_types(batch: Any) -> None:
    batch.create_namespaced_job("default", job_manifest("j", parallelism=1))
    # A dict is sent as a strategic merge patch by the client.
    patched = batch.patch_namespaced_job("j", "default", {"metadata": {"labels": {"a": "1"}}})
    assert patched.metadata.labels["a"] == "1"
    assert patched.metadata.labels["job-name"] == "j"  # merged, not replaced
    patched = batch.patch_namespaced_job(
        "j",
        "default",
        {"metadata": {"labels": {"a": None, "b": "2"}}},
        _content_type="application/merge-patch+json",
    )
    assert "a" not in patched.metadata.labels
    assert patched.metadata.labels["b"] == "2"
    patched = batch.patch_namespaced_job(
        "j", "default", [{"op": "replace", "path": "/spec/parallelism", "value": 0}]
    )
    assert patched.spec.parallelism == 0
    assert patched.metadata.generation == 2
    # A failing JSON-patch "test" operation is 422.
    with pytest.raises(ApiException) as caught:
        batch.patch_namespaced_job(
            "j", "default", [{"op": "test", "path": "/spec/parallelism", "value": 5}]
        )
    assert caught.value.status == 422


def test_patch_status_subresource(batch: Any) -> None:
    batch.create_namespaced_job("default", job_manifest("j"))
    patched = batch.patch_namespaced_job_status(
        "j", "default", {"status": {"active": 2}, "spec": {"parallelism": 9}}
    )
    assert patched.status.active == 2
    assert patched.spec.parallelism == 1


def test_strategic_merge_merges_containers_by_name(core: Any) -> None:
    core.create_namespaced_pod("default", pod_manifest("p"))
    patched = core.patch_namespaced_pod(
        "p", "default", {"spec": {"containers": [{"name": "main", "image": "busybox:1.37"}]}}
    )
    container = patched.spec.containers[0]
    assert container.image == "busybox:1.37"
    assert container.command == ["true"]  # kept: the list merged by name


def test_patch_with_pinned_stale_resource_version_conflicts(batch: Any) -> None:
    job = batch.create_namespaced_job("default", job_manifest("j"))
    batch.patch_namespaced_job("j", "default", {"metadata": {"labels": {"x": "1"}}})
    with pytest.raises(ApiException) as caught:
        batch.patch_namespaced_job(
            "j",
            "default",
            {"metadata": {"labels": {"x": "2"}, "resourceVersion": job.metadata.resource_version}},
        )
    assert caught.value.status == 409
    assert status_of(caught.value)["reason"] == "Conflict"


def test_unknown_patch_type_is_415(api: Any, batch: Any) -> None:
    batch.create_namespaced_job("default", job_manifest("j"))
    code, body, _ = raw(
        api,
        "PATCH",
        "/apis/batch/v1/namespaces/default/jobs/j",
        {"metadata": {}},
        content_type="application/xml",
    )
    assert code == 415
    assert body["reason"] == "UnsupportedMediaType"
    assert body["message"].startswith("the body of the request was in an unknown format")


def test_method_not_allowed_is_405(api: Any) -> None:
    code, body, _ = raw(api, "POST", "/apis/batch/v1/namespaces/default/jobs/j", {})
    assert code == 405
    assert body["reason"] == "MethodNotAllowed"
    code, body, _ = raw(api, "PUT", "/api/v1/namespaces/default/pods", {})
    assert code == 405


def test_unknown_path_is_404(api: Any) -> None:
    code, body, _ = raw(api, "GET", "/apis/batch/v1/namespaces/default/cronjobs")
    assert code == 404
    assert body["message"] == "the server could not find the requested resource"


def test_name_mismatch_on_replace_is_400(api: Any, batch: Any) -> None:
    job = batch.create_namespaced_job("default", job_manifest("j"))
    body = api.sanitize_for_serialization(job)
    body["metadata"]["name"] = "other"
    code, status, _ = raw(api, "PUT", "/apis/batch/v1/namespaces/default/jobs/j", body)
    assert code == 400
    assert (
        status["message"] == "the name of the object (other) does not match the name on the URL (j)"
    )


def test_namespace_mismatch_on_create_is_400(api: Any) -> None:
    manifest = job_manifest("j")
    manifest["metadata"]["namespace"] = "other"
    code, status, _ = raw(api, "POST", "/apis/batch/v1/namespaces/default/jobs", manifest)
    assert code == 400
    assert status["message"] == (
        "the namespace of the provided object does not match the namespace sent on the request"
    )


def test_missing_name_is_422(api: Any) -> None:
    manifest = job_manifest("x")
    del manifest["metadata"]["name"]
    code, status, _ = raw(api, "POST", "/apis/batch/v1/namespaces/default/jobs", manifest)
    assert code == 422
    assert status["reason"] == "Invalid"
    assert status["details"]["causes"] == [
        {
            "reason": "FieldValueRequired",
            "message": "Required value: name or generateName is required",
            "field": "metadata.name",
        }
    ]


def test_dry_run_create_stores_nothing(batch: Any) -> None:
    created = batch.create_namespaced_job("default", job_manifest("dry"), dry_run="All")
    assert created.metadata.name == "dry"
    assert batch.list_namespaced_job("default").items == []


# --- deletion --------------------------------------------------------------------------------


def _owned_pod(name: str, job: Any) -> dict[str, Any]:
    pod = pod_manifest(name, node="kubesim-node")
    pod["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": job.metadata.name,
            "uid": job.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    return pod


def test_job_delete_defaults_to_orphan(batch: Any, core: Any) -> None:
    job = batch.create_namespaced_job("default", job_manifest("j"))
    core.create_namespaced_pod("default", _owned_pod("p", job))
    status = batch.delete_namespaced_job("j", "default")
    assert status["status"] == "Success"
    assert status["details"]["uid"] == job.metadata.uid
    with pytest.raises(ApiException):
        batch.read_namespaced_job("j", "default")
    pod = core.read_namespaced_pod("p", "default")
    assert pod.metadata.owner_references is None  # orphaned, still there


def test_job_delete_background_removes_job_at_once(batch: Any) -> None:
    batch.create_namespaced_job("default", job_manifest("j"))
    batch.delete_namespaced_job("j", "default", propagation_policy="Background")
    assert batch.list_namespaced_job("default").items == []


def test_job_delete_foreground_keeps_job_with_finalizer(api: Any, batch: Any) -> None:
    batch.create_namespaced_job("default", job_manifest("j"))
    code, body, _ = raw(
        api,
        "DELETE",
        "/apis/batch/v1/namespaces/default/jobs/j",
        {"propagationPolicy": "Foreground"},
    )
    assert code == 202  # accepted: deletion pending on a finalizer
    assert body["kind"] == "Job"
    job = batch.read_namespaced_job("j", "default")
    assert job.metadata.deletion_timestamp is not None
    assert job.metadata.finalizers == ["foregroundDeletion"]
    # Removing the finalizer (what the garbage collector does) completes the deletion.
    batch.patch_namespaced_job(
        "j",
        "default",
        {"metadata": {"finalizers": None}},
        _content_type="application/merge-patch+json",
    )
    assert batch.list_namespaced_job("default").items == []


def test_delete_with_query_parameters(api: Any, batch: Any) -> None:
    batch.create_namespaced_job("default", job_manifest("j"))
    code, _, _ = raw(
        api,
        "DELETE",
        "/apis/batch/v1/namespaces/default/jobs/j",
        query=[("propagationPolicy", "Foreground")],
    )
    assert code == 202
    assert batch.read_namespaced_job("j", "default").metadata.finalizers == ["foregroundDeletion"]


def test_invalid_propagation_policy_is_422(batch: Any) -> None:
    batch.create_namespaced_job("default", job_manifest("j"))
    with pytest.raises(ApiException) as caught:
        batch.delete_namespaced_job("j", "default", propagation_policy="Sometimes")
    assert caught.value.status == 422


def test_pod_delete_grace_rules(core: Any) -> None:
    # Unscheduled pod: grace forced to 0, gone at once; the deleted pod is returned.
    core.create_namespaced_pod("default", pod_manifest("unscheduled"))
    gone = core.delete_namespaced_pod("unscheduled", "default")
    assert gone.metadata.name == "unscheduled"  # pods answer a DELETE with the pod
    assert core.list_namespaced_pod("default").items == []

    # Scheduled pod: stays with deletionTimestamp and the default 30 s grace.
    core.create_namespaced_pod("default", pod_manifest("running", node="kubesim-node"))
    pending = core.delete_namespaced_pod("running", "default")
    assert pending.metadata.deletion_grace_period_seconds == 30
    pod = core.read_namespaced_pod("running", "default")
    assert pod.metadata.deletion_timestamp is not None
    # A second delete may shorten the grace; 0 removes it (no finalizers).
    core.delete_namespaced_pod("running", "default", grace_period_seconds=0)
    assert core.list_namespaced_pod("default").items == []


def test_pod_with_finalizer_stays_until_finalizer_removed(core: Any) -> None:
    manifest = pod_manifest(
        "p", node="kubesim-node", finalizers=["batch.kubernetes.io/job-tracking"]
    )
    core.create_namespaced_pod("default", manifest)
    core.delete_namespaced_pod("p", "default", grace_period_seconds=0)
    pod = core.read_namespaced_pod("p", "default")
    assert pod.metadata.deletion_timestamp is not None
    assert pod.metadata.deletion_grace_period_seconds == 0
    core.patch_namespaced_pod(
        "p",
        "default",
        [{"op": "remove", "path": "/metadata/finalizers"}],
    )
    assert core.list_namespaced_pod("default").items == []


def test_terminal_pod_delete_is_immediate(sim: Kubesim, core: Any) -> None:
    core.create_namespaced_pod("default", pod_manifest("done", node="kubesim-node"))
    sim.store.mutate("pods", "default", "done", lambda p: p["status"].update(phase="Succeeded"))
    core.delete_namespaced_pod("done", "default")
    assert core.list_namespaced_pod("default").items == []


def test_delete_precondition_uid_mismatch_is_409(batch: Any) -> None:
    batch.create_namespaced_job("default", job_manifest("j"))
    with pytest.raises(ApiException) as caught:
        batch.delete_namespaced_job(
            "j",
            "default",
            body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="other")),
        )
    assert caught.value.status == 409
    assert "Precondition failed: UID in precondition: other" in status_of(caught.value)["message"]


# --- pods, secrets, configmaps, namespaces, events -------------------------------------------


def test_pod_defaults_and_update_restrictions(core: Any) -> None:
    pod = core.create_namespaced_pod("default", pod_manifest("p"))
    assert pod.status.phase == "Pending"
    assert pod.status.qos_class == "BestEffort"
    assert pod.spec.scheduler_name == "default-scheduler"
    assert pod.spec.containers[0].image_pull_policy == "IfNotPresent"
    pod.spec.containers[0].command = ["false"]
    with pytest.raises(ApiException) as caught:
        core.replace_namespaced_pod("p", "default", pod)
    body = status_of(caught.value)
    assert caught.value.status == 422
    assert "pod updates may not change fields other than" in body["message"]
    # The image is one of the fields a pod update may change.
    pod = core.read_namespaced_pod("p", "default")
    pod.spec.containers[0].image = "busybox:1.37"
    assert (
        core.replace_namespaced_pod("p", "default", pod).spec.containers[0].image == "busybox:1.37"
    )


def test_secret_crud(core: Any) -> None:
    secret = core.create_namespaced_secret(
        "default",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "dg=="}},
    )
    assert secret.type == "Opaque"
    assert core.read_namespaced_secret("s", "default").data == {"k": "dg=="}
    secret.data["k2"] = "dw=="
    assert core.replace_namespaced_secret("s", "default", secret).data["k2"] == "dw=="
    patched = core.patch_namespaced_secret("s", "default", {"metadata": {"labels": {"a": "b"}}})
    assert patched.metadata.labels == {"a": "b"}
    assert [s.metadata.name for s in core.list_namespaced_secret("default").items] == ["s"]
    status = core.delete_namespaced_secret("s", "default")
    assert status["status"] == "Success"
    assert core.list_namespaced_secret("default").items == []


def test_immutable_configmap_rejects_data_change(core: Any) -> None:
    cm = core.create_namespaced_config_map(
        "default",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "c"},
            "data": {"a": "1"},
            "immutable": True,
        },
    )
    cm.data = {"a": "2"}
    with pytest.raises(ApiException) as caught:
        core.replace_namespaced_config_map("c", "default", cm)
    assert caught.value.status == 422
    assert "field is immutable when `immutable` is set" in status_of(caught.value)["message"]


def test_configmap_crud(core: Any) -> None:
    core.create_namespaced_config_map(
        "default",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}},
    )
    patched = core.patch_namespaced_config_map(
        "c", "default", {"data": {"b": "2"}}, _content_type="application/merge-patch+json"
    )
    assert patched.data == {"a": "1", "b": "2"}
    assert core.list_config_map_for_all_namespaces().items[0].metadata.name == "c"
    core.delete_namespaced_config_map("c", "default")
    with pytest.raises(ApiException):
        core.read_namespaced_config_map("c", "default")


def test_namespaces(core: Any, batch: Any) -> None:
    assert [n.metadata.name for n in core.list_namespace().items] == ["default"]
    ns = core.create_namespace(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}
    )
    assert ns.status.phase == "Active"
    assert ns.metadata.labels == {"kubernetes.io/metadata.name": "team"}
    batch.create_namespaced_job("team", job_manifest("j"))
    assert [j.metadata.namespace for j in batch.list_job_for_all_namespaces().items] == ["team"]
    core.delete_namespace("team")
    with pytest.raises(ApiException) as caught:
        core.read_namespace("team")
    assert caught.value.status == 404
    assert batch.list_job_for_all_namespaces().items == []
    with pytest.raises(ApiException) as caught:
        core.delete_namespace("default")
    assert caught.value.status == 403


def test_events_create_and_list_by_involved_object(core: Any) -> None:
    for name, kind in (("a", "Job"), ("b", "Pod")):
        core.create_namespaced_event(
            "default",
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": f"ev-{name}"},
                "involvedObject": {"kind": kind, "name": name, "namespace": "default"},
                "reason": "Created",
                "message": f"made {name}",
                "type": "Normal",
            },
        )
    events = core.list_namespaced_event("default", field_selector="involvedObject.kind=Job")
    assert [e.message for e in events.items] == ["made a"]
    assert len(core.list_event_for_all_namespaces().items) == 2


# --- selectors -------------------------------------------------------------------------------


def _labelled(core: Any) -> None:
    for name, labels in (
        ("a", {"app": "x", "tier": "web"}),
        ("b", {"app": "y", "tier": "db"}),
        ("c", {"app": "x"}),
    ):
        core.create_namespaced_pod("default", pod_manifest(name, labels=labels))


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=x", ["a", "c"]),
        ("app==x", ["a", "c"]),
        ("app!=x", ["b"]),
        ("app=x,tier=web", ["a"]),
        ("tier in (web,db)", ["a", "b"]),
        ("tier notin (web)", ["b", "c"]),
        ("tier", ["a", "b"]),
        ("!tier", ["c"]),
        ("app in (x),!tier", ["c"]),
        ("", ["a", "b", "c"]),
    ],
)
def test_label_selectors(core: Any, selector: str, expected: list[str]) -> None:
    _labelled(core)
    items = core.list_namespaced_pod("default", label_selector=selector).items
    assert [p.metadata.name for p in items] == expected


def test_malformed_label_selector_is_400(core: Any) -> None:
    with pytest.raises(ApiException) as caught:
        core.list_namespaced_pod("default", label_selector="tier in web")
    assert caught.value.status == 400
    assert status_of(caught.value)["reason"] == "BadRequest"


def test_pod_field_selectors(sim: Kubesim, core: Any) -> None:
    core.create_namespaced_pod("default", pod_manifest("a", node="n1"))
    core.create_namespaced_pod("default", pod_manifest("b"))
    sim.store.mutate("pods", "default", "a", lambda p: p["status"].update(phase="Running"))

    def by(selector: str) -> list[str]:
        pods = core.list_namespaced_pod("default", field_selector=selector).items
        return [p.metadata.name for p in pods]

    assert by("status.phase=Running") == ["a"]
    assert by("status.phase!=Running") == ["b"]
    assert by("spec.nodeName=n1") == ["a"]
    assert by("spec.nodeName=") == ["b"]
    assert by("metadata.name=b,metadata.namespace=default") == ["b"]
    assert by("spec.restartPolicy=Never") == ["a", "b"]
    assert by("spec.hostNetwork=false") == ["a", "b"]


def test_job_field_selectors(sim: Kubesim, batch: Any) -> None:
    batch.create_namespaced_job("default", job_manifest("a"))
    batch.create_namespaced_job("default", job_manifest("b"))
    sim.store.mutate("jobs", "default", "a", lambda j: j["status"].update(succeeded=1))

    def by(selector: str) -> list[str]:
        jobs = batch.list_namespaced_job("default", field_selector=selector).items
        return [j.metadata.name for j in jobs]

    assert by("status.successful=1") == ["a"]
    assert by("status.successful=0") == ["b"]
    assert by("metadata.name=b") == ["b"]


@pytest.mark.parametrize("resource", ["pods", "jobs", "secrets"])
def test_unsupported_field_selector_is_400(api: Any, resource: str) -> None:
    path = {
        "pods": "/api/v1/namespaces/default/pods",
        "jobs": "/apis/batch/v1/namespaces/default/jobs",
        "secrets": "/api/v1/namespaces/default/secrets",
    }[resource]
    code, body, _ = raw(api, "GET", path, query=[("fieldSelector", "spec.foo=bar")])
    assert code == 400
    assert body["reason"] == "BadRequest"
    assert body["message"] == "field label not supported: spec.foo"


def test_list_kind_and_pagination(api: Any, core: Any) -> None:
    for n in range(5):
        core.create_namespaced_config_map(
            "default", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{n}"}}
        )
    code, body, _ = raw(api, "GET", "/api/v1/namespaces/default/configmaps", query=[("limit", "2")])
    assert code == 200
    assert body["kind"] == "ConfigMapList"
    assert body["apiVersion"] == "v1"
    assert [i["metadata"]["name"] for i in body["items"]] == ["c0", "c1"]
    assert body["metadata"]["remainingItemCount"] == 3
    names = [i["metadata"]["name"] for i in body["items"]]
    token = body["metadata"]["continue"]
    while token:
        page = core.list_namespaced_config_map("default", limit=2, _continue=token)
        names += [i.metadata.name for i in page.items]
        token = page.metadata._continue
    assert names == [f"c{n}" for n in range(5)]
    code, body, _ = raw(api, "GET", "/apis/batch/v1/jobs")
    assert body["kind"] == "JobList"
    assert body["apiVersion"] == "batch/v1"
    assert body["metadata"]["resourceVersion"]


def test_server_side_apply_creates_then_merges(batch: Any) -> None:
    manifest = job_manifest("applied")
    created = batch.patch_namespaced_job(
        "applied",
        "default",
        manifest,
        field_manager="tests",
        _content_type="application/apply-patch+yaml",
    )
    assert created.metadata.uid
    manifest["metadata"]["labels"] = {"applied": "yes"}
    again = batch.patch_namespaced_job(
        "applied",
        "default",
        manifest,
        field_manager="tests",
        _content_type="application/apply-patch+yaml",
    )
    assert again.metadata.uid == created.metadata.uid
    assert again.metadata.labels["applied"] == "yes"


def test_apply_without_field_manager_is_400(batch: Any) -> None:
    with pytest.raises(ApiException) as caught:
        batch.patch_namespaced_job(
            "x", "default", job_manifest("x"), _content_type="application/apply-patch+yaml"
        )
    assert caught.value.status == 400
    assert "fieldManager is required for apply requests" in status_of(caught.value)["message"]


def test_delete_collection_by_label(core: Any) -> None:
    for name, team in (("a", "x"), ("b", "x"), ("c", "y")):
        core.create_namespaced_config_map(
            "default",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "labels": {"team": team}},
            },
        )
    core.delete_collection_namespaced_config_map("default", label_selector="team=x")
    assert [c.metadata.name for c in core.list_namespaced_config_map("default").items] == ["c"]
