"""joblib backend: ``parallel_config(backend="kubernetes")`` (local workers) vs loky.

Three workloads, all with ``n_jobs=2``, each run through every backend in the same process:

* ``Parallel 10000``: ``Parallel()(delayed(inc)(i) for i in range(10_000))``, trivial calls,
  so the time is the backends' own overhead (batching, pickling, worker start-ups);
* ``GridSearchCV 18 fits``: ``SVC`` on scikit-learn's bundled digits data set, 6 candidates
  x 3 folds (workers import scikit-learn and fit);
* ``Parallel 40 x 16 MB``: 40 calls that each get the same 16 MB NumPy array (as a
  training set goes to every fit) and sum it.

Rows:

* ``kubernetes (local) cold``: this package's backend on the local executor backend, its
  executors kept between ``Parallel`` calls shut down first, so the call starts its
  workers (as pods would be started);
* ``kubernetes (local) warm``: the same right after the cold row, so the call takes the
  executor the cold row kept, and its warm workers (``Timeouts.keep_warm``);
* ``loky cold``: joblib's default backend after its reusable worker pool was shut down, so
  the call pays for starting workers too: the like-for-like comparison.
* ``loky warm``: loky with its pool already running (loky's steady state in a long session).
* ``kubernetes (local, no sharing) cold``: our backend with ``Batching(share_min_bytes=None)``:
  every call carries its own copy of large arrays (as before large arguments were
  stored once per run).

The ``client MB written`` column is what the client wrote to the run's storage (inputs,
functions, shared arrays): what would cross the network to a bucket on a cluster.

    python benchmarks/joblib_bench.py              # print the table
    python benchmarks/joblib_bench.py --write      # also update benchmarks/README.md
    python benchmarks/joblib_bench.py --repeat 5   # more repetitions (default 3)

``--write`` rewrites this benchmark's section of benchmarks/README.md (between the
``<!-- joblib_bench:start -->`` and ``<!-- joblib_bench:end -->`` markers) and nothing else.

Repetitions are round-robin over the rows so load from other users spreads evenly.
Importing this module has no side effects; everything runs from :func:`main`.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from _report import README, load_average, machine, run_line, write_section


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
# Issue 6's target: our backend on local workers within this factor of loky.
TARGET_RATIO = 2.0
TARGET_WORKLOADS = ("Parallel 10000", "GridSearchCV 18 fits")
BACKENDS = (
    "kubernetes (local) cold",
    "kubernetes (local) warm",
    "kubernetes (local, no sharing) cold",
    "loky cold",
    "loky warm",
)
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


# Workers started, per launch, by the Counting backend (the current row's list).
_LAUNCHES: list[int] = []


@functools.cache
def _counting_backend() -> type:
    # One class for the whole run (made on first use: importing this module imports
    # nothing of the package), so that equal options find the executor kept between
    # Parallel calls.
    from k8s_executor.backends.local import LocalBackend

    class Counting(LocalBackend):
        def launch(self, spec: Any) -> None:
            _LAUNCHES.append(spec.indexes)
            super().launch(spec)

    return Counting


def _run(
    workload: Callable[[], None], backend: str, launches: list[int], written: list[int]
) -> float:
    import joblib

    import k8s_executor.joblib
    from k8s_executor import Batching
    from k8s_executor._store import RunStore
    from k8s_executor.joblib import DEFAULT_WINDOW

    real_put = RunStore.put

    def counting_put(self: RunStore, key: str, data: bytes) -> None:
        written.append(len(data))
        real_put(self, key, data)

    if backend == "loky cold":
        _stop_loky()
    if backend.startswith("kubernetes"):
        if "warm" not in backend:
            k8s_executor.joblib.shutdown_idle_executors()
        sharing = "no sharing" not in backend
        config = joblib.parallel_config(
            backend="kubernetes",
            n_jobs=N_JOBS,
            executor_backend=_counting_backend(),
            batching=Batching(window=DEFAULT_WINDOW, share_min_bytes=65_536 if sharing else None),
        )
    else:
        config = joblib.parallel_config(backend="loky", n_jobs=N_JOBS)
    RunStore.put = counting_put  # type: ignore[method-assign]
    _LAUNCHES.clear()
    try:
        with config:
            start = time.perf_counter()
            workload()
            return time.perf_counter() - start
    finally:
        RunStore.put = real_put  # type: ignore[method-assign]
        launches.extend(_LAUNCHES)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update benchmarks/README.md")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")

    import k8s_executor.joblib

    k8s_executor.joblib.register()
    rows = [Row(w, b) for w in WORKLOADS for b in BACKENDS]
    load_before = load_average()
    started = time.perf_counter()
    print("warm-up ...", file=sys.stderr, flush=True)
    for workload in WORKLOADS.values():  # warm-up: imports, byte compilation, loky pool
        _run(workload, "loky warm", [], [])
        _run(workload, "kubernetes (local) cold", [], [])
    for r in range(args.repeat):
        print(f"repetition {r + 1}/{args.repeat} ...", file=sys.stderr, flush=True)
        for row in rows:
            launches: list[int] = []
            written: list[int] = []
            row.times.append(_run(WORKLOADS[row.workload], row.backend, launches, written))
            row.workers.append(sum(launches))
            row.written.append(sum(written))
    took = time.perf_counter() - started
    load_after = load_average()

    command = "python benchmarks/joblib_bench.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    body = table(rows) + "\n\n" + verdict(rows)
    generated = section(body, command.strip(), args.repeat, load_before, load_after, took)
    print(generated)
    if args.write:
        write_section("joblib_bench", generated)
        print(f"\nwrote {README}", file=sys.stderr)
    return 0


def _medians(rows: list[Row]) -> dict[tuple[str, str], float]:
    return {(r.workload, r.backend): statistics.median(r.times) for r in rows}


def table(rows: list[Row]) -> str:
    """The Markdown table: one row per (workload, backend)."""
    lines = [
        "| workload | backend | median s | min s | x loky cold | x loky warm | workers started "
        "| client MB written |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    medians = _medians(rows)
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


def verdict(rows: list[Row]) -> str:
    """Issue 6's target (cold against loky cold) and issue 15's (warm against loky warm)."""
    medians = _medians(rows)
    parts = []
    for workload in TARGET_WORKLOADS:
        cold = medians[(workload, "kubernetes (local) cold")] / medians[(workload, "loky cold")]
        warm = medians[(workload, "kubernetes (local) warm")] / medians[(workload, "loky warm")]
        cold_ok = "meets" if cold <= TARGET_RATIO else "**misses**"
        warm_ok = "meets" if warm <= TARGET_RATIO else "**misses**"
        parts.append(
            f"{workload}: cold {cold:.2f}x loky cold ({cold_ok} {TARGET_RATIO:g}x), "
            f"warm {warm:.2f}x loky warm ({warm_ok} {TARGET_RATIO:g}x)"
        )
    return (
        "**Targets** (our backend with default sharing, median against loky's median; "
        f"cold against cold, warm against warm): {'; '.join(parts)}."
    )


def section(
    body: str, command: str, repeat: int, load_before: str, load_after: str, took: float
) -> str:
    """The generated README section (between the markers)."""
    return "\n".join(
        (
            run_line(command, took),
            "",
            f"{machine()}; load average (1/5/15 min) {load_before} before, {load_after} after (the "
            f"latter includes this benchmark's own load of up to {N_JOBS}). n_jobs = {N_JOBS} "
            f"for all; median and min over {repeat} repetition(s).",
            "",
            body,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
