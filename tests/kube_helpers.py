"""The cluster the Kubernetes tests run against: kubesim, or a real one.

By default every Kubernetes test gets a fresh kubesim (``kubesim_kwargs`` points an
executor at it). With ``K8SX_TEST_CLUSTER=/path/to/cluster.json`` the tests that can run on
any cluster run on the one that file describes instead (``docs/testing.md``): the
``cluster`` fixture is a :class:`ClusterUnderTest` either way, which builds executor
keywords, reads objects through the Kubernetes API and says whether workers are processes
of this machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import ConfigError, KubernetesExecutor, PodOptions, Resources, Timeouts
from tests.helpers import SharedPath

ENV_VAR = "K8SX_TEST_CLUSTER"
RUN_LABEL = "k8s-executor.io/run"
ROOT = Path(__file__).resolve().parent.parent


def kubesim_kwargs(sim: Any, storage: Path, **pod: Any) -> dict[str, Any]:
    """KubernetesExecutor keywords for ``sim`` (process kubelet) and local ``storage``."""
    env = {"PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path), **pod.pop("env", {})}
    return {
        "backend": "kubernetes",
        "kubeconfig": str(sim.kubeconfig_path),
        "storage": str(storage),
        # The process kubelet runs the pod's command as a local process: the "image" is
        # this interpreter and this source tree, as a venv-snapshot image would be.
        "image": "kubesim.local/process:latest",
        "python": sys.executable,
        "pod": PodOptions(env=env, **pod),
        "timeouts": Timeouts(startup=30, heartbeat=1, heartbeat_grace=30),
    }


def cold(kw: dict[str, Any]) -> dict[str, Any]:
    """``kw`` with warm workers off (``Timeouts.keep_warm=0``): every batch gets its own
    Job and pods, and the backend's own slot plan (suspended Jobs) is what is tested."""
    timeouts = kw.get("timeouts") or Timeouts()
    return {**kw, "timeouts": dataclasses.replace(timeouts, keep_warm=0)}


BASE_IMAGE = "localhost/k8sx-base:py3.11"
"""The Python base image .ci/containers.sh imports into its private podman store."""


def podman_cmd() -> list[str]:
    """podman with the project's private configuration, when .ci/containers.sh made one
    (it makes podman work on these VMs and holds the Python base image)."""
    default = Path.home() / ".cache" / "k8s-executor" / "containers"
    config = Path(os.environ.get("K8SX_CONTAINERS_DIR") or default)
    if not (config / "containers.conf").exists():
        return ["podman"]
    return [
        "env",
        f"CONTAINERS_CONF={config / 'containers.conf'}",
        f"CONTAINERS_STORAGE_CONF={config / 'storage.conf'}",
        f"CONTAINERS_REGISTRIES_CONF={config / 'registries.conf'}",
        "podman",
    ]


def kubesim_podman_kwargs(sim: Any, storage: Path, shared_root: Path, **pod: Any) -> dict[str, Any]:
    """KubernetesExecutor keywords for ``sim`` with its podman kubelet: every worker is a
    real container (its own PID 1, signals from the kubelet) of the base image, with this
    checkout, this venv's packages and ``shared_root`` bind-mounted at their own paths."""
    import sysconfig

    checkout = Path(__file__).resolve().parent.parent
    packages = Path(sysconfig.get_paths()["purelib"])
    mounts = {"checkout": checkout, "packages": packages, "shared": shared_root}
    env = {"PYTHONPATH": f"{checkout}{os.pathsep}{packages}", **pod.pop("env", {})}
    template = {
        "volumes": [{"name": n, "hostPath": {"path": str(p)}} for n, p in mounts.items()],
        "containers": [
            {
                "name": "worker",
                "volumeMounts": [
                    {"name": n, "mountPath": str(p), "readOnly": n != "shared"}
                    for n, p in mounts.items()
                ],
            }
        ],
    }
    return {
        "backend": "kubernetes",
        "kubeconfig": str(sim.kubeconfig_path),
        "storage": str(storage),
        "image": BASE_IMAGE,
        "python": "/usr/bin/python3",
        "pod": PodOptions(env=env, pod_template=template, **pod),
        "timeouts": Timeouts(startup=60, heartbeat=1, heartbeat_grace=30),
    }


