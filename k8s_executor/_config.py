"""One resolver: the options given in code plus the ``K8S_EXECUTOR_*`` environment → settings.

The executor, the joblib backend (through the executor) and the command line all read
the environment here, so they never disagree about what a variable means. Nothing is
imported or contacted here beyond the environment and the arguments: the backend a name
stands for is imported only when it is chosen, from :data:`known_backends` (as fsspec's
``known_implementations``), with an install hint when it cannot be.

An explicit option always wins over its variable; an empty variable is as unset.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _progress
from ._cluster import config_source
from ._durable import check_name, default_named_storage
from ._options import (
    Batching,
    PodOptions,
    Resources,
    Scheduling,
    StorageRetry,
    Timeouts,
    check_dns_name,
    check_seconds,
)
from .errors import ConfigError

if TYPE_CHECKING:
    from .backends._base import Backend

__all__ = ["Env", "Settings", "backend_class", "known_backends", "resolve"]

ENV_BACKEND = "K8S_EXECUTOR_BACKEND"
ENV_STORAGE = "K8S_EXECUTOR_STORAGE"
ENV_STORAGE_OPTIONS = "K8S_EXECUTOR_STORAGE_OPTIONS"
ENV_SHARE_STORAGE_OPTIONS = "K8S_EXECUTOR_SHARE_STORAGE_OPTIONS"
ENV_POD_SECRETS = "K8S_EXECUTOR_POD_SECRETS"
ENV_QUEUE = "K8S_EXECUTOR_QUEUE"
ENV_IMAGE = "K8S_EXECUTOR_IMAGE"
ENV_REGISTRY = "K8S_EXECUTOR_REGISTRY"
ENV_BASE_IMAGE = "K8S_EXECUTOR_BASE_IMAGE"
ENV_PLATFORM = "K8S_EXECUTOR_PLATFORM"
ENV_PYTHON = "K8S_EXECUTOR_PYTHON"
ENV_PROGRESS = "K8S_EXECUTOR_PROGRESS"
ENV_RUN = "K8S_EXECUTOR_RUN"
ENV_DETACH = "K8S_EXECUTOR_DETACH"
ENV_DEADLINE = "K8S_EXECUTOR_DEADLINE"

_STORAGE_OPTIONS_EXAMPLE = '{"endpoint_url": "https://s3.example", "key": "...", "secret": "..."}'

#: Backends by name: ``"module:Class"`` and what to install when the module cannot be
#: imported. Imported only when chosen, so that choosing ``local`` costs no Kubernetes
#: client, and a new backend is one line here.
known_backends: dict[str, dict[str, str]] = {
    "kubernetes": {
        "class": "k8s_executor.backends.kubernetes:KubernetesBackend",
        "err": "the kubernetes backend needs the Kubernetes client: pip install kubernetes",
    },
    "local": {"class": "k8s_executor.backends.local:LocalBackend", "err": ""},
}


def backend_class(name: str) -> type[Any]:
    """The class of the backend called ``name``, imported now.

    Raises:
        ConfigError: ``name`` is not in :data:`known_backends`, or its module cannot be
            imported (with the install hint).
    """
    entry = known_backends.get(name)
    if entry is None:
        raise ConfigError(
            f"backend={name!r} is not allowed: expected one of {sorted(known_backends)} "
            "(or a Backend instance)"
        )
    module_name, _, class_name = entry["class"].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = entry["err"] or f"cannot import {module_name}"
        raise ConfigError(f"backend={name!r} cannot be used: {hint} ({exc})") from exc
    cls: type[Any] = getattr(module, class_name)
    return cls


class Env:
    """The ``K8S_EXECUTOR_*`` variables, each read and checked only when asked for (a
    wrong value fails where it is used, not every command that could have used it).

    Args:
        environ: where to read them (default: ``os.environ``, read at each access).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def text(self, name: str) -> str | None:
        """The variable's value as it is, or None when unset."""
        return self._environ.get(name)

    @property
    def backend(self) -> str | None:
        """``K8S_EXECUTOR_BACKEND``."""
        return self.text(ENV_BACKEND)

    @property
    def storage(self) -> str | None:
        """``K8S_EXECUTOR_STORAGE``: the storage URL."""
        return self.text(ENV_STORAGE)

    @property
    def run(self) -> str | None:
        """``K8S_EXECUTOR_RUN``: the name of a named run (checked)."""
        text = self.text(ENV_RUN)
        return None if not text else check_name(text, f"{ENV_RUN}=")

    @property
    def image(self) -> str | None:
        """``K8S_EXECUTOR_IMAGE``."""
        return self.text(ENV_IMAGE)

    @property
    def registry(self) -> str | None:
        """``K8S_EXECUTOR_REGISTRY``."""
        return self.text(ENV_REGISTRY)

    @property
    def base_image(self) -> str | None:
        """``K8S_EXECUTOR_BASE_IMAGE``."""
        return self.text(ENV_BASE_IMAGE)

    @property
    def platform(self) -> str | None:
        """``K8S_EXECUTOR_PLATFORM`` (unchecked: see ``image._platform.check_platform``)."""
        return self.text(ENV_PLATFORM)

    @property
    def python(self) -> str | None:
        """``K8S_EXECUTOR_PYTHON``: the workers' interpreter in the image."""
        return self.text(ENV_PYTHON)

    @property
    def progress(self) -> bool | None:
        """``K8S_EXECUTOR_PROGRESS`` (1/0); None when unset or empty."""
        return self.flag(ENV_PROGRESS)

    @property
    def storage_options(self) -> dict[str, Any] | None:
        """``K8S_EXECUTOR_STORAGE_OPTIONS``, a JSON object; None when unset or empty."""
        return self.json_object(ENV_STORAGE_OPTIONS)

    def json_object(self, name: str) -> dict[str, Any] | None:
        """A variable holding fsspec storage options as a JSON object; None when unset or
        empty. The value is never quoted in an error: it may hold credentials."""
        text = (self.text(name) or "").strip()
        if not text:
            return None
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ConfigError(
                f"{name} is not valid JSON ({exc}): expected the fsspec storage_options "
                f"as a JSON object, e.g. {_STORAGE_OPTIONS_EXAMPLE}"
            ) from None
        if not isinstance(value, dict):
            raise ConfigError(
                f"{name} holds a JSON {type(value).__name__}, not an object: expected the "
                f"fsspec storage_options as a JSON object, e.g. {_STORAGE_OPTIONS_EXAMPLE}"
            )
        return value

    @property
    def share_storage_options(self) -> bool | None:
        """``K8S_EXECUTOR_SHARE_STORAGE_OPTIONS`` (1/0); None when unset or empty."""
        return self.flag(ENV_SHARE_STORAGE_OPTIONS)

    @property
    def pod_secrets(self) -> tuple[str, ...]:
        """``K8S_EXECUTOR_POD_SECRETS``: names of Secrets, comma-separated (checked)."""
        text = self.text(ENV_POD_SECRETS) or ""
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        for secret in names:
            try:
                check_dns_name("PodOptions.secrets", secret)
            except ConfigError:
                raise ConfigError(
                    f"{ENV_POD_SECRETS}={text!r} is not allowed: {secret!r} is not the "
                    "name of a Secret (lower-case letters, digits, '-' and '.', starting "
                    "and ending with a letter or digit); expected the names of Secrets in "
                    "the pods' namespace, separated by commas, e.g. s3-credentials"
                ) from None
        return names

    @property
    def queue(self) -> str | None:
        """``K8S_EXECUTOR_QUEUE``: a Kueue LocalQueue name (checked); None when unset."""
        text = (self.text(ENV_QUEUE) or "").strip()
        if not text:
            return None
        try:
            check_dns_name("Scheduling.queue", text)
        except ConfigError:
            raise ConfigError(
                f"{ENV_QUEUE}={text!r} is not allowed: expected the name of a Kueue "
                "LocalQueue of the namespace (`kubectl get localqueues`), e.g. team-a"
            ) from None
        return text

    def flag(self, name: str) -> bool | None:
        """A yes/no variable; None when unset or empty."""
        text = (self.text(name) or "").strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        if text:
            raise ConfigError(f"{name}={text!r} is not allowed: expected 1/true/on or 0/false/off")
        return None


