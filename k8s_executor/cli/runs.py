"""``k8s-executor ls`` and ``cleanup``: the runs in a namespace, and deleting them."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from datetime import UTC, datetime, timedelta

from .._admin import (
    Cluster,
    Env,
    RunStore,
    RunSummary,
    forget_run,
    named_runs_root,
    past_deadline,
    stored_count,
    sweep_expired,
)
from ..errors import K8sExecutorError
from ._text import count, print_table


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


def ls(cluster: Cluster) -> int:
    """``k8s-executor ls``: one line per run in the namespace."""
    runs = cluster.runs()
    if not runs:
        print(f"no runs in namespace {cluster.namespace}")
        return 0
    now = datetime.now(UTC)
    rows = [("RUN", "AGE", "OWNER", "JOBS", "RUNNING", "WAITING", "SUCCEEDED", "FAILED", "STATE")]
    for r in runs:
        rows.append(
            (r.run_id, _human(_age(r.created, now)), r.owner or "?", str(r.jobs),
             str(r.running), str(r.waiting), str(r.succeeded), str(r.failed), r.state)
        )  # fmt: skip
    print_table(rows)
    return 0


def cleanup(cluster: Cluster, args: argparse.Namespace) -> int:
    """``k8s-executor cleanup``: delete (or, without ``--yes``, list) the chosen runs."""
    if not (args.runs or args.older_than is not None or args.all_mine or args.expired):
        print(
            "k8s-executor cleanup: name runs, or use --older-than, --all-mine or --expired",
            file=sys.stderr,
        )
        return 2
    now = datetime.now(UTC)
    me = getpass.getuser()
    chosen = []
    for run in cluster.runs():
        if args.runs and run.run_id not in args.runs and run.named not in args.runs:
            continue  # a named run's name chooses every session of it
        if args.expired and not past_deadline(run.deadline, now.timestamp()):
            continue  # live, or within the clocks' margin of its deadline
        if args.older_than is not None and _age(run.created, now) < args.older_than:
            continue
        if args.all_mine and run.owner.split("@")[0] != me:
            continue
        if args.finished and not run.finished:
            continue
        if args.finished and _alive(run.run_id, run.storage, args.storage_options):
            # An idle executor's Jobs have all ended too: its heartbeat tells it apart.
            print(f"{run.run_id}: its client is alive (fresh heartbeat): not touched")
            continue
        chosen.append(run)
    missing = set(args.runs) - {r.run_id for r in chosen} - {r.named for r in chosen}
    for run_id in sorted(missing):
        print(f"{run_id}: no such run in namespace {cluster.namespace} (or filtered out)")
    failed = bool(missing)  # docs/cli.md: a named run that is not there is an error
    for run in chosen:
        storage = "" if args.keep_storage else run.storage
        if not args.yes:
            also = f" and storage {storage}" if storage else ""
            print(
                f"would delete run {run.run_id} ({count(run.jobs, 'Job')}, owner "
                f"{run.owner or '?'})" + also
            )
            continue
        jobs, secrets = cluster.delete_run(run.run_id)
        print(
            f"deleted run {run.run_id}: {count(len(jobs), 'Job')} (and their pods), "
            f"{count(len(secrets), 'Secret')}"
        )
    if args.yes and not args.keep_storage:
        # Storage last, once the workers stopped: a worker still stopping (its grace
        # period) could otherwise write again what was just deleted (a detached run's
        # alive marker, an outcome).
        _wait_for_pods_to_stop(cluster, [r.run_id for r in chosen])
        for run in chosen:
            if run.storage:
                failed |= not _delete_storage(run.run_id, run.storage, args.storage_options)
        failed |= not _named_storage(chosen, args)
    if chosen and not args.yes:
        print("dry run: add --yes to delete")
    return 1 if failed else 0


_STOP_WAIT = 45.0
"""Seconds ``cleanup`` waits for the pods of the runs it deleted to stop before it deletes
their storage: a pod's default grace period (``Timeouts.termination_grace``, 30 s) and
slack. Past it, the storage is deleted anyway and the pods still there are named."""


def _wait_for_pods_to_stop(cluster: Cluster, run_ids: list[str]) -> None:
    deadline = time.monotonic() + _STOP_WAIT
    waiting = list(run_ids)
    while waiting:
        try:
            left = {r: pods for r in waiting if (pods := cluster.run_objects(r)[1])}
        except K8sExecutorError as exc:
            print(f"  cannot list the runs' pods ({exc}); deleting storage now", file=sys.stderr)
            return
        waiting = list(left)
        if not waiting:
            return
        if time.monotonic() > deadline:
            for run_id, pods in left.items():
                print(
                    f"  {run_id}: {count(len(pods), 'pod')} still stopping after "
                    f"{_STOP_WAIT:g} s; its storage is deleted now (run cleanup again if a "
                    "worker writes to it before it stops)",
                    file=sys.stderr,
                )
            return
        time.sleep(0.5)  # polling the API: no watch is worth it for a one-off command


# A client refreshes its heartbeat every Timeouts.heartbeat (30 s by default); its workers
# give it up after Timeouts.heartbeat_grace (300 s by default): so does cleanup.
_HEARTBEAT_GRACE = 300.0


def _alive(run_id: str, url: str, options_json: str | None) -> bool:
    """Whether the run's client still refreshes its heartbeat (unknown counts as alive:
    `--finished` must never touch a live run)."""
    import json

    if not url or url.rstrip("/").rsplit("/", 1)[-1] != run_id:
        return True
    try:
        options = json.loads(options_json) if options_json else {}
        age = RunStore(url, options).age("heartbeat")
    except (K8sExecutorError, ValueError) as exc:
        print(
            f"  {run_id}: cannot read its heartbeat at {url} ({exc}); not touched",
            file=sys.stderr,
        )
        return True
    return age is not None and age < _HEARTBEAT_GRACE


def forget(args: argparse.Namespace) -> int:
    """``k8s-executor forget``: delete (or, without ``--yes``, count) a named run's stored
    results, and this machine's key of the run."""
    import json

    root = named_runs_root(args.storage or Env().storage)
    try:
        options = json.loads(args.storage_options) if args.storage_options else {}
    except ValueError as exc:
        print(f"k8s-executor forget: --storage-options is not JSON: {exc}", file=sys.stderr)
        return 2
    where = f"{root.rstrip('/')}/named/{args.run}"
    n = stored_count(root, args.run, options)
    if not args.yes:
        print(f"would delete named run {args.run}: {count(n, 'stored result')} at {where}")
        return 0
    forget_run(root, args.run, options)
    print(f"deleted named run {args.run}: {count(n, 'stored result')} at {where}")
    return 0


