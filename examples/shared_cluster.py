"""Shared cluster: a cross-validated sweep sized for a namespace with a quota.

On a shared cluster the namespace has a ResourceQuota, maybe a LimitRange, a PodSecurity
level and a Kueue queue. Each worker pod asks for ``WORKER`` and at most ``MAX_WORKERS``
run at once; before a first run, ask the cluster what it allows for that:

    k8s-executor doctor --cpu 1 --memory 1Gi --max-workers 4

Two ways a quota stops pods, handled in opposite ways:

- the quota is full because pods use it (others', or this run's): the calls wait, with no
  startup clock, and start as room appears. Nothing to do in the code.
- one worker asks more than the quota allows in all, or PodSecurity or a LimitRange
  refuses the pod: the calls fail at once with ``PodStartError`` and the cluster's reason,
  as below.

Runs on the local backend by default (no cluster needed); the same code runs on a cluster
with K8S_EXECUTOR_BACKEND=kubernetes and K8S_EXECUTOR_STORAGE=s3://bucket/prefix, and
Kueue admits its Jobs when K8S_EXECUTOR_QUEUE names a LocalQueue.

    python examples/shared_cluster.py
"""

from __future__ import annotations

import os
import sys

import numpy as np

from k8s_executor import ExecutorBrokenError, KubernetesExecutor, PodStartError, Resources

WORKER = Resources(cpu="1", memory="1Gi")  # what each worker pod asks, and the quota counts
MAX_WORKERS = 4
ALPHAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)
FOLDS = 3
SEED = 7


def make_data(seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """A regression problem with 40 features, 10 of them informative, and noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 40))
    coef = np.zeros(40)
    coef[:10] = rng.normal(scale=3.0, size=10)
    y = x @ coef + rng.normal(scale=4.0, size=300)
    return x, y


def validation_error(alpha: float, fold: int) -> float:
    """Mean squared error of ridge regression with ``alpha`` on one held-out fold."""
    x, y = make_data()
    held_out = np.arange(len(y)) % FOLDS == fold
    xt, yt = x[~held_out], y[~held_out]
    coef = np.linalg.solve(xt.T @ xt + alpha * np.eye(x.shape[1]), xt.T @ yt)
    return float(np.mean((x[held_out] @ coef - y[held_out]) ** 2))


def best_alpha(errors: dict[float, list[float]]) -> tuple[float, float]:
    """The alpha with the lowest mean error over the folds, and that error."""
    means = {alpha: float(np.mean(e)) for alpha, e in errors.items()}
    alpha = min(means, key=means.__getitem__)
    return alpha, means[alpha]


def main() -> int:
    backend = os.environ.get("K8S_EXECUTOR_BACKEND", "local")
    queue = os.environ.get("K8S_EXECUTOR_QUEUE")
    print(
        f"backend={backend}: {MAX_WORKERS} workers of cpu {WORKER.cpu}, memory "
        f"{WORKER.memory}" + (f", admitted by Kueue queue {queue}" if queue else "")
    )
    calls = [(alpha, fold) for alpha in ALPHAS for fold in range(FOLDS)]
    try:
        with KubernetesExecutor(backend=backend, max_workers=MAX_WORKERS, resources=WORKER) as ex:
            results = list(ex.map(validation_error, *zip(*calls, strict=True)))
    except (PodStartError, ExecutorBrokenError) as exc:
        # Refused for good (a worker larger than the quota, PodSecurity, a LimitRange, a
        # Kueue queue that cannot admit it), or an image the nodes cannot pull. A quota
        # that is only full never lands here: the calls wait for room instead.
        print(f"the cluster cannot run the workers: {exc}", file=sys.stderr)
        print(
            f"see what the namespace allows: k8s-executor doctor --cpu {WORKER.cpu} "
            f"--memory {WORKER.memory} --max-workers {MAX_WORKERS}",
            file=sys.stderr,
        )
        return 1
    errors: dict[float, list[float]] = {alpha: [] for alpha in ALPHAS}
    for (alpha, _), error in zip(calls, results, strict=True):
        errors[alpha].append(error)
    alpha, error = best_alpha(errors)
    print(f"{len(calls)} fits on the {backend} backend ({len(ALPHAS)} alphas x {FOLDS} folds)")
    print(f"best alpha {alpha:g}, mean validation error {error:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
