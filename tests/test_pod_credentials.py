"""The pods' storage credentials from the environment, so that a program configured by
environment alone runs on a key-based S3 store (MinIO, on-premises): the Secrets of
K8S_EXECUTOR_POD_SECRETS become the workers' environment, and
K8S_EXECUTOR_SHARE_STORAGE_OPTIONS=1 hands them the storage options (here from
K8S_EXECUTOR_STORAGE_OPTIONS) through the run's Secret. Wrong values fail at construction
with an error that names the variable and says what to set."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import ConfigError, KubernetesExecutor
from tests import helpers
from tests.kube_helpers import KubesimCluster, kubesim_kwargs
from tests.s3server import S3Server, s3_server

BUCKET = "k8sx-pods"
VARIABLES = (
    "K8S_EXECUTOR_POD_SECRETS",
    "K8S_EXECUTOR_SHARE_STORAGE_OPTIONS",
    "K8S_EXECUTOR_STORAGE_OPTIONS",
    "K8S_EXECUTOR_BACKEND",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server(buckets=(BUCKET,)) as server:
        yield server


def pod_env(s3: S3Server) -> dict[str, str]:
    """Where the pods find the S3 server, but no keys: those come from a Secret or the
    shared options. (No instance metadata either: nothing leaves this machine.)"""
    return {
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def create_secret(sim: Any, name: str, data: dict[str, str]) -> None:
    cluster = KubesimCluster(sim)
    try:
        body = {"metadata": {"name": name}, "stringData": data}
        cluster.core.create_namespaced_secret("default", body)
    finally:
        cluster.close()


KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


def s3_kwargs(sim: Any, s3: S3Server, tmp_path: Path, **pod: Any) -> dict[str, Any]:
    kw = kubesim_kwargs(sim, tmp_path, env=pod_env(s3), **pod)
    kw["storage"] = f"s3://{BUCKET}/{tmp_path.name}"
    return kw


def test_pod_secrets_from_the_environment_reach_the_workers(
    kubesim: Any, s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_secret(kubesim, "s3-credentials", KEYS)
    monkeypatch.setenv("K8S_EXECUTOR_POD_SECRETS", " s3-credentials, ")
    kw = s3_kwargs(kubesim, s3, tmp_path)
    with KubernetesExecutor(storage_options=s3.storage_options(), **kw) as ex:
        assert ex.submit(helpers.square, 7).result(timeout=60) == 49
        (job,) = kubesim.store.list("jobs", "default")[0]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]


def test_shared_storage_options_from_the_environment_reach_the_workers(
    kubesim: Any, s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K8S_EXECUTOR_STORAGE_OPTIONS", json.dumps(s3.storage_options()))
    monkeypatch.setenv("K8S_EXECUTOR_SHARE_STORAGE_OPTIONS", "1")
    with KubernetesExecutor(**s3_kwargs(kubesim, s3, tmp_path)) as ex:
        assert ex.submit(helpers.square, 8).result(timeout=60) == 64


def test_without_credentials_the_worker_says_so(kubesim: Any, s3: S3Server, tmp_path: Path) -> None:
    # What the two variables fix: the pods have the endpoint but no keys.
    with (
        KubernetesExecutor(
            storage_options=s3.storage_options(), **s3_kwargs(kubesim, s3, tmp_path)
        ) as ex,
        pytest.raises(Exception, match="NoCredentialsError|Unable to locate credentials"),
    ):
        ex.submit(helpers.square, 2).result(timeout=60)


def test_pod_secrets_of_the_code_win_over_the_environment(
    kubesim: Any, s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_secret(kubesim, "mine", KEYS)
    monkeypatch.setenv("K8S_EXECUTOR_POD_SECRETS", "no-such-secret")  # would never start
    kw = s3_kwargs(kubesim, s3, tmp_path, secrets=("mine",))
    with KubernetesExecutor(storage_options=s3.storage_options(), **kw) as ex:
        assert ex.submit(helpers.square, 3).result(timeout=60) == 9


# -- wrong values, as a new user would set them -------------------------------------------


def construct(**kw: Any) -> KubernetesExecutor:
    """An executor on a cluster that is never contacted (construction does no I/O)."""
    return KubernetesExecutor(
        backend="kubernetes",
        kubeconfig="/nonexistent",
        image="team/env:1",
        storage="s3://b/p",
        **kw,
    )


SHARE, SECRETS, OPTIONS = (
    "K8S_EXECUTOR_SHARE_STORAGE_OPTIONS",
    "K8S_EXECUTOR_POD_SECRETS",
    "K8S_EXECUTOR_STORAGE_OPTIONS",
)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (SHARE, "maybe", f"{SHARE}='maybe' is not allowed: expected 1/true/on or 0/false/off"),
        (SECRETS, "S3_Creds", f"{SECRETS}='S3_Creds' is not allowed: 'S3_Creds' is not the"),
        (SECRETS, "s3-credentials;minio", "'s3-credentials;minio' is not the name of a Secret"),
        (SECRETS, "a b", "separated by commas, e.g. s3-credentials"),
        (OPTIONS, '{"secret": "hunter2"', f"{OPTIONS} is not valid JSON"),
        (OPTIONS, '["key", "secret"]', f"{OPTIONS} holds a JSON list, not an object"),
    ],
)
def test_a_wrong_value_names_the_variable(
    variable: str, value: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        construct()
    assert expected in str(info.value)
    assert "hunter2" not in str(info.value)  # a storage option may be a credential


def test_sharing_nothing_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K8S_EXECUTOR_SHARE_STORAGE_OPTIONS", "true")
    with pytest.raises(ConfigError) as info:
        construct()
    message = str(info.value)
    assert "there are no storage_options to share" in message
    assert "K8S_EXECUTOR_STORAGE_OPTIONS" in message and "K8S_EXECUTOR_POD_SECRETS" in message
    with pytest.raises(ConfigError, match="no storage_options to share"):
        construct(share_storage_options=True)


@pytest.mark.parametrize(("share", "secrets"), [("", ""), ("0", " , "), ("off", ",")])
def test_empty_or_off_is_as_unset(
    share: str, secrets: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SHARE, share)
    monkeypatch.setenv(SECRETS, secrets)
    monkeypatch.setenv(OPTIONS, "")
    settings = construct()._backend.settings  # type: ignore[attr-defined]
    assert (settings.share_storage_options, settings.pod.secrets) == (False, ())


def test_share_storage_options_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match="share_storage_options='yes' is not allowed"):
        construct(share_storage_options="yes", storage_options={"key": "k"})


def test_local_backend_takes_storage_options_from_the_environment(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K8S_EXECUTOR_STORAGE_OPTIONS", json.dumps(s3.storage_options()))
    with KubernetesExecutor(backend="local", storage=f"s3://{BUCKET}/local") as ex:
        assert ex.submit(helpers.square, 5).result(timeout=60) == 25
