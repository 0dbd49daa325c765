"""The assembled control plane (:class:`Kubesim`) and the kubeconfig file clients load.

``Kubesim`` wires the store, the HTTP server and the controller half (Job controller, garbage
collector, scheduler, kubelet). The controller half is imported defensively: when a module is
missing the API server still runs, which keeps the API tests independent of it.
"""

from __future__ import annotations

import importlib
import os
import secrets
import shutil
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from tests.kubesim.faults import Faults
from tests.kubesim.server import ApiServer
from tests.kubesim.store import Store


def write_kubeconfig(path: Path, url: str, token: str, *, namespace: str = "default") -> Path:
    """A kubeconfig with one cluster (plain HTTP), one token user and one current context."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": "kubesim", "cluster": {"server": url}}],
        "users": [{"name": "kubesim-admin", "user": {"token": token}}],
        "contexts": [
            {
                "name": "kubesim",
                "context": {"cluster": "kubesim", "user": "kubesim-admin", "namespace": namespace},
            }
        ],
        "current-context": "kubesim",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


class _WallClock:
    """Stand-in clock used only when the controller half's ``clock`` module is absent."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def stop(self) -> None:
        pass


def _optional(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(f"tests.kubesim.{module}"), name)
    except (ImportError, AttributeError):
        return None


class Kubesim:
    """A running kubesim: ``with Kubesim() as sim: load_kube_config(sim.kubeconfig_path)``.

    Attributes: ``url``, ``kubeconfig_path``, ``store``, ``clock``, ``faults``, ``server``,
    ``kubelet``, ``controller``, ``gc``, ``scheduler``, ``quota``, ``serviceaccounts``,
    ``kueue`` (the last seven are ``None`` when the controller half is not available or
    ``controllers=False``).
    Components record Events through :mod:`tests.kubesim.events`.
    """

    def __init__(
        self,
        *,
        runtime: str = "process",
        port: int = 0,
        clock: Any = None,
        controllers: bool = True,
        workdir: str | os.PathLike[str] | None = None,
        bookmark_interval: float = 1.0,
        watch_max_seconds: float = 1800.0,
        history_events: int = 20_000,
        history_seconds: float = 300.0,
        kubelet_options: dict[str, Any] | None = None,
        node: Any = None,
        pod_start_delay: float = 0.0,
    ) -> None:
        self.runtime = runtime
        if pod_start_delay:
            kubelet_options = {**(kubelet_options or {}), "pod_start_delay": pod_start_delay}
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kubesim-"))
        clock_cls = _optional("clock", "Clock")
        self.clock: Any = (
            clock if clock is not None else (clock_cls() if clock_cls else _WallClock())
        )
        self.store = Store(
            self.clock.now, history_events=history_events, history_seconds=history_seconds
        )
        self.token = secrets.token_urlsafe(24)
        self.kubelet: Any = None
        self.controller: Any = None
        self.gc: Any = None
        self.scheduler: Any = None
        self.quota: Any = None
        self.serviceaccounts: Any = None
        self.kueue: Any = None
        self.server = ApiServer(
            self.store,
            port=port,
            token=self.token,
            kubelet=lambda: self.kubelet,
            bookmark_interval=bookmark_interval,
            watch_max_seconds=watch_max_seconds,
        )
        admit_job = _optional("job_admission", "admit_job")
        if admit_job is not None:
            self.store.register_admission("jobs", admit_job)
        # Admission order as kube-apiserver's: LimitRanger (mutating) and PodSecurity, then
        # Kueue's Job webhook, then ResourceQuota last, so that quotas see LimitRange defaults.
        for module in ("limitrange", "podsecurity"):
            register = _optional(module, "register")
            if register is not None:
                register(self.store)
        kueue_webhook = _optional("kueue", "admit_job")
        if kueue_webhook is not None:
            self.store.register_admission("jobs", kueue_webhook)
        quota = _optional("quota", "register")
        if quota is not None:
            quota(self.store)
        if controllers:
            self._build_controllers(runtime, node, kubelet_options or {})
        self.kubeconfig_path = str(self.workdir / "kubeconfig")
        write_kubeconfig(Path(self.kubeconfig_path), self.server.url, self.token)
        self._started = False
        self._closed = False
        self._lock = threading.Lock()

    def _build_controllers(self, runtime: str, node: Any, kubelet_options: dict[str, Any]) -> None:
        controller = _optional("controller", "JobController")
        gc = _optional("gc", "GarbageCollector")
        scheduler = _optional("scheduler", "Scheduler")
        kubelet = _optional("kubelet", "Kubelet")
        serviceaccounts = _optional("serviceaccounts", "ServiceAccountController")
        if serviceaccounts is not None:
            self.serviceaccounts = serviceaccounts(self.store, self.clock)
        quota = _optional("quota", "QuotaController")
        if quota is not None:
            self.quota = quota(self.store, self.clock)
        kueue = _optional("kueue", "KueueController")
        if kueue is not None:
            self.kueue = kueue(self.store, self.clock)
        if controller is not None:
            self.controller = controller(self.store, self.clock)
        if gc is not None:
            self.gc = gc(self.store, self.clock)
        if scheduler is not None:
            self.scheduler = (
                scheduler(self.store, self.clock, node=node)
                if node is not None
                else scheduler(self.store, self.clock)
            )
        if kubelet is not None:
            options = dict(kubelet_options)
            if node is not None:
                options.setdefault("node", node)
            self.kubelet = kubelet(self.store, self.clock, runtime=runtime, **options)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def faults(self) -> Faults:
        return self.server.faults

    def _components(self) -> list[Any]:
        # The quota controller first: it subscribes first, so a quota's status is current
        # before the other components hear of the same change.
        components = (
            self.quota,
            self.serviceaccounts,
            self.kueue,
            self.controller,
            self.gc,
            self.scheduler,
            self.kubelet,
        )
        return [c for c in components if c is not None]

    def start(self) -> Kubesim:
        with self._lock:
            if self._started:
                return self
            self._started = True
        self.server.start()
        for component in self._components():
            component.start()
        return self

    def close(self) -> None:
        """Stop everything: no thread, socket, process or temporary file is left behind."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # Stop serving first (ends watches), then the components (the kubelet ends its processes
        # and its follow-log streams), then join the HTTP handler threads, then the store.
        self.server.begin_stop()
        for component in reversed(self._components()):
            stop = getattr(component, "stop", None)
            if stop is not None:
                stop()
        self.server.stop()
        stop_clock = getattr(self.clock, "stop", None)
        if stop_clock is not None:
            stop_clock()
        self.store.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Kubesim:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def settle(self, timeout: float = 30.0) -> bool:
        """Wait until the Job controller has run every sync requested so far.

        See ``JobController.settle``: after it, a check that something did *not* happen (no
        replacement pod yet, no deadline failure yet) is meaningful, not merely early. ``False``
        on timeout, or when there is no running controller.
        """
        if self.controller is None:
            return False
        return bool(self.controller.settle(timeout))

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` configured from :attr:`kubeconfig_path`.

        Close it (``with sim.api_client() as api:``) so its connection pool does not leak.
        """
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=self.kubeconfig_path, client_configuration=configuration
        )
        return client.ApiClient(configuration)
