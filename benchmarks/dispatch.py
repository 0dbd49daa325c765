"""Dispatch overhead: KubernetesExecutor(backend="local") vs ProcessPoolExecutor vs loky.

Times trivial calls (``x + 1``), so what is measured is the executor's own cost: pickling,
batching, storage round trips, worker start-up and result delivery, never the work.

    python benchmarks/dispatch.py              # print the table
    python benchmarks/dispatch.py --write      # also update benchmarks/README.md
    python benchmarks/dispatch.py --repeat 3   # fewer repetitions (default 5)

Each (executor, workload) pair is measured twice per repetition:

* cold: construct the executor, run the workload, shut it down; the user's real cost of
  ``with Executor() as ex: ...``.
* warm: construct, run one warm-up round (one call per worker), then time only the
  workload; shutdown is not timed.

Repetitions are round-robin (every pair once, then every pair again, ...) so that a burst
of load from other users of a shared machine spreads over all rows instead of hitting one.
Importing this module has no side effects; everything runs from :func:`main`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import importlib
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _report import README, load_average, machine, run_line, write_section

MAP_SIZES = (1_000, 10_000)
SUBMITS = 200
# The target: the local backend within this factor of ProcessPoolExecutor (with
# its default chunksize=1) for a map over 10 000 calls.
TARGET_RATIO = 2.0
TARGET_WORKLOAD = "map 10000"


def inc(x: int) -> int:
    """The trivial call: any time it takes beyond nothing is the executor's."""
    return x + 1


# -- the KubernetesExecutor backend, observed --------------------------------------------


@functools.cache
def _counting_backend_class() -> type:
    # Imported lazily so that `import benchmarks.dispatch` stays cheap and side-effect free;
    # cached so that the class is built once, outside the timed region (see preload).
    from k8s_executor.backends.local import LocalBackend

    class CountingLocalBackend(LocalBackend):
        """The default local backend, plus counts of batches, workers and stored bytes.

        Behaviour is unchanged: it only records what the executor asks of it. Stored bytes
        are summed in ``close`` because the executor calls it after every batch has been
        resolved and before it deletes the run's storage, so everything the run wrote
        (function tables, inputs, outcomes) is still there.
        """

        def __init__(self) -> None:
            super().__init__()
            self.batches = 0
            self.workers = 0
            self.stored_bytes = 0
            self._run_dir: Path | None = None

        def start(self, listener: Any, max_workers: int, run: Any) -> None:
            url: str = run.run_url
            # The default storage is a local temp dir, given as a path or file:// URL.
            self._run_dir = Path(url.removeprefix("file://"))
            super().start(listener, max_workers, run)

        def launch(self, spec: Any) -> None:
            self.batches += 1
            self.workers += spec.indexes  # one subprocess per index
            super().launch(spec)

        def close(self, *, kill: bool) -> None:
            self.stored_bytes = self.run_dir_bytes()
            super().close(kill=kill)

        def run_dir_bytes(self) -> int:
            if self._run_dir is None or not self._run_dir.exists():
                return 0
            return sum(p.stat().st_size for p in self._run_dir.rglob("*") if p.is_file())

    return CountingLocalBackend


# -- executors under test ------------------------------------------------------------------


@dataclass
class Stats:
    """What one KubernetesExecutor measurement did (None for the other executors)."""

    batches: int
    workers: int
    stored_bytes: int


@dataclass
class Contender:
    """One executor configuration: how to open it, how to map with it, how to close it."""

    name: str
    open: Callable[[int], Executor]
    close: Callable[[Executor], None]
    chunksize: Callable[[int, int], int] = lambda n, workers: 1
    stats: Callable[[Executor], Stats | None] = lambda ex: None
    map_only: bool = False  # chunksize means nothing to submit: skip that workload


def _open_k8sx(workers: int) -> Executor:
    from k8s_executor import KubernetesExecutor

    # Same as KubernetesExecutor(backend="local", max_workers=workers): the counting
    # subclass changes nothing but what we can see.
    return KubernetesExecutor(max_workers=workers, backend=_counting_backend_class()())


def _open_k8sx_progress(workers: int) -> Executor:
    from k8s_executor import KubernetesExecutor, _progress

    # The bar as a terminal would get it (redrawn every 0.2 s), drawn into /dev/null so
    # the benchmark's own output stays readable (stderr is restored by _close_progress).
    _progress._PIPE_INTERVAL = _progress._INTERVAL
    _saved_stderr.append(sys.stderr)
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - closed by _close_progress
    return KubernetesExecutor(
        max_workers=workers, backend=_counting_backend_class()(), progress=True
    )


