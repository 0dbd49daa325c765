"""Monte-Carlo pricing of a European call option, reproducible on any number of workers.

The simulation is cut into independent tasks, each drawing its own random stream. The
streams come from numpy's ``SeedSequence(SEED).spawn(TASKS)``: they are statistically
independent and fixed by SEED and TASKS alone, so the estimate is the same to the last
digit on 2 local processes or on 200 pods, and in whatever order the tasks run. The
estimate comes with its standard error and is compared with the Black-Scholes price.

On this machine (workers are local subprocesses):

    python examples/monte_carlo.py

On a cluster, the same command with the cluster's settings in the environment instead
(see docs/examples.md):

    K8S_EXECUTOR_BACKEND=kubernetes K8S_EXECUTOR_STORAGE=s3://bucket/k8sx \\
        K8S_EXECUTOR_REGISTRY=registry.example.com/team python examples/monte_carlo.py
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from k8s_executor import KubernetesExecutor

# The local backend unless the environment names another (K8S_EXECUTOR_BACKEND=kubernetes
# with the cluster's settings, as the docstring shows): runs as is on any machine.
BACKEND = os.environ.get("K8S_EXECUTOR_BACKEND", "local")

SEED = 20_240_501
TASKS = 16
PATHS_PER_TASK = 125_000  # 2 million paths in all


@dataclass(frozen=True)
class EuropeanCall:
    spot: float
    strike: float
    rate: float  # continuously compounded, per year
    volatility: float  # per square root of a year
    maturity: float  # years


def simulate(option: EuropeanCall, seed: np.random.SeedSequence, paths: int) -> tuple[float, float]:
    """Discounted payoffs of ``paths`` simulated prices at maturity: their sum and the
    sum of their squares (enough to combine tasks into a mean and a standard error)."""
    rng = np.random.default_rng(seed)
    drift = (option.rate - 0.5 * option.volatility**2) * option.maturity
    shocks = option.volatility * math.sqrt(option.maturity) * rng.standard_normal(paths)
    at_maturity = option.spot * np.exp(drift + shocks)
    payoffs = math.exp(-option.rate * option.maturity) * np.maximum(at_maturity - option.strike, 0)
    return float(payoffs.sum()), float(np.square(payoffs).sum())


def combine(parts: Iterable[tuple[float, float]], paths: int) -> tuple[float, float]:
    """The price estimate and its standard error, from the tasks' sums, in task order."""
    total = total_sq = 0.0
    for part_sum, part_sq in parts:
        total += part_sum
        total_sq += part_sq
    mean = total / paths
    variance = (total_sq - paths * mean**2) / (paths - 1)
    return mean, math.sqrt(variance / paths)


def black_scholes(option: EuropeanCall) -> float:
    """The closed-form price the simulation should converge to."""

    def normal_cdf(x: float) -> float:
        return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))

    spread = option.volatility * math.sqrt(option.maturity)
    d1 = (
        math.log(option.spot / option.strike)
        + (option.rate + 0.5 * option.volatility**2) * option.maturity
    ) / spread
    d2 = d1 - spread
    discount = math.exp(-option.rate * option.maturity)
    return option.spot * normal_cdf(d1) - option.strike * discount * normal_cdf(d2)


OPTION = EuropeanCall(spot=100.0, strike=105.0, rate=0.05, volatility=0.2, maturity=1.0)


def main() -> None:
    seeds = np.random.SeedSequence(SEED).spawn(TASKS)  # one independent stream per task

    started = time.perf_counter()
    with KubernetesExecutor(backend=BACKEND) as ex:
        print(f"run {ex.run_id}: up to {ex.max_workers} workers")
        parts = ex.map(simulate, repeat(OPTION), seeds, repeat(PATHS_PER_TASK))
        price, std_error = combine(parts, TASKS * PATHS_PER_TASK)
    elapsed = time.perf_counter() - started

    exact = black_scholes(OPTION)
    print(f"{TASKS * PATHS_PER_TASK:,} paths in {TASKS} tasks in {elapsed:.1f} s")
    print(f"Monte-Carlo price {price:.6f}, standard error {std_error:.6f}")
    print(
        f"Black-Scholes price {exact:.6f}: "
        f"{abs(price - exact) / std_error:.2f} standard errors away"
    )


if __name__ == "__main__":
    main()
