"""Named runs (issue 18): a map of 1 000 calls run once, then the same map again in a
new executor of the same run name, whose calls all resolve from the stored results.

Rows: storage in a local directory and in S3 (moto on loopback, which serves one request
at a time: a real bucket answers concurrent reads faster), both on the local backend with
``max_workers=4``. Columns: the first run's map (every call runs and stores its result),
the second's (every call reused: no worker), and ``with`` block to ``with`` block.

    python benchmarks/durable.py            # print the table
    python benchmarks/durable.py --write    # also update benchmarks/README.md

Importing this module has no side effects; everything runs from :func:`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from _report import load_average, report, write_section

CALLS = 1_000
WORKERS = 4


def square(x: int) -> int:
    return x * x


def _timed_runs(kw: dict[str, Any]) -> tuple[float, float, float, float]:
    """(first map, first with block, second map, second with block), in seconds."""
    from k8s_executor import KubernetesExecutor

    times: list[float] = []
    for _ in range(2):
        began = time.perf_counter()
        with KubernetesExecutor(**kw) as ex:
            results = list(ex.map(square, range(CALLS)))
            times.append(time.perf_counter() - began)
        times.append(time.perf_counter() - began)
        assert results == [x * x for x in range(CALLS)]
    return times[0], times[1], times[2], times[3]


@contextlib.contextmanager
def _storages(tmp: Path) -> Iterator[dict[str, dict[str, Any]]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.s3server import s3_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with s3_server(buckets=("durable",)) as s3:
        yield {
            "local directory": {"storage": str(tmp / "storage")},
            "S3 (moto)": {
                "storage": "s3://durable/k8sx",
                "storage_options": s3.storage_options(),
                "share_storage_options": True,
            },
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="update benchmarks/README.md")
    args = parser.parse_args(argv)
    load_before = load_average()
    started = time.perf_counter()
    rows = [
        "| storage | first map | first `with` | reused map | reused `with` | x faster |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    with tempfile.TemporaryDirectory(prefix="k8sx-durable-") as tmp:
        os.environ["XDG_STATE_HOME"] = os.path.join(tmp, "state")  # the runs' keys
        with _storages(Path(tmp)) as storages:
            for n, (name, storage) in enumerate(storages.items()):
                kw = {
                    "backend": "local",
                    "run": f"bench-{n}",
                    "max_workers": WORKERS,
                    "progress": False,
                    **storage,
                }
                first, first_with, second, second_with = _timed_runs(kw)
                rows.append(
                    f"| {name} | {first:.2f} s | {first_with:.2f} s | {second:.2f} s "
                    f"| {second_with:.2f} s | {first_with / second_with:.1f} |"
                )
    generated = report(
        "durable.py",
        argv,
        time.perf_counter() - started,
        load_before,
        [f"{CALLS} calls of a trivial function, local backend, max_workers = {WORKERS}."],
        rows,
    )
    print(generated)
    if args.write:
        write_section("durable", generated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
