"""Watch streams with the apiserver's resourceVersion semantics (kubernetes-jobs.md §6, §9.18).

* ``resourceVersion`` unset or ``"0"``: synthetic ``ADDED`` for every current object, then live
  events. Any other RV: only events after it, no synthetic ``ADDED``.
* An RV older than the kept history: HTTP 200, then one ``ERROR`` event carrying
  ``Status{code: 410, reason: Expired, message: "too old resource version: X (Y)"}``, then the
  stream ends (apiserver cacher ``newErrWatcher``).
* ``allowWatchBookmarks=true``: a ``BOOKMARK`` (only kind, apiVersion and
  ``metadata.resourceVersion``) after each idle ``bookmark_interval``.
* ``timeoutSeconds``: the server ends the stream after that long; without it, after
  ``max_seconds`` (the real server picks a random time above ``--min-request-timeout``).
* Selectors are applied to both the new and the previous object, as the watch cache does
  (``cacheWatcher.convertToWatchEvent``): an object that starts matching arrives as ``ADDED``,
  one that stops matching as ``DELETED`` carrying its previous state with the new RV.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from tests.kubesim.errors import ApiError
from tests.kubesim.selectors import Selector
from tests.kubesim.store import RESOURCES, Store


class WatchDropped(Exception):
    """The watch was dropped by a fault: the connection must be cut without a clean end."""


@dataclass(frozen=True)
class WatchRequest:
    resource: str
    namespace: str | None
    selector: Selector
    resource_version: str | None
    bookmarks: bool
    timeout_seconds: float | None


@dataclass
class _Handle:
    dropped: bool = False
    stopped: bool = False


@dataclass
class WatchHub:
    """Tracks open watches so faults can drop them and shutdown can end them."""

    store: Store
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _open: set[int] = field(default_factory=set)
    _handles: dict[int, _Handle] = field(default_factory=dict)
    closing: bool = False

    def register(self) -> tuple[int, _Handle]:
        handle = _Handle(stopped=self.closing)
        with self._lock:
            key = id(handle)
            self._handles[key] = handle
        return key, handle

    def unregister(self, key: int) -> None:
        with self._lock:
            self._handles.pop(key, None)

    @property
    def open_count(self) -> int:
        with self._lock:
            return len(self._handles)

    def drop_all(self) -> int:
        with self._lock:
            handles = list(self._handles.values())
        for handle in handles:
            handle.dropped = True
        with self.store.changed:
            self.store.changed.notify_all()
        return len(handles)

    def close_all(self) -> None:
        self.closing = True
        with self._lock:
            handles = list(self._handles.values())
        for handle in handles:
            handle.stopped = True
        with self.store.changed:
            self.store.changed.notify_all()


def parse_resource_version(text: str | None) -> int | None:
    """``None`` for "from now with synthetic ADDED"; else the integer RV (400 if malformed)."""
    if text in (None, "", "0"):
        return None
    assert text is not None
    try:
        value = int(text)
    except ValueError:
        raise ApiError(
            400, "BadRequest", f'resourceVersion: Invalid value: "{text}": must be an integer'
        ) from None
    if value < 0:
        raise ApiError(400, "BadRequest", f'resourceVersion: Invalid value: "{text}"')
    return value


def bookmark(resource: str, rv: int) -> dict[str, Any]:
    info = RESOURCES[resource]
    return {
        "type": "BOOKMARK",
        "object": {
            "kind": info.kind,
            "apiVersion": info.api_version,
            "metadata": {"resourceVersion": str(rv), "creationTimestamp": None},
        },
    }


def stream(
    store: Store,
    hub: WatchHub,
    request: WatchRequest,
    *,
    bookmark_interval: float = 1.0,
    max_seconds: float = 1800.0,
    alive: Callable[[], bool] = lambda: True,
) -> Generator[dict[str, Any], None, None]:
    """Yield watch events (``{"type": ..., "object": ...}``) until the watch ends.

    Raises :class:`WatchDropped` when a fault drops the watch.
    """
    start_rv = parse_resource_version(request.resource_version)
    key, handle = hub.register()
    try:
        deadline = time.monotonic() + (
            request.timeout_seconds if request.timeout_seconds is not None else max_seconds
        )
        if start_rv is None:
            with store.changed:
                initial, _ = store.list(request.resource, request.namespace)
                last = store.current_rv
            for obj in initial:
                if request.selector.matches(obj):
                    yield {"type": "ADDED", "object": obj}
        else:
            last = start_rv
            try:
                store.check_watchable(last)
            except ApiError as exc:
                yield {"type": "ERROR", "object": exc.status()}
                return
        next_bookmark = time.monotonic() + bookmark_interval
        while True:
            with store.changed:
                while (
                    store.current_rv <= last
                    and not handle.dropped
                    and not handle.stopped
                    and not store.closed
                ):
                    now = time.monotonic()
                    wake = min(
                        deadline, next_bookmark if request.bookmarks else deadline, now + 1.0
                    )
                    if now >= deadline or (request.bookmarks and now >= next_bookmark):
                        break
                    store.changed.wait(max(0.0, wake - now))
                    if not alive():
                        return
                if handle.dropped:
                    raise WatchDropped
                if handle.stopped or store.closed:
                    return
                try:
                    events = store.events_since(last, request.resource)
                except ApiError as exc:
                    yield {"type": "ERROR", "object": exc.status()}
                    return
                last = store.current_rv
            sent = False
            for event in events:
                if request.namespace is not None and event.namespace != request.namespace:
                    continue
                out = _convert(event.type, event.obj, event.prev, event.rv, request.selector)
                if out is not None:
                    sent = True
                    yield out
            now = time.monotonic()
            if sent:
                next_bookmark = now + bookmark_interval
            elif request.bookmarks and now >= next_bookmark:
                next_bookmark = now + bookmark_interval
                yield bookmark(request.resource, last)
            if now >= deadline:
                return
    finally:
        hub.unregister(key)


def _convert(
    event_type: str, obj: dict[str, Any], prev: dict[str, Any] | None, rv: int, selector: Selector
) -> dict[str, Any] | None:
    if event_type == "DELETED":
        return {"type": "DELETED", "object": obj} if selector.matches(obj) else None
    current = selector.matches(obj)
    previous = prev is not None and selector.matches(prev)
    if current and previous:
        return {"type": "MODIFIED", "object": obj}
    if current:
        return {"type": "ADDED", "object": obj}
    if previous:
        assert prev is not None
        gone = copy.deepcopy(prev)
        gone["metadata"]["resourceVersion"] = str(rv)
        return {"type": "DELETED", "object": gone}
    return None
