"""Warm workers (``Timeouts.keep_warm``): rounds after the first, cold and warm, on kubesim
with a modelled pod start, beside loky on this machine.

kubesim runs with its process kubelet and ``pod_start_delay=2`` (2 s from a pod's
creation to its container running: scheduling, a cached image, container start; a real
1.36 cluster measured about 3 s). Storage is a local directory. Workloads, each with
``max_workers=4`` (``n_jobs=4``):

* ``notebook loop``: 20 sequential ``ex.submit(f, i).result()``; the p50 and p90 round trip
  of rounds 2..20 (the first pays the pod start either way);
* ``10 maps x 100``: ten ``list(ex.map(f, range(100)))`` one after another; total seconds;
* ``GridSearchCV``: scikit-learn's ``GridSearchCV(SVC(), 6 candidates, cv=3)`` on the
  digits data set through ``parallel_config(backend="kubernetes")``; on kubesim, and on
  the local executor backend, both warm.

Rows: ``kubesim, keep_warm=0`` (every batch new pods), ``kubesim, keep_warm=60`` (what
ships), ``local backend`` (warm), and loky (a warm ``get_reusable_executor``) as the
reference where the workload is the same.

    python benchmarks/warm.py            # print the table
    python benchmarks/warm.py --write    # also update benchmarks/README.md

About three minutes. Importing this module has no side effects; everything runs from
:func:`main`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _report import load_average, report, write_section

REPO = Path(__file__).resolve().parent.parent
WORKERS = 4
POD_START = 2.0


def inc(x: int) -> int:
    return x + 1


def notebook_loop(ex: Any) -> dict[str, float]:
    rounds = []
    for i in range(20):
        t0 = time.perf_counter()
        assert ex.submit(inc, i).result() == i + 1
        rounds.append(time.perf_counter() - t0)
    later = sorted(rounds[1:])
    return {
        "first": rounds[0],
        "p50": statistics.median(later),
        "p90": later[int(0.9 * (len(later) - 1))],
    }


def ten_maps(ex: Any) -> dict[str, float]:
    t0 = time.perf_counter()
    for _ in range(10):
        assert list(ex.map(inc, range(100))) == list(range(1, 101))
    return {"total": time.perf_counter() - t0}


def grid_search(config: Any) -> float:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    features, labels = load_digits(return_X_y=True)
    t0 = time.perf_counter()
    with config:
        GridSearchCV(SVC(), {"C": [0.1, 1, 10], "gamma": [1e-4, 1e-3]}, cv=3).fit(features, labels)
    return time.perf_counter() - t0


def kubesim_kw(sim: Any, tmp: Path, keep_warm: float) -> dict[str, Any]:
    import dataclasses

    from tests.kube_helpers import kubesim_kwargs

    kw = kubesim_kwargs(sim, Path(tempfile.mkdtemp(dir=tmp)) / "storage")
    kw["timeouts"] = dataclasses.replace(kw["timeouts"], keep_warm=keep_warm)
    return {**kw, "progress": False}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update benchmarks/README.md")
    args = parser.parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # tests.kubesim, tests.kube_helpers
    import joblib
    from loky import get_reusable_executor  # the standalone loky, not joblib's copy

    import k8s_executor.joblib
    from k8s_executor import KubernetesExecutor
    from tests.kubesim.kubeconfig import Kubesim

    k8s_executor.joblib.register()
    load_before = load_average()
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}

    def measure(name: str, make: Callable[[], Any]) -> None:
        print(f"{name} ...", file=sys.stderr, flush=True)
        with make() as ex:
            loop = notebook_loop(ex)
            maps = ten_maps(ex)
        results[name] = {**loop, **maps}

    with tempfile.TemporaryDirectory(prefix="warm-bench-") as name:
        tmp = Path(name)
        # Functions of this script travel by value (it runs as __main__).
        with Kubesim(pod_start_delay=POD_START) as sim:
            for keep in (0.0, 60.0):
                measure(
                    f"kubesim, keep_warm={keep:g}",
                    lambda keep=keep: KubernetesExecutor(  # type: ignore[misc]
                        max_workers=WORKERS, **kubesim_kw(sim, tmp, keep)
                    ),
                )
            print("GridSearchCV on kubesim ...", file=sys.stderr, flush=True)
            kw = kubesim_kw(sim, tmp, 60.0)
            kw.pop("backend")
            results["kubesim, keep_warm=60"]["grid"] = grid_search(
                joblib.parallel_config(
                    backend="kubernetes", n_jobs=WORKERS, executor_backend="kubernetes", **kw
                )
            )
        measure(
            "local backend",
            lambda: KubernetesExecutor(max_workers=WORKERS, backend="local", progress=False),
        )
        results["local backend"]["grid"] = grid_search(
            joblib.parallel_config(backend="kubernetes", n_jobs=WORKERS, executor_backend="local")
        )
        loky = get_reusable_executor(max_workers=WORKERS)
        list(loky.map(inc, range(WORKERS * 4)))  # warm: its workers are started
        measure("loky (warm)", lambda: _NoShutdown(loky))
        grid_search(joblib.parallel_config(backend="loky", n_jobs=WORKERS))  # imports
        results["loky (warm)"]["grid"] = grid_search(
            joblib.parallel_config(backend="loky", n_jobs=WORKERS)
        )
    took = time.perf_counter() - started

    rows = [
        "| row | notebook loop: first round | p50 of rounds 2-20 | p90 | 10 maps x 100 | "
        "GridSearchCV 18 fits |",
        "|---|---|---|---|---|---|",
    ]
    for row, r in results.items():
        grid = f"{r['grid']:.2f} s" if "grid" in r else ""
        rows.append(
            f"| {row} | {r['first']:.2f} s | {r['p50']:.3f} s | {r['p90']:.3f} s "
            f"| {r['total']:.2f} s | {grid} |"
        )
    cold, hot = results["kubesim, keep_warm=0"], results["kubesim, keep_warm=60"]
    local = results["local backend"]
    verdict = [
        f"* notebook loop on kubesim: p50 {hot['p50']:.3f} s warm (goal <= 0.3 s), "
        f"{cold['p50']:.2f} s cold (>= 2 s expected).",
        f"* 10 maps x 100 on kubesim: {cold['total'] / hot['total']:.1f}x faster warm "
        "(goal >= 5x).",
        f"* GridSearchCV on kubesim, warm: {hot['grid'] / local['grid']:.2f}x the local "
        "backend (goal <= 2x).",
    ]
    generated = report(
        "warm.py",
        argv,
        took,
        load_before,
        [
            f"kubesim: process kubelet, pod_start_delay={POD_START:g} s; max_workers / "
            f"n_jobs = {WORKERS}; storage: a local directory."
        ],
        [*rows, "", *verdict],
    )
    print(generated)
    if args.write:
        write_section("warm", generated)
    return 0


class _NoShutdown:
    """loky's reusable executor in a ``with`` block that leaves it running (warm)."""

    def __init__(self, executor: Any) -> None:
        self._executor = executor

    def __enter__(self) -> Any:
        return self._executor

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
