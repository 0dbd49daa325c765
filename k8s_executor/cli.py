"""The ``k8s-executor`` command: check the setup, look at runs and their logs, clean up.

    k8s-executor doctor                   check what a first run needs, one line per check
    k8s-executor doctor --pod             ... and run one worker pod that uses the storage
    k8s-executor ls                       runs in the namespace: age, owner, pods
    k8s-executor logs RUN                 the run's indexes: state, attempts, pod
    k8s-executor logs RUN INDEX [-f]      one index's log (latest attempt); -f follows it
    k8s-executor logs RUN --all           every index's log, lines prefixed [batch/index]
    k8s-executor cleanup RUN...           delete those runs' Jobs, pods, Secrets and storage
    k8s-executor cleanup --older-than 1h  ... of every run older than that
    k8s-executor rbac                     the Role and RoleBinding the executor needs
    k8s-executor build --registry R       snapshot this venv into an image, push it

``doctor`` checks, in order: the cluster answers (kubeconfig, context), the namespace
exists, the executor's verbs are allowed there (SelfSubjectAccessReview), the storage URL
is writable from here, the registry answers and lets us push, podman answers (when the
base image is in its store) and the base image has this Python's major.minor; with
``--pod``, one worker pod writes and reads back an object in the storage (through the
executor, configured from the environment) and says what it saw. A check that cannot
run (an earlier one failed, an option is not set) says why it was skipped.

``cleanup`` only shows what it would delete unless given ``--yes``. Exit codes: 0 done
(``doctor``: every check that ran passed), 1 the cluster refused or failed, a ``doctor``
check failed, or the run or index named does not exist, 2 bad usage. docs/cli.md shows
every command with its output.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import getpass
import os
import re
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .errors import ClusterError, K8sExecutorError

if TYPE_CHECKING:
    from .backends.kubernetes import Cluster

_DURATION = re.compile(r"^(\d+)([smhd])$")


def _duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 2h or 7d")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


def _age(created: str, now: datetime) -> timedelta:
    try:
        when = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return timedelta(0)
    return now - when


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="k8s-executor",
        description="Check the setup, look at k8s_executor runs and their logs, clean up.",
        epilog="Exit codes: 0 done, 1 a failure (or a failed doctor check, or no such run), "
        "2 bad usage.",
    )
    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG)")
    cluster.add_argument("--context", help="kubeconfig context (default: current)")
    cluster.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    sub = parser.add_subparsers(dest="command", required=True)

    doctor = sub.add_parser(
        "doctor",
        parents=[cluster],
        help="check what a first run needs: cluster, namespace, permissions, storage, "
        "registry, podman, base image Python",
        description="Check, in order, what a first run needs, one line per check: "
        "✓ passed, ✗ failed (with the fix), or skipped (and why). Exit code 0 when every "
        "check that ran passed, 1 otherwise.",
    )
    doctor.add_argument(
        "--storage",
        default=os.environ.get("K8S_EXECUTOR_STORAGE"),
        help="fsspec URL or path runs store their data under (default: K8S_EXECUTOR_STORAGE); "
        "a probe object is written, read back and deleted there",
    )
    doctor.add_argument(
        "--registry",
        default=os.environ.get("K8S_EXECUTOR_REGISTRY"),
        help="host[:port]/namespace environment images are pushed to "
        "(default: K8S_EXECUTOR_REGISTRY)",
    )
    doctor.add_argument("--repository", default="k8s-executor-env", help="repository name")
    doctor.add_argument(
        "--image",
        default=os.environ.get("K8S_EXECUTOR_IMAGE"),
        help="an image pods run as is (default: K8S_EXECUTOR_IMAGE); with one, nothing is "
        "built here and the registry, podman and base Python checks are skipped",
    )
    doctor.add_argument(
        "--base-image",
        default=os.environ.get("K8S_EXECUTOR_BASE_IMAGE"),
        help="image the environment image is built on (default: K8S_EXECUTOR_BASE_IMAGE or "
        "python:X.Y-slim)",
    )
    doctor.add_argument(
        "--podman-url",
        help="podman's REST service, needed for a base image in podman's store "
        "(default: CONTAINER_HOST or the standard socket)",
    )
    doctor.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for each answer (default: 5)",
    )
    doctor.add_argument(
        "--pod",
        action="store_true",
        help="also run one worker pod, as a first run would (one Indexed Job of one "
        "index, with the executor's settings from the environment): it writes, reads "
        "back and deletes an object in the storage, and says what it saw",
    )
    doctor.add_argument(
        "--pod-timeout",
        type=_seconds,
        default=300.0,
        metavar="SECONDS",
        help="how long the pod may take to start and answer (default: 300)",
    )

    sub.add_parser("ls", parents=[cluster], help="list runs and their Jobs")

    logs = sub.add_parser(
        "logs",
        parents=[cluster],
        help="print a task's log, or list a run's indexes",
        description="Without INDEX: list the run's indexes with their state, attempts and "
        "pod. With INDEX (N, or BATCH/N as in `b00001/3` when the run has several batches): "
        "print the log of its latest attempt (earlier attempts are noted on stderr). Logs "
        "exist while the run's pods do: an executor deletes them when it shuts down.",
    )
    logs.add_argument("run", metavar="RUN", help="run id (`k8s-executor ls` lists them)")
    logs.add_argument("index", metavar="INDEX", nargs="?", help="N or BATCH/N")
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing while the task runs (waits for it to start); needs INDEX",
    )
    logs.add_argument(
        "--all",
        action="store_true",
        help="print the log of every index, each line prefixed with [batch/index]",
    )
    logs.add_argument(
        "--attempt",
        type=int,
        metavar="N",
        help="the Nth attempt (1 = first) instead of the latest",
    )
    logs.add_argument("--tail", type=int, metavar="LINES", help="only the last LINES lines")

    cleanup = sub.add_parser(
        "cleanup",
        parents=[cluster],
        help="delete runs' Jobs, pods and Secrets (dry run unless --yes)",
    )
    cleanup.add_argument("runs", nargs="*", metavar="RUN", help="run ids to delete")
    cleanup.add_argument(
        "--older-than", type=_duration, metavar="AGE", help="every run older than AGE (2h, 1d)"
    )
    cleanup.add_argument("--all-mine", action="store_true", help="every run started by this user")
    cleanup.add_argument(
        "--finished", action="store_true", help="only runs whose Jobs have all finished"
    )
    cleanup.add_argument("--yes", action="store_true", help="delete (default: only show)")
    cleanup.add_argument(
        "--keep-storage",
        action="store_true",
        help="leave the runs' storage prefixes (default: delete them too, with this "
        "machine's credentials)",
    )
    cleanup.add_argument(
        "--storage-options",
        metavar="JSON",
        help='fsspec options to open the storage, e.g. \'{"profile": "team"}\' '
        "(default: credentials from the environment)",
    )

    build = sub.add_parser(
        "build", help="snapshot this virtualenv into an image and push it (if changed)"
    )
    build.add_argument(
        "--registry",
        default=os.environ.get("K8S_EXECUTOR_REGISTRY"),
        help="host[:port]/namespace to push to (default: K8S_EXECUTOR_REGISTRY)",
    )
    build.add_argument(
        "--base-image",
        default=os.environ.get("K8S_EXECUTOR_BASE_IMAGE"),
        help="image to build on (default: K8S_EXECUTOR_BASE_IMAGE or python:X.Y-slim)",
    )
    build.add_argument("--repository", default="k8s-executor-env", help="repository name")
    build.add_argument(
        "--push",
        choices=("oci", "podman"),
        default=None,
        help="oci: upload changed layers to the registry directly (fast); podman: load the "
        "image into podman and let it push, for registries only podman's configuration "
        "reaches (default: K8S_EXECUTOR_IMAGE_PUSH, else oci)",
    )
    build.add_argument(
        "--platform",
        default=os.environ.get("K8S_EXECUTOR_PLATFORM"),
        help="the cluster nodes' os/arch: linux/amd64 or linux/arm64 (default: "
        "K8S_EXECUTOR_PLATFORM, else this machine's on Linux, linux/amd64 elsewhere)",
    )

    rbac = sub.add_parser("rbac", help="print the Role and RoleBinding the executor needs")
    rbac.add_argument("-n", "--namespace", default="default")
    rbac.add_argument("--service-account", default="k8s-executor")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "rbac":
            return _rbac(args)
        if args.command == "build":
            return _build(args)
        if args.command == "doctor":
            return _doctor(args)
        if args.command == "logs":
            problem = _logs_usage(args)
            if problem:
                print(f"k8s-executor logs: {problem}", file=sys.stderr)
                return 2
        from .backends.kubernetes import Cluster

        cluster = Cluster(args.kubeconfig, args.context, args.namespace)
        try:
            if args.command == "logs":
                return _logs(cluster, args)
            return _ls(cluster) if args.command == "ls" else _cleanup(cluster, args)
        finally:
            cluster.close()
    except K8sExecutorError as exc:
        print(f"k8s-executor: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `k8s-executor logs ... | head`: the reader has what it wanted
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _build(args: argparse.Namespace) -> int:
    if not args.registry:
        print(
            "k8s-executor build: --registry (or K8S_EXECUTOR_REGISTRY) is required", file=sys.stderr
        )
        return 2
    from .image import build_image

    ref = build_image(
        args.registry,
        repository=args.repository,
        base_image=args.base_image,
        platform=args.platform,
        method=args.push,
    )
    print(ref.summary())
    return 0


def _rbac(args: argparse.Namespace) -> int:
    import yaml

    from .backends.kubernetes import rbac_manifests

    print(yaml.safe_dump_all(rbac_manifests(args.namespace, args.service_account), sort_keys=False))
    return 0


def _ls(cluster: object) -> int:
    from .backends.kubernetes import Cluster

    assert isinstance(cluster, Cluster)
    runs = cluster.runs()
    if not runs:
        print(f"no runs in namespace {cluster.namespace}")
        return 0
    now = datetime.now(UTC)
    rows = [("RUN", "AGE", "OWNER", "JOBS", "RUNNING", "SUCCEEDED", "FAILED", "STATE")]
    for r in runs:
        state = "finished" if r.finished else "running"
        rows.append(
            (r.run_id, _human(_age(r.created, now)), r.owner or "?", str(r.jobs),
             str(r.active), str(r.succeeded), str(r.failed), state)
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cleanup(cluster: object, args: argparse.Namespace) -> int:
    from .backends.kubernetes import Cluster

    assert isinstance(cluster, Cluster)
    if not (args.runs or args.older_than or args.all_mine):
        print("k8s-executor cleanup: name runs, or use --older-than or --all-mine", file=sys.stderr)
        return 2
    now = datetime.now(UTC)
    me = getpass.getuser()
    chosen = []
    for run in cluster.runs():
        if args.runs and run.run_id not in args.runs:
            continue
        if args.older_than and _age(run.created, now) < args.older_than:
            continue
        if args.all_mine and run.owner.split("@")[0] != me:
            continue
        if args.finished and not run.finished:
            continue
        chosen.append(run)
    missing = set(args.runs) - {r.run_id for r in chosen}
    for run_id in sorted(missing):
        print(f"{run_id}: no such run in namespace {cluster.namespace} (or filtered out)")
    failed = False
    for run in chosen:
        storage = "" if args.keep_storage else run.storage
        if not args.yes:
            also = f" and storage {storage}" if storage else ""
            print(
                f"would delete run {run.run_id} ({_count(run.jobs, 'Job')}, owner "
                f"{run.owner or '?'})" + also
            )
            continue
        jobs, secrets = cluster.delete_run(run.run_id)
        print(
            f"deleted run {run.run_id}: {_count(len(jobs), 'Job')} (and their pods), "
            f"{_count(len(secrets), 'Secret')}"
        )
        if storage:
            failed |= not _delete_storage(run.run_id, storage, args.storage_options)
    if chosen and not args.yes:
        print("dry run: add --yes to delete")
    return 1 if failed else 0


def _delete_storage(run_id: str, url: str, options_json: str | None) -> bool:
    """Delete a run's storage prefix (what a killed client left); False on failure."""
    import json

    from ._store import RunStore

    # The URL comes from an annotation anyone allowed to edit Secrets could change:
    # delete only what is shaped like a run prefix, <storage>/<run-id>.
    if url.rstrip("/").rsplit("/", 1)[-1] != run_id:
        print(
            f"  not deleting storage {url!r}: it does not end with the run id {run_id}",
            file=sys.stderr,
        )
        return False
    try:
        options = json.loads(options_json) if options_json else {}
        RunStore(url, options).delete_all()
    except (K8sExecutorError, ValueError) as exc:
        print(
            f"  could not delete storage {url}: {exc} (this machine needs credentials for "
            "it: the environment's, or --storage-options JSON)",
            file=sys.stderr,
        )
        return False
    print(f"  deleted storage {url}")
    return True


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# -- doctor ------------------------------------------------------------------------------

