"""``k8s-executor doctor --pod``: one worker pod, started through the executor as a first
run would, writes and reads back an object in the storage and says what it saw."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .._admin import LABEL_RUN, Env, RunStore
from ..errors import K8sExecutorError

# What the pods can be given to reach the storage; said whenever the pod cannot use it.
_POD_CREDENTIALS_FIX = (
    "the pods open the storage with credentials of their own: name a Secret whose keys "
    "become their environment with K8S_EXECUTOR_POD_SECRETS=NAME (for S3: "
    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and, for MinIO and other S3-compatible "
    "stores, AWS_ENDPOINT_URL), or hand them this machine's storage options through the "
    "run's Secret with K8S_EXECUTOR_SHARE_STORAGE_OPTIONS=1 (the options in "
    "K8S_EXECUTOR_STORAGE_OPTIONS, as JSON), or use PodOptions(service_account=...) bound "
    "to a cloud identity; see the storage page of the docs"
)
# Environment variables that storage libraries take credentials or endpoints from: the
# probe reports which of them a pod has (their names, never their values).
_CREDENTIAL_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_", "FSSPEC_")


def _pod_probe(run_url: str) -> dict[str, Any]:
    """Run in the pod of ``doctor --pod``: write and read back an object under the
    run's storage prefix (deleted with the run), opened as the worker opens it; say what
    the pod saw."""
    import json
    import platform

    from .. import __version__

    shared = os.environ.get("K8S_EXECUTOR_STORAGE_OPTIONS")
    store = RunStore(run_url, json.loads(shared or "{}"))
    data = f"written by pod {os.environ.get('HOSTNAME', '?')}\n".encode()
    store.put("doctor-probe", data)
    read_back = store.get("doctor-probe") == data
    names = sorted(n for n in os.environ if n.startswith(_CREDENTIAL_PREFIXES))
    return {
        "pod": os.environ.get("HOSTNAME", "?"),
        "python": platform.python_version(),
        "k8s_executor": __version__,
        "read_back": read_back,
        "shared_options": bool(shared and shared.strip() not in ("", "{}")),
        "credential_variables": names,
    }


def check_pod(args: argparse.Namespace) -> tuple[bool, str]:
    """(passed, text) of one worker pod that writes and reads the storage.

    It runs through the executor itself, configured as a program would be (the
    environment's K8S_EXECUTOR_* variables, this command's cluster and image options), in
    this thread, so that Ctrl-C ends it as it ends a program's executor.
    """
    from .. import KubernetesExecutor, PodStartError, StorageError, Timeouts, WorkerLostError

    timeout: float = args.pod_timeout
    try:
        executor = KubernetesExecutor(
            max_workers=1,
            backend="kubernetes",
            storage=args.storage,
            image=args.image,
            registry=args.registry,
            base_image=args.base_image,
            namespace=args.namespace,
            kubeconfig=args.kubeconfig,
            context=args.context,
            timeouts=Timeouts(startup=timeout),
            progress=False,
        )
    except K8sExecutorError as exc:
        return False, str(exc)
    finished = False
    try:
        run_url = f"{args.storage.rstrip('/')}/{executor.run_id}"
        try:
            seen = executor.submit(_pod_probe, run_url).result(timeout=timeout + 30)
        except TimeoutError:
            return False, (
                f"no answer within {timeout + 30:g}s; look at the pod with `kubectl get "
                f"pods -l {LABEL_RUN}={executor.run_id}` while this runs (or a "
                "longer --pod-timeout)"
            )
        except PodStartError as exc:
            hint = ""
            if exc.reason == "CreateContainerConfigError" and Env().pod_secrets:
                hint = (
                    "; the Secrets named in K8S_EXECUTOR_POD_SECRETS must exist in the pods' "
                    "namespace (`kubectl get secrets`)"
                )
            return False, f"the pod did not start: {_one_line(str(exc))}{hint}"
        except (WorkerLostError, StorageError) as exc:
            # The worker reads its call from the storage before anything else: most
            # often the pod has no credentials for it, or no route to it.
            return False, (
                f"the pod could not use the storage {args.storage}: {_one_line(str(exc))}"
                f"{_last_error_line(exc)}; {_POD_CREDENTIALS_FIX}"
            )
        except K8sExecutorError as exc:
            return False, _one_line(str(exc))
        finished = True
    finally:
        executor.shutdown(wait=True, kill_workers=not finished)
    if not seen["read_back"]:
        return False, (
            f"pod {seen['pod']}: the object it wrote under {run_url} read back different"
        )
    if seen["shared_options"]:
        credentials = "the storage options shared through the run's Secret"
    elif seen["credential_variables"]:
        credentials = "its environment: " + ", ".join(seen["credential_variables"])
    else:
        credentials = "no credentials in its environment (a service account's, or none)"
    return True, (
        f"pod {seen['pod']} read its call from {args.storage}, then wrote and read back "
        f"{executor.run_id}/doctor-probe there (deleted with the run), with {credentials}; "
        f"Python {seen['python']}, k8s_executor {seen['k8s_executor']}"
    )


def _one_line(text: str) -> str:
    """The first line of a message (doctor prints one line per check), without a last
    clause that only announces the lines that follow."""
    first = text.strip().splitlines()[0] if text.strip() else text
    return first.rsplit("; ", 1)[0] if first.endswith(":") and "; " in first else first


def _last_error_line(exc: BaseException) -> str:
    """``"; its log ends with: ..."``, the last line of the worker's log that names an
    error, when the message itself spans several lines."""
    tail = getattr(exc, "log_tail", "") or ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    if not errors or errors[-1] in _one_line(str(exc)):
        return ""
    return f"; its log ends with: {errors[-1]}"
