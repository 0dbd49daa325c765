"""What every benchmark script shares: the machine it ran on, and writing its own section
of benchmarks/README.md (the text between its ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` markers). Imported by the scripts, which run with this directory
first on ``sys.path``."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

README = Path(__file__).with_name("README.md")


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return m.group(1).strip() if m else "unknown"


def run_line(command: str, took: float) -> str:
    """A generated section's first line: when, with which command, how long it took."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"Run {now} · `{command}` · {took:.0f} s"


def machine() -> str:
    """``Machine: N CPUs (model), Python X on Linux R``, for each script to go on from."""
    return (
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()} "
        f"on {platform.system()} {platform.release()}"
    )


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(
    script: str,
    argv: Sequence[str] | None,
    took: float,
    load_before: str,
    setup: Sequence[str],
    body: Sequence[str],
) -> str:
    """A generated section: the run line (``python benchmarks/SCRIPT ARGS``), the machine
    and its load before and now, lines saying how the benchmark was set up, a blank line,
    then ``body``."""
    args = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    command = f"python benchmarks/{script} {args}".strip()
    return "\n".join(
        [
            run_line(command, took),
            "",
            machine() + f"; load average before {load_before}, after {load_average()}.",
            *setup,
            "",
            *body,
        ]
    )


def write_section(name: str, generated: str) -> None:
    """Replace the text between this benchmark's markers in benchmarks/README.md."""
    start_mark, end_mark = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = README.read_text()
    start, end = text.find(start_mark), text.find(end_mark)
    if start < 0 or end < start:
        raise SystemExit(f"{README}: markers {start_mark} ... {end_mark} not found")
    README.write_text(text[: start + len(start_mark)] + "\n" + generated + "\n" + text[end:])
