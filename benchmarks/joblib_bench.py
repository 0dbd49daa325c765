"""joblib backend: ``parallel_config(backend="kubernetes")`` (local workers) vs loky.

Two workloads, both with ``n_jobs=2``, each run through every backend in the same process:

* ``Parallel 10000``: ``Parallel()(delayed(inc)(i) for i in range(10_000))``, trivial calls,
  so the time is the backends' own overhead (batching, pickling, worker start-ups);
* ``GridSearchCV 18 fits``: ``SVC`` on scikit-learn's bundled digits data set, 6 candidates
  x 3 folds (workers import scikit-learn and fit);
* ``Parallel 40 x 16 MB``: 40 calls that each get the same 16 MB NumPy array (as a
  training set goes to every fit) and sum it.

Rows:

* ``kubernetes (local)``: this package's backend on the local executor backend. Every
  ``Parallel`` call starts fresh workers (as pods would), so it has no warm state.
* ``loky cold``: joblib's default backend after its reusable worker pool was shut down, so
  the call pays for starting workers too: the like-for-like comparison.
* ``loky warm``: loky with its pool already running (loky's steady state in a long session).
* ``kubernetes (local, no sharing)``: our backend with ``Batching(share_min_bytes=None)``:
  every call carries its own copy of large arrays (as before large arguments were
  stored once per run).

The ``client MB written`` column is what the client wrote to the run's storage (inputs,
functions, shared arrays): what would cross the network to a bucket on a cluster.

    python benchmarks/joblib_bench.py              # print a Markdown table
    python benchmarks/joblib_bench.py --repeat 5   # more repetitions (default 3)

Repetitions are round-robin over the rows so load from other users spreads evenly.
Importing this module has no side effects.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def inc(x: int) -> int:
    return x + 1


def trivial(n: int = 10_000) -> None:
    from joblib import Parallel, delayed

    results = Parallel()(delayed(inc)(i) for i in range(n))
    assert results[-1] == n


def grid_search() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    features, labels = load_digits(return_X_y=True)
    search = GridSearchCV(SVC(), {"C": [0.1, 1, 10], "gamma": [1e-4, 1e-3]}, cv=3)
    search.set_params(n_jobs=N_JOBS)
    search.fit(features, labels)


def array_sum(x: Any, i: int) -> float:
    return float(x.sum()) + i


def shared_array(n: int = 40) -> None:
    import numpy as np
    from joblib import Parallel, delayed

    x = np.ones(2_000_000)  # 16 MB
    results = Parallel()(delayed(array_sum)(x, i) for i in range(n))
    assert results[-1] == x.size + n - 1


N_JOBS = 2
WORKLOADS: dict[str, Callable[[], None]] = {
    "Parallel 10000": trivial,
    "GridSearchCV 18 fits": grid_search,
    "Parallel 40 x 16 MB": shared_array,
}


@dataclass
class Row:
    workload: str
    backend: str
    times: list[float] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)
    written: list[int] = field(default_factory=list)


def _stop_loky() -> None:
    # loky keeps one process-wide pool; shutting it down makes the next call start afresh.
    # (A private global: acceptable in a benchmark, never in the package.)
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def _run(
    workload: Callable[[], None], backend: str, launches: list[int], written: list[int]
) -> float:
    import joblib

    from k8s_executor import Batching
    from k8s_executor._store import RunStore
    from k8s_executor.backends.local import LocalBackend
    from k8s_executor.joblib import DEFAULT_WINDOW

    real_put = RunStore.put

    def counting_put(self: RunStore, key: str, data: bytes) -> None:
        written.append(len(data))
        real_put(self, key, data)

    class Counting(LocalBackend):
        def launch(self, spec: Any) -> None:
            launches.append(spec.indexes)
            super().launch(spec)

    if backend == "loky cold":
        _stop_loky()
    if backend.startswith("kubernetes"):
        sharing = "no sharing" not in backend
        config = joblib.parallel_config(
            backend="kubernetes",
            n_jobs=N_JOBS,
            executor_backend=Counting,
            batching=Batching(window=DEFAULT_WINDOW, share_min_bytes=65_536 if sharing else None),
        )
    else:
        config = joblib.parallel_config(backend="loky", n_jobs=N_JOBS)
    RunStore.put = counting_put  # type: ignore[method-assign]
    try:
        with config:
            start = time.perf_counter()
            workload()
            return time.perf_counter() - start
    finally:
        RunStore.put = real_put  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    import k8s_executor.joblib

    k8s_executor.joblib.register()
    backends = ["kubernetes (local)", "kubernetes (local, no sharing)", "loky cold", "loky warm"]
    rows = [Row(w, b) for w in WORKLOADS for b in backends]
    load_before = os.getloadavg()
    started = time.perf_counter()
    for workload in WORKLOADS.values():  # warm-up: imports, byte compilation, loky pool
        _run(workload, "loky warm", [], [])
        _run(workload, "kubernetes (local)", [], [])
    for _ in range(args.repeat):
        for row in rows:
            launches: list[int] = []
            written: list[int] = []
            row.times.append(_run(WORKLOADS[row.workload], row.backend, launches, written))
            row.workers.append(sum(launches))
            row.written.append(sum(written))
    load_after = os.getloadavg()
    took = time.perf_counter() - started
    print(_table(rows, args.repeat, took, load_before, load_after))


def _table(
    rows: list[Row],
    repeat: int,
    took: float,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Run {now} · `python benchmarks/joblib_bench.py --repeat {repeat}` · {took:.0f} s",
        "",
        f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()} on "
        f"{platform.system()}; load average {' '.join(f'{x:.2f}' for x in load_before)} "
        f"before, {' '.join(f'{x:.2f}' for x in load_after)} after. n_jobs = {N_JOBS}.",
        "",
        "| workload | backend | median s | min s | x loky cold | x loky warm | workers started "
        "| client MB written |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    medians = {(r.workload, r.backend): statistics.median(r.times) for r in rows}
    for r in rows:
        median = medians[(r.workload, r.backend)]
        cold = median / medians[(r.workload, "loky cold")]
        warm = median / medians[(r.workload, "loky warm")]
        ours = r.backend.startswith("kubernetes")
        workers = str(max(r.workers)) if ours else ""
        written = f"{max(r.written) / 1e6:.1f}" if ours else ""
        lines.append(
            f"| {r.workload} | {r.backend} | {median:.3f} | {min(r.times):.3f} | "
            f"{cold:.2f} | {warm:.2f} | {workers} | {written} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
