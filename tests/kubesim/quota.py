"""ResourceQuota: the quota admission plugin and the resource quota controller.

Admission (:func:`register`, on every API create of a quota-tracked resource, under the store
lock, as the apiserver's ``ResourceQuota`` plugin):

* A quota takes part only once the controller has filled its ``status.hard`` (a quota the
  controller has not seen yet constrains nothing), and only for the resources of
  ``status.hard`` that the object's evaluator matches.
* Pods: when a quota constrains ``cpu``/``memory``/``requests.*``/``limits.*``, every container
  must set them, else 403 ``pods "NAME" is forbidden: failed quota: Q: must specify limits.cpu
  for: main``. A tracked resource without ``status.used`` is 403 ``status unknown for quota``.
* ``used + requested > hard`` for any resource: 403 ``pods "NAME" is forbidden: exceeded quota:
  Q, requested: pods=1, used: pods=0, limited: pods=0`` (only the exceeded resources, sorted;
  quantities in canonical form). The name is the final one: the store resolves
  ``generateName`` before admission, as the traces show (``pods "qr-0-x5zk5" is forbidden``).
* Otherwise the request is charged at once: ``status.used`` of every matching quota grows
  before the object is stored.

Tracked: ``pods`` (non-terminal pods), ``count/pods``, ``requests.cpu``/``cpu``,
``requests.memory``/``memory``, ``limits.cpu``, ``limits.memory`` and the ``ephemeral-storage``
trio (pod requests are the containers' sum, or an init container's if larger), and object
counts ``count/<resource>[.<group>]`` (``count/jobs.batch``) plus the legacy ``secrets``,
``configmaps`` and ``resourcequotas``. Scopes and ``scopeSelector`` are not supported.

The controller (:class:`QuotaController`) recomputes ``status.hard`` (= ``spec.hard``) and
``status.used`` from the store on every change in a namespace that has quotas, synchronously in
the store's dispatcher thread: a quota created before a Job is in force before the Job
controller sees the Job, and pods that end (Succeeded/Failed) or go away give their share back.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from tests.kubesim.errors import ApiError
from tests.kubesim.store import RESOURCES, FieldError, invalid

__all__ = ["Quantity", "QuotaController", "admit", "register", "usage"]

Obj = dict[str, Any]

_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {exp: suffix for suffix, exp in _DECIMAL.items()}
_BAD_QUANTITY = (
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)

COMPUTE = ("cpu", "memory", "ephemeral-storage")
# podEvaluator validationSet: quota on these makes every container name them.
_MUST_SPECIFY = frozenset(
    ("cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory")
)
_POD_RESOURCES = frozenset(
    {"pods", "count/pods"}
    | set(COMPUTE)
    | {f"requests.{r}" for r in COMPUTE}
    | {f"limits.{r}" for r in COMPUTE}
)
# Core resources whose plain name is an object-count quota (ResourceSecrets, ...).
_LEGACY_COUNTS = {
    "secrets": "secrets",
    "configmaps": "configmaps",
    "resourcequotas": "resourcequotas",
}
# Resources whose creates are checked (events are never counted here).
TRACKED = ("pods", "jobs", "secrets", "configmaps", "resourcequotas")


class Quantity:
    """A ``resource.Quantity``: an exact value and the format it prints in."""

    __slots__ = ("format", "value")

    def __init__(self, value: Fraction | int, format: str = "DecimalSI") -> None:
        self.value = Fraction(value)
        self.format = format

    @classmethod
    def parse(cls, text: Any) -> Quantity:
        """Parse ``"500m"``, ``"64Mi"``, ``"1e3"``, ``2``...; ``ValueError`` if malformed."""
        if isinstance(text, bool) or not isinstance(text, str | int | float):
            raise ValueError(_BAD_QUANTITY)
        raw = str(text).strip()
        match = _QUANTITY.match(raw)
        if match is None or match.group(1).count(".") > 1 or match.group(1) in (".", "+.", "-."):
            raise ValueError(_BAD_QUANTITY)
        number, suffix = match.groups()
        try:
            mantissa = Fraction(number)
        except ValueError:
            raise ValueError(_BAD_QUANTITY) from None
        if suffix in _BINARY:
            return cls(mantissa * 1024 ** _BINARY[suffix], "BinarySI")
        if suffix in _DECIMAL:
            return cls(mantissa * Fraction(10) ** _DECIMAL[suffix], "DecimalSI")
        if suffix[:1] in ("e", "E"):
            try:
                exponent = int(suffix[1:])
            except ValueError:
                raise ValueError(_BAD_QUANTITY) from None
            return cls(mantissa * Fraction(10) ** exponent, "DecimalExponent")
        raise ValueError(_BAD_QUANTITY)

    def __add__(self, other: Quantity) -> Quantity:
        # As Go's Quantity.Add: a zero takes the other's format, so a quota's used "0"
        # charged 512Mi prints 512Mi (not 536870912) before the controller recomputes it.
        return Quantity(self.value + other.value, other.format if self.value == 0 else self.format)

    def __str__(self) -> str:
        """The canonical form, as ``Quantity.String()`` prints it."""
        value = self.value
        if self.format == "BinarySI" and value.denominator == 1 and abs(value) >= 1024:
            number = int(value)
            power = 0
            while power < 6 and number % 1024 == 0:
                number //= 1024
                power += 1
            suffix = {v: k for k, v in _BINARY.items()}.get(power, "")
            return f"{number}{suffix}"
        # Decimal: rounded up to nano units, then the largest exponent (a multiple of 3) that
        # leaves an integer mantissa.
        nanos = -((-value * 10**9) // 1)
        exponent = -9
        while exponent < 18 and nanos % 1000 == 0 and nanos != 0:
            nanos //= 1000
            exponent += 3
        if nanos == 0:
            return "0"
        if self.format == "DecimalExponent":
            return f"{nanos}e{exponent}" if exponent else str(nanos)
        return f"{nanos}{_DECIMAL_SUFFIX[exponent]}"


def _count_name(resource: str) -> str:
    return f"count/{RESOURCES[resource].qualified}"


def _matches(resource: str, name: str) -> bool:
    """Whether the evaluator of ``resource`` tracks quota resource ``name``."""
    if resource == "pods":
        return name in _POD_RESOURCES
    return name == _count_name(resource) or _LEGACY_COUNTS.get(resource) == name


def counts(pod: Obj, now: datetime) -> bool:
    """upstream ``QuotaV1Pod``: terminal pods, and pods stuck terminating long past their
    grace period, are not charged."""
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    meta = pod.get("metadata") or {}
    deleted, grace = meta.get("deletionTimestamp"), meta.get("deletionGracePeriodSeconds")
    if deleted and grace is not None:
        moment = datetime.fromisoformat(str(deleted).replace("Z", "+00:00"))
        if now > moment + timedelta(seconds=int(grace)):
            return False
    return True


def _resources(container: Obj, kind: str) -> dict[str, Quantity]:
    found = ((container.get("resources") or {}).get(kind)) or {}
    result: dict[str, Quantity] = {}
    for name in COMPUTE:
        if name in found:
            try:
                result[name] = Quantity.parse(found[name])
            except ValueError:
                continue
    return result


def _pod_totals(spec: Obj, kind: str) -> dict[str, Quantity]:
    """upstream ``PodRequests``/``PodLimits``: the containers' sum, raised to any larger
    init container, plus the pod overhead."""
    total: dict[str, Quantity] = {}
    for container in spec.get("containers") or []:
        for name, quantity in _resources(container, kind).items():
            total[name] = total[name] + quantity if name in total else quantity
    for container in spec.get("initContainers") or []:
        for name, quantity in _resources(container, kind).items():
            if name not in total or quantity.value > total[name].value:
                total[name] = quantity
    for name, raw in (spec.get("overhead") or {}).items():
        if name in total:
            try:
                total[name] = total[name] + Quantity.parse(raw)
            except ValueError:
                continue
    return total


def _compute_usage(requests: dict[str, Quantity], limits: dict[str, Quantity]) -> dict[str, Any]:
    """upstream ``podComputeUsageHelper`` (without the ``pods`` count)."""
    result: dict[str, Quantity] = {}
    for name, quantity in requests.items():
        result[name] = quantity
        result[f"requests.{name}"] = quantity
    for name, quantity in limits.items():
        result[f"limits.{name}"] = quantity
    return result


def usage(resource: str, obj: Obj, now: datetime) -> dict[str, Quantity]:
    """What ``obj`` charges against quota (upstream evaluators' ``Usage``)."""
    if resource != "pods":
        result = {_count_name(resource): Quantity(1)}
        if resource in _LEGACY_COUNTS:
            result[_LEGACY_COUNTS[resource]] = Quantity(1)
        return result
    result = {"count/pods": Quantity(1)}
    if not counts(obj, now):
        return result
    spec = obj.get("spec") or {}
    result["pods"] = Quantity(1)
    result.update(_compute_usage(_pod_totals(spec, "requests"), _pod_totals(spec, "limits")))
    return result


def _must_specify(pod: Obj, required: set[str]) -> str | None:
    """upstream ``podEvaluator.Constraints``: every container names each required resource."""
    if not required:
        return None
    missing: dict[str, set[str]] = {}
    spec = pod.get("spec") or {}
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        named = set(
            _compute_usage(_resources(container, "requests"), _resources(container, "limits"))
        )
        for name in required - named:
            missing.setdefault(name, set()).add(str(container.get("name", "")))
    if not missing:
        return None
    parts = [f"{name} for: {','.join(sorted(missing[name]))}" for name in sorted(missing)]
    return "must specify " + "; ".join(parts)


def _pretty(values: dict[str, Quantity]) -> str:
    return ",".join(f"{name}={values[name]}" for name in sorted(values))


def _quantities(raw: Obj | None) -> dict[str, Quantity]:
    result: dict[str, Quantity] = {}
    for name, value in (raw or {}).items():
        try:
            result[name] = Quantity.parse(value)
        except ValueError:
            continue
    return result


def _forbidden(resource: str, name: str, why: str) -> ApiError:
    qualified = RESOURCES[resource].qualified
    return ApiError(
        403,
        "Forbidden",
        f'{qualified} "{name}" is forbidden: {why}',
        details={"name": name, "kind": RESOURCES[resource].name}
        | ({"group": RESOURCES[resource].group} if RESOURCES[resource].group else {}),
    )


def admit(store: Any, resource: str, op: str, new: Obj) -> Obj:
    """The quota admission of one create; charges the quotas it passes (see the module doc)."""
    if resource == "resourcequotas":
        new = _normalize_quota(op, new)
    if op != "CREATE":
        return new
    meta = new.get("metadata") or {}
    namespace = meta.get("namespace", "default")
    name = meta.get("name") or meta.get("generateName") or "Unknown"
    quotas, _ = store.list("resourcequotas", namespace)
    if not quotas:
        return new
    delta = usage(resource, new, store.now())
    charged: list[tuple[str, dict[str, Quantity]]] = []
    for quota in sorted(quotas, key=lambda q: q["metadata"]["name"]):
        quota_name = quota["metadata"]["name"]
        status = quota.get("status") or {}
        hard = _quantities(status.get("hard"))
        restricted = {r for r in hard if _matches(resource, r)}
        if not restricted:
            continue
        if resource == "pods":
            problem = _must_specify(new, restricted & _MUST_SPECIFY)
            if problem is not None:
                raise _forbidden(resource, name, f"failed quota: {quota_name}: {problem}")
        used = _quantities(status.get("used"))
        if any(r not in used for r in restricted):
            raise _forbidden(
                resource,
                name,
                f"status unknown for quota: {quota_name}, "
                f"resources: {','.join(sorted(restricted))}",
            )
        requested = {r: q for r, q in delta.items() if r in hard}
        if not requested:
            continue
        new_used = dict(used)
        for r, q in requested.items():
            new_used[r] = new_used[r] + q if r in new_used else q
        exceeded = sorted(r for r in requested if new_used[r].value > hard[r].value)
        if exceeded:
            raise _forbidden(
                resource,
                name,
                f"exceeded quota: {quota_name}, "
                f"requested: {_pretty({r: requested[r] for r in exceeded})}, "
                f"used: {_pretty({r: used[r] for r in exceeded if r in used})}, "
                f"limited: {_pretty({r: hard[r] for r in exceeded})}",
            )
        charged.append((quota_name, new_used))
    for quota_name, new_used in charged:

        def charge(quota: Obj, new_used: dict[str, Quantity] = new_used) -> bool:
            status = quota.setdefault("status", {})
            status["used"] = {r: str(q) for r, q in sorted(new_used.items())}
            return True

        store.mutate("resourcequotas", namespace, quota_name, charge)
    return new


def _normalize_quota(op: str, quota: Obj) -> Obj:
    """ResourceQuota strategy and validation: canonical quantities, status cleared on create."""
    name = (quota.get("metadata") or {}).get("name", "")
    spec = quota.setdefault("spec", {})
    hard = spec.get("hard") or {}
    errors: list[FieldError] = []
    canonical: dict[str, str] = {}
    for resource, raw in hard.items():
        try:
            quantity = Quantity.parse(raw)
        except ValueError:
            raise ApiError(
                400,
                "BadRequest",
                f'ResourceQuota in version "v1" cannot be handled as a ResourceQuota: '
                f"{_BAD_QUANTITY}",
            ) from None
        path = f"spec.hard[{resource}]"
        if quantity.value < 0:
            errors.append(
                FieldError(path, "Invalid", "must be greater than or equal to 0", value=str(raw))
            )
        elif quantity.value.denominator != 1 and (
            resource in ("pods", *_LEGACY_COUNTS.values()) or resource.startswith("count/")
        ):
            errors.append(FieldError(path, "Invalid", "must be an integer", value=str(raw)))
        canonical[resource] = str(quantity)
    if errors:
        raise invalid("resourcequotas", name, errors)
    if hard:
        spec["hard"] = canonical
    if op == "CREATE":
        quota["status"] = {}
    return quota


def register(store: Any) -> None:
    """Install the quota admission on every tracked resource of ``store``."""
    for resource in TRACKED:

        def fn(op: str, old: Obj | None, new: Obj, resource: str = resource) -> Obj:
            return admit(store, resource, op, new)

        store.register_admission(resource, fn)


class QuotaController:
    """The resource quota controller: keeps ``status.hard``/``status.used`` of every quota
    current (recomputed from the store on each change in its namespace)."""

    def __init__(self, store: Any, clock: Any = None) -> None:
        self.store = store
        self.clock = clock
        self._unsubscribe: Any = None

    def start(self) -> None:
        self._unsubscribe = self.store.subscribe(self._on_event)
        quotas, _ = self.store.list("resourcequotas")
        for namespace in {q["metadata"]["namespace"] for q in quotas}:
            self.sync_namespace(namespace)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_event(self, event_type: str, resource: str, obj: Obj) -> None:
        if resource not in TRACKED:
            return
        namespace = (obj.get("metadata") or {}).get("namespace")
        if namespace:
            self.sync_namespace(namespace)

    def sync_namespace(self, namespace: str) -> None:
        quotas, _ = self.store.list("resourcequotas", namespace)
        for quota in quotas:
            try:
                self.store.mutate(
                    "resourcequotas", namespace, quota["metadata"]["name"], self._recompute
                )
            except ApiError as exc:
                if exc.code != 404:  # deleted meanwhile
                    raise

    def _recompute(self, quota: Obj) -> bool:
        # Runs under the store lock (mutate), so the objects it counts are a consistent view.
        namespace = quota["metadata"]["namespace"]
        hard = _quantities((quota.get("spec") or {}).get("hard"))
        now = self.store.now()
        # A sum takes the format of its first term (quota.Add), so memory stays in Mi/Gi.
        found: dict[str, Quantity] = {}
        for resource in TRACKED:
            if not any(_matches(resource, r) for r in hard):
                continue
            objects, _ = self.store.list(resource, namespace)
            for obj in objects:
                for r, q in usage(resource, obj, now).items():
                    if r in hard:
                        found[r] = found[r] + q if r in found else q
        used = {r: found.get(r, Quantity(0)) for r in hard}
        status = {
            "hard": {r: str(q) for r, q in sorted(hard.items())},
            "used": {r: str(q) for r, q in sorted(used.items())},
        }
        if quota.get("status") == status:
            return False
        quota["status"] = status
        return True
