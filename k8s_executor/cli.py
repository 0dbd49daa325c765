"""The ``k8s-executor`` command: look at and clean up runs on the cluster.

    k8s-executor ls                       runs in the namespace: age, owner, pods
    k8s-executor cleanup RUN...           delete those runs' Jobs, pods and Secrets
    k8s-executor cleanup --older-than 1h  ... of every run older than that
    k8s-executor rbac                     the Role and RoleBinding the executor needs
    k8s-executor build --registry R       snapshot this venv into an image, push it

``cleanup`` only shows what it would delete unless given ``--yes``. Exit codes: 0 done,
1 the cluster refused or failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from .errors import K8sExecutorError

_DURATION = re.compile(r"^(\d+)([smhd])$")


def _duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 2h or 7d")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


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
        prog="k8s-executor", description="Look at and clean up k8s_executor runs."
    )
    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--kubeconfig", help="kubeconfig file (default: KUBECONFIG)")
    cluster.add_argument("--context", help="kubeconfig context (default: current)")
    cluster.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("ls", parents=[cluster], help="list runs and their Jobs")

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
        from .backends.kubernetes import Cluster

        cluster = Cluster(args.kubeconfig, args.context, args.namespace)
        try:
            return _ls(cluster) if args.command == "ls" else _cleanup(cluster, args)
        finally:
            cluster.close()
    except K8sExecutorError as exc:
        print(f"k8s-executor: {exc}", file=sys.stderr)
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
    for run in chosen:
        if not args.yes:
            print(f"would delete run {run.run_id} ({run.jobs} Jobs, owner {run.owner or '?'})")
            continue
        jobs, secrets = cluster.delete_run(run.run_id)
        print(
            f"deleted run {run.run_id}: {len(jobs)} Jobs (and their pods), {len(secrets)} Secrets"
        )
    if chosen and not args.yes:
        print("dry run: add --yes to delete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
