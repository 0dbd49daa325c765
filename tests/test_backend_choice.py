"""How the backend is chosen: argument, then K8S_EXECUTOR_BACKEND, then a configured
cluster; with none of them, an error that says how to choose (no silent fallback)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import ConfigError, KubernetesExecutor
from tests import helpers
from tests.kube_helpers import kubesim_kwargs


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("K8S_EXECUTOR_BACKEND", "KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config


@pytest.mark.usefixtures("no_cluster")
def test_no_backend_no_cluster_says_how_to_choose() -> None:
    with pytest.raises(ConfigError) as info:
        KubernetesExecutor()
    message = str(info.value)
    assert "backend='local'" in message
    assert "K8S_EXECUTOR_BACKEND=local|kubernetes" in message


@pytest.mark.usefixtures("no_cluster")
def test_environment_variable_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K8S_EXECUTOR_BACKEND", "local")
    with KubernetesExecutor() as ex:
        assert ex.submit(helpers.square, 3).result(timeout=60) == 9


@pytest.mark.usefixtures("no_cluster")
def test_argument_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K8S_EXECUTOR_BACKEND", "no-such-backend")
    with KubernetesExecutor(backend="local") as ex:
        assert ex.submit(helpers.square, 4).result(timeout=60) == 16


@pytest.mark.usefixtures("no_cluster")
def test_unknown_backend_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K8S_EXECUTOR_BACKEND", "no-such-backend")
    with pytest.raises(ConfigError, match="backend='no-such-backend' is not allowed"):
        KubernetesExecutor()


@pytest.mark.usefixtures("no_cluster")
def test_storage_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("K8S_EXECUTOR_STORAGE", str(tmp_path / "store"))
    with KubernetesExecutor(backend="local") as ex:
        ex.submit(helpers.square, 1).result(timeout=60)
        assert (tmp_path / "store" / ex.run_id).is_dir()
    assert not (tmp_path / "store" / ex.run_id).exists()


def test_workers_interpreter_from_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kubesim: Any
) -> None:
    kw = kubesim_kwargs(kubesim, tmp_path / "storage")
    del kw["python"]
    monkeypatch.setenv("K8S_EXECUTOR_PYTHON", sys.executable)
    with KubernetesExecutor(**kw) as ex:
        assert ex.submit(helpers.square, 6).result(timeout=60) == 36
        (pod,) = kubesim.store.list("pods", "default")[0]
    assert pod["spec"]["containers"][0]["command"][0] == sys.executable
