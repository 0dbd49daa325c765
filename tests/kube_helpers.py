"""Executor options that point at a kubesim instance (shared by the test modules)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from k8s_executor import PodOptions, Timeouts


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


def run_objects(sim: Any, run_id: str) -> dict[str, list[str]]:
    """Names of the run's Jobs, pods and Secrets still in the store."""
    selector = f"k8s-executor.io/run={run_id}"
    return {
        kind: [
            o["metadata"]["name"]
            for o in sim.store.list(kind, "default", label_selector=selector)[0]
        ]
        for kind in ("jobs", "pods", "secrets")
    }
