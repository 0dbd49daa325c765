"""Stragglers (``Batching(speculate=True)``): one call of a map that runs 20x longer the
first time it runs, with speculation off and on, on the local backend and on kubesim.

The map: 8 calls, ``max_workers=8`` (one index each), every call sleeps 1 s except call
3, which sleeps 20 s the first time it runs (decided by an ``O_EXCL`` marker file) and
1 s when run again, as a call on a slow node would. Rows:

* ``off``: what ships today (``speculate=False``);
* ``on, defaults``: ``speculate=True`` (bar: ``max(speculate_min=10 s, 4 x median)``);
* ``on, speculate_min=2``: a lower floor, for calls this short.

Columns: the map's wall time (``list(ex.map(...))``), the whole ``with`` block (the
shutdown waits for the workers), which copy's result the straggler's future got, and
whether the slow copy ran to its end (``finished``) or was stopped.

kubesim runs its process kubelet with ``pod_start_delay=2`` (as ``warm.py``); storage is
a local directory; ``keep_warm=0`` so every row starts cold.

    python benchmarks/speculate.py            # print the table
    python benchmarks/speculate.py --write    # also update benchmarks/README.md

About two minutes. Importing this module has no side effects; everything runs from
:func:`main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _report import load_average, report, write_section

REPO = Path(__file__).resolve().parent.parent
CALLS = 8
STRAGGLER = 3
NORMAL = 1.0
SLOW = 20 * NORMAL
POD_START = 2.0


def straggle(i: int, marks: str) -> str:
    """Call ``STRAGGLER`` sleeps SLOW s the first time it runs, NORMAL s after."""
    if i == STRAGGLER:
        try:
            os.close(os.open(os.path.join(marks, "first"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            threading.Event().wait(NORMAL)
            return "duplicate"
        threading.Event().wait(SLOW)
        open(os.path.join(marks, "slow-finished"), "w").close()
        return "original"
    threading.Event().wait(NORMAL)
    return "normal"


def one(kw: dict[str, Any], tmp: Path) -> dict[str, Any]:
    from k8s_executor import KubernetesExecutor

    marks = Path(tempfile.mkdtemp(dir=tmp))
    t0 = time.perf_counter()
    with KubernetesExecutor(max_workers=CALLS, progress=False, **kw) as ex:
        results = list(ex.map(straggle, range(CALLS), [str(marks)] * CALLS))
        mapped = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return {
        "map": mapped,
        "with": total,
        "winner": results[STRAGGLER],
        "slow copy": "finished" if (marks / "slow-finished").exists() else "stopped",
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update benchmarks/README.md")
    args = parser.parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # tests.kubesim, tests.kube_helpers
    from k8s_executor import Batching, Timeouts
    from tests.kube_helpers import kubesim_kwargs
    from tests.kubesim.kubeconfig import Kubesim

    load_before = load_average()
    started = time.perf_counter()
    variants = {
        "off": Batching(),
        "on, defaults": Batching(speculate=True),
        "on, speculate_min=2": Batching(speculate=True, speculate_min=2),
    }
    rows = [
        "| backend | speculation | map | `with` block | straggler's result from | slow copy |",
        "|---|---|--:|--:|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="k8sx-speculate-") as name:
        tmp = Path(name)
        with Kubesim(pod_start_delay=POD_START) as sim:
            backends: dict[str, Any] = {
                "local": lambda: {"backend": "local", "timeouts": Timeouts(keep_warm=0)},
                "kubesim": lambda: {
                    **(kw := kubesim_kwargs(sim, Path(tempfile.mkdtemp(dir=tmp)) / "s")),
                    "timeouts": dataclasses.replace(kw["timeouts"], keep_warm=0),
                },
            }
            for backend, make in backends.items():
                for label, batching in variants.items():
                    print(f"{backend}, {label} ...", file=sys.stderr, flush=True)
                    kw = make()
                    kw.setdefault("storage", str(Path(tempfile.mkdtemp(dir=tmp)) / "s"))
                    r = one({**kw, "batching": batching}, tmp)
                    rows.append(
                        f"| {backend} | {label} | {r['map']:.1f} s | {r['with']:.1f} s "
                        f"| {r['winner']} | {r['slow copy']} |"
                    )
    generated = report(
        "speculate.py",
        argv,
        time.perf_counter() - started,
        load_before,
        [
            f"{CALLS} calls, max_workers = {CALLS}; each sleeps {NORMAL:g} s, call "
            f"{STRAGGLER} {SLOW:g} s the first time it runs. kubesim: process kubelet, "
            f"pod_start_delay={POD_START:g} s; keep_warm=0; storage: a local directory.",
        ],
        rows,
    )
    print(generated)
    if args.write:
        write_section("speculate", generated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
