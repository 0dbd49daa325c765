"""Index-set strings of Indexed Jobs (``status.completedIndexes``, ``failedIndexes``,
``successPolicy.rules[].succeededIndexes``).

Format (kubernetes-jobs.md §4, IJU ``String``): ascending, comma separated; a run of three or
more consecutive indexes is written ``a-b``, a run of two as ``a,b``. ``{0,1,3,4,5,7}`` →
``"0,1,3-5,7"``.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["IndexFormatError", "format_indexes", "parse_indexes", "validate_indexes"]


class IndexFormatError(ValueError):
    """An interval string that the API server would reject; the text is the server's wording."""


def format_indexes(indexes: Iterable[int]) -> str:
    ordered = sorted(set(indexes))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{ordered[i]}-{ordered[j]}")
        else:
            parts.extend(str(x) for x in ordered[i : j + 1])
        i = j + 1
    return ",".join(parts)


def _parse_interval(text: str, completions: int | None) -> tuple[int, int]:
    limits = text.split("-")
    if len(limits) > 2:
        raise IndexFormatError(
            f'the fragment "{text}" violates the requirement that an index interval can have '
            "at most two parts separated by '-'"
        )
    values: list[int] = []
    for part in limits:
        # Go's strconv.Atoi accepts an optional sign but no spaces; digits only is close enough.
        if not part.isdigit():
            raise IndexFormatError(f'cannot convert string to integer for index: "{part}"')
        value = int(part)
        if completions is not None and value >= completions:
            raise IndexFormatError(f'too large index: "{part}"')
        values.append(value)
    if len(values) == 2:
        if values[0] >= values[1]:
            raise IndexFormatError(
                f"non-increasing order, previous: {values[0]}, current: {values[1]}"
            )
        return values[0], values[1]
    return values[0], values[0]


def validate_indexes(text: str, completions: int | None = None) -> int:
    """Check an interval string as the API server does; return how many indexes it names."""
    if not text:
        return 0
    last: int | None = None
    total = 0
    for interval in text.split(","):
        low, high = _parse_interval(interval, completions)
        if last is not None and last >= low:
            raise IndexFormatError(f"non-increasing order, previous: {last}, current: {low}")
        total += high - low + 1
        last = high
    return total


def parse_indexes(text: str | None, completions: int | None = None) -> set[int]:
    """The set named by an interval string (``""``/``None`` → empty set)."""
    if not text:
        return set()
    validate_indexes(text, completions)
    result: set[int] = set()
    for interval in text.split(","):
        low, high = _parse_interval(interval, completions)
        result.update(range(low, high + 1))
    return result
