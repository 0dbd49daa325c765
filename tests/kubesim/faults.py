"""Fault injection handle for tests: API failures, slow responses, dropped and expired watches,
and RBAC denials.

Every rule is checked by the HTTP server before it touches the store, so a faulted request has
no effect, as a request refused by a real apiserver's filters.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.kubesim.errors import ApiError

_MESSAGES = {
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: kubesim injected fault"),
    502: ("InternalError", "Internal error occurred: kubesim injected fault"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: ("Timeout", "the server was unable to return a response in the time allotted"),
    409: ("Conflict", "Operation cannot be fulfilled: kubesim injected conflict"),
}


@dataclass
class _Failure:
    remaining: int
    code: int
    retry_after: int | None
    methods: frozenset[str] | None
    path: re.Pattern[str] | None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.methods is None or method in self.methods) and (
            self.path is None or self.path.search(path) is not None
        )


@dataclass
class _Delay:
    seconds: float
    methods: frozenset[str] | None
    path: re.Pattern[str] | None
    remaining: int | None

    def matches(self, method: str, path: str) -> bool:
        return (self.methods is None or method in self.methods) and (
            self.path is None or self.path.search(path) is not None
        )


@dataclass
class Faults:
    """What tests use to make the API misbehave. Thread-safe."""

    _compact: Callable[[], None]
    _drop_watches: Callable[[], int]
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _failures: list[_Failure] = field(default_factory=list)
    _delays: list[_Delay] = field(default_factory=list)
    _denied: set[tuple[str, str, str | None]] = field(default_factory=set)
    _closing: threading.Event = field(default_factory=threading.Event)

    def fail_next(
        self,
        n: int = 1,
        code: int = 429,
        *,
        retry_after: int | None = 1,
        methods: str | tuple[str, ...] | None = None,
        path_regex: str | None = None,
    ) -> None:
        """Fail the next ``n`` matching requests with ``code`` (429, 500, 503, 504...).

        429 and 503 carry ``Retry-After: <retry_after>`` (pass ``None`` to omit it).
        """
        with self._lock:
            self._failures.append(
                _Failure(
                    n,
                    code,
                    retry_after if code in (429, 503) else None,
                    _methods(methods),
                    re.compile(path_regex) if path_regex else None,
                )
            )

    def delay(
        self,
        seconds: float,
        *,
        path_regex: str | None = None,
        methods: str | tuple[str, ...] | None = None,
        count: int | None = None,
    ) -> None:
        """Hold matching requests for ``seconds`` before serving (``count`` times, or always)."""
        with self._lock:
            self._delays.append(
                _Delay(
                    seconds,
                    _methods(methods),
                    re.compile(path_regex) if path_regex else None,
                    count,
                )
            )

    def deny(self, verb: str, resource: str, namespace: str | None = None) -> None:
        """RBAC-deny ``verb`` on ``resource`` (e.g. ``"create", "jobs"``; ``"get", "pods/log"``)."""
        with self._lock:
            self._denied.add((verb, resource, namespace))

    def allow(self, verb: str, resource: str, namespace: str | None = None) -> None:
        with self._lock:
            self._denied.discard((verb, resource, namespace))

    def drop_watches(self) -> int:
        """Close every open watch connection abruptly; returns how many were dropped."""
        return self._drop_watches()

    def compact(self) -> None:
        """Expire the whole watch history: resuming from any earlier RV gets 410 Expired."""
        self._compact()

    def clear(self) -> None:
        """Remove every pending failure, delay and denial."""
        with self._lock:
            self._failures.clear()
            self._delays.clear()
            self._denied.clear()

    # --- used by the server ------------------------------------------------------------------

    def injected_failure(self, method: str, path: str) -> ApiError | None:
        with self._lock:
            for failure in self._failures:
                if failure.remaining > 0 and failure.matches(method, path):
                    failure.remaining -= 1
                    failure.hits += 1
                    reason, message = _MESSAGES.get(
                        failure.code, ("InternalError", "kubesim injected fault")
                    )
                    details = (
                        {"retryAfterSeconds": failure.retry_after}
                        if failure.retry_after is not None
                        else None
                    )
                    self._failures = [f for f in self._failures if f.remaining > 0]
                    return ApiError(
                        failure.code,
                        reason,
                        message,
                        details=details,
                        retry_after=failure.retry_after,
                    )
        return None

    def injected_delay(self, method: str, path: str) -> float:
        with self._lock:
            total = 0.0
            for delay in self._delays:
                if delay.matches(method, path) and (delay.remaining is None or delay.remaining > 0):
                    total += delay.seconds
                    if delay.remaining is not None:
                        delay.remaining -= 1
            return total

    def wait(self, seconds: float) -> None:
        """Sleep for an injected delay, cut short when the server shuts down."""
        self._closing.wait(seconds)

    def is_denied(
        self, verb: str, resource: str, namespace: str | None, *, all_namespaces: bool = False
    ) -> bool:
        """Whether a request is refused. ``all_namespaces``: a request on a namespaced
        resource across every namespace (``GET /api/v1/pods``), which RBAC only grants
        cluster-wide, so a denial in any one namespace refuses it too."""
        with self._lock:
            if (verb, resource, None) in self._denied:
                return True
            if namespace is not None:
                return (verb, resource, namespace) in self._denied
            return all_namespaces and any(v == verb and r == resource for v, r, _ in self._denied)


def _methods(methods: str | tuple[str, ...] | None) -> frozenset[str] | None:
    if methods is None:
        return None
    if isinstance(methods, str):
        methods = (methods,)
    return frozenset(m.upper() for m in methods)
