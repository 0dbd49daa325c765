"""Small text helpers shared by the subcommands' output."""

from __future__ import annotations

from collections.abc import Sequence


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Print rows (the first one a header) as left-aligned columns two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def count(n: int, noun: str) -> str:
    """``1 Job``, ``2 Jobs``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")
