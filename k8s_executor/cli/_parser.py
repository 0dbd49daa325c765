"""The command line's arguments: every subcommand, option and default (docs/cli.md)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import timedelta

from .. import ConfigError, Resources
from .._admin import DEFAULT_MAX_WORKERS, EXPIRY_MARGIN, Env

_DURATION = re.compile(r"^(\d+)([smhd])$")


def _duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration like 30m, 2h or 7d (a whole number >= 0 and a unit)"
        )
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _dns_label(what: str) -> Callable[[str], str]:
    """A Kubernetes name that must be a DNS-1123 label (namespaces, service accounts)."""

    def check(text: str) -> str:
        if not _DNS_LABEL.match(text):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {what} name: lower-case letters, digits and '-', "
                "starting and ending with a letter or digit, at most 63 characters"
            )
        return text

    return check


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


def _resource(field: str) -> Callable[[str], str]:
    """A ``Resources`` field given on the command line, checked as the executor checks it."""

    def check(text: str) -> str:
        try:
            Resources(cpu=text) if field == "cpu" else Resources(memory=text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text

    return check


def _whole(least: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        if not text.isdigit() or int(text) < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {least}")
        return int(text)

    return check


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand and option (``--help`` shows them); defaults from
    the ``K8S_EXECUTOR_*`` environment, read as the executor reads it."""
    env = Env()
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
        default=env.storage,
        help="fsspec URL or path runs store their data under (default: K8S_EXECUTOR_STORAGE); "
        "a probe object is written, read back and deleted there",
    )
    doctor.add_argument(
        "--registry",
        default=env.registry,
        help="host[:port]/namespace environment images are pushed to "
        "(default: K8S_EXECUTOR_REGISTRY)",
    )
    doctor.add_argument("--repository", default="k8s-executor-env", help="repository name")
    doctor.add_argument(
        "--image",
        default=env.image,
        help="an image pods run as is (default: K8S_EXECUTOR_IMAGE); with one, nothing is "
        "built here and the registry, podman and base Python checks are skipped",
    )
    doctor.add_argument(
        "--base-image",
        default=env.base_image,
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
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for each answer (default: 5)",
    )
    sizing = doctor.add_argument_group(
        "the workers to size quota, LimitRange and PodSecurity against (as Resources() "
        "and max_workers= in code)"
    )
    sizing.add_argument(
        "--cpu", type=_resource("cpu"), help="CPU request per worker (default: Resources' 1)"
    )
    sizing.add_argument(
        "--memory",
        type=_resource("memory"),
        help="memory request and limit per worker (default: Resources' 2Gi)",
    )
    sizing.add_argument("--gpu", type=_whole(0), help="GPUs per worker (default: Resources' 0)")
    sizing.add_argument(
        "--run-as-root",
        action="store_true",
        help="workers run as root, as with PodOptions(run_as_root=True) (default: a "
        "non-root user, as PodSecurity's restricted level wants)",
    )
    sizing.add_argument(
        "--max-workers",
        type=_whole(1),
        default=DEFAULT_MAX_WORKERS,
        metavar="N",
        help=f"workers at once (default: the executor's {DEFAULT_MAX_WORKERS})",
    )
    sizing.add_argument(
        "--queue",
        help="the Kueue LocalQueue runs would use (default: K8S_EXECUTOR_QUEUE)",
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

    ls = sub.add_parser("ls", parents=[cluster], help="list runs and their Jobs")
    ls.add_argument(
        "--named",
        action="store_true",
        help="list the named runs of --storage instead (calls done, running, failed, lost; "
        "age; deadline), from the storage alone",
    )
    _named_storage_arguments(ls)

    results = sub.add_parser(
        "results",
        help="print a named run's outcomes in submission order, from its storage alone",
    )
    results.add_argument("run", metavar="RUN", help="the run's name (run= in code)")
    results.add_argument("--json", action="store_true", help="one JSON object per call")
    _named_storage_arguments(results)

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
    cleanup.add_argument(
        "--expired",
        action="store_true",
        help=f"every detached run whose deadline passed more than {EXPIRY_MARGIN / 60:g} "
        "minutes ago (a margin for clocks that disagree; and the expired named runs in "
        "their storage)",
    )
    cleanup.add_argument("--yes", action="store_true", help="delete (default: only show)")
    cleanup.add_argument(
        "--keep-storage",
        action="store_true",
        help="leave the runs' storage prefixes (default: delete them too, with this "
        "machine's credentials)",
    )
    _storage_options_argument(cleanup)

    forget = sub.add_parser(
        "forget",
        help="delete a named run's stored results and this machine's key (dry run unless --yes)",
    )
    forget.add_argument("run", metavar="RUN", help="the run's name (run= in code)")
    forget.add_argument(
        "--storage",
        metavar="URL",
        help="the storage the run used (default: K8S_EXECUTOR_STORAGE, else the local "
        "backend's default for named runs)",
    )
    forget.add_argument("--yes", action="store_true", help="delete (default: only show)")
    _storage_options_argument(forget)

    build = sub.add_parser(
        "build", help="snapshot this virtualenv into an image and push it (if changed)"
    )
    build.add_argument(
        "--registry",
        default=env.registry,
        help="host[:port]/namespace to push to (default: K8S_EXECUTOR_REGISTRY)",
    )
    build.add_argument(
        "--base-image",
        default=env.base_image,
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
        default=env.platform,
        help="the cluster nodes' os/arch: linux/amd64 or linux/arm64 (default: "
        "K8S_EXECUTOR_PLATFORM, else this machine's on Linux, linux/amd64 elsewhere)",
    )

    rbac = sub.add_parser("rbac", help="print the Role and RoleBinding the executor needs")
    rbac.add_argument("-n", "--namespace", default="default", type=_dns_label("namespace"))
    rbac.add_argument(
        "--service-account", default="k8s-executor", type=_dns_label("service account")
    )
    return parser


def _named_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """``--storage URL`` of named runs, and ``--storage-options``."""
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="the storage the run used (default: K8S_EXECUTOR_STORAGE, else the local "
        "backend's default for named runs)",
    )
    _storage_options_argument(parser)


def _storage_options_argument(parser: argparse.ArgumentParser) -> None:
    """``--storage-options JSON``: how this machine opens the runs' storage."""
    parser.add_argument(
        "--storage-options",
        metavar="JSON",
        help='fsspec options to open the storage, e.g. \'{"profile": "team"}\' '
        "(default: credentials from the environment)",
    )