# -- cluster.json --------------------------------------------------------------------------


class ClusterConfigError(Exception):
    """cluster.json is missing, malformed, or describes a cluster the tests cannot use."""


@dataclass(frozen=True)
class ClusterConfig:
    """What the tests need to know about a real cluster (the fields of cluster.json)."""

    path: Path
    kubeconfig: str
    storage: str
    context: str | None = None
    namespace: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    share_storage_options: bool = False
    image: str | None = None
    registry: str | None = None
    base_image: str | None = None
    python: str | None = None
    pod_env: Mapping[str, str] = field(default_factory=dict)
    pod_secrets: tuple[str, ...] = ()
    image_pull_secrets: tuple[str, ...] = ()
    resources: Resources | None = None
    startup_timeout: float = 180.0


# name -> (JSON type(s), what it is), in the order the docs list them.
FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "kubeconfig": (str, "path of the kubeconfig file (relative to cluster.json)"),
    "context": (str, "kubeconfig context (default: its current context)"),
    "namespace": (str, "namespace of the test Jobs (default: the context's)"),
    "storage": (str, "fsspec URL both this machine and the pods reach"),
    "storage_options": (dict, "fsspec options for the storage, on this machine"),
    "share_storage_options": (bool, "hand storage_options to the pods (run Secret)"),
    "image": (str, 'the worker image, or "auto" (needs registry)'),
    "registry": (str, "where image='auto' pushes a snapshot of this virtualenv"),
    "base_image": (str, "base of the snapshot image (default python:X.Y-slim)"),
    "python": (str, "the interpreter in the image (default: this venv's path)"),
    "pod_env": (dict, "plain environment variables of the worker pods"),
    "pod_secrets": (list, "Secrets whose keys become environment variables of the pods"),
    "image_pull_secrets": (list, "Secrets with registry credentials for the image"),
    "resources": (dict, 'Resources fields of every worker, e.g. {"cpu": "250m"}'),
    "startup_timeout": ((int, float), "seconds a pod may take to start (default 180)"),
}
REQUIRED = ("kubeconfig", "storage")


CLUSTER_CONFIG = pytest.StashKey["ClusterConfig | None"]()


def real_cluster_config(config: pytest.Config) -> ClusterConfig | None:
    """The real cluster's configuration in real-cluster mode (set up by tests/conftest.py
    from the environment), else None."""
    return config.stash.get(CLUSTER_CONFIG, None)


