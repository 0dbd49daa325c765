"""``k8s-executor doctor``'s view of a shared namespace: what its admission would do to
the worker pods, read from the API (``_policy`` has the rules).

Four lines, each a check: ``quota`` (the ResourceQuotas' headroom against the workers'
Resources times max_workers), ``LimitRange`` (its defaults and bounds), ``PodSecurity`` (the
namespace's enforced level against the worker pod the executor builds) and ``Kueue`` (the
LocalQueues runs can use, and the one asked for). The worker pod is the one
``KubernetesExecutor()`` builds from the command's ``--cpu``, ``--memory``, ``--gpu`` and
``--run-as-root``; a ``pod_template`` or other ``PodOptions`` given in code are not seen.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any, Protocol

from .. import PodOptions, Resources
from .._admin import Cluster, Env, worker_pod
from ..errors import ClusterError
from . import _policy

NAMES = ("quota", "LimitRange", "PodSecurity", "Kueue")


class Reporter(Protocol):
    """What doctor's report offers a check (``doctor.Report``)."""

    def run(self, name: str, check: Callable[[], str], deadline: float | None) -> bool: ...

    def skip(self, name: str, why: str) -> None: ...


class CannotTellError(Exception):
    """Raised by a check that cannot tell (it may not read what it needs, or there is
    nothing to check): its line says skipped, with the message."""


def skip_all(report: Reporter, why: str) -> None:
    """Every line of this module, skipped for ``why``."""
    for name in NAMES:
        report.skip(name, why)


def resources(args: argparse.Namespace) -> Resources:
    """The workers' Resources from ``--cpu``, ``--memory``, ``--gpu`` (else the defaults)."""
    given = {k: getattr(args, k, None) for k in ("cpu", "memory", "gpu")}
    return Resources(**{k: v for k, v in given.items() if v is not None})


def _describe(r: Resources) -> str:
    parts = [f"cpu {r.cpu}" if r.cpu is not None else "", f"memory {r.memory}" if r.memory else ""]
    if r.gpu:
        parts.append(f"{r.gpu_vendor}.com/gpu {r.gpu}")
    return ", ".join(p for p in parts if p) or "no requests"


def check_namespace(
    report: Reporter, cluster: Cluster, args: argparse.Namespace, timeout: float, deadline: float
) -> None:
    """The four lines, each within ``deadline``."""
    ns = cluster.namespace
    workers: int = args.max_workers
    sizing = resources(args)
    pod = worker_pod(sizing, PodOptions(run_as_root=args.run_as_root))
    limit_ranges: list[dict[str, Any]] | None = None

    def limit_range_objects() -> list[dict[str, Any]]:
        nonlocal limit_ranges
        if limit_ranges is None:
            limit_ranges = cluster.limit_ranges(timeout)
            if limit_ranges is None:
                limit_ranges = []  # unknown: sized without its defaults
        return limit_ranges

    def quota() -> str:
        found = cluster.quotas(timeout)
        if found is None:
            raise CannotTellError(
                f"these credentials may not list resourcequotas in {ns}: "
                "`kubectl describe resourcequota` shows what limits the namespace"
            )
        admitted = _policy.with_defaults(pod, limit_range_objects())
        return quota_text(ns, found, admitted, workers, _describe(sizing))

    def limit_range() -> str:
        found = cluster.limit_ranges(timeout)
        if found is None:
            raise CannotTellError(f"these credentials may not list limitranges in {ns}")
        if not found:
            return f"none in {ns}"
        names = ", ".join(sorted(str(lr["metadata"]["name"]) for lr in found))
        problems = _policy.limit_range_violations(pod, found)
        if problems:
            raise ClusterError(
                f"{names} would refuse every worker pod: {'; '.join(problems)}; ask for "
                "resources within its bounds (--cpu/--memory here, Resources in code) or "
                f"see `kubectl describe limitrange -n {ns}`"
            )
        admitted = _policy.with_defaults(pod, found)
        container = admitted["spec"]["containers"][0]["resources"]
        return (
            f"{names}: the worker pods are within its bounds (as admitted: requests "
            f"{_block(container.get('requests'))}, limits {_block(container.get('limits'))})"
        )

    def pod_security() -> str:
        labels = cluster.namespace_labels(timeout)
        if labels is None:
            raise CannotTellError(
                f"these credentials may not read namespace {ns}, whose "
                f"{_policy.ENFORCE_LABEL} label sets the level"
            )
        level = _policy.enforce_level(labels)
        if level == "privileged":
            return f"{ns} enforces no level (privileged): any pod is admitted"
        problems = _policy.pod_security_violations(level, pod)
        if problems:
            raise ClusterError(
                f'{ns} enforces "{level}", which the worker pod violates: '
                f"{', '.join(problems)}; drop what adds it (pod_template, "
                "PodOptions(run_as_root=True)), or use a namespace whose level allows it"
            )
        return f'{ns} enforces "{level}": the worker pods are admitted'

    def kueue() -> str:
        asked = args.queue or Env().queue
        try:
            queues = cluster.local_queues(timeout)
        except ClusterError as exc:
            if exc.status != 404:
                raise
            if asked:
                raise ClusterError(
                    f"runs would ask Kueue's LocalQueue {asked!r} (--queue, "
                    "K8S_EXECUTOR_QUEUE), but this cluster has no Kueue (no kueue.x-k8s.io "
                    "API): unset the queue"
                ) from None
            raise CannotTellError("Kueue is not installed: runs are not queued") from None
        if queues is None:
            raise CannotTellError(f"these credentials may not list Kueue's localqueues in {ns}")
        return queues_text(ns, queues, asked)

    report.run("quota", quota, deadline)
    report.run("LimitRange", limit_range, deadline)
    report.run("PodSecurity", pod_security, deadline)
    report.run("Kueue", kueue, deadline)


