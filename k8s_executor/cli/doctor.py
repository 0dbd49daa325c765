"""``k8s-executor doctor``: check, in order, what a first run needs, one line per check.

The checks: the cluster answers (kubeconfig, context), the namespace exists, the
executor's verbs are allowed there (SelfSubjectAccessReview), what the namespace's
admission does to the worker pods (``doctor_cluster``: ResourceQuota headroom, LimitRange,
PodSecurity, Kueue's LocalQueues), the storage URL is writable from here; then the
image (``doctor_image``): the registry answers and lets us push, podman answers (when the
base image is in its store) and the base image has this Python's major.minor; with
``--pod``, one worker pod uses the storage (``doctor_pod``).
A check that cannot run (an earlier one failed, an option is not set) says why it was
skipped. Each check runs within a deadline, so a server that never answers fails its
check instead of hanging the command.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import StorageRetry
from .._admin import RBAC_RULES, Cluster, Env, RunStore
from ..errors import ClusterError, K8sExecutorError
from .doctor_cluster import CannotTellError, check_namespace, skip_all
from .doctor_image import check_image
from .doctor_pod import check_pod

OK, FAIL, SKIP = "ok", "fail", "skip"


@dataclass
class Report:
    """Prints one line per check as it completes, and counts the outcomes."""

    marks: dict[str, str]
    outcomes: list[str] = field(default_factory=list)

    def report(self, name: str, status: str, text: str) -> str:
        """Print the line of a check that ended with ``status`` (OK, FAIL or SKIP)."""
        self.outcomes.append(status)
        if status == SKIP:
            text = f"skipped ({text})"
        print(f"{self.marks[status]} {name:<12} {text}", flush=True)
        return status

    def fail(self, name: str, text: str) -> None:
        """A check that failed (``text`` says why, and the fix)."""
        self.report(name, FAIL, text)

    def skip(self, name: str, why: str) -> None:
        """A check that could not run."""
        self.report(name, SKIP, why)

    def run(self, name: str, check: Callable[[], str], deadline: float | None) -> bool:
        """Run ``check`` (its text on success; an exception on failure) within
        ``deadline``; whether it passed."""
        status, text = bounded(check, deadline)
        return self.report(name, status, text) == OK


def _marks() -> dict[str, str]:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return {OK: "+", FAIL: "x", SKIP: "-"}
    return {OK: "✓", FAIL: "✗", SKIP: "-"}


def bounded(check: Callable[[], str], deadline: float | None) -> tuple[str, str]:
    """(status, text) of ``check``, or a failure once ``deadline`` seconds have passed (the
    thread is left behind: the command ends soon after)."""
    result: list[tuple[str, str]] = []

    def target() -> None:
        try:
            result.append((OK, check()))
        except CannotTellError as exc:
            result.append((SKIP, str(exc)))
        except K8sExecutorError as exc:
            result.append((FAIL, str(exc)))
        except Exception as exc:  # a check must not end the others: report it as such
            result.append((FAIL, f"{type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=target, name="k8sx-doctor-check", daemon=True)
    thread.start()
    thread.join(deadline)
    if not result:
        return FAIL, f"no answer within {deadline:g}s"
    return result[0]


def run(args: argparse.Namespace) -> int:
    """Run every check; 0 when every check that ran passed, else 1."""
    report = Report(_marks())
    timeout: float = args.timeout
    deadline = max(4 * timeout, 10.0)  # a check makes a few calls, each within timeout
    cluster_ok = _check_cluster(report, args, timeout, deadline)
    if args.storage:
        storage_ok = report.run("storage", lambda: _check_storage(args.storage), deadline)
    else:
        storage_ok = False
        report.fail(
            "storage",
            "not set: the client and the pods exchange calls and results through it; set "
            "K8S_EXECUTOR_STORAGE (storage= in code, --storage here) to a URL both reach, "
            "e.g. s3://BUCKET/k8s-executor (see the storage page of the docs)",
        )
    image_ok = check_image(report, args, timeout, deadline)
    if args.pod:
        if not (cluster_ok and storage_ok and image_ok):
            failed_before = [
                name
                for name, ok in (
                    ("cluster", cluster_ok),
                    ("storage", storage_ok),
                    ("image", image_ok),
                )
                if not ok
            ]
            report.skip("pod", f"needs the {' and '.join(failed_before)} checks to pass")
        else:
            passed, text = check_pod(args)
            report.report("pod", OK if passed else FAIL, text)
    failed = report.outcomes.count(FAIL)
    skipped = report.outcomes.count(SKIP)
    passed_count = report.outcomes.count(OK)
    summary = f"{passed_count} passed, {failed} failed, {skipped} skipped"
    print("all checks that ran passed" if not failed else "some checks failed", f"({summary})")
    return 1 if failed else 0


def _check_cluster(
    report: Report, args: argparse.Namespace, timeout: float, deadline: float
) -> bool:
    """Check the cluster, the namespace and the permissions; True when all three pass."""
    resources = ", ".join(r + (f".{g}" if g else "") for g, r, _ in RBAC_RULES)
    try:
        cluster = Cluster(args.kubeconfig, args.context, args.namespace)
    except K8sExecutorError as exc:
        report.fail("cluster", str(exc))
        report.skip("namespace", "no cluster")
        report.skip("permissions", "no cluster")
        skip_all(report, "no cluster")
        return False
    try:

        def reach() -> str:
            context = cluster.context_name()
            where = cluster.host + (f" (context {context})" if context else "")
            return f"{where}: Kubernetes {cluster.version(timeout)}"

        if not report.run("cluster", reach, deadline):
            report.skip("namespace", "the cluster did not answer")
            report.skip("permissions", "the cluster did not answer")
            skip_all(report, "the cluster did not answer")
            return False
        ns = cluster.namespace

        def namespace() -> str:
            exists = cluster.namespace_exists(timeout)
            if exists is False:
                raise ClusterError(
                    f"namespace {ns!r} does not exist: create it (`kubectl create namespace "
                    f"{ns}`) or pick another with -n / the context's namespace (namespace= "
                    "in the executor)"
                )
            if exists is None:
                return (
                    f"{ns} (cannot tell whether it exists: these credentials may neither read "
                    "it nor create Secrets in it; see permissions)"
                )
            return f"{ns} exists"

        if not report.run("namespace", namespace, deadline):
            report.skip("permissions", f"namespace {ns!r} is not usable")
            skip_all(report, f"namespace {ns!r} is not usable")
            return False

        def permissions() -> str:
            total, missing = cluster.missing_permissions(timeout)
            # Events only make refused pods known at once: without them, after the
            # startup timeout. Worth saying, not a failure.
            optional = [
                m for m in missing if m.split(" ")[1].split(".")[0] in ("events", "workloads")
            ]
            missing = [m for m in missing if m not in optional]
            if missing:
                raise ClusterError(
                    f"not allowed in namespace {ns!r}: {', '.join(missing)}; a cluster admin "
                    f"can grant exactly what the executor needs with `k8s-executor rbac -n "
                    f"{ns} --service-account ACCOUNT | kubectl apply -f -` (or bind that Role "
                    "to your user); `kubectl auth can-i --list -n "
                    f"{ns}` shows what you may do"
                )
            if optional:
                return (
                    f"all {total - len(optional)} verbs the executor needs on {resources} in "
                    f"{ns}; not {', '.join(optional)} (optional: pods the cluster refuses "
                    "to create are then reported after Timeouts.startup, not at once; "
                    "without workloads, a run with a Kueue queue cannot tell that Kueue "
                    "will never admit it)"
                )
            return f"all {total} verbs the executor needs on {resources} in {ns}"

        allowed = report.run("permissions", permissions, deadline)
        check_namespace(report, cluster, args, timeout, deadline)
        return allowed
    finally:
        cluster.close()


def _check_storage(url: str) -> str:
    probe = f"k8sx-doctor-{uuid.uuid4().hex[:10]}"
    store = RunStore(
        f"{url.rstrip('/')}/{probe}",
        Env().storage_options,  # as the executor opens it
        retry=StorageRetry(attempts=2, initial_delay=0.1, max_delay=0.5),
    )
    data = b"k8s-executor doctor probe\n"
    try:
        store.put("probe", data)
        if store.get("probe") != data:
            raise K8sExecutorError(
                f"{url}: the probe object read back differs from what was written"
            )
    except K8sExecutorError as exc:
        with contextlib.suppress(Exception):
            store.delete_all()
        raise K8sExecutorError(
            f"{exc}; check the URL, the credentials this machine has for it (fsspec reads "
            "them from the environment, e.g. AWS_PROFILE or GOOGLE_APPLICATION_CREDENTIALS) "
            "and that the bucket or directory exists and is writable"
        ) from exc
    store.delete_all()
    note = ""
    if store.is_local:
        note = (
            " (a local path: pods see it only where the same directory is mounted, e.g. a "
            "shared volume through PodOptions.volumes)"
        )
    return f"{url}: wrote, read back and deleted {probe}/probe{note}"
