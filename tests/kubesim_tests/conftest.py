"""Fixtures for kubesim's own tests: an API-only kubesim and official-client API objects."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.kubesim.kubeconfig import Kubesim


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        threading.Event().wait(delay)
        delay = min(delay * 2, 0.1)


# The client's generated signatures declare its model classes, yet it serialises the plain dicts
# these tests send (as real users do); its API objects are typed Any so that mypy checks the
# tests' own code rather than the generated annotations.
Watch: Any = watch.Watch


def batch_api(api: Any) -> Any:
    return client.BatchV1Api(api)


def core_api(api: Any) -> Any:
    return client.CoreV1Api(api)


def authz_api(api: Any) -> Any:
    return client.AuthorizationV1Api(api)


def body_of(exc: ApiException) -> dict[str, Any]:
    """The Status body of a failed call."""
    body: dict[str, Any] = json.loads(exc.body or "{}")
    return body


@pytest.fixture
def sim(kubesim_factory: Callable[..., Kubesim]) -> Kubesim:
    """kubesim without controllers or kubelet: objects only change when a test changes them."""
    return kubesim_factory(controllers=False, bookmark_interval=0.2)


@pytest.fixture
def api(sim: Kubesim) -> Iterator[Any]:
    with sim.api_client() as api_client:
        yield api_client


@pytest.fixture
def batch(api: Any) -> Any:
    return batch_api(api)


@pytest.fixture
def core(api: Any) -> Any:
    return core_api(api)


def job_manifest(name: str | None = None, **spec: Any) -> dict[str, Any]:
    """A minimal valid Job; ``spec`` entries override the defaults."""
    metadata: dict[str, Any] = {"name": name} if name else {"generateName": "job-"}
    body: dict[str, Any] = {
        "template": {
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "task", "image": "python:3.12-slim", "command": ["true"]}],
            }
        }
    }
    body.update(spec)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": body}


def pod_manifest(name: str, *, node: str | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "busybox:1.36", "command": ["true"]}],
    }
    if node:
        spec["nodeName"] = node
    metadata: dict[str, Any] = {"name": name}
    metadata.update(extra)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
