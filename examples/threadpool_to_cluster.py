"""A ThreadPoolExecutor script moved to KubernetesExecutor: one model per store.

The script forecasts weekly sales for each of 40 stores: it fits a trend and a yearly
season to each store's history (numpy least squares) and checks the forecast of the last
13 weeks against what was sold. It was written for ``ThreadPoolExecutor``; moving it to
workers (local processes, or pods on a cluster) took one changed line, marked ``was:``
below, besides importing KubernetesExecutor instead of ThreadPoolExecutor. ``submit``, the
futures and ``as_completed`` stay as they were.

What made that possible, and what to check in your own script: the function called in
the pool takes everything it needs as arguments and returns its result. A function that
appends to a list or a dict of the caller, shares a lock, an open file or a database
client with it, or reads a global the caller changes after starting the pool works with
threads only: workers run in other processes, on other machines.

On this machine (workers are local subprocesses):

    python examples/threadpool_to_cluster.py

On a cluster, the same command with the cluster's settings in the environment instead
(see docs/examples.md):

    K8S_EXECUTOR_BACKEND=kubernetes K8S_EXECUTOR_STORAGE=s3://bucket/k8sx \\
        K8S_EXECUTOR_REGISTRY=registry.example.com/team python examples/threadpool_to_cluster.py
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, as_completed  # was: Future, ThreadPoolExecutor, ...

import numpy as np

from k8s_executor import KubernetesExecutor

# The local backend unless the environment names another (K8S_EXECUTOR_BACKEND=kubernetes
# with the cluster's settings, as the docstring shows): runs as is on any machine.
BACKEND = os.environ.get("K8S_EXECUTOR_BACKEND", "local")

STORES = 40
WEEKS = 156  # three years of weekly sales per store
HOLDOUT = 13  # the last quarter is kept back to check the forecast


def make_history(rng: np.random.Generator) -> np.ndarray:
    """Weekly sales of one store: a level, a trend, a yearly season and noise."""
    weeks = np.arange(WEEKS)
    level = rng.uniform(1_000, 5_000)
    trend = rng.uniform(-0.002, 0.004) * level  # per week
    season = rng.uniform(0.05, 0.25) * level * np.sin(2 * np.pi * weeks / 52 + rng.uniform(0, 6))
    noise = rng.normal(1.0, 0.04, WEEKS)
    return (level + trend * weeks + season) * noise


def features(weeks: np.ndarray) -> np.ndarray:
    """Intercept, trend and two yearly harmonics."""
    angle = 2 * np.pi * weeks / 52
    columns = [np.ones_like(angle), weeks / 52]
    for k in (1, 2):
        columns += [np.sin(k * angle), np.cos(k * angle)]
    return np.column_stack(columns)


def fit_and_forecast(history: np.ndarray, horizon: int) -> np.ndarray:
    """Least-squares fit of the history; the forecast of the ``horizon`` weeks after it."""
    past = np.arange(len(history))
    coefficients, *_ = np.linalg.lstsq(features(past), history, rcond=None)
    forecast: np.ndarray = features(np.arange(len(history), len(history) + horizon)) @ coefficients
    return forecast


def main() -> None:
    rng = np.random.default_rng(7)
    sales = {f"store-{n:03d}": make_history(rng) for n in range(STORES)}

    started = time.perf_counter()
    forecasts: dict[str, np.ndarray] = {}
    # was: with ThreadPoolExecutor(max_workers=4) as pool:
    with KubernetesExecutor(backend=BACKEND, max_workers=4) as pool:
        futures: dict[Future[np.ndarray], str] = {
            pool.submit(fit_and_forecast, history[:-HOLDOUT], HOLDOUT): store
            for store, history in sales.items()
        }
        for future in as_completed(futures):
            forecasts[futures[future]] = future.result()
    elapsed = time.perf_counter() - started

    errors = {
        store: float(np.mean(np.abs(forecasts[store] / history[-HOLDOUT:] - 1)))
        for store, history in sales.items()
    }
    worst = max(errors, key=errors.__getitem__)
    print(f"forecast {len(forecasts)} stores in {elapsed:.1f} s")
    print(f"worst store {worst}: {errors[worst]:.1%} mean absolute error")
    print(f"median absolute percentage error {float(np.median(list(errors.values()))):.1%}")


if __name__ == "__main__":
    main()
