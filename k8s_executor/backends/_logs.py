"""Workers' logs on the client: streamed as they come (``stream_logs=True``) and the last
lines of a worker that died without reporting, over :mod:`._kubeapi`."""

from __future__ import annotations

import codecs
import contextlib
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from . import _manifest as m
from ._base import IndexExit
from ._kubeapi import KubeApi

__all__ = ["LOG_DRAIN_SECONDS", "Logs"]

LOG_DRAIN_SECONDS = 15.0
"""How long a finished index waits for its streamed log to be printed. The container has
ended, so its follow stream ends as soon as the rest is read: this is only a bound for a
stream that hangs, generous enough for a loaded client or API server."""
TAIL_LINES = 20


class Logs:
    """Follows the logs of a run's pods (one thread per pod) and reads log tails."""

    def __init__(self, api: KubeApi, run_id: str) -> None:
        self._api = api
        self._run_id = run_id
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._closed = False

    def follow(self, pod: Mapping[str, Any]) -> None:
        """Print the pod's log to stderr as it comes, each line prefixed ``[batch/index]``
        (once per pod; a pod seen again is not followed twice)."""
        meta = pod.get("metadata") or {}
        name = str(meta.get("name"))
        labels = meta.get("labels") or {}
        index = labels.get(m.LABEL_INDEX, "?")
        prefix = f"[{labels.get(m.LABEL_BATCH, '?')}/{index}] "
        with self._lock:
            if name in self._threads or self._closed:
                return
            thread = threading.Thread(
                target=self._print, args=(name, prefix), name=f"k8sx-log-{name}", daemon=True
            )
            self._threads[name] = thread
        thread.start()

    def drain(self, batch_id: str, index: int) -> None:
        """Let the streamed logs of an index's pods finish printing (their containers have
        ended, so their streams are ending too) before its futures resolve."""
        prefix = f"{m.job_name(self._run_id, batch_id)}-{index}-"
        with self._lock:
            threads = [t for name, t in self._threads.items() if name.startswith(prefix)]
        for thread in threads:
            thread.join(timeout=LOG_DRAIN_SECONDS)

    def join(self, seconds: float) -> None:
        """Wait up to ``seconds`` in all for the followed logs to end."""
        deadline = time.monotonic() + seconds
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """Follow no new pod."""
        with self._lock:
            self._closed = True

    def with_tail(self, batch_id: str, index: int, exit: IndexExit) -> IndexExit:
        """Add the last log lines of a failed worker when its status carried none."""
        if exit.exit_code == 0 or exit.log_tail or exit.never_started:
            return exit
        with contextlib.suppress(Exception):
            job_name = m.job_name(self._run_id, batch_id)
            pods = self._api.list(
                "list the pods of an index",
                self._api.core.list_namespaced_pod,
                f"batch.kubernetes.io/job-name={job_name},{m.LABEL_INDEX}={index}",
            )
            if pods:
                pods.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
                tail = self._api.log_tail(pods[-1]["metadata"]["name"], m.CONTAINER, TAIL_LINES)
                return IndexExit(exit.exit_code, exit.signal, exit.reason, exit.message, tail)
        return exit

    def _print(self, pod_name: str, prefix: str) -> None:
        with contextlib.suppress(Exception):
            stream = self._api.open_log(pod_name, m.CONTAINER, follow=True)
            # Chunks end anywhere, even inside a UTF-8 sequence: decode incrementally and
            # print whole lines only, each with its prefix.
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            partial = ""
            for raw in stream.chunks():
                *lines, partial = (partial + decoder.decode(raw)).split("\n")
                for line in lines:
                    print(prefix + line.rstrip("\r"), file=sys.stderr, flush=True)
            partial += decoder.decode(b"", final=True)
            if partial:
                print(prefix + partial, file=sys.stderr, flush=True)
