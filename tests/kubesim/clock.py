"""Injectable clocks for kubesim's controllers and kubelet.

Every time-dependent rule of the control plane (replacement backoff, ``activeDeadlineSeconds``,
``ttlSecondsAfterFinished``, delete grace periods, image-pull back-off) reads time and schedules
work through a :class:`Clock`, so tests can swap in a :class:`FakeClock` and move time forward
explicitly instead of sleeping for minutes.

``call_later`` callbacks must be cheap and must not block: the components only use them to
enqueue work for their own threads.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

__all__ = ["Clock", "FakeClock", "ScaledClock", "TimerHandle"]

_log = logging.getLogger(__name__)


@dataclass(order=True)
class TimerHandle:
    """A scheduled callback; ``cancel()`` is idempotent and safe from any thread."""

    when: float
    seq: int
    fn: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


def _run(handle: TimerHandle) -> None:
    try:
        handle.fn()
    except Exception:
        # A failing callback must not kill the timer thread (and with it every later timer).
        _log.exception("kubesim timer callback failed")


class Clock:
    """Wall clock plus a single timer thread (started on the first ``call_later``)."""

    def __init__(self) -> None:
        self._heap: list[TimerHandle] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def now(self) -> datetime:
        """Timezone-aware UTC time."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> TimerHandle:
        """Run ``fn`` once after ``delay_s`` seconds (on the clock's timer thread)."""
        with self._cond:
            handle = TimerHandle(self.monotonic() + max(0.0, delay_s), next(self._seq), fn)
            if self._stopped:
                handle.cancelled = True
                return handle
            heapq.heappush(self._heap, handle)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="kubesim-clock", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return handle

    def _real_seconds(self, clock_seconds: float) -> float:
        """How long to wait in real time for ``clock_seconds`` of this clock to pass."""
        return clock_seconds

    def stop(self) -> None:
        """Cancel pending timers and join the timer thread."""
        with self._cond:
            self._stopped = True
            for handle in self._heap:
                handle.cancelled = True
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0].when - self.monotonic()
                    if wait <= 0:
                        break
                    self._cond.wait(self._real_seconds(wait))
                if self._stopped:
                    return
                handle = heapq.heappop(self._heap)
            if not handle.cancelled:
                _run(handle)


class ScaledClock(Clock):
    """A wall clock that runs ``speed`` times faster than real time.

    Every rule driven by the clock (grace periods, back-offs, retries, deadlines) takes
    ``1/speed`` of its real duration, while the processes the kubelet runs keep real time: a
    test that replays a real-cluster scenario shortens the sleeps in its commands by the same
    factor, so the ratios between them and the clock's rules stay as recorded.
    """

    def __init__(self, speed: float, start: datetime | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        super().__init__()
        self.speed = speed
        self._origin = time.monotonic()
        self._start = start or datetime.now(UTC)

    def monotonic(self) -> float:
        return (time.monotonic() - self._origin) * self.speed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.monotonic())

    def _real_seconds(self, clock_seconds: float) -> float:
        return clock_seconds / self.speed


class FakeClock(Clock):
    """A clock that only moves when a test calls :meth:`advance`.

    Due callbacks run synchronously in the thread calling ``advance``, in deadline order, with
    ``now()`` set to each callback's own deadline while it runs, so a callback that reschedules
    itself sees consistent time.
    """

    def __init__(self, start: datetime | None = None) -> None:
        super().__init__()
        self._start = start or datetime(2026, 1, 5, 10, 0, 0, tzinfo=UTC)
        self._offset = 0.0
        self._lock = threading.RLock()

    def now(self) -> datetime:
        with self._lock:
            return self._start + timedelta(seconds=self._offset)

    def monotonic(self) -> float:
        with self._lock:
            return self._offset

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> TimerHandle:
        with self._lock:
            handle = TimerHandle(self._offset + max(0.0, delay_s), next(self._seq), fn)
            if self._stopped:
                handle.cancelled = True
            else:
                heapq.heappush(self._heap, handle)
            return handle

    def pending(self) -> list[float]:
        """Seconds until each pending timer fires (for tests that want to assert a delay)."""
        with self._lock:
            return sorted(h.when - self._offset for h in self._heap if not h.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer that falls due on the way."""
        if seconds < 0:
            raise ValueError("cannot move a clock backwards")
        with self._lock:
            target = self._offset + seconds
        while True:
            with self._lock:
                if not self._heap or self._heap[0].when > target:
                    self._offset = target
                    return
                handle = heapq.heappop(self._heap)
                self._offset = max(self._offset, handle.when)
            if not handle.cancelled:
                _run(handle)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for handle in self._heap:
                handle.cancelled = True
            self._heap.clear()
