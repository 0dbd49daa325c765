"""Fault injection handle for tests: API failures, slow responses, dropped and expired watches,
watch errors, and RBAC denials.

Every rule is checked by the HTTP server before it touches the store, so a faulted request has
no effect, as a request refused by a real apiserver's filters.

* :meth:`Faults.fail_next`: the next N matching requests get an error status (429, 5xx...);
  ``watch=True`` fails only watch requests, ``watch=False`` only the others (lists and gets
  share their path with watches).
* :meth:`Faults.lose_answers`: the next N matching requests are carried out (a write is
  committed), then their answer is lost: the client gets 504 Timeout, as from an apiserver
  whose request deadline passed while the write went on, or a cut connection. Its retry
  then meets what it did itself (a create gets 409 AlreadyExists).
* :meth:`Faults.delay`: matching requests are held before anything is answered (not even the
  response headers); the returned :class:`DelayHandle` tells how many are held right now
  (``wait_held``) and lets them go early (``release``). A stopping server releases them too.
  ``watch=True`` holds only watch requests (``?watch=true``), ``watch=False`` only the others.
* :meth:`Faults.watch_too_large_rv`: the next N matching watches get what a real apiserver
  answers when its watch cache lags behind the requested resourceVersion: HTTP 200, then a
  single ``ERROR`` event carrying ``Status{code: 504, reason: Timeout, message: "Timeout: Too
  large resource version: X, current: Y", details: {causes: [{reason:
  ResourceVersionTooLarge}], retryAfterSeconds: 1}}``, then the end of the stream (the official
  client raises ``ApiException(504)``, as in the traces' "error" lines).
* :meth:`Faults.drop_watches`, :meth:`Faults.compact`, :meth:`Faults.deny`.
"""

from __future__ import annotations

import re
import threading
import time
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
    watch: bool | None = None

    def matches(self, method: str, path: str, watch: bool = False) -> bool:
        return (
            (self.methods is None or method in self.methods)
            and (self.path is None or self.path.search(path) is not None)
            and (self.watch is None or self.watch == watch)
        )


@dataclass
class LostAnswer:
    """A request to carry out, then answer with ``code`` (None: cut the connection)."""

    remaining: int
    code: int | None
    methods: frozenset[str] | None
    path: re.Pattern[str] | None

    def error(self) -> ApiError:
        assert self.code is not None
        reason, message = _MESSAGES.get(self.code, ("InternalError", "kubesim injected fault"))
        return ApiError(self.code, reason, message)


@dataclass
class _Delay:
    seconds: float
    methods: frozenset[str] | None
    path: re.Pattern[str] | None
    remaining: int | None
    watch: bool | None = None
    held: int = 0
    hits: int = 0
    released: bool = False

    def matches(self, method: str, path: str, watch: bool) -> bool:
        return (
            not self.released
            and (self.remaining is None or self.remaining > 0)
            and (self.methods is None or method in self.methods)
            and (self.path is None or self.path.search(path) is not None)
            and (self.watch is None or self.watch == watch)
        )


@dataclass
class _WatchError:
    remaining: int
    path: re.Pattern[str] | None


class DelayHandle:
    """One :meth:`Faults.delay` rule: how many requests it holds, and an early release."""

    def __init__(self, faults: Faults, delay: _Delay) -> None:
        self._faults = faults
        self._delay = delay

    @property
    def held(self) -> int:
        """Requests held by this rule right now."""
        with self._faults._lock:
            return self._delay.held

    @property
    def hits(self) -> int:
        """Requests this rule has held so far (including those let go)."""
        with self._faults._lock:
            return self._delay.hits

    def wait_held(self, n: int = 1, timeout: float = 10.0) -> bool:
        """Wait until ``n`` requests are held; ``False`` after ``timeout`` seconds."""
        with self._faults._cond:
            return self._faults._cond.wait_for(lambda: self._delay.held >= n, timeout)

    def release(self) -> None:
        """Answer the held requests now, and hold no later one."""
        with self._faults._cond:
            self._delay.released = True
            self._faults._cond.notify_all()