@dataclass(frozen=True)
class Settings:
    """What an executor runs with, every default and variable applied."""

    backend: Backend
    storage: str | None
    """The storage URL; None: a private temporary directory (local backend only)."""
    storage_options: dict[str, Any]
    batching: Batching
    storage_retry: StorageRetry
    show_progress: bool
    keep_warm: float = 0.0
    """``Timeouts.keep_warm``: seconds a worker stays for further calls (0: none)."""
    run_name: str | None = None
    """A named run (``run=``): results stored and reused under this name."""
    deadline: float | None = None
    """A detached run (``detach=True``): seconds its workers and storage may live."""


def resolve(
    *,
    backend: str | Backend | None = None,
    storage: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    batching: Batching | None = None,
    storage_retry: StorageRetry | None = None,
    image: str | None = None,
    registry: str | None = None,
    base_image: str | None = None,
    platform: str | None = None,
    namespace: str | None = None,
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
    resources: Resources | None = None,
    scheduling: Scheduling | None = None,
    pod: PodOptions | None = None,
    timeouts: Timeouts | None = None,
    retries: int = 0,
    python: str | None = None,
    share_storage_options: bool | None = None,
    stream_logs: bool = False,
    progress: bool | None = None,
    run: str | None = None,
    detach: bool | None = None,
    deadline: float | None = None,
    env: Env | None = None,
) -> Settings:
    """Check the options of :class:`~k8s_executor.KubernetesExecutor` (all but
    ``max_workers`` and the initializer), fill them in from ``env`` and build the backend.

    Nothing is started or contacted: a backend is only constructed.

    Raises:
        ConfigError: an option or a variable has a wrong value, or they contradict.
    """
    env = env or Env()
    for name, value, cls in (
        ("batching", batching, Batching),
        ("storage_retry", storage_retry, StorageRetry),
        ("resources", resources, Resources),
        ("scheduling", scheduling, Scheduling),
        ("pod", pod, PodOptions),
        ("timeouts", timeouts, Timeouts),
    ):
        if value is not None and not isinstance(value, cls):
            raise ConfigError(
                f"{name}={value!r} is not allowed: expected a {cls.__name__} instance"
            )
    if storage_options is not None and not isinstance(storage_options, dict):
        raise ConfigError(f"storage_options={storage_options!r} is not allowed: expected a dict")
    if storage_options is None:
        storage_options = env.storage_options
    if share_storage_options is None:
        share_storage_options = env.share_storage_options or False
    elif not isinstance(share_storage_options, bool):
        raise ConfigError(
            f"share_storage_options={share_storage_options!r} is not allowed: expected "
            "True, False or None"
        )
    if progress is None:
        progress = env.progress
    show_progress = _progress.wanted(progress)  # checks it; None: is anyone looking?
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries={retries!r} is not allowed: expected an integer >= 0")
    if isinstance(kubeconfig, os.PathLike):
        kubeconfig = os.fspath(kubeconfig)
    for option, text, what in (
        ("kubeconfig", kubeconfig, "the path of a kubeconfig file"),
        ("context", context, "the name of a context in the kubeconfig"),
    ):
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise ConfigError(
                f"{option}={text!r} is not allowed: expected {what}, or None for the default"
            )
    if backend is None or isinstance(backend, str):
        name = backend_name(backend, kubeconfig, context, env)
        cls = backend_class(name)
        build = _BUILDERS.get(name, _no_arguments)
        backend = build(
            cls,
            _Request(
                env=env,
                storage_options=storage_options,
                share_storage_options=share_storage_options,
                image=image,
                registry=registry,
                base_image=base_image,
                platform=platform,
                namespace=namespace,
                kubeconfig=kubeconfig,
                context=context,
                resources=resources,
                scheduling=scheduling,
                pod=pod,
                timeouts=timeouts,
                retries=retries,
                python=python,
                stream_logs=stream_logs,
            ),
        )
    if storage is not None and not isinstance(storage, str | os.PathLike):
        raise ConfigError(
            f"storage={storage!r} is not allowed: expected an fsspec URL or a path, e.g. "
            "'s3://bucket/k8sx' or '/shared/k8sx'"
        )
    storage = os.fspath(storage) if storage is not None else env.storage
    run_name = check_name(run) if run is not None else env.run
    if storage is None and run_name is not None and backend.name == "local":
        # A named run outlives the executor: not in a temporary directory.
        storage = str(default_named_storage())
    if storage is None and backend.name != "local":
        raise ConfigError(
            "storage= is required with the kubernetes backend: an fsspec URL that both "
            "this machine and the pods can reach, e.g. storage='s3://bucket/k8sx' "
            f"(or set {ENV_STORAGE})"
        )
    detached = _detached(
        detach=detach,
        deadline=deadline,
        run_name=run_name,
        backend=backend,
        timeouts=timeouts,
        speculate=(batching or Batching()).speculate,
        env=env,
    )
    return Settings(
        backend=backend,
        storage=storage,
        storage_options=dict(storage_options or {}),
        batching=batching or Batching(),
        storage_retry=storage_retry or StorageRetry(),
        show_progress=show_progress,
        # A detached run's workers take no assignments from a client that may be gone.
        keep_warm=0.0 if detached is not None else (timeouts or Timeouts()).keep_warm,
        run_name=run_name,
        deadline=detached,
    )