def _block(block: Mapping[str, str] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted((block or {}).items())) or "none"


def quota_text(
    ns: str, quotas: list[dict[str, Any]], pod: dict[str, Any], workers: int, sizing: str
) -> str:
    """The quota line: room for how many of ``workers``; raises ClusterError when every
    worker pod (or the run's Secret or Job) would be refused."""
    fits = [f for f in (_policy.quota_fit(q, pod) for q in quotas) if f is not None]
    if not fits:
        return f"no ResourceQuota in {ns} bounds the worker pods: only the nodes bound {workers}"
    for fit in fits:
        if fit.must_specify:
            missing = ", ".join(fit.must_specify)
            raise ClusterError(
                f"ResourceQuota {fit.name} requires {missing} on every container, which the "
                f'worker pod does not set: every worker pod would be refused ("must specify '
                f'{missing}"); give it (limits.cpu: Resources(qos="Guaranteed"); requests: '
                "Resources(cpu=, memory=)) or ask for a LimitRange default"
            )
        too_big = fit.too_big
        if too_big:
            limits = ", ".join(
                f"{name} {_amount(name, each)} each, limited to {_amount(name, hard)}"
                for name, hard, _, each in fit.rows
                if name in too_big
            )
            raise ClusterError(
                f"one worker ({sizing}) asks more than ResourceQuota {fit.name} allows in "
                f"all ({limits}): every worker pod would be refused at once; ask for less "
                "(--cpu/--memory here, Resources in code) or for more quota (`kubectl "
                f"describe resourcequota -n {ns} {fit.name}`)"
            )
        if fit.run_objects:
            raise ClusterError(
                f"ResourceQuota {fit.name} has no room for a run's objects "
                f"({'; '.join(fit.run_objects)}): its Secret or Job would be refused"
            )
    now = min((r for r in (f.room_now() for f in fits) if r is not None), default=workers)
    idle = min((r for r in (f.room_idle() for f in fits) if r is not None), default=workers)
    details = "; ".join(
        f"{fit.name}: "
        + ", ".join(
            f"{name} {_amount(name, max(hard - used, Fraction(0)))} of {_amount(name, hard)} free"
            for name, hard, used, _ in fit.rows
        )
        for fit in fits
        if fit.rows
    )
    each = f"({sizing} each)"
    if now >= workers:
        head = f"room for all {workers} workers {each}"
        return f"{head}: {details}" if details else head
    if idle < workers:
        return (
            f"room for {now} of {workers} workers {each} now, and never more than {idle} at "
            f"once: {details}; the others wait for quota (not an error: pods start as others "
            "end), or ask for less (Resources, max_workers)"
        )
    return (
        f"room for {now} of {workers} workers {each} now, {idle} when {ns} is idle: "
        f"{details}; the others wait for quota while pods use it (not an error, and no "
        "startup clock runs meanwhile)"
    )


def _amount(resource: str, value: Fraction) -> str:
    # Bytes with binary suffixes (memory, ephemeral-storage), counts and CPUs as numbers.
    binary = resource.endswith(("memory", "storage"))
    return _policy.format_quantity(value, "Gi" if binary else "")


def queues_text(ns: str, queues: list[dict[str, Any]], asked: str | None) -> str:
    """The Kueue line: the LocalQueues of the namespace and whether the one asked is one;
    raises ClusterError when it is not, or cannot take work."""
    found: dict[str, str] = {}
    problems: dict[str, str] = {}
    for q in queues:
        name = str((q.get("metadata") or {}).get("name") or "")
        status = q.get("status") or {}
        target = (q.get("spec") or {}).get("clusterQueue", "?")
        found[name] = (
            f"{name} (ClusterQueue {target}: {status.get('pendingWorkloads', 0)} pending, "
            f"{status.get('admittedWorkloads', 0)} admitted)"
        )
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Active" and cond.get("status") == "False":
                problems[name] = str(cond.get("message") or cond.get("reason") or "inactive")
    listing = ", ".join(found[n] for n in sorted(found)) or "none"
    if asked is None:
        if not found:
            return f"installed; no LocalQueue in {ns}: runs are not queued"
        return (
            f"LocalQueues in {ns}: {listing}; runs are not queued unless given one "
            "(K8S_EXECUTOR_QUEUE=NAME, Scheduling(queue=NAME), --queue here)"
        )
    if asked not in found:
        raise ClusterError(
            f"the LocalQueue {asked!r} runs would use (--queue, K8S_EXECUTOR_QUEUE) is not "
            f"in {ns}: every batch would be refused at once; LocalQueues in {ns}: {listing}"
        )
    if asked in problems:
        raise ClusterError(
            f"the LocalQueue {asked!r} cannot take work: {problems[asked]}; LocalQueues in "
            f"{ns}: {listing}"
        )
    return f"runs use {found[asked]}; LocalQueues in {ns}: {listing}"