@dataclass
class Faults:
    """What tests use to make the API misbehave. Thread-safe."""

    _compact: Callable[[], None]
    _drop_watches: Callable[[], int]
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _failures: list[_Failure] = field(default_factory=list)
    _delays: list[_Delay] = field(default_factory=list)
    _denied: set[tuple[str, str, str | None]] = field(default_factory=set)
    _watch_errors: list[_WatchError] = field(default_factory=list)
    _lost: list[LostAnswer] = field(default_factory=list)
    _closing: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._cond = threading.Condition(self._lock)

    def fail_next(
        self,
        n: int = 1,
        code: int = 429,
        *,
        retry_after: int | None = 1,
        methods: str | tuple[str, ...] | None = None,
        path_regex: str | None = None,
        watch: bool | None = None,
    ) -> None:
        """Fail the next ``n`` matching requests with ``code`` (429, 500, 503, 504...).

        429 and 503 carry ``Retry-After: <retry_after>`` (pass ``None`` to omit it).
        ``watch``: ``True`` fails only watch requests, ``False`` only the others.
        """
        with self._lock:
            self._failures.append(
                _Failure(
                    n,
                    code,
                    retry_after if code in (429, 503) else None,
                    _methods(methods),
                    re.compile(path_regex) if path_regex else None,
                    watch=watch,
                )
            )

    def lose_answers(
        self,
        n: int = 1,
        *,
        code: int | None = 504,
        methods: str | tuple[str, ...] | None = None,
        path_regex: str | None = None,
    ) -> None:
        """Carry out the next ``n`` matching requests (not watches), then lose their answer.

        The client gets ``code`` instead (504 Timeout by default: what an apiserver answers
        when a request outlives its deadline while the write goes on), or, with ``None``,
        a connection cut before any answer. A create retried after it finds its own object
        (409 AlreadyExists), a delete its object gone (404).
        """
        with self._lock:
            self._lost.append(
                LostAnswer(
                    n, code, _methods(methods), re.compile(path_regex) if path_regex else None
                )
            )

    def delay(
        self,
        seconds: float,
        *,
        path_regex: str | None = None,
        methods: str | tuple[str, ...] | None = None,
        count: int | None = None,
        watch: bool | None = None,
    ) -> DelayHandle:
        """Hold matching requests for ``seconds`` before answering (``count`` times, or always).

        ``watch``: ``True`` holds only watch requests, ``False`` only the others. Nothing is
        sent while a request is held, so a client that gives up meanwhile has no answer yet.
        """
        delay = _Delay(
            seconds,
            _methods(methods),
            re.compile(path_regex) if path_regex else None,
            count,
            watch,
        )
        with self._lock:
            self._delays.append(delay)
        return DelayHandle(self, delay)

    def watch_too_large_rv(self, n: int = 1, *, path_regex: str | None = None) -> None:
        """Answer the next ``n`` matching watches with the watch cache's "Too large resource
        version" ``ERROR`` event (504 Timeout), as a real apiserver whose cache lags."""
        with self._lock:
            self._watch_errors.append(
                _WatchError(n, re.compile(path_regex) if path_regex else None)
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

    def pending(self) -> int:
        """Injected failures, lost answers and watch errors not used up yet."""
        with self._lock:
            return (
                sum(f.remaining for f in self._failures)
                + sum(x.remaining for x in self._lost)
                + sum(w.remaining for w in self._watch_errors)
            )

    def clear(self) -> None:
        """Remove every pending failure, delay, watch error and denial (held requests go on)."""
        with self._cond:
            self._failures.clear()
            for delay in self._delays:
                delay.released = True
            self._delays.clear()
            self._watch_errors.clear()
            self._lost.clear()
            self._denied.clear()
            self._cond.notify_all()

    def close(self) -> None:
        """The server is stopping: every held request goes on at once, none is held again."""
        with self._cond:
            self._closing.set()
            self._cond.notify_all()

    # --- used by the server ------------------------------------------------------------------

    def injected_failure(self, method: str, path: str, *, watch: bool = False) -> ApiError | None:
        with self._lock:
            for failure in self._failures:
                if failure.remaining > 0 and failure.matches(method, path, watch):
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

    def lost_answer(self, method: str, path: str) -> LostAnswer | None:
        """The lost-answer rule this request uses up, if one matches (never a watch)."""
        with self._lock:
            for lost in self._lost:
                if (
                    lost.remaining > 0
                    and (lost.methods is None or method in lost.methods)
                    and (lost.path is None or lost.path.search(path) is not None)
                ):
                    lost.remaining -= 1
                    self._lost = [x for x in self._lost if x.remaining > 0]
                    return lost
        return None

    def hold(self, method: str, path: str, *, watch: bool = False) -> None:
        """Hold a request for the delays that match it (their sum), until released or the
        server stops."""
        with self._cond:
            if self._closing.is_set():
                return
            matched = [d for d in self._delays if d.matches(method, path, watch)]
            if not matched:
                return
            for delay in matched:
                delay.hits += 1
                delay.held += 1
                if delay.remaining is not None:
                    delay.remaining -= 1
            self._cond.notify_all()
            deadline = time.monotonic() + sum(d.seconds for d in matched)
            try:
                while not self._closing.is_set() and not any(d.released for d in matched):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            finally:
                for delay in matched:
                    delay.held -= 1
                self._cond.notify_all()

    def injected_watch_error(
        self, path: str, requested: int | None, current: int
    ) -> ApiError | None:
        """The "Too large resource version" error for this watch, if one is pending."""
        with self._lock:
            for fault in self._watch_errors:
                if fault.remaining > 0 and (fault.path is None or fault.path.search(path)):
                    fault.remaining -= 1
                    self._watch_errors = [f for f in self._watch_errors if f.remaining > 0]
                    break
            else:
                return None
        # The cache is behind what the client asks for: "current" is the cache's revision.
        asked = requested if requested is not None else current + 1
        cache = max(0, min(current, asked - 1))
        return ApiError(
            504,
            "Timeout",
            f"Timeout: Too large resource version: {asked}, current: {cache}",
            details={
                "causes": [
                    {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
                ],
                "retryAfterSeconds": 1,
            },
        )

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