def load_cluster_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and check cluster.json without touching the network; ClusterConfigError says
    what is wrong, naming the file and the field."""
    file = Path(path).expanduser().resolve()

    def fail(problem: str) -> ClusterConfigError:
        return ClusterConfigError(f"{ENV_VAR}={path}: {problem}")

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise fail(f"cannot read it ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise fail(f"not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise fail("expected a JSON object with the fields " + ", ".join(FIELDS))
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise fail(f"unknown field(s) {unknown}; the fields are: {', '.join(FIELDS)}")
    missing = [name for name in REQUIRED if not data.get(name)]
    if missing:
        wanted = "; ".join(f"{name}: {FIELDS[name][1]}" for name in missing)
        raise fail(f"missing {' and '.join(missing)} ({wanted})")
    for name, value in data.items():
        expected, what = FIELDS[name]
        if isinstance(value, bool) is not (expected is bool) or not isinstance(value, expected):
            raise fail(f"{name}={value!r} is not allowed: expected {what}")
    if not all(isinstance(v, str) for v in data.get("pod_env", {}).values()):
        raise fail("pod_env: every value must be a string")
    for name in ("pod_secrets", "image_pull_secrets"):
        if not all(isinstance(v, str) and v for v in data.get(name, [])):
            raise fail(f"{name}: expected a list of Secret names")
    if data.get("startup_timeout", 1) <= 0:
        raise fail("startup_timeout must be > 0")
    try:
        resources = Resources(**data["resources"]) if "resources" in data else None
    except (TypeError, ConfigError) as exc:
        raise fail(f"resources: {exc}") from exc

    image, registry = data.get("image"), data.get("registry")
    if not image and not registry:
        raise fail(
            "needs image (a worker image with this Python, k8s_executor and the tests) "
            "or registry (to push a snapshot of this virtualenv: image='auto')"
        )
    if image == "auto" and not registry:
        raise fail("image='auto' needs registry: where the virtualenv snapshot is pushed")

    kubeconfig = (file.parent / Path(data["kubeconfig"]).expanduser()).resolve()
    if not kubeconfig.is_file():
        raise fail(f"kubeconfig {kubeconfig} does not exist")
    context = data.get("context")
    try:
        namespace = data.get("namespace") or context_namespace(str(kubeconfig), context)
    except Exception as exc:  # the client's ConfigException, or a malformed file
        raise fail(f"kubeconfig {kubeconfig}: {exc}") from exc

    storage = data["storage"]
    if "://" not in storage and not os.path.isabs(storage):
        storage = str((file.parent / storage).resolve())
    return ClusterConfig(
        path=file,
        kubeconfig=str(kubeconfig),
        storage=storage,
        context=context,
        namespace=namespace,
        storage_options=dict(data.get("storage_options", {})),
        share_storage_options=data.get("share_storage_options", False),
        image=image,
        registry=registry,
        base_image=data.get("base_image"),
        python=data.get("python"),
        pod_env=dict(data.get("pod_env", {})),
        pod_secrets=tuple(data.get("pod_secrets", ())),
        image_pull_secrets=tuple(data.get("image_pull_secrets", ())),
        resources=resources,
        startup_timeout=float(data.get("startup_timeout", 180.0)),
    )


def context_namespace(kubeconfig: str, context: str | None) -> str:
    """The namespace of ``context`` (default: the current one) in ``kubeconfig``."""
    from kubernetes import config

    contexts, current = config.list_kube_config_contexts(kubeconfig)  # type: ignore[no-untyped-call]
    if context is None:
        chosen = current
    else:
        chosen = next((c for c in contexts if c["name"] == context), None)
        if chosen is None:
            names = ", ".join(c["name"] for c in contexts)
            raise ValueError(f"no context {context!r} (it has: {names})")
    return str(chosen["context"].get("namespace") or "default")


# -- the cluster under test ----------------------------------------------------------------


class ClusterUnderTest:
    """A cluster the Kubernetes tests use, through the API as any client would.

    ``local_workers``: worker processes run on this machine (pids and one monotonic clock
    are shared with the test), true for kubesim's process kubelet only.
    """

    name = "cluster"
    local_workers = False

    def __init__(self, kubeconfig: str, context: str | None, namespace: str) -> None:
        from kubernetes import client, config

        self.kubeconfig = kubeconfig
        self.context = context
        self.namespace = namespace
        configuration = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
        # Any: the client's models make every field optional; the tests know better.
        self.api: Any = client.ApiClient(configuration)
        self.core: Any = client.CoreV1Api(self.api)
        self.batch: Any = client.BatchV1Api(self.api)

    def close(self) -> None:
        self.api.close()

    def executor_kwargs(self, storage: SharedPath, **pod: Any) -> dict[str, Any]:
        """KubernetesExecutor keywords: run on this cluster, the run's data under
        ``storage``; ``pod`` are PodOptions fields (``env`` and ``secrets`` add to the
        configured ones)."""
        raise NotImplementedError

    def cli_args(self) -> list[str]:
        """The cluster options of ``k8s-executor ls / cleanup``."""
        args = ["--kubeconfig", self.kubeconfig, "-n", self.namespace]
        return [*args, "--context", self.context] if self.context else args

    def jobs(self, run_id: str) -> list[Any]:
        selector = f"{RUN_LABEL}={run_id}"
        return list(self.batch.list_namespaced_job(self.namespace, label_selector=selector).items)

    def pods(self, run_id: str) -> list[Any]:
        selector = f"{RUN_LABEL}={run_id}"
        return list(self.core.list_namespaced_pod(self.namespace, label_selector=selector).items)

    def run_objects(self, run_id: str) -> dict[str, list[str]]:
        """Names of the run's Jobs, pods and Secrets the API still lists."""
        selector = f"{RUN_LABEL}={run_id}"
        secrets = self.core.list_namespaced_secret(self.namespace, label_selector=selector)
        return {
            "jobs": [j.metadata.name for j in self.jobs(run_id)],
            "pods": [p.metadata.name for p in self.pods(run_id)],
            "secrets": [s.metadata.name for s in secrets.items],
        }


