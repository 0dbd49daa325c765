"""_config: options + K8S_EXECUTOR_* environment → settings; the backend registry.

Nothing here starts a backend or touches a cluster: resolving only constructs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from k8s_executor import Batching, ConfigError, PodOptions, _config
from k8s_executor._config import Env, backend_class, known_backends, resolve
from k8s_executor.backends.local import LocalBackend


def test_registry_names_every_backend_lazily() -> None:
    assert sorted(known_backends) == ["kubernetes", "local"]
    assert backend_class("local") is LocalBackend
    # Choosing the local backend imports no Kubernetes code at all.
    code = (
        "import sys\n"
        "from k8s_executor import _config\n"
        "s = _config.resolve(backend='local')\n"
        "print(s.backend.name, 'k8s_executor.backends.kubernetes' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["local", "False"]


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"backend='ray' is not allowed: expected one of "):
        backend_class("ray")
    with pytest.raises(ConfigError, match=r"\['kubernetes', 'local'\] \(or a Backend instance\)"):
        resolve(backend="ray")


def test_a_backend_that_cannot_be_imported_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(
        known_backends,
        "dask",
        {"class": "k8s_executor_no_such_module:DaskBackend", "err": "pip install dask"},
    )
    with pytest.raises(ConfigError, match=r"backend='dask' cannot be used: pip install dask \("):
        backend_class("dask")


def test_env_is_read_when_asked_and_names_the_variable() -> None:
    env = Env({"K8S_EXECUTOR_STORAGE_OPTIONS": "[1]", "K8S_EXECUTOR_STORAGE": "s3://b/p"})
    assert env.storage == "s3://b/p"  # a bad variable fails only where it is used
    with pytest.raises(ConfigError, match="K8S_EXECUTOR_STORAGE_OPTIONS holds a JSON list"):
        _ = env.storage_options


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), (" On ", True), ("yes", True), ("0", False), ("off", False), ("", None)],
)
def test_flags(text: str, expected: bool | None) -> None:
    assert Env({"K8S_EXECUTOR_SHARE_STORAGE_OPTIONS": text}).share_storage_options is expected


def test_a_wrong_flag() -> None:
    env = Env({"K8S_EXECUTOR_SHARE_STORAGE_OPTIONS": "maybe"})
    with pytest.raises(ConfigError, match="='maybe' is not allowed: expected 1/true/on"):
        _ = env.share_storage_options


def test_storage_options_and_pod_secrets() -> None:
    env = Env(
        {
            "K8S_EXECUTOR_STORAGE_OPTIONS": ' {"key": "k"} ',
            "K8S_EXECUTOR_POD_SECRETS": " s3-credentials, ,other ",
        }
    )
    assert env.storage_options == {"key": "k"}
    assert env.pod_secrets == ("s3-credentials", "other")
    assert _config.pod_options(None, env).secrets == ("s3-credentials", "other")
    # Secrets named in code win, and the variable is then not even read.
    mine = PodOptions(secrets=("mine",))
    assert _config.pod_options(mine, Env({"K8S_EXECUTOR_POD_SECRETS": "Bad_Name"})) is mine


def test_backend_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    none = Env({})
    assert _config.backend_name("local", None, None, Env({"K8S_EXECUTOR_BACKEND": "x"})) == "local"
    assert _config.backend_name(None, None, None, Env({"K8S_EXECUTOR_BACKEND": "local"})) == "local"
    assert _config.backend_name(None, "/some/kubeconfig", None, none) == "kubernetes"
    with pytest.raises(ConfigError, match="no backend chosen and no Kubernetes cluster"):
        _config.backend_name(None, None, None, none)


def test_resolve_fills_in_from_the_environment_and_options_win(tmp_path: Path) -> None:
    env = Env(
        {
            "K8S_EXECUTOR_STORAGE": str(tmp_path / "env"),
            "K8S_EXECUTOR_STORAGE_OPTIONS": '{"anon": true}',
            "K8S_EXECUTOR_PROGRESS": "0",
        }
    )
    settings = resolve(backend="local", env=env)
    assert (settings.storage, settings.storage_options) == (str(tmp_path / "env"), {"anon": True})
    assert settings.batching == Batching() and settings.show_progress is False
    settings = resolve(
        backend="local", env=env, storage="memory://x", storage_options={}, progress=True
    )
    assert (settings.storage, settings.storage_options, settings.show_progress) == (
        "memory://x",
        {},
        True,
    )


def test_resolve_kubernetes_without_contacting_it() -> None:
    env = Env({"K8S_EXECUTOR_REGISTRY": "registry.example/team", "K8S_EXECUTOR_PYTHON": "py"})
    settings = resolve(backend="kubernetes", kubeconfig="/nonexistent", storage="s3://b/p", env=env)
    k8s = settings.backend.settings  # type: ignore[attr-defined]
    assert (k8s.image, k8s.registry, k8s.python) == ("auto", "registry.example/team", "py")
    with pytest.raises(ConfigError, match="storage= is required with the kubernetes backend"):
        resolve(backend="kubernetes", kubeconfig="/nonexistent", image="team/env:1", env=Env({}))


def test_wrong_storage_and_backend_variable_say_what_is_expected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Issue 14 item 17: storage=123 was an AttributeError; K8S_EXECUTOR_BACKEND=bogus was
    # reported as backend='bogus', not as the variable that said it.
    with pytest.raises(ConfigError, match=r"storage=123 is not allowed: expected an fsspec URL"):
        resolve(backend="local", storage=123)  # type: ignore[arg-type]
    assert resolve(backend="local", storage=tmp_path).storage == str(tmp_path)
    monkeypatch.setenv("K8S_EXECUTOR_BACKEND", "bogus")
    with pytest.raises(ConfigError, match=r"K8S_EXECUTOR_BACKEND='bogus' is not allowed"):
        _config.backend_name(None, None, None)
    assert _config.backend_name("local", None, None) == "local"  # the argument wins


def test_mp_context_in_process_pool_order_is_named() -> None:
    import multiprocessing

    from k8s_executor import KubernetesExecutor

    with pytest.raises(ConfigError, match="mp_context has no meaning here"):
        KubernetesExecutor(4, multiprocessing.get_context("spawn"), backend="local")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="initializer must be a callable"):
        KubernetesExecutor(4, 42, backend="local")  # type: ignore[arg-type]
