"""The backends the behaviour suite runs against. Each test gets a factory that builds an
executor on every backend in turn; the kubernetes backend (kubesim) joins here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from k8s_executor import KubernetesExecutor

BACKENDS = ["local"]

ExecutorFactory = Callable[..., KubernetesExecutor]


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_executor(backend_name: str) -> Iterator[ExecutorFactory]:
    """Build executors on the current backend; shut them all down after the test."""
    made: list[KubernetesExecutor] = []

    def factory(*args: Any, **kwargs: Any) -> KubernetesExecutor:
        kwargs.setdefault("backend", backend_name)
        executor = KubernetesExecutor(*args, **kwargs)
        made.append(executor)
        return executor

    yield factory
    for executor in made:
        executor.shutdown(wait=True, cancel_futures=True)
