"""The service-account controller of kube-controller-manager: a ``default`` SA per namespace.

As upstream's ``serviceaccounts-controller``: on start it ensures ``default`` in every
namespace that exists (kubesim's own ``default`` namespace included), then creates it in each
namespace that is added, and re-creates it when it is deleted while its namespace is still
Active. Since 1.24 the ServiceAccount carries no token Secret, so the object is bare metadata.

Writes happen in the store's dispatcher thread, synchronously with the namespace's ``ADDED``
(the real controller works from an informer, a few milliseconds later).
"""

from __future__ import annotations

import logging
from typing import Any

from tests.kubesim.errors import ApiError

__all__ = ["DEFAULT_NAME", "ServiceAccountController"]

_log = logging.getLogger(__name__)

DEFAULT_NAME = "default"


class ServiceAccountController:
    """Keeps a ``default`` ServiceAccount in every Active namespace."""

    def __init__(self, store: Any, clock: Any = None) -> None:
        self.store = store
        self.clock = clock
        self._unsubscribe: Any = None

    def start(self) -> None:
        self._unsubscribe = self.store.subscribe(self._on_event)
        namespaces, _ = self.store.list("namespaces")
        for namespace in namespaces:
            self._ensure(namespace["metadata"]["name"])

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_event(self, event_type: str, resource: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if resource == "namespaces" and event_type in ("ADDED", "MODIFIED"):
            if (obj.get("status") or {}).get("phase", "Active") == "Active":
                self._ensure(meta["name"])
        elif (resource, event_type, meta.get("name")) == (
            "serviceaccounts",
            "DELETED",
            DEFAULT_NAME,
        ):
            self._ensure(meta.get("namespace", "default"))

    def _ensure(self, namespace: str) -> None:
        try:
            self.store.get("serviceaccounts", namespace, DEFAULT_NAME)
            return
        except ApiError as exc:
            if exc.code != 404:
                raise
        try:
            self.store.create(
                "serviceaccounts",
                namespace,
                {"metadata": {"name": DEFAULT_NAME, "namespace": namespace}},
                admission=False,
            )
        except ApiError as exc:
            # Gone or terminating meanwhile (404/403), or created by someone else (409).
            _log.debug("default ServiceAccount in %s not created: %s", namespace, exc)