def _named_storage(chosen: list[RunSummary], args: argparse.Namespace) -> bool:
    """The storage of the named runs chosen by name (``cleanup NAME``: all of it), and
    of the expired ones (``--expired``); False if some could not be deleted."""
    import json

    try:
        options = json.loads(args.storage_options) if args.storage_options else {}
    except ValueError:
        return False
    ok = True
    roots = {r.storage.rstrip("/").rsplit("/", 1)[0] for r in chosen if r.named and r.storage}
    for name in sorted({r.named for r in chosen if r.named and r.named in args.runs}):
        for root in sorted({r.storage.rstrip("/").rsplit("/", 1)[0] for r in chosen
                            if r.named == name and r.storage}):  # fmt: skip
            try:
                forget_run(root, name, options)
                print(f"  deleted named run {name} at {root}")
            except K8sExecutorError as exc:
                print(f"  could not delete named run {name} at {root}: {exc}", file=sys.stderr)
                ok = False
    if args.expired:
        for root in sorted(roots):
            for name in sweep_expired(root, options):
                print(f"  deleted expired named run {name} at {root}")
    return ok


def _delete_storage(run_id: str, url: str, options_json: str | None) -> bool:
    """Delete a run's storage prefix (what a killed client left); False on failure."""
    import json

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
