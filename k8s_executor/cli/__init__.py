"""The ``k8s-executor`` command: check the setup, look at runs and their logs, clean up.

    k8s-executor doctor                   check what a first run needs, one line per check
    k8s-executor doctor --pod             ... and run one worker pod that uses the storage
    k8s-executor ls                       runs in the namespace: age, owner, pods
    k8s-executor ls --named               named runs of the storage: calls done, running...
    k8s-executor results RUN [--json]     a named run's outcomes, in submission order
    k8s-executor logs RUN                 the run's indexes: state, attempts, pod
    k8s-executor logs RUN INDEX [-f]      one index's log (latest attempt); -f follows it
    k8s-executor logs RUN --all           every index's log, lines prefixed [batch/index]
    k8s-executor cleanup RUN...           delete those runs' Jobs, pods, Secrets and storage
    k8s-executor cleanup --older-than 1h  ... of every run older than that
    k8s-executor cleanup --expired        ... of every detached run past its deadline (+15 min)
    k8s-executor forget NAME [--yes]      delete a named run's stored results
    k8s-executor rbac                     the Role and RoleBinding the executor needs
    k8s-executor build --registry R       snapshot this venv into an image, push it

One module per program: ``_parser`` (every option), ``doctor`` (with ``doctor_image`` and
``doctor_pod``), ``logs``, ``runs`` (``ls``, ``cleanup``) and ``prepare`` (``rbac``,
``build``). They use the public API and, for what only an administrator needs (the runs
on a cluster, their pods and logs, the storage of a run), ``k8s_executor._admin``.

``cleanup`` only shows what it would delete unless given ``--yes``. Exit codes: 0 done
(``doctor``: every check that ran passed), 1 the cluster refused or failed, a ``doctor``
check failed, or the run or index named does not exist, 2 bad usage. docs/cli.md shows
every command with its output.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from .._admin import Cluster
from ..errors import K8sExecutorError
from . import doctor, logs, named, prepare, runs
from ._parser import build_parser

__all__ = ["main"]


def _negative_values(argv: list[str]) -> list[str]:
    """``--older-than -5m`` → ``--older-than=-5m``: argparse takes a value that starts with
    '-' for an option and says only "expected one argument"; joined, the value reaches its
    own check, which says what a duration looks like."""
    joined: list[str] = []
    i = 0
    while i < len(argv):
        value = argv[i + 1] if i + 1 < len(argv) else ""
        if argv[i] in _VALUED and value.startswith("-") and value[1:2].isdigit():
            joined.append(f"{argv[i]}={value}")
            i += 2
            continue
        joined.append(argv[i])
        i += 1
    return joined


_VALUED = frozenset({"--older-than", "--timeout", "--pod-timeout", "--tail"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    args = build_parser().parse_args(_negative_values(list(sys.argv[1:] if argv is None else argv)))
    try:
        if args.command == "rbac":
            return prepare.rbac(args)
        if args.command == "build":
            return prepare.build(args)
        if args.command == "doctor":
            return doctor.run(args)
        if args.command == "forget":
            return runs.forget(args)
        if args.command == "results":
            return named.results(args)
        if args.command == "ls" and args.named:
            return named.ls(args)
        if args.command == "logs":
            problem = logs.usage_problem(args)
            if problem:
                print(f"k8s-executor logs: {problem}", file=sys.stderr)
                return 2
        cluster = Cluster(args.kubeconfig, args.context, args.namespace)
        try:
            if args.command == "logs":
                return logs.run(cluster, args)
            return runs.ls(cluster) if args.command == "ls" else runs.cleanup(cluster, args)
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