class KubesimCluster(ClusterUnderTest):
    """A kubesim of this test (process kubelet): pods are processes of this machine."""

    name = "kubesim"
    local_workers = True

    def __init__(self, sim: Any) -> None:
        super().__init__(str(sim.kubeconfig_path), None, "default")
        self.sim = sim

    def executor_kwargs(self, storage: SharedPath, **pod: Any) -> dict[str, Any]:
        return kubesim_kwargs(self.sim, Path(storage.url), **pod)


class KubesimPodmanCluster(ClusterUnderTest):
    """A kubesim of this test with its podman kubelet: pods are real containers, so
    their pids are not ours (``local_workers`` is false) but their files are."""

    name = "kubesim-podman"

    def __init__(self, sim: Any, shared_root: Path) -> None:
        super().__init__(str(sim.kubeconfig_path), None, "default")
        self.sim = sim
        self.shared_root = shared_root

    def executor_kwargs(self, storage: SharedPath, **pod: Any) -> dict[str, Any]:
        return kubesim_podman_kwargs(self.sim, Path(storage.url), self.shared_root, **pod)


class RealCluster(ClusterUnderTest):
    """The cluster cluster.json describes; :meth:`prepare` checks it once per session."""

    name = "real cluster"

    def __init__(self, config: ClusterConfig) -> None:
        assert config.namespace is not None
        super().__init__(config.kubeconfig, config.context, config.namespace)
        self.config = config
        self.image = config.image
        self.python = config.python

    def executor_kwargs(self, storage: SharedPath, **pod: Any) -> dict[str, Any]:
        c = self.config
        options = {
            "env": {**c.pod_env, **pod.pop("env", {})},
            "secrets": (*c.pod_secrets, *pod.pop("secrets", ())),
            "image_pull_secrets": (*c.image_pull_secrets, *pod.pop("image_pull_secrets", ())),
            **pod,
        }
        kwargs: dict[str, Any] = {
            "backend": "kubernetes",
            "kubeconfig": c.kubeconfig,
            "namespace": c.namespace,
            "storage": storage.url,
            "storage_options": dict(c.storage_options),
            "share_storage_options": c.share_storage_options,
            "image": self.image,
            "pod": PodOptions(**options),
            "timeouts": Timeouts(startup=c.startup_timeout, heartbeat=1, heartbeat_grace=30),
        }
        if c.resources is not None:
            kwargs["resources"] = c.resources
        if c.context:
            kwargs["context"] = c.context
        if self.python:
            kwargs["python"] = self.python
        return kwargs

    def prepare(self) -> None:
        """Check storage, image, API and one call end to end, so a broken setup is one
        clear error at the start rather than every test timing out."""
        c = self.config
        url = f"{c.storage.rstrip('/')}/k8sx-tests/probe-{uuid.uuid4().hex[:8]}"
        local = SharedPath(url, c.storage_options)
        try:
            local.mkdir()
            (local / "ok").write_text("ok")
            assert (local / "ok").read_text() == "ok"
        except Exception as exc:
            local.remove()
            raise ClusterConfigError(
                f"storage {c.storage} cannot be written and read back from this machine "
                f"(storage_options: {sorted(c.storage_options)}): {type(exc).__name__}: {exc}"
            ) from exc
        try:
            self._prepare_image()
            self._check_api()
            self._first_call(local)
        finally:
            local.remove()

    def _prepare_image(self) -> None:
        c = self.config
        if c.image not in (None, "auto"):
            return
        from k8s_executor.image import build_image

        assert c.registry is not None
        try:
            ref = build_image(c.registry, base_image=c.base_image)
        except Exception as exc:
            raise ClusterConfigError(
                f"cannot push a snapshot of this virtualenv to registry {c.registry}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        # Once per session, by digest: every test runs exactly this snapshot. Its venv
        # sits at this venv's own path (as image="auto" does it).
        self.image = ref.reference
        self.python = c.python or os.path.join(sys.prefix, "bin", "python")

    def _check_api(self) -> None:
        try:
            self.core.list_namespaced_pod(self.namespace, limit=1, _request_timeout=15)
        except Exception as exc:
            raise ClusterConfigError(
                f"the cluster (kubeconfig {self.kubeconfig}, context "
                f"{self.context or '(current)'}) cannot list pods in namespace "
                f"{self.namespace}: {type(exc).__name__}: {exc}"
            ) from exc

    def _first_call(self, probe: SharedPath) -> None:
        from tests import helpers

        calls, release = probe / "calls", probe / "release"
        calls.mkdir()
        release.touch()
        try:
            with KubernetesExecutor(max_workers=1, **self.executor_kwargs(probe / "runs")) as ex:
                ex.submit(helpers.record_then_wait, calls, release).result(
                    timeout=self.config.startup_timeout + 120
                )
            if len(calls.listdir()) != 1:
                raise AssertionError(f"the worker ran, but its trace is not in {calls}")
        except Exception as exc:
            raise ClusterConfigError(
                f"a first call on the cluster failed: {type(exc).__name__}: {exc}\n"
                f"Its pod must run image {self.image} (python {self.python or 'python'}), "
                f"import the tests package from this checkout, and reach {self.config.storage} "
                "with pod_env / pod_secrets / share_storage_options (see docs/testing.md)"
            ) from exc


@contextmanager
def shared_dir(tmp_path: Path, config: ClusterConfig | None) -> Iterator[SharedPath]:
    """A directory a test and its workers both reach: ``tmp_path`` when the workers run
    here, else a fresh prefix under the real cluster's storage, removed afterwards."""
    if config is None:
        yield SharedPath(str(tmp_path))
        return
    shared = SharedPath(
        f"{config.storage.rstrip('/')}/k8sx-tests/{uuid.uuid4().hex[:12]}",
        config.storage_options,
    )
    shared.mkdir()
    try:
        yield shared
    finally:
        shared.remove()


@contextmanager
def standalone_kubesim(log: Path) -> Iterator[str]:
    """A kubesim in its own process (``python -m tests.kubesim``, process kubelet), as a
    cluster this test did not start in-process; yields the kubeconfig path it printed. Its
    stderr goes to ``log``; SIGTERM ends it afterwards."""
    with log.open("w") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.kubesim"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        try:
            assert server.stdout is not None
            kubeconfig = server.stdout.readline().strip()
            assert kubeconfig, f"kubesim printed no kubeconfig: {log.read_text()}"
            yield kubeconfig
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            if server.stdout is not None:
                server.stdout.close()


def local_or_kubesim(request: Any, storage: Path) -> dict[str, Any]:
    """KubernetesExecutor keywords for a test parametrized ``["local", "kubernetes"]``:
    the local backend, or the test's kubesim (process kubelet), the run's data under
    ``storage``."""
    if request.param == "local":
        return {"backend": "local", "storage": str(storage)}
    return kubesim_kwargs(request.getfixturevalue("kubesim"), storage)
