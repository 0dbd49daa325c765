"""The admin surface: what the ``k8s-executor`` command uses beyond the public API.

An executor cleans up after itself; this module is for everything around runs that is not
one executor's business: finding the runs in a namespace (:class:`Cluster`,
:class:`RunSummary`), deleting what a killed client left, reading a run's Jobs, pods and
logs (:func:`run_indexes` says what they mean for each index), checking a setup
(``doctor``: access reviews, a storage probe, the registry and base image) and the Role
the executor needs (:func:`rbac_manifests`). The ``K8S_EXECUTOR_*`` environment is read
through :class:`Env`, the executor's own resolver, so the command's defaults never
disagree with what an executor would use.

It is the one private module the command line imports (docs/architecture.md), so that
the rest stay free to change: what it re-exports from them is listed in ``__all__``, and
nothing here reaches into another class's private members. :class:`Cluster` composes the
Kubernetes API boundary (``backends._kubeapi``) as the Kubernetes backend does; like it,
it imports ``kubernetes`` only when it connects.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ._config import Env
from ._contract import (
    ANNOTATION_DEADLINE,
    ANNOTATION_OWNER,
    ANNOTATION_STORAGE,
    CONTAINER,
    EXPIRY_MARGIN,
    LABEL_MANAGED_BY,
    LABEL_NAMED,
    LABEL_QUEUE,
    LABEL_RUN,
    MANAGED_BY,
    past_deadline,
)
from ._durable import forget_named_run, named_runs_root, stored_count
from ._named_report import call_states, report
from ._options import PodOptions, Resources, Scheduling
from ._run_indexes import RunIndex, run_indexes
from ._sessions import forget_run, named_runs, sweep_expired
from ._store import RunStore
from .backends._kubeapi import ONCE, RBAC_RULES, KubeApi
from .backends._manifest import JobParams, job_manifest, run_selector
from .backends._tracker import parse_quantity, waiting_problem, workload_verdict
from .errors import ClusterError
from .image._base import BaseImage, is_local_reference
from .image._podman import default_podman_url, inspect_image
from .image._registry import Registry, find_credentials, split_reference

__all__ = [
    "CONTAINER",
    "DEFAULT_MAX_WORKERS",
    "EXPIRY_MARGIN",
    "LABEL_RUN",
    "RBAC_RULES",
    "BaseImage",
    "Cluster",
    "Env",
    "Registry",
    "RunIndex",
    "RunStore",
    "RunSummary",
    "call_states",
    "default_podman_url",
    "find_credentials",
    "forget_named_run",
    "forget_run",
    "inspect_image",
    "is_local_reference",
    "named_runs",
    "named_runs_root",
    "parse_quantity",
    "past_deadline",
    "rbac_manifests",
    "report",
    "run_indexes",
    "split_reference",
    "stored_count",
    "summarize_runs",
    "sweep_expired",
    "worker_pod",
]

DEFAULT_MAX_WORKERS = 16
"""``max_workers`` of a Kubernetes executor when none is given (the backend's default)."""


@dataclass(frozen=True)
class RunSummary:
    """One run found on the cluster, from its Jobs, pods and Secret."""

    run_id: str
    owner: str
    created: str
    jobs: int
    active: int
    """Pods not finished, as the Jobs count them: running, and waiting to start."""
    succeeded: int
    failed: int
    finished_jobs: int
    storage: str = ""
    """The run's storage prefix (from its Secret), or "" when unknown."""
    running: int = 0
    """Pods whose worker runs (phase Running)."""
    waiting: int = 0
    """Pods not running yet (Pending): being scheduled, pulling, or stuck."""
    queued: int = 0
    """Unfinished Jobs that are suspended: waiting for a worker slot, or for Kueue."""
    reason: str = ""
    """Why pods or Jobs of the run wait, when the cluster says: a pod's start-up problem
    (``CreateContainerConfigError: secret "x" not found``, ``ImagePullBackOff: ...``,
    ``Unschedulable: ...``) or Kueue's (``queued: ...``)."""
    named: str = ""  # the named run it is a session of, if any
    deadline: float | None = None  # a detached run's deadline (epoch seconds)

    @property
    def finished(self) -> bool:
        """Whether every Job of the run has reached a terminal condition."""
        return self.finished_jobs == self.jobs

    @property
    def state(self) -> str:
        """``finished``, ``running``, ``waiting`` or ``queued``, with the reason known."""
        if self.finished:
            return "finished"
        why = ""
        if self.reason:
            why = self.reason if self.reason.startswith("queued: ") else f"waiting: {self.reason}"
        if self.running:
            return "running" + (f"; {why}" if why else "")
        if why:
            return why
        return "queued" if self.queued and not self.waiting else "waiting"


def summarize_runs(
    jobs: Iterable[dict[str, Any]],
    secrets: Iterable[dict[str, Any]],
    pods: Iterable[dict[str, Any]] = (),
    workloads: Iterable[dict[str, Any]] = (),
) -> list[RunSummary]:
    """The runs these objects belong to (as the API returns them), oldest first.

    A pod counts as running only in phase Running: one stuck before its start
    (``CreateContainerConfigError``, ``ImagePullBackOff``, unschedulable) is waiting, with
    its reason, although its Job counts it ``active``. ``workloads`` are Kueue's, matched
    to the run's Jobs by owner.
    """
    found: dict[str, dict[str, Any]] = {}
    job_runs: dict[str, str] = {}  # Job name -> run id

    def entry_of(meta: dict[str, Any]) -> dict[str, Any] | None:
        run_id = (meta.get("labels") or {}).get(LABEL_RUN)
        if not run_id:
            return None
        entry = found.setdefault(
            run_id,
            {"owner": "", "created": meta.get("creationTimestamp") or "", "jobs": 0,
             "active": 0, "succeeded": 0, "failed": 0, "finished_jobs": 0, "storage": "",
             "running": 0, "waiting": 0, "queued": 0, "reason": "", "named": "",
             "deadline": None},
        )  # fmt: skip
        entry["named"] = (meta.get("labels") or {}).get(LABEL_NAMED, entry["named"])
        text = (meta.get("annotations") or {}).get(ANNOTATION_DEADLINE)
        with contextlib.suppress(TypeError, ValueError):
            entry["deadline"] = float(text)  # type: ignore[arg-type]
        entry["created"] = min(entry["created"] or "~", meta.get("creationTimestamp") or "~")
        entry["owner"] = (meta.get("annotations") or {}).get(ANNOTATION_OWNER, entry["owner"])
        return entry

    for secret in secrets:
        meta = secret.get("metadata") or {}
        entry = entry_of(meta)
        if entry is not None:
            annotations = meta.get("annotations") or {}
            entry["storage"] = annotations.get(ANNOTATION_STORAGE, entry["storage"])
    for job in jobs:
        meta = job.get("metadata") or {}
        entry = entry_of(meta)
        if entry is None:
            continue
        job_runs[str(meta.get("name") or "")] = meta["labels"][LABEL_RUN]
        status = job.get("status") or {}
        entry["jobs"] += 1
        for key in ("active", "succeeded", "failed"):
            entry[key] += int(status.get(key) or 0)
        if any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in status.get("conditions") or []
        ):
            entry["finished_jobs"] += 1
        elif (job.get("spec") or {}).get("suspend"):
            entry["queued"] += 1
    for pod in pods:
        meta = pod.get("metadata") or {}
        run_id = (meta.get("labels") or {}).get(LABEL_RUN)
        phase = (pod.get("status") or {}).get("phase")
        if run_id not in found or phase not in ("Pending", "Running"):
            continue
        entry = found[run_id]
        if phase == "Running":
            entry["running"] += 1
            continue
        entry["waiting"] += 1
        problem = waiting_problem(pod)
        if problem is not None and not entry["reason"]:
            reason, message = problem
            entry["reason"] = f"{reason}: {message}" if message else reason
    for workload in workloads:
        owners = (workload.get("metadata") or {}).get("ownerReferences") or []
        run_ids = {job_runs.get(o.get("name")) for o in owners if o.get("kind") == "Job"}
        verdict = workload_verdict(workload)
        for run_id in run_ids - {None}:
            entry = found[str(run_id)]
            if verdict is not None and not entry["reason"]:
                meaning, message = verdict
                entry["reason"] = f"queued: {message}" if meaning == "wait" else message
    return sorted(
        (RunSummary(run_id=run_id, **entry) for run_id, entry in found.items()),
        key=lambda r: r.created,
    )