def _detached(
    *,
    detach: bool | None,
    deadline: float | None,
    run_name: str | None,
    backend: Backend,
    timeouts: Timeouts | None,
    speculate: bool,
    env: Env,
) -> float | None:
    """The deadline (seconds) of a detached run, or None when the run is not detached."""
    if detach is not None and not isinstance(detach, bool):
        raise ConfigError(f"detach={detach!r} is not allowed: expected True, False or None")
    where = "detach=True"
    if detach is None:
        detach, where = env.flag(ENV_DETACH) or False, f"{ENV_DETACH}=1"
    if deadline is None:
        text = env.text(ENV_DEADLINE)
        if text:
            try:
                deadline = parse_duration(text)
            except ValueError:
                raise ConfigError(
                    f"{ENV_DEADLINE}={text!r} is not allowed: expected a positive duration "
                    "such as 3600, 90m, 12h or 2d"
                ) from None
        elif not detach:
            return None
    elif not detach:
        raise ConfigError(
            f"deadline={deadline!r} is not allowed without detach=True (or {ENV_DETACH}=1): "
            "only a detached run outlives its client"
        )
    if not detach:
        return None
    if deadline is None:
        deadline = DEFAULT_DEADLINE
    check_seconds("deadline", deadline, allow_zero=False)
    if run_name is None:
        raise ConfigError(
            f"{where} needs a named run: pass run='name' (or set {ENV_RUN}); a detached "
            "run is found again by its name"
        )
    if not callable(getattr(backend, "detach", None)):
        raise ConfigError(
            f"{where} is not allowed with the {backend.name!r} backend: it cannot leave "
            "its workers running without the client (no detach method)"
        )
    if speculate:
        raise ConfigError(
            f"Batching.speculate=True cannot be honoured by a detached run ({where}): the "
            "client starts the duplicates of slow workers, and a detached run must not "
            "depend on it. Leave speculate off, or do not detach"
        )
    keep_warm = (timeouts or Timeouts()).keep_warm
    if keep_warm not in (0, Timeouts().keep_warm):
        raise ConfigError(
            f"Timeouts.keep_warm={keep_warm!r} cannot be honoured by a detached run "
            f"({where}): warm workers take their calls from a live client. Leave it at "
            "its default (ignored when detached) or 0"
        )
    return float(deadline)


