"""How the backend is chosen: argument, then K8S_EXECUTOR_BACKEND, then a configured
cluster; with none of them, an error that says how to choose (no silent fallback)."""

from __future__ import annotations

import shutil
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
    with pytest.raises(ConfigError, match="K8S_EXECUTOR_BACKEND='no-such-backend' is not allowed"):
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


@pytest.mark.usefixtures("no_cluster")
@pytest.mark.parametrize("named", ["kubeconfig", "context"])
def test_kubeconfig_or_context_chooses_kubernetes(named: str, kubesim: Any, tmp_path: Path) -> None:
    kw = kubesim_kwargs(kubesim, tmp_path / "storage")
    del kw["backend"]
    if named == "context":
        # The context names an entry of the kubeconfig at its default place: with none
        # there, the Kubernetes backend says so (rather than "no backend chosen").
        del kw["kubeconfig"]
        kw["context"] = "kubesim"
        with pytest.raises(ConfigError, match="no kubeconfig: ~/.kube/config does not exist"):
            KubernetesExecutor(**kw).submit(helpers.square, 2)
        (tmp_path / ".kube").mkdir()
        shutil.copy(kubesim.kubeconfig_path, tmp_path / ".kube" / "config")
    with KubernetesExecutor(**kw) as ex:
        assert ex.submit(helpers.square, 5).result(timeout=60) == 25
        assert kubesim.store.list("jobs", "default")[0]  # it ran as a Job


def test_the_cli_and_the_executor_agree_on_the_configuration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from k8s_executor._cluster import config_source

    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config_source() is None
    assert config_source(context="team") == "kubeconfig"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert config_source() == "in-cluster"  # a pod's service account
    assert config_source(kubeconfig=str(tmp_path / "kc")) == "kubeconfig"
    (tmp_path / ".kube").mkdir()
    (tmp_path / ".kube" / "config").write_text("{}")
    assert config_source() == "kubeconfig"  # a kubeconfig wins over the pod's account


@pytest.mark.usefixtures("no_cluster")
@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("kubeconfig", "", "expected the path of a kubeconfig file"),
        ("kubeconfig", 3, "expected the path of a kubeconfig file"),
        ("context", " ", "expected the name of a context in the kubeconfig"),
    ],
)
def test_bad_kubeconfig_or_context(keyword: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=f"{keyword}=.* is not allowed: {expected}"):
        KubernetesExecutor(**{keyword: value})  # type: ignore[arg-type]
