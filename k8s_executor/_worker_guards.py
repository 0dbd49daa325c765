"""The worker's guards: threads that end a worker whose reason to run is gone (its
parent process, the client's heartbeat, a detached run's deadline), and the alive marker a
named run's index keeps fresh for a client joining its calls (``_join``).

Apart from ``worker.py`` so that the worker's main loop stays one room; imported only by
it, and as light (no client-side dependencies).
"""

from __future__ import annotations

import os
import sys
import threading
import time

from . import _contract as codes
from . import _durable
from ._store import RunStore

__all__ = ["Alive", "watch_deadline", "watch_heartbeat", "watch_parent"]


def watch_parent(parent: int) -> None:
    def poll() -> None:
        # Polling getppid is portable (PR_SET_PDEATHSIG is Linux-only and would need
        # preexec_fn, which is unsafe in a threaded client).
        while True:
            if os.getppid() != parent:
                os._exit(codes.ORPHANED)
            threading.Event().wait(0.5)

    threading.Thread(target=poll, name="k8sx-parent-watch", daemon=True).start()


def watch_heartbeat(run: RunStore, grace: float) -> None:
    def poll() -> None:
        # Compare the client's counter with itself over our own monotonic clock: no
        # reliance on the client's, the storage's or this node's wall clock.
        last: bytes | None = None
        changed = time.monotonic()
        while True:
            try:
                beat = run.get_or_none("heartbeat")
            except Exception:
                beat = last  # storage trouble is not proof the client is gone
            now = time.monotonic()
            if beat != last:
                last, changed = beat, now
            elif now - changed > grace:
                print(
                    f"k8s_executor.worker: no heartbeat from the client for {grace:g}s; "
                    "it is gone, giving up",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(codes.ABANDONED)
            threading.Event().wait(min(grace / 10, 30.0))

    threading.Thread(target=poll, name="k8sx-heartbeat-watch", daemon=True).start()


class Alive:
    """Rewrites ``<batch>/alive/<index>`` (a counter) every ``ALIVE_SECONDS`` while a
    named run's index runs: a client joining its calls sees the copy is at work."""

    def __init__(self, store: RunStore, index: int) -> None:
        self._store = store
        self._key = _durable.alive_key(index)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="k8sx-alive", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        beat = 0
        while True:
            beat += 1
            try:
                self._store.put(self._key, str(beat).encode())
            except Exception as exc:  # a joiner then runs the calls again: no harm done
                print(f"k8s_executor.worker: cannot refresh {self._key}: {exc}", file=sys.stderr)
            if self._stopped.wait(_durable.ALIVE_SECONDS):
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5.0)


def watch_deadline(deadline: float) -> None:
    """Exit (ABANDONED) at a detached run's deadline, whatever the worker is doing."""

    def wait() -> None:
        # Wall clock: the deadline is a date, set by the client that launched the run.
        while (left := deadline - time.time()) > 0:
            threading.Event().wait(min(left, 60.0))
        print("k8s_executor.worker: the run's deadline has passed; stopping", file=sys.stderr)
        sys.stderr.flush()
        os._exit(codes.ABANDONED)

    threading.Thread(target=wait, name="k8sx-deadline", daemon=True).start()
