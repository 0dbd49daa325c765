"""The Kubernetes boundary's words: what the executor must be allowed to do, and the one
table from the client's errors to ours (:func:`translate`), with what happened, the likely
cause and the fix. Used by :mod:`._kubeapi`; it needs nothing of ``kubernetes`` itself (the
client's exceptions are read by their attributes), so its messages are testable alone.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from ..errors import ClusterError, ConfigError

__all__ = ["RBAC_RULES", "check_kubeconfig_files", "translate"]

# What the executor needs to be allowed to do in its namespace (for error messages and
# `k8s-executor rbac`).
RBAC_RULES = (
    ("batch", "jobs", ("create", "get", "list", "watch", "delete", "patch")),
    ("", "pods", ("get", "list", "watch", "delete")),
    ("", "pods/log", ("get",)),
    ("", "secrets", ("create", "get", "list", "delete")),
    # Optional: why the Job controller could not create pods (quota, PodSecurity); without
    # it such refusals are reported after Timeouts.startup instead of at once.
    ("", "events", ("list", "watch")),
    # Only with Scheduling.queue: whether Kueue can admit a batch (else it waits for ever).
    ("kueue.x-k8s.io", "workloads", ("list", "watch")),
)
_RBAC_TEXT = "; ".join(
    f"{', '.join(verbs)} on {resource}{'.' + group if group else ''}"
    for group, resource, verbs in RBAC_RULES
)


def check_kubeconfig_files(kubeconfig: str | None) -> None:
    """A kubeconfig that is not YAML, or not a mapping, is named in a ConfigError (the
    client would raise a parser error or an AttributeError from deep inside)."""
    import yaml

    paths = [kubeconfig] if kubeconfig else (os.environ.get("KUBECONFIG") or "").split(os.pathsep)
    paths = [os.path.expanduser(p) for p in paths if p] or [os.path.expanduser("~/.kube/config")]
    for path in paths:
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except OSError:
            continue  # missing: the loader's own error says where it looked
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(
                f"the kubeconfig {path} is not valid YAML: {problem}{where}; fix the file "
                "or point KUBECONFIG (kubeconfig= in code, --kubeconfig on the command line) "
                "at another one"
            ) from exc
        if data is not None and not isinstance(data, dict):
            raise ConfigError(
                f"the kubeconfig {path} is not a kubeconfig: it holds a "
                f"{type(data).__name__}, not a mapping with clusters, users and contexts "
                "(`kubectl config view` shows a valid one); point KUBECONFIG "
                "(kubeconfig= in code, --kubeconfig on the command line) at another file"
            )


def translate(
    what: str,
    exc: BaseException,
    *,
    namespace: str,
    host: str,
    context: str | None = None,
) -> ClusterError:
    """The one table from the client's errors to ours: ``cannot {what}: ...`` with the
    likely cause and the fix. ``exc`` is an ``ApiException`` (refusals by status) or a
    urllib3 ``HTTPError`` (nothing answers)."""
    # An ApiException carries the answer's status and body; urllib3's errors (nothing
    # answered) carry neither.
    if isinstance(getattr(exc, "status", None), int) and hasattr(exc, "body"):
        return _refused(what, exc, namespace)
    # urllib3 wraps the cause (refused, timed out, unknown host) in layers of repr; the
    # innermost message is the one a person can act on.
    cause: Any = getattr(exc, "reason", None) or exc
    detail = re.sub(r"^(<[^>]*>|\w+\(host=[^)]*\)): ", "", str(cause))
    return ClusterError(
        f"cannot {what}: nothing answers at {host}"
        + (f" (context {context})" if context else "")
        + f": {detail}; check the kubeconfig context (--context, KUBECONFIG), "
        "your network or VPN, and `kubectl cluster-info`"
    )


def _refused(what: str, exc: Any, namespace: str) -> ClusterError:
    status = exc.status
    try:
        body = json.loads(exc.body or "{}")
        detail = body.get("message") or exc.reason
    except (TypeError, ValueError):
        detail = exc.reason
    if status == 401:
        return ClusterError(
            f"cannot {what}: the Kubernetes API did not accept our credentials (401: "
            f"{detail}); the token or certificate of the kubeconfig context may have "
            "expired: log in again (e.g. refresh your cloud provider's credentials) and "
            "check with `kubectl get pods`",
            status=status,
        )
    if status == 403:
        return ClusterError(
            f"cannot {what}: the Kubernetes API refused it ({status}: {detail}). The "
            f"executor needs, in namespace {namespace!r}: {_RBAC_TEXT}. "
            "`k8s-executor rbac` prints a Role granting exactly these; "
            f"`kubectl auth can-i create jobs.batch -n {namespace}` checks one",
            status=status,
        )
    if status == 404 and "namespaces" in str(detail):
        return ClusterError(
            f"cannot {what}: {detail}; create the namespace or pass namespace=",
            status=status,
        )
    return ClusterError(f"cannot {what}: {status} {detail}", status=status)
