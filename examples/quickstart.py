"""Quickstart: a Monte-Carlo estimate of pi and a few calls with submit.

Runs on the local backend by default (no cluster needed); the very same code runs on a
cluster with K8S_EXECUTOR_BACKEND=kubernetes and K8S_EXECUTOR_STORAGE=s3://bucket/prefix.

    python examples/quickstart.py
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import as_completed

from k8s_executor import KubernetesExecutor


def hits_in_circle(seed: int, samples: int = 200_000) -> int:
    """Throw ``samples`` darts at the unit square; count those inside the quarter circle."""
    rng = random.Random(seed)
    return sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)


def describe(n: int) -> str:
    """A small function whose result names the worker process that ran it."""
    return f"{n} squared is {n * n} (computed in process {os.getpid()})"


def main() -> None:
    backend = os.environ.get("K8S_EXECUTOR_BACKEND", "local")
    started = time.perf_counter()
    with KubernetesExecutor(backend=backend) as ex:
        print(f"backend={backend} max_workers={ex.max_workers} run={ex.run_id}")

        # map: 32 tasks of 200 000 samples each, results in order.
        seeds = range(32)
        hits = sum(ex.map(hits_in_circle, seeds))
        total = 32 * 200_000
        print(f"pi ≈ {4 * hits / total:.5f} from {total:,} samples")

        # submit + as_completed: results as they come; a lambda works too.
        futures = [ex.submit(describe, n) for n in (3, 7, 11)]
        futures.append(ex.submit(lambda: "a lambda ran remotely"))
        for future in as_completed(futures):
            print(" ", future.result())

        # A failing call raises its own exception, with the remote traceback attached.
        try:
            ex.submit(int, "not a number").result()
        except ValueError as exc:
            print(f"  the remote ValueError came back: {exc}")
    print(f"done in {time.perf_counter() - started:.2f}s")


if __name__ == "__main__":
    main()