_saved_stderr: list[Any] = []


def _close_progress(ex: Executor) -> None:
    ex.shutdown(wait=True)
    devnull, sys.stderr = sys.stderr, _saved_stderr.pop()
    devnull.close()


def _k8sx_stats(ex: Executor) -> Stats:
    backend = ex._backend  # type: ignore[attr-defined]
    return Stats(backend.batches, backend.workers, backend.stored_bytes)


def _open_loky(workers: int) -> Executor:
    from loky import get_reusable_executor

    # reuse=False: a fresh executor (and fresh workers) per measurement, so the cold
    # column includes loky's start-up like everyone else's. Reusing one is loky's point;
    # the warm column is what a reused executor costs.
    ex: Executor = get_reusable_executor(max_workers=workers, reuse=False)
    return ex


def _close(ex: Executor) -> None:
    ex.shutdown(wait=True)


def _tuned_chunksize(n: int, workers: int) -> int:
    # What a user tuning ProcessPoolExecutor would pick: ~4 chunks per worker.
    return max(1, n // (4 * workers))


def contenders() -> list[Contender]:
    """The executor configurations, in table order."""
    return [
        Contender("KubernetesExecutor(local)", _open_k8sx, _close, stats=_k8sx_stats),
        Contender(
            "KubernetesExecutor(local), progress=True",
            _open_k8sx_progress,
            _close_progress,
            stats=_k8sx_stats,
        ),
        Contender(
            "KubernetesExecutor(local), chunksize=N/(4w)",
            _open_k8sx,
            _close,
            chunksize=_tuned_chunksize,
            stats=_k8sx_stats,
            map_only=True,
        ),
        Contender(
            "ProcessPoolExecutor",
            lambda w: concurrent.futures.ProcessPoolExecutor(max_workers=w),
            _close,
        ),
        Contender(
            "ProcessPoolExecutor, chunksize=N/(4w)",
            lambda w: concurrent.futures.ProcessPoolExecutor(max_workers=w),
            _close,
            chunksize=_tuned_chunksize,
            map_only=True,
        ),
        Contender("loky get_reusable_executor", _open_loky, _close),
    ]


# -- workloads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    n: int
    kind: str  # "map" or "submit"


WORKLOADS = (
    *(Workload(f"map {n}", n, "map") for n in MAP_SIZES),
    Workload(f"submit {SUBMITS}", SUBMITS, "submit"),
)


def run_workload(ex: Executor, work: Workload, chunksize: int) -> None:
    """Run the workload to completion and check the results (a wrong answer is no time)."""
    if work.kind == "map":
        results = list(ex.map(inc, range(work.n), chunksize=chunksize))
    else:
        futures = [ex.submit(inc, i) for i in range(work.n)]
        results = [f.result() for f in futures]
    if results != list(range(1, work.n + 1)):
        raise AssertionError(f"{work.name}: wrong results")


@dataclass
class Samples:
    cold: list[float] = field(default_factory=list)
    warm: list[float] = field(default_factory=list)
    stats: list[Stats] = field(default_factory=list)


def measure_cold(c: Contender, work: Workload, workers: int) -> tuple[float, Stats | None]:
    t0 = time.perf_counter()
    ex = c.open(workers)
    run_workload(ex, work, c.chunksize(work.n, workers))
    c.close(ex)
    elapsed = time.perf_counter() - t0
    return elapsed, c.stats(ex)


def measure_warm(c: Contender, work: Workload, workers: int) -> float:
    ex = c.open(workers)
    try:
        # One call per worker, so pools that start workers lazily have them all up.
        list(ex.map(inc, range(workers)))
        t0 = time.perf_counter()
        run_workload(ex, work, c.chunksize(work.n, workers))
        return time.perf_counter() - t0
    finally:
        c.close(ex)


def pairs(cs: Sequence[Contender]) -> Iterator[tuple[Contender, Workload]]:
    for work in WORKLOADS:
        for c in cs:
            if not (c.map_only and work.kind != "map"):
                yield c, work


def run_all(repeat: int, workers: int) -> dict[tuple[str, str], Samples]:
    cs = contenders()
    samples: dict[tuple[str, str], Samples] = {(c.name, w.name): Samples() for c, w in pairs(cs)}
    for r in range(repeat):
        print(f"repetition {r + 1}/{repeat} ...", file=sys.stderr, flush=True)
        for c, work in pairs(cs):
            s = samples[(c.name, work.name)]
            elapsed, stats = measure_cold(c, work, workers)
            s.cold.append(elapsed)
            if stats is not None:
                s.stats.append(stats)
            s.warm.append(measure_warm(c, work, workers))
    return samples


# -- report ----------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}"


def _span(values: Sequence[int], fmt: Callable[[int], str] = str) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if lo == hi else f"{fmt(lo)}-{fmt(hi)}"


def _kb(n: int) -> str:
    return f"{n / 1000:,.1f} kB"


def table(samples: dict[tuple[str, str], Samples]) -> str:
    """The Markdown table: one row per (workload, executor)."""
    lines = [
        "| workload | executor | cold median ms | cold min ms | warm median ms "
        "| warm min ms | cold x PPE | warm x PPE | k8sx batches / workers / stored |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for work in WORKLOADS:
        for (name, wname), s in samples.items():
            if wname != work.name:
                continue
            counts = ""
            if s.stats:  # KubernetesExecutor only; a range when repetitions differ
                counts = " / ".join(
                    (
                        _span([x.batches for x in s.stats]),
                        _span([x.workers for x in s.stats]),
                        _span([x.stored_bytes for x in s.stats], _kb),
                    )
                )
            lines.append(
                f"| {work.name} | {name} "
                f"| {_ms(statistics.median(s.cold))} | {_ms(min(s.cold))} "
                f"| {_ms(statistics.median(s.warm))} | {_ms(min(s.warm))} "
                f"| {ratio(samples, name, wname, 'cold'):.2f} "
                f"| {ratio(samples, name, wname, 'warm'):.2f} | {counts} |"
            )
    return "\n".join(lines)


def ratio(samples: dict[tuple[str, str], Samples], name: str, work: str, col: str) -> float:
    """Median of ``name`` over median of ProcessPoolExecutor (chunksize=1), one column."""
    mine: list[float] = getattr(samples[(name, work)], col)
    base: list[float] = getattr(samples[("ProcessPoolExecutor", work)], col)
    return statistics.median(mine) / statistics.median(base)


def verdict(samples: dict[tuple[str, str], Samples]) -> str:
    """Whether the local backend meets the issue's target, and where it is > 2x."""
    k8sx = "KubernetesExecutor(local)"
    parts = []
    for col in ("cold", "warm"):
        r = ratio(samples, k8sx, TARGET_WORKLOAD, col)
        ok = "meets" if r <= TARGET_RATIO else "**misses**"
        parts.append(f"{col} {r:.2f}x ProcessPoolExecutor, {ok} the {TARGET_RATIO:g}x target")
    misses = [
        f"{w.name} {col} {r:.2f}x"
        for w in WORKLOADS
        for col in ("cold", "warm")
        if (r := ratio(samples, k8sx, w.name, col)) > TARGET_RATIO
    ]
    return (
        f"**Target** ({TARGET_WORKLOAD}, KubernetesExecutor defaults vs ProcessPoolExecutor "
        f"defaults): {'; '.join(parts)}.\n\n"
        f"KubernetesExecutor(local) (defaults) slower than {TARGET_RATIO:g}x "
        f"ProcessPoolExecutor (defaults): {', '.join(misses) if misses else 'nowhere'}."
    )


def section(body: str, command: str, load_before: str, load_after: str, took: float) -> str:
    """The generated README section (between the markers)."""
    nproc = os.cpu_count()
    return "\n".join(
        (
            run_line(command, took),
            "",
            f"{machine()}; load average (1/5/15 min) {load_before} before, {load_after} after"
            f" (the latter includes this benchmark's own load of up to {nproc})."
            f" max_workers = {nproc} for all.",
            "",
            body,
        )
    )


@contextmanager
def _quiet_loky() -> Iterator[None]:
    # reuse=False replaces loky's process-wide executor; it warns when it has to kill the
    # previous one's idle workers, which is expected here and not a result.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def preload() -> None:
    """Import every executor's modules before timing anything.

    Otherwise the first cold measurement of each executor would also pay for importing
    its package (~0.1 s for k8s_executor), which a long-running program pays once.
    """
    for module in ("k8s_executor", "loky"):
        importlib.import_module(module)
    _counting_backend_class()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update benchmarks/README.md")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (default 5)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")

    workers = os.cpu_count() or 1
    preload()
    load_before = load_average()
    t0 = time.perf_counter()
    with _quiet_loky():
        samples = run_all(args.repeat, workers)
    took = time.perf_counter() - t0
    load_after = load_average()

    body = table(samples) + "\n\n" + verdict(samples)
    command = "python benchmarks/dispatch.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    generated = section(body, command.strip(), load_before, load_after, took)
    print(generated)
    if args.write:
        write_section("dispatch", generated)
        print(f"\nwrote {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