DEFAULT_DEADLINE = 24 * 3600.0
"""Seconds a detached run's workers and storage live by default."""


def parse_duration(text: str) -> float:
    """``3600``, ``90s``, ``90m``, ``12h`` or ``2d`` → seconds (> 0); ValueError else."""
    text = text.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(text[-1:], 0)
    number = float(text[:-1] if scale else text) * (scale or 1)
    if not number > 0 or number == float("inf"):
        raise ValueError(text)
    return number


def backend_name(
    backend: str | None, kubeconfig: str | None, context: str | None, env: Env | None = None
) -> str:
    """The backend asked for: ``backend``, else ``K8S_EXECUTOR_BACKEND``, else
    ``kubernetes`` when a cluster is configured; never a silent fallback to ``local``."""
    env = env or Env()
    name = backend or env.backend
    if backend is None and name is not None and name not in known_backends:
        raise ConfigError(
            f"{ENV_BACKEND}={name!r} is not allowed: expected one of {sorted(known_backends)}"
        )
    if name is None:
        if config_source(kubeconfig, context) is None:
            raise ConfigError(
                "no backend chosen and no Kubernetes cluster configured: pass "
                "backend='local' to run on this machine, or backend='kubernetes' with a "
                "kubeconfig (kubeconfig=, KUBECONFIG or ~/.kube/config); or set the "
                f"environment variable {ENV_BACKEND}=local|kubernetes"
            )
        name = "kubernetes"
    if name not in known_backends:
        raise ConfigError(
            f"backend={name!r} is not allowed: expected one of {sorted(known_backends)} "
            "(or a Backend instance)"
        )
    return name


