"""Whether a Kubernetes cluster is configured here, and how.

One answer for the executor's choice of backend, the Kubernetes backend's connection and
the command line, so that they never disagree about which configuration is used. Nothing
is read or imported: only the environment and the arguments are looked at.
"""

from __future__ import annotations

import os
from typing import Literal

__all__ = ["ConfigSource", "config_source"]

ConfigSource = Literal["kubeconfig", "in-cluster"]


def config_source(kubeconfig: str | None = None, context: str | None = None) -> ConfigSource | None:
    """Where the Kubernetes client configuration comes from, or None when there is none.

    ``"kubeconfig"`` when a kubeconfig file or context is named (``kubeconfig=``,
    ``context=``), ``KUBECONFIG`` is set or ``~/.kube/config`` exists; else
    ``"in-cluster"`` when this process runs in a pod (``KUBERNETES_SERVICE_HOST``, the
    pod's service account); else None. A context names an entry of a kubeconfig, so it
    chooses the kubeconfig even in a pod.
    """
    if (
        kubeconfig is not None
        or context is not None
        or os.environ.get("KUBECONFIG")
        or os.path.exists(os.path.expanduser("~/.kube/config"))
    ):
        return "kubeconfig"
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "in-cluster"
    return None