class Cluster:
    """Administrative access to the runs in one namespace (for the command line).

    Listing and deleting retry as the executor does; the checks of ``doctor`` and the log
    reads are made once, with a short timeout, so that they answer quickly when something
    is down.

    Raises:
        ConfigError: no usable Kubernetes configuration (from the constructor).
    """

    def __init__(
        self,
        kubeconfig: str | None = None,
        context: str | None = None,
        namespace: str | None = None,
    ) -> None:
        self._api = KubeApi.connect(kubeconfig, context, namespace)
        self.namespace = self._api.namespace

    def close(self) -> None:
        """Release the API connection."""
        self._api.close()

    @property
    def host(self) -> str:
        """The API server's URL."""
        return self._api.host

    def context_name(self) -> str | None:
        """The kubeconfig context in use (None when there is none, e.g. inside a pod)."""
        return self._api.context_name()

    # -- runs (`k8s-executor ls` and `cleanup`) -------------------------------------------

    def runs(self) -> list[RunSummary]:
        """Every run with Jobs or a Secret in the namespace, oldest first (see
        :func:`summarize_runs`)."""
        api = self._api
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
        jobs = api.list("list Jobs", api.batch.list_namespaced_job, selector)
        secrets = api.list("list Secrets", api.core.list_namespaced_secret, selector)
        pods = api.list("list pods", api.core.list_namespaced_pod, selector)
        queued = any(
            (job.get("spec") or {}).get("suspend")
            and ((job.get("metadata") or {}).get("labels") or {}).get(LABEL_QUEUE)
            for job in jobs
        )
        workloads = self.workloads() if queued else []
        return summarize_runs(jobs, secrets, pods, workloads)

    def workloads(self) -> list[dict[str, Any]]:
        """Kueue's Workloads in the namespace; none where Kueue is not installed or these
        credentials may not read them (they only add Kueue's words to ``ls``)."""
        api = self._api
        try:
            listing = api.read_json(
                "list Kueue Workloads",
                api.custom.list_namespaced_custom_object,
                "kueue.x-k8s.io",
                "v1beta1",
                self.namespace,
                "workloads",
                retry=ONCE,
            )
        except ClusterError as exc:
            if exc.status in (403, 404):
                return []
            raise
        return list(listing.get("items") or [])

    def delete_run(self, run_id: str) -> tuple[list[str], list[str]]:
        """Delete a run's Jobs (pods with them, in the background) and Secrets; the names
        of both. A delete that fails is said on stderr (the others go on)."""
        api = self._api
        selector = run_selector(run_id)
        deleted: tuple[list[str], list[str]] = ([], [])
        for kind, list_fn, delete_fn, names in (
            ("Job", api.batch.list_namespaced_job, api.batch.delete_namespaced_job, deleted[0]),
            (
                "Secret",
                api.core.list_namespaced_secret,
                api.core.delete_namespaced_secret,
                deleted[1],
            ),
        ):
            for item in api.list(f"list {kind}s", list_fn, selector):
                name = item["metadata"]["name"]
                error = api.delete(kind, delete_fn, name)
                if error is not None:
                    print(f"k8s_executor: {error}", file=sys.stderr)
                names.append(name)
        return deleted

    # -- checks (`k8s-executor doctor`) ---------------------------------------------------

    def version(self, timeout: float) -> str:
        """The server's version (``gitVersion``): proof that it answers and accepts us."""
        info = self._once_json(
            "talk to the Kubernetes API", self._api.version_api().get_code, timeout=timeout
        )
        return str(info.get("gitVersion") or "?")

    def namespace_exists(self, timeout: float) -> bool | None:
        """Whether the namespace exists; None when these credentials cannot tell.

        Reading a namespace is often not allowed outside admin accounts; then a dry-run
        create of a Secret (which the executor must be allowed anyway) answers 404 in a
        namespace that does not exist.
        """
        ns, core = self.namespace, self._api.core
        try:
            self._once_json(f"read namespace {ns}", core.read_namespace, ns, timeout=timeout)
            return True
        except ClusterError as exc:
            if exc.status == 404:
                return False
            if exc.status != 403:
                raise
        try:
            self._once_json(
                f"create a Secret in namespace {ns} (dry run)",
                core.create_namespaced_secret,
                ns,
                {"metadata": {"generateName": "k8sx-doctor-"}},
                dry_run="All",
                timeout=timeout,
            )
            return True
        except ClusterError as exc:
            if exc.status == 404:
                return False
            if exc.status == 403:
                return None
            raise

    def missing_permissions(self, timeout: float) -> tuple[int, list[str]]:
        """(how many verbs were checked, those not allowed) of the executor's Role.

        The verbs are those of :func:`rbac_manifests` (one list for both), each asked with
        a SelfSubjectAccessReview in the namespace: the server's own answer, for whatever
        grants the current credentials (RoleBindings, ClusterRoleBindings, groups).
        Missing ones read ``verb resource[.group]``, e.g. ``create jobs.batch``.
        """
        authz = self._api.authorization_api()
        rules = rbac_manifests(self.namespace)[0]["rules"]
        wanted = [
            (group, resource, verb)
            for rule in rules
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        ]

        def allowed(item: tuple[str, str, str]) -> bool:
            group, resource, verb = item
            name, _, subresource = resource.partition("/")
            attributes = {
                "namespace": self.namespace, "verb": verb, "group": group, "resource": name
            }  # fmt: skip
            if subresource:
                attributes["subresource"] = subresource
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attributes},
            }
            answer = self._once_json(
                f"ask whether we may {verb} {resource}",
                authz.create_self_subject_access_review,
                review,
                timeout=timeout,
            )
            return bool((answer.get("status") or {}).get("allowed"))

        with ThreadPoolExecutor(4, thread_name_prefix="k8sx-access-review") as pool:
            answers = list(pool.map(allowed, wanted))
        missing = [
            f"{verb} {resource}{'.' + group if group else ''}"
            for (group, resource, verb), ok in zip(wanted, answers, strict=True)
            if not ok
        ]
        return len(wanted), missing

    def quotas(self, timeout: float) -> list[dict[str, Any]] | None:
        """The namespace's ResourceQuotas (None: these credentials may not list them)."""
        return self._readable(
            "list ResourceQuotas", self._api.core.list_namespaced_resource_quota, timeout
        )

    def limit_ranges(self, timeout: float) -> list[dict[str, Any]] | None:
        """The namespace's LimitRanges (None: these credentials may not list them)."""
        return self._readable(
            "list LimitRanges", self._api.core.list_namespaced_limit_range, timeout
        )

    def namespace_labels(self, timeout: float) -> dict[str, str] | None:
        """The namespace's labels (None: these credentials may not read it)."""
        ns = self.namespace
        try:
            found = self._once_json(
                f"read namespace {ns}", self._api.core.read_namespace, ns, timeout=timeout
            )
        except ClusterError as exc:
            if exc.status == 403:
                return None
            raise
        return dict((found.get("metadata") or {}).get("labels") or {})

    def local_queues(self, timeout: float) -> list[dict[str, Any]] | None:
        """Kueue's LocalQueues in the namespace (None: these credentials may not list them).

        Raises:
            ClusterError: ``status`` 404 where Kueue is not installed.
        """
        api = self._api

        def list_local_queues(namespace: str, **kwargs: Any) -> Any:
            return api.custom.list_namespaced_custom_object(
                "kueue.x-k8s.io", "v1beta1", namespace, "localqueues", **kwargs
            )

        return self._readable("list Kueue LocalQueues", list_local_queues, timeout)

    def _readable(self, what: str, fn: Any, timeout: float) -> list[dict[str, Any]] | None:
        try:
            listing = self._once_json(what, fn, self.namespace, timeout=timeout)
        except ClusterError as exc:
            if exc.status == 403:
                return None
            raise
        return list(listing.get("items") or [])

    # -- a run's objects and logs (`k8s-executor logs`) ------------------------------------

    def run_objects(self, run_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """A run's Jobs and pods, as the API returns them (JSON)."""
        api = self._api
        selector = run_selector(run_id)
        jobs = api.list("list the run's Jobs", api.batch.list_namespaced_job, selector)
        pods = api.list("list the run's pods", api.core.list_namespaced_pod, selector)
        return jobs, pods

    def pod_log(
        self,
        name: str,
        *,
        follow: bool = False,
        tail_lines: int | None = None,
        timeout: float = 30.0,
    ) -> Iterator[bytes]:
        """The worker container's log, in chunks as they come; with ``follow``, until the
        container ends (then with no short read timeout: a task may print nothing for a
        long while).

        Raises:
            ClusterError: ``status`` 400 while the container has not started, 404 when
                the pod is gone.
        """
        stream = self._api.open_log(
            name,
            CONTAINER,
            follow=follow,
            tail_lines=tail_lines,
            retry=ONCE,
            timeout=None if follow else (timeout, timeout),
        )
        return stream.chunks()

    def _once_json(
        self, what: str, fn: Any, *args: Any, timeout: float, **kwargs: Any
    ) -> dict[str, Any]:
        """One call (no retries) bounded by ``timeout`` seconds; its answer as JSON."""
        return self._api.read_json(
            what, fn, *args, retry=ONCE, _request_timeout=(timeout, timeout), **kwargs
        )


def worker_pod(
    resources: Resources,
    pod: PodOptions | None = None,
    scheduling: Scheduling | None = None,
) -> dict[str, Any]:
    """The worker pod (``metadata`` and ``spec``) an executor with these options has its
    Jobs create, as the API server's admission sees it before LimitRange defaults."""
    params = JobParams(
        run_id="r0doctor",
        batch_id="b00000",
        indexes=1,
        parallelism=1,
        image="IMAGE",
        batch_url="STORAGE",
        resources=resources,
        pod=pod or PodOptions(),
        scheduling=scheduling or Scheduling(),
    )
    template: dict[str, Any] = job_manifest(params)["spec"]["template"]
    return template


def rbac_manifests(namespace: str, service_account: str = "k8s-executor") -> list[dict[str, Any]]:
    """A Role with exactly the verbs the executor needs, and its RoleBinding."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "k8s-executor", "namespace": namespace},
        "rules": [
            {"apiGroups": [group], "resources": [resource], "verbs": list(verbs)}
            for group, resource, verbs in RBAC_RULES
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "k8s-executor", "namespace": namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "k8s-executor",
        },
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
    }
    return [role, binding]
