"""What every benchmark script shares: the machine it ran on, and writing its own section
of benchmarks/README.md (the text between its ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` markers). Imported by the scripts, which run with this directory
first on ``sys.path``."""

from __future__ import annotations

import os
import platform
import re
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


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def write_section(name: str, generated: str) -> None:
    """Replace the text between this benchmark's markers in benchmarks/README.md."""
    start_mark, end_mark = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = README.read_text()
    start, end = text.find(start_mark), text.find(end_mark)
    if start < 0 or end < start:
        raise SystemExit(f"{README}: markers {start_mark} ... {end_mark} not found")
    README.write_text(text[: start + len(start_mark)] + "\n" + generated + "\n" + text[end:])