def _scheduling(scheduling: Scheduling | None, env: Env) -> Scheduling:
    """``scheduling``, with the LocalQueue of ``K8S_EXECUTOR_QUEUE`` when it names none."""
    scheduling = scheduling or Scheduling()
    if scheduling.queue is not None:
        return scheduling
    queue = env.queue
    return dataclasses.replace(scheduling, queue=queue) if queue else scheduling


def pod_options(pod: PodOptions | None, env: Env | None = None) -> PodOptions:
    """``pod``, with the Secrets of ``K8S_EXECUTOR_POD_SECRETS`` when it names none."""
    pod = pod or PodOptions()
    if pod.secrets:
        return pod
    names = (env or Env()).pod_secrets
    return dataclasses.replace(pod, secrets=names) if names else pod


# -- building each backend -------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """The backend options of one resolve() call, for a backend's builder."""

    env: Env
    storage_options: dict[str, Any] | None
    share_storage_options: bool
    image: str | None
    registry: str | None
    base_image: str | None
    platform: str | None
    namespace: str | None
    kubeconfig: str | None
    context: str | None
    resources: Resources | None
    scheduling: Scheduling | None
    pod: PodOptions | None
    timeouts: Timeouts | None
    retries: int
    python: str | None
    stream_logs: bool


def _no_arguments(cls: type[Any], _request: _Request) -> Backend:
    backend: Backend = cls()
    return backend


def _kubernetes(cls: type[Any], r: _Request) -> Backend:
    from .backends.kubernetes import KubernetesSettings
    from .image._platform import check_platform  # imports neither podman nor requests

    image = r.image or r.env.image
    registry = r.registry or r.env.registry
    platform = check_platform(r.platform or r.env.platform)
    if image is None and registry:
        image = "auto"
    if not image:
        raise ConfigError(
            "the kubernetes backend needs an image: registry='host/namespace' "
            f"(or {ENV_REGISTRY}) to snapshot this virtualenv into an "
            "image automatically, or image= an image whose Python (same "
            "major.minor as here) has k8s_executor and your dependencies"
        )
    if image == "auto" and not registry:
        raise ConfigError(
            f"image='auto' needs registry= (or {ENV_REGISTRY}): where "
            "the snapshot of this virtualenv is pushed and pods pull it from"
        )
    if r.share_storage_options and not r.storage_options:
        raise ConfigError(
            f"share_storage_options (or {ENV_SHARE_STORAGE_OPTIONS}) is on, "
            "but there are no storage_options to share: the pods would get no "
            f"credentials. Pass storage_options= (or {ENV_STORAGE_OPTIONS}, "
            f"a JSON object such as {_STORAGE_OPTIONS_EXAMPLE}), "
            "or give the pods a Secret with the credentials instead "
            f"({ENV_POD_SECRETS}=NAME, PodOptions.secrets)"
        )
    backend: Backend = cls(
        KubernetesSettings(
            image=image,
            registry=registry,
            base_image=r.base_image or r.env.base_image,
            platform=platform,
            kubeconfig=r.kubeconfig,
            context=r.context,
            namespace=r.namespace,
            python=r.python or r.env.python or "python",
            retries=r.retries,
            resources=r.resources or Resources(),
            scheduling=_scheduling(r.scheduling, r.env),
            pod=pod_options(r.pod, r.env),
            timeouts=r.timeouts or Timeouts(),
            share_storage_options=r.share_storage_options,
            stream_logs=r.stream_logs,
        )
    )
    return backend


# How to construct each backend of known_backends from the options; a backend that
# takes none needs no entry.
_BUILDERS: dict[str, Callable[[type[Any], _Request], Backend]] = {"kubernetes": _kubernetes}
