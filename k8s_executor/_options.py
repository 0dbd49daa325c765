"""Option dataclasses: frozen, validated on construction, documented field by field.

Each field's docstring is the reference text of the option (the docs page is generated
from it). A bad value raises :class:`~k8s_executor.errors.ConfigError` naming the option,
the value and what is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .errors import ConfigError

__all__ = ["Batching", "StorageRetry", "check_positive_int", "check_seconds"]


def _fail(option: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(f"{option}={value!r} is not allowed: {allowed}")


def check_positive_int(option: str, value: object, *, allow_none: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int >= 1 (or None if allowed)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or None" if allow_none else ""
        raise _fail(option, value, f"expected an integer >= 1{extra}")


def check_seconds(option: str, value: object, *, allow_zero: bool = True) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite, non-negative duration."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 or (allow_zero and value == 0))
    )
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise _fail(option, value, f"expected a number of seconds {bound}")


class _Options:
    """Shared behaviour: a repr that shows only the fields that differ from the defaults."""

    def __repr__(self) -> str:
        parts = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)  # type: ignore[arg-type]
            if getattr(self, f.name) != f.default
        ]
        return f"{type(self).__name__}({', '.join(parts)})"


@dataclass(frozen=True, repr=False)
class Batching(_Options):
    """How calls are grouped into batches and packed into workers.

    A batch becomes one Kubernetes Indexed Job (or one group of local processes); each
    index of the batch runs a contiguous run of the batch's calls in one worker, so that
    thousands of small calls do not become thousands of pods.
    """

    window: float = 0.01
    """Seconds a call given to ``submit`` waits for others to join its batch. Calls given
    to ``map`` form their own batch at once."""

    max_calls: int = 100_000
    """The most calls (tasks) one batch may hold; beyond it a new batch starts."""

    max_indexes: int | None = None
    """The most indexes (workers) one batch is spread over. ``None`` means
    ``max_workers``: every worker slot gets a share. Set it higher to give long calls
    their own worker each (at the cost of more worker start-ups)."""

    def __post_init__(self) -> None:
        check_seconds("Batching.window", self.window)
        check_positive_int("Batching.max_calls", self.max_calls)
        check_positive_int("Batching.max_indexes", self.max_indexes, allow_none=True)


@dataclass(frozen=True, repr=False)
class StorageRetry(_Options):
    """Retries of transient storage errors (connection resets, throttling, 5xx)."""

    attempts: int = 5
    """Tries per storage operation before it fails with ``StorageError``."""

    initial_delay: float = 0.1
    """Seconds before the first retry; doubled after each further failure."""

    max_delay: float = 5.0
    """The longest wait between two tries, in seconds."""

    def __post_init__(self) -> None:
        check_positive_int("StorageRetry.attempts", self.attempts)
        check_seconds("StorageRetry.initial_delay", self.initial_delay)
        check_seconds("StorageRetry.max_delay", self.max_delay)