_OK, _FAIL, _SKIP = "ok", "fail", "skip"
# The OCI image spec's "empty" blob (the two bytes ``{}``): pushing it proves we may push,
# and leaves nothing that matters (registries keep one copy per digest, and garbage-collect
# unreferenced blobs).
_EMPTY_BLOB = b"{}"
_EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


@dataclass
class _Doctor:
    """Prints one line per check as it completes, and counts the outcomes."""

    marks: dict[str, str]
    outcomes: list[str] = field(default_factory=list)

    def report(self, name: str, status: str, text: str) -> str:
        self.outcomes.append(status)
        if status == _SKIP:
            text = f"skipped ({text})"
        print(f"{self.marks[status]} {name:<12} {text}", flush=True)
        return status

    def run(self, name: str, check: Callable[[], str], deadline: float | None) -> str:
        """Run ``check`` (its text on success; an exception on failure) within ``deadline``."""
        status, text = _bounded(check, deadline)
        return self.report(name, status, text)


def _marks() -> dict[str, str]:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return {_OK: "+", _FAIL: "x", _SKIP: "-"}
    return {_OK: "✓", _FAIL: "✗", _SKIP: "-"}


def _bounded(check: Callable[[], str], deadline: float | None) -> tuple[str, str]:
    """(status, text) of ``check``, or a failure once ``deadline`` seconds have passed (the
    thread is left behind: the command ends soon after)."""
    result: list[tuple[str, str]] = []

    def target() -> None:
        try:
            result.append((_OK, check()))
        except K8sExecutorError as exc:
            result.append((_FAIL, str(exc)))
        except Exception as exc:  # a check must not end the others: report it as such
            result.append((_FAIL, f"{type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=target, name="k8sx-doctor-check", daemon=True)
    thread.start()
    thread.join(deadline)
    if not result:
        return _FAIL, f"no answer within {deadline:g}s"
    return result[0]


def _doctor(args: argparse.Namespace) -> int:
    doctor = _Doctor(_marks())
    timeout: float = args.timeout
    deadline = max(4 * timeout, 10.0)  # a check makes a few calls, each within timeout
    cluster_ok = _doctor_cluster(doctor, args, timeout, deadline)
    if args.storage:
        storage_ok = doctor.run("storage", lambda: _check_storage(args.storage), deadline) == _OK
    else:
        storage_ok = False
        doctor.report(
            "storage",
            _FAIL,
            "not set: the client and the pods exchange calls and results through it; set "
            "K8S_EXECUTOR_STORAGE (storage= in code, --storage here) to a URL both reach, "
            "e.g. s3://BUCKET/k8s-executor (see the storage page of the docs)",
        )
    image_ok = _doctor_image(doctor, args, timeout, deadline)
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
            doctor.report("pod", _SKIP, f"needs the {' and '.join(failed_before)} checks to pass")
        else:
            status, text = _check_pod(args)
            doctor.report("pod", status, text)
    failed = doctor.outcomes.count(_FAIL)
    skipped = doctor.outcomes.count(_SKIP)
    passed = doctor.outcomes.count(_OK)
    summary = f"{passed} passed, {failed} failed, {skipped} skipped"
    print("all checks that ran passed" if not failed else "some checks failed", f"({summary})")
    return 1 if failed else 0


def _doctor_cluster(
    doctor: _Doctor, args: argparse.Namespace, timeout: float, deadline: float
) -> bool:
    """Check the cluster, the namespace and the permissions; True when all three pass."""
    from .backends.kubernetes import RBAC_RULES, Cluster

    resources = ", ".join(r + (f".{g}" if g else "") for g, r, _ in RBAC_RULES)
    try:
        cluster = Cluster(args.kubeconfig, args.context, args.namespace)
    except K8sExecutorError as exc:
        doctor.report("cluster", _FAIL, str(exc))
        doctor.report("namespace", _SKIP, "no cluster")
        doctor.report("permissions", _SKIP, "no cluster")
        return False
    try:

        def reach() -> str:
            context = cluster.context_name()
            where = cluster.host + (f" (context {context})" if context else "")
            return f"{where}: Kubernetes {cluster.version(timeout)}"

        if doctor.run("cluster", reach, deadline) != _OK:
            doctor.report("namespace", _SKIP, "the cluster did not answer")
            doctor.report("permissions", _SKIP, "the cluster did not answer")
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

        if doctor.run("namespace", namespace, deadline) != _OK:
            doctor.report("permissions", _SKIP, f"namespace {ns!r} is not usable")
            return False

        def permissions() -> str:
            total, missing = cluster.missing_permissions(timeout)
            if missing:
                raise ClusterError(
                    f"not allowed in namespace {ns!r}: {', '.join(missing)}; a cluster admin "
                    f"can grant exactly what the executor needs with `k8s-executor rbac -n "
                    f"{ns} --service-account ACCOUNT | kubectl apply -f -` (or bind that Role "
                    "to your user); `kubectl auth can-i --list -n "
                    f"{ns}` shows what you may do"
                )
            return f"all {total} verbs the executor needs on {resources} in {ns}"

        return doctor.run("permissions", permissions, deadline) == _OK
    finally:
        cluster.close()


def _check_storage(url: str) -> str:
    from ._executor import _env_json_object
    from ._options import StorageRetry
    from ._store import RunStore

    probe = f"k8sx-doctor-{uuid.uuid4().hex[:10]}"
    store = RunStore(
        f"{url.rstrip('/')}/{probe}",
        _env_json_object("K8S_EXECUTOR_STORAGE_OPTIONS"),  # as the executor opens it
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


def _registry_parts(registry: str, repository: str) -> tuple[str, str, bool | None]:
    """(host, repository path, insecure) as ``build_image`` reads ``registry``."""
    insecure = True if registry.startswith("http://") else None
    name = registry.removeprefix("http://").removeprefix("https://").rstrip("/")
    host, _, namespace = name.partition("/")
    return host, f"{namespace}/{repository}" if namespace else repository, insecure


def _check_registry(registry: str, repository: str, timeout: float) -> str:
    from .image._registry import Registry, find_credentials

    host, repo, insecure = _registry_parts(registry, repository)
    with Registry(host, insecure=insecure, timeout=timeout) as target:
        target.manifest_digest(repo, "k8sx-doctor-probe")  # answers, and lets us pull
        target.upload_blob(repo, _EMPTY_DIGEST, len(_EMPTY_BLOB), lambda: _EMPTY_BLOB)
        who = find_credentials(host, repo)
        return f"{target.base_url}/{repo}: answers, pull and push allowed " + (
            f"(as {who.username!r})" if who else "(anonymously)"
        )


def _check_podman(url: str, base: str) -> str:
    from .image import BaseImageError
    from .image._podman import inspect_image

    try:
        inspect_image(url, base.removeprefix("containers-storage:"))
    except BaseImageError:
        return f"answers at {url} (the base image is not in its store: see below)"
    return f"answers at {url}; the base image {base} is in its store"


def _check_python(base: str, podman_url: str, insecure: bool | None, timeout: float) -> str:
    from .image import scan_environment
    from .image._base import BaseImage, is_local_reference
    from .image._registry import Registry, split_reference

    env = scan_environment()
    if is_local_reference(base):
        image = BaseImage.from_podman(base, podman_url)
    else:
        source = Registry(split_reference(base)[0], insecure=insecure, timeout=timeout)
        try:
            image = BaseImage.from_registry(base, source, owns_registry=True)
        except BaseException:
            source.close()
            raise
    with image:
        python = image.python(env.python)  # raises PythonMismatchError
    return (
        f"{base} has Python {python.version} ({python.path}), as this environment "
        f"({env.python[0]}.{env.python[1]})"
    )


def _doctor_image(
    doctor: _Doctor, args: argparse.Namespace, timeout: float, deadline: float
) -> bool:
    """Check what the workers' image needs; True when pods have an image to run."""
    from .image import default_base_image
    from .image._base import is_local_reference
    from .image._podman import default_podman_url
    from .image._registry import split_reference

    image = args.image
    if image and image != "auto":
        why = f"image {image}: pods run it as is, nothing is built here"
        for name in ("registry", "podman", "base Python"):
            doctor.report(name, _SKIP, why)
        return True
    if not args.registry:
        doctor.report(
            "registry",
            _FAIL,
            "not set: your environment is copied into an image pushed there, which the "
            "nodes pull; set K8S_EXECUTOR_REGISTRY (registry= in code, --registry here) to "
            "host[:port]/namespace, e.g. ghcr.io/ORG (the quickstart shows a local one), "
            "or name an image that has your environment with K8S_EXECUTOR_IMAGE (image=, "
            "--image)",
        )
        doctor.report("podman", _SKIP, "no registry: no image is built here")
        doctor.report("base Python", _SKIP, "no registry: no image is built here")
        return False
    registry_ok = (
        doctor.run(
            "registry",
            lambda: _check_registry(args.registry, args.repository, timeout),
            deadline,
        )
        == _OK
    )
    base = args.base_image or default_base_image()
    podman_url = args.podman_url or default_podman_url()
    host, _, insecure = _registry_parts(args.registry, args.repository)
    if is_local_reference(base):
        podman_ok = doctor.run("podman", lambda: _check_podman(podman_url, base), deadline) == _OK
        if not podman_ok:
            doctor.report("base Python", _SKIP, f"podman is needed to read {base}")
            return False
    else:
        doctor.report("podman", _SKIP, f"not needed: the base image {base} is in a registry")
        if split_reference(base)[0] == host and not registry_ok:
            doctor.report("base Python", _SKIP, f"the registry holding {base} failed its check")
            return False
    # No deadline: the first time, the base image's layers are listed (then cached).
    status = doctor.run(
        "base Python", lambda: _check_python(base, podman_url, insecure, timeout), None
    )
    return status == _OK and registry_ok


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

    from . import __version__
    from ._store import RunStore

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


def _check_pod(args: argparse.Namespace) -> tuple[str, str]:
    """(status, text) of one worker pod that writes and reads the storage.

    It runs through the executor itself, configured as a program would be (the
    environment's K8S_EXECUTOR_* variables, this command's cluster and image options), in
    this thread, so that Ctrl-C ends it as it ends a program's executor.
    """
    from ._executor import KubernetesExecutor
    from ._options import Timeouts
    from ._pool_errors import WorkerLostError
    from .errors import PodStartError, StorageError

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
        return _FAIL, str(exc)
    finished = False
    try:
        run_url = f"{args.storage.rstrip('/')}/{executor.run_id}"
        try:
            seen = executor.submit(_pod_probe, run_url).result(timeout=timeout + 30)
        except TimeoutError:
            return _FAIL, (
                f"no answer within {timeout + 30:g}s; look at the pod with `kubectl get "
                f"pods -l k8s-executor.io/run={executor.run_id}` while this runs (or a "
                "longer --pod-timeout)"
            )
        except PodStartError as exc:
            hint = ""
            if exc.reason == "CreateContainerConfigError" and os.environ.get(
                "K8S_EXECUTOR_POD_SECRETS"
            ):
                hint = (
                    "; the Secrets named in K8S_EXECUTOR_POD_SECRETS must exist in the pods' "
                    "namespace (`kubectl get secrets`)"
                )
            return _FAIL, f"the pod did not start: {_one_line(str(exc))}{hint}"
        except (WorkerLostError, StorageError) as exc:
            # The worker reads its call from the storage before anything else: most
            # often the pod has no credentials for it, or no route to it.
            return _FAIL, (
                f"the pod could not use the storage {args.storage}: {_one_line(str(exc))}"
                f"{_last_error_line(exc)}; {_POD_CREDENTIALS_FIX}"
            )
        except K8sExecutorError as exc:
            return _FAIL, _one_line(str(exc))
        finished = True
    finally:
        executor.shutdown(wait=True, kill_workers=not finished)
    if not seen["read_back"]:
        return _FAIL, (
            f"pod {seen['pod']}: the object it wrote under {run_url} read back different"
        )
    if seen["shared_options"]:
        credentials = "the storage options shared through the run's Secret"
    elif seen["credential_variables"]:
        credentials = "its environment: " + ", ".join(seen["credential_variables"])
    else:
        credentials = "no credentials in its environment (a service account's, or none)"
    return _OK, (
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


# -- logs --------------------------------------------------------------------------------

_INDEX_KEY = "batch.kubernetes.io/job-completion-index"
_FAILURES_KEY = "batch.kubernetes.io/job-index-failure-count"
_IGNORED_FAILURES_KEY = "batch.kubernetes.io/job-index-ignored-failure-count"
_INDEX_ARG = re.compile(r"^(?:(?P<batch>[a-z0-9-]+)/)?(?P<index>\d+)$")


@dataclass
class _Task:
    """One index of one batch: its pods (attempts, oldest first) and what its Job says."""

    batch: str
    index: int
    pods: list[dict[str, Any]] = field(default_factory=list)
    job_says: str = ""
    """``Succeeded`` / ``Failed`` from the Job's completed/failed indexes, else empty."""
    queued: bool = False
    """Its Job is suspended: it waits for a free worker slot (``max_workers``)."""

    @property
    def name(self) -> str:
        return f"{self.batch}/{self.index}"

    def state(self) -> str:
        if self.pods:
            return _pod_state(self.pods[-1])
        if self.job_says:
            return f"{self.job_says} (pod gone)"
        return "waiting for a worker slot" if self.queued else "not started"


def _logs_usage(args: argparse.Namespace) -> str:
    if args.all and args.index:
        return "give INDEX or --all, not both"
    if args.follow and not args.index:
        return (
            "-f follows one index: give INDEX (stream_logs=True on the executor prints "
            "every log as it comes)"
        )
    if args.attempt is not None and (not args.index or args.attempt < 1):
        return "--attempt N needs INDEX, and N >= 1"
    if args.tail is not None and args.tail < 0:
        return "--tail needs a number >= 0"
    return ""


def _ranges(text: str | None) -> set[int]:
    """Indexes of a Job's ``completedIndexes`` / ``failedIndexes`` ("0-2,5")."""
    found: set[int] = set()
    for part in (text or "").split(","):
        first, _, last = part.partition("-")
        if first.isdigit():
            found.update(range(int(first), int(last or first) + 1))
    return found


def _attempt_order(pod: dict[str, Any]) -> tuple[int, str, str]:
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    failures = 0
    for key in (_FAILURES_KEY, _IGNORED_FAILURES_KEY):
        with contextlib.suppress(TypeError, ValueError):
            failures += int(annotations.get(key) or 0)
    return failures, str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


def _tasks(
    jobs: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]]
) -> dict[tuple[str, int], _Task]:
    from .backends._manifest import LABEL_BATCH

    tasks: dict[tuple[str, int], _Task] = {}
    for job in jobs:
        batch = ((job.get("metadata") or {}).get("labels") or {}).get(LABEL_BATCH)
        if not batch:
            continue
        spec, status = job.get("spec") or {}, job.get("status") or {}
        succeeded = _ranges(status.get("completedIndexes"))
        failed = _ranges(status.get("failedIndexes"))
        for i in range(int(spec.get("completions") or 0)):
            says = "Succeeded" if i in succeeded else "Failed" if i in failed else ""
            tasks[batch, i] = _Task(batch, i, job_says=says, queued=bool(spec.get("suspend")))
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        batch = labels.get(LABEL_BATCH)
        index = labels.get(_INDEX_KEY) or (meta.get("annotations") or {}).get(_INDEX_KEY)
        if not batch or not str(index or "").isdigit():
            continue
        key = (batch, int(str(index)))
        tasks.setdefault(key, _Task(*key)).pods.append(pod)
    for task in tasks.values():
        task.pods.sort(key=_attempt_order)
    return tasks


def _pod_state(pod: dict[str, Any]) -> str:
    """A pod's state in a few words: ``Running``, ``Failed (OOMKilled, exit 137)``..."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    statuses = status.get("containerStatuses") or []
    container = next((c for c in statuses if c.get("name") == "worker"), None)
    container = container or (statuses[0] if statuses else {})
    state = container.get("state") or {}
    if phase == "Pending":
        waiting = (state.get("waiting") or {}).get("reason")
        unschedulable = any(
            c.get("type") == "PodScheduled" and c.get("status") == "False"
            for c in status.get("conditions") or []
        )
        reason = waiting or ("Unschedulable" if unschedulable else "")
        return f"Pending ({reason})" if reason else "Pending"
    if phase in ("Succeeded", "Failed"):
        ended = state.get("terminated") or {}
        reason = status.get("reason") or ended.get("reason") or ""
        details = [
            "" if reason in ("Completed", "Error") else reason,  # those say what phase says
            f"exit {ended['exitCode']}" if phase == "Failed" and "exitCode" in ended else "",
        ]
        details = [d for d in details if d]
        return f"{phase} ({', '.join(details)})" if details else phase
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "Terminating"
    return str(phase)


def _pod_name(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name") or "?")


def _no_run(cluster: Cluster, run_id: str) -> int:
    print(
        f"k8s-executor logs: no run {run_id} in namespace {cluster.namespace}: `k8s-executor ls` "
        "lists the runs there. An executor deletes its Jobs and pods when it shuts down, so "
        "logs are there while it runs (or after its client died, until cleanup); "
        "stream_logs=True prints them as they come",
        file=sys.stderr,
    )
    return 1


def _logs(cluster: Cluster, args: argparse.Namespace) -> int:
    jobs, pods = cluster.run_objects(args.run)
    tasks = _tasks(jobs, pods)
    if not jobs and not pods:
        return _no_run(cluster, args.run)
    if args.all:
        return _print_all(cluster, tasks, args.tail)
    if args.index is None:
        return _list_tasks(args.run, tasks)
    key = _choose(args.run, args.index, tasks)
    if key is None:
        return 1
    if args.follow:
        return _follow(cluster, args, key)
    return _print_one(cluster, tasks[key], args.attempt, args.tail)


def _list_tasks(run_id: str, tasks: dict[tuple[str, int], _Task]) -> int:
    rows = [("INDEX", "STATE", "ATTEMPTS", "POD")]
    for key in sorted(tasks):
        task = tasks[key]
        pod = _pod_name(task.pods[-1]) if task.pods else "-"
        rows.append((task.name, task.state(), str(len(task.pods)), pod))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if len(rows) > 1:
        print(
            f"`k8s-executor logs {run_id} {rows[1][0]}` prints one index's log, --all every one",
            file=sys.stderr,
        )
    return 0


def _choose(run_id: str, text: str, tasks: dict[tuple[str, int], _Task]) -> tuple[str, int] | None:
    """The (batch, index) that INDEX names, or None after saying why there is none."""
    match = _INDEX_ARG.match(text)
    if match is None:
        print(
            f"k8s-executor logs: {text!r} is not an index: N, or BATCH/N (b00000/3)",
            file=sys.stderr,
        )
        return None
    index = int(match["index"])
    batches = sorted({b for b, _ in tasks})
    if match["batch"]:
        key = (match["batch"], index)
        if key in tasks:
            return key
        print(
            f"k8s-executor logs: run {run_id} has no index {text}"
            + (f" (its batches: {_describe(tasks)})" if tasks else ""),
            file=sys.stderr,
        )
        return None
    having = [b for b in batches if (b, index) in tasks]
    if len(having) == 1:
        return having[0], index
    if not having:
        print(
            f"k8s-executor logs: run {run_id} has no index {index} "
            f"(its batches: {_describe(tasks)})",
            file=sys.stderr,
        )
    else:
        print(
            f"k8s-executor logs: run {run_id} has an index {index} in batches "
            f"{', '.join(having)}: name one, as in {having[-1]}/{index}",
            file=sys.stderr,
        )
    return None


def _describe(tasks: dict[tuple[str, int], _Task]) -> str:
    counts: dict[str, int] = {}
    for batch, index in tasks:
        counts[batch] = max(counts.get(batch, 0), index + 1)
    return ", ".join(
        f"{b} with indexes 0-{n - 1}" if n > 1 else f"{b} with index 0"
        for b, n in sorted(counts.items())
    )


def _pick_attempt(task: _Task, attempt: int | None, *, note: bool = True) -> dict[str, Any] | None:
    """The pod of the chosen attempt (default: the latest); ``note``: mention the others
    on stderr."""
    if not task.pods:
        return None
    if attempt is not None and attempt > len(task.pods):
        raise K8sExecutorError(
            f"{task.name} has {len(task.pods)} attempt{'s' if len(task.pods) > 1 else ''} "
            "whose pods are still there"
        )
    number = attempt or len(task.pods)
    if note and len(task.pods) > 1:
        others = "; ".join(
            f"attempt {i} ({_pod_name(p)}: {_pod_state(p)})"
            for i, p in enumerate(task.pods, 1)
            if i != number
        )
        print(
            f"note: {task.name} ran {len(task.pods)} times; this is attempt {number} "
            f"({_pod_name(task.pods[number - 1])}: {_pod_state(task.pods[number - 1])}). "
            f"Others: {others}; --attempt N shows one",
            file=sys.stderr,
        )
    return task.pods[number - 1]


def _write(chunks: Iterable[bytes], prefix: str = "") -> None:
    """Copy log bytes to stdout as they come (with ``prefix``: line by line)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    for chunk in chunks:
        text = decoder.decode(chunk)
        if not prefix:
            sys.stdout.write(text)
            sys.stdout.flush()
            continue
        pending += text
        *lines, pending = pending.split("\n")
        for line in lines:
            print(prefix + line)
    tail = pending + decoder.decode(b"", final=True)
    if prefix and tail:
        print(prefix + tail)
    elif tail:
        sys.stdout.write(tail)
    sys.stdout.flush()


def _not_running(task: _Task, pod: dict[str, Any] | None, exc: ClusterError | None) -> str:
    if pod is None:
        if task.job_says:
            return f"{task.name} {task.job_says.lower()}, but its pod is gone: no log left"
        if task.queued:
            return (
                f"{task.name} has not started yet: its Job waits for a free worker slot "
                "(the run's other tasks use all max_workers)"
            )
        return f"{task.name} has not started yet (no pod)"
    detail = f": {exc}" if exc is not None and exc.status not in (400, 404) else ""
    return f"{task.name} has no log yet: pod {_pod_name(pod)} is {_pod_state(pod)}{detail}"


def _print_one(cluster: Cluster, task: _Task, attempt: int | None, tail: int | None) -> int:
    pod = _pick_attempt(task, attempt)
    if pod is None:
        print(
            f"k8s-executor logs: {_not_running(task, None, None)}; -f waits for it", file=sys.stderr
        )
        return 1
    try:
        chunks = cluster.pod_log(_pod_name(pod), tail_lines=tail)
    except ClusterError as exc:
        if exc.status not in (400, 404):
            raise
        print(
            f"k8s-executor logs: {_not_running(task, pod, exc)}; -f waits for it", file=sys.stderr
        )
        return 1
    _write(chunks)
    return 0


def _print_all(cluster: Cluster, tasks: dict[tuple[str, int], _Task], tail: int | None) -> int:
    for key in sorted(tasks):
        task = tasks[key]
        prefix = f"[{task.name}] "
        pod = task.pods[-1] if task.pods else None
        if pod is None:
            print(f"{prefix}({task.state()}: no log)", file=sys.stderr)
            continue
        try:
            _write(cluster.pod_log(_pod_name(pod), tail_lines=tail), prefix)
        except ClusterError as exc:
            if exc.status not in (400, 404):
                raise
            print(f"{prefix}({_pod_state(pod)}: no log yet)", file=sys.stderr)
    return 0


def _follow(cluster: Cluster, args: argparse.Namespace, key: tuple[str, int]) -> int:
    """Print the index's log as it is written until its container ends; first wait for
    the index to start when it has not (no pod yet, or a pod still pending)."""
    said = ""
    delay = 0.2
    wait = threading.Event()
    while True:
        jobs, pods = cluster.run_objects(args.run)
        task = _tasks(jobs, pods).get(key)
        if task is None:
            if not jobs and not pods:
                return _no_run(cluster, args.run)
            print(
                f"k8s-executor logs: {key[0]}/{key[1]} is gone from run {args.run}", file=sys.stderr
            )
            return 1
        pod = _pick_attempt(task, args.attempt, note=False)
        problem: ClusterError | None = None
        if pod is not None:
            try:
                chunks = cluster.pod_log(_pod_name(pod), follow=True, tail_lines=args.tail)
            except ClusterError as exc:
                if exc.status not in (400, 404):
                    raise
                problem = exc
            else:
                _pick_attempt(task, args.attempt)  # the note about other attempts
                _write(chunks)
                return _ended(cluster, args.run, key, _pod_name(pod))
        elif task.job_says:
            print(f"k8s-executor logs: {_not_running(task, None, None)}", file=sys.stderr)
            return 1
        message = _not_running(task, pod, problem)
        if message != said:
            print(f"{message}; waiting for it (Ctrl-C to stop)", file=sys.stderr, flush=True)
            said = message
        wait.wait(delay)
        delay = min(delay * 2, 2.0)


def _ended(cluster: Cluster, run_id: str, key: tuple[str, int], name: str) -> int:
    """After a follow: say how the pod ended when it did not succeed."""
    _, pods = cluster.run_objects(run_id)
    pod = next((p for p in pods if _pod_name(p) == name), None)
    state = _pod_state(pod) if pod is not None else "deleted"
    if state != "Succeeded":
        print(f"pod {name} of {key[0]}/{key[1]}: {state}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
