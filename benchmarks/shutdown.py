"""How long leaving ends: killing running workers, and `with` blocks around nothing.

On kubesim with its podman kubelet (every pod a real container, its worker PID 1 with the
kubelet's signals, as on a real node), with the pods' default 30 s grace period:

* ``kill_workers``: two workers blocked in a call; the time ``shutdown(kill_workers=True)``
  takes, and from its start until the API lists no pod of the run. Once with the worker
  as its container's init (what ships), once with ``K8S_EXECUTOR_INIT=0`` (a bare PID 1,
  as before issue 21): the kubelet's SIGTERM is then dropped and the pods live out the
  grace period.
* ``empty map``: ``with KubernetesExecutor(...) as ex: list(ex.map(f, []))``, 20 times:
  every exit must be short (on a real cluster seven of eight took 60-240 s, on a stranded
  watch connection).

Beside them, ProcessPoolExecutor: two workers blocked in a call, then
``shutdown(wait=True, cancel_futures=True)`` after ``terminate()`` of its worker processes
(what a user does to stop a pool now), and 20 ``with`` blocks around an empty map.

    python benchmarks/shutdown.py            # print the table
    python benchmarks/shutdown.py --write    # also update benchmarks/README.md

Needs podman and the base image (``sudo bash .ci/containers.sh``). About two minutes.
Importing this module has no side effects; everything runs from :func:`main`.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from _report import load_average, report, write_section

REPO = Path(__file__).resolve().parent.parent
EMPTY_BLOCKS = 20


def block(release: str) -> str:
    """Wait in the worker until ``release`` exists (never, here: the worker is killed)."""
    path = Path(release)
    deadline = time.monotonic() + 600
    while not path.exists() and time.monotonic() < deadline:
        threading.Event().wait(0.05)
    return release


def touch_then_block(started: str, release: str) -> str:
    Path(started).touch()
    return block(release)


def nothing(x: int) -> int:
    return x


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        threading.Event().wait(0.02)


def kill_workers(sim: Any, tmp: Path, *, init: bool) -> tuple[float, float]:
    """(seconds in shutdown, seconds until no pod of the run is listed)."""
    from k8s_executor import KubernetesExecutor
    from tests.kube_helpers import kubesim_podman_kwargs

    run_dir = Path(tempfile.mkdtemp(dir=tmp))
    env = {} if init else {"K8S_EXECUTOR_INIT": "0"}
    kw = kubesim_podman_kwargs(sim, run_dir / "storage", tmp, env=env)
    ex = KubernetesExecutor(max_workers=2, progress=False, **kw)
    started = [run_dir / "a", run_dir / "b"]
    futures = [ex.submit(touch_then_block, str(p), str(run_dir / "never")) for p in started]
    _wait(lambda: all(p.exists() for p in started), 120, "both calls to start")
    _wait(lambda: all(f.running() for f in futures), 60, "the executor to see them run")
    run_id = ex.run_id
    t0 = time.perf_counter()
    ex.shutdown(wait=True, kill_workers=True)
    in_shutdown = time.perf_counter() - t0
    selector = f"k8s-executor.io/run={run_id}"
    _wait(
        lambda: not sim.store.list("pods", "default", label_selector=selector)[0],
        120,
        "the pods to go",
    )
    return in_shutdown, time.perf_counter() - t0


def empty_maps(sim: Any, tmp: Path) -> list[float]:
    from k8s_executor import KubernetesExecutor
    from tests.kube_helpers import kubesim_podman_kwargs

    times = []
    for _ in range(EMPTY_BLOCKS):
        run_dir = Path(tempfile.mkdtemp(dir=tmp))
        kw = kubesim_podman_kwargs(sim, run_dir / "storage", tmp)
        t0 = time.perf_counter()
        with KubernetesExecutor(progress=False, **kw) as ex:
            assert list(ex.map(nothing, [])) == []
        times.append(time.perf_counter() - t0)
    return times


def process_pool_kill(tmp: Path) -> float:
    run_dir = Path(tempfile.mkdtemp(dir=tmp))
    ex = cf.ProcessPoolExecutor(max_workers=2)
    started = [run_dir / "a", run_dir / "b"]
    for p in started:
        ex.submit(touch_then_block, str(p), str(run_dir / "never"))
    _wait(lambda: all(p.exists() for p in started), 60, "both calls to start")
    t0 = time.perf_counter()
    for proc in list(ex._processes.values()):  # no public way to stop running calls
        proc.terminate()
    ex.shutdown(wait=True, cancel_futures=True)
    return time.perf_counter() - t0


def process_pool_empty() -> list[float]:
    times = []
    for _ in range(EMPTY_BLOCKS):
        t0 = time.perf_counter()
        with cf.ProcessPoolExecutor(max_workers=2) as ex:
            assert list(ex.map(nothing, [])) == []
        times.append(time.perf_counter() - t0)
    return times


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update benchmarks/README.md")
    args = parser.parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # tests.kubesim, tests.kube_helpers
    from tests.kube_helpers import podman_cmd
    from tests.kubesim.kubeconfig import Kubesim

    load_before = load_average()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shutdown-bench-") as name:
        tmp = Path(name)
        podman = {"podman_cmd": podman_cmd()}
        # Functions of this script travel by value (it runs as __main__).
        with Kubesim(runtime="podman", kubelet_options=podman) as sim:
            with_init = kill_workers(sim, tmp, init=True)
            bare = kill_workers(sim, tmp, init=False)
            empties = empty_maps(sim, tmp)
        ppe_kill = process_pool_kill(tmp)
        ppe_empty = process_pool_empty()
    took = time.perf_counter() - t0
    rows = [
        "| what | KubernetesExecutor, kubesim-podman | ProcessPoolExecutor |",
        "|---|---|---|",
        f"| kill 2 running workers: in `shutdown` (worker as init) | {with_init[0]:.2f} s "
        f"| {ppe_kill:.2f} s (`terminate()` + `shutdown(cancel_futures=True)`) |",
        f"| kill 2 running workers: until no pod is listed (worker as init) "
        f"| {with_init[1]:.2f} s | |",
        f"| kill 2 running workers: in `shutdown` (bare PID 1, `K8S_EXECUTOR_INIT=0`) "
        f"| {bare[0]:.2f} s | |",
        f"| kill 2 running workers: until no pod is listed (bare PID 1) | {bare[1]:.2f} s | |",
        f"| {EMPTY_BLOCKS} `with` blocks around an empty `map`, each: min / median / max "
        f"| {_spread(empties)} s | {_spread(ppe_empty)} s |",
    ]
    generated = report(
        "shutdown.py",
        argv,
        took,
        load_before,
        ["Pods' grace period: the default 30 s."],
        rows,
    )
    print(generated)
    if args.write:
        write_section("shutdown", generated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
