"""Unit tests of the rule that decides whether a kept executor serves a new joblib call."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest

from k8s_executor import Batching, Timeouts
from k8s_executor._reuse import ReusePool, same_options


def _init() -> None:
    pass


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (
            {"storage": "s3://b/x", "batching": Batching(window=0.05)},
            {"storage": "s3://b/x", "batching": Batching(window=0.05)},
            True,
        ),
        ({"storage": "s3://b/x"}, {"storage": "s3://b/y"}, False),
        ({"storage": "s3://b/x"}, {"storage": "s3://b/x", "retries": 0}, False),
        ({"timeouts": Timeouts()}, {"timeouts": Timeouts(keep_warm=0)}, False),
        ({"initializer": _init}, {"initializer": _init}, True),
        ({"initializer": _init}, {"initializer": lambda: None}, False),
        ({"storage_options": {"anon": True}}, {"storage_options": {"anon": True}}, True),
    ],
)
def test_options_compare_by_value(a: dict[str, Any], b: dict[str, Any], same: bool) -> None:
    assert same_options(a, b) is same
    assert same_options(b, a) is same


def test_values_without_a_plain_truth_value_count_as_different() -> None:
    x = np.arange(3)
    # The same array object is the same option...
    assert same_options({"initargs": (x,)}, {"initargs": (x,)})
    # ...an equal copy cannot be compared plainly (the comparison raises): not reused.
    assert not same_options({"initargs": (x,)}, {"initargs": (x.copy(),)})
    assert not same_options({"a": x}, {"a": x.copy()})


class _Kept:
    """What the pool needs of an executor: its window, its run, its shutdown."""

    def __init__(self) -> None:
        self.keep_warm = 3600.0  # the pool's own timer never fires during a test
        self.run_id = "r-test"
        self.shut_down = 0

    def shutdown(self, wait: bool = True) -> None:
        self.shut_down += 1


def _new() -> Any:
    return _Kept()


def test_an_executor_taken_as_its_window_ends_is_not_shut_down() -> None:
    # The next Parallel call takes the executor, then its expiry timer fires (it was
    # already running when take cancelled it): the timer finds it taken and leaves it.
    pool = ReusePool()
    kept = _Kept()
    pool.give_back({"n": 1}, 2, cast(Any, kept))
    taken, reused = pool.take({"n": 1}, 2, _new)
    assert cast(Any, taken) is kept and reused
    pool._expire(cast(Any, kept))
    assert kept.shut_down == 0
    assert len(pool) == 0


def test_an_executor_that_expired_is_never_taken() -> None:
    # The timer fires first: the next call gets a new executor, never the one being shut
    # down (whose workers have left).
    pool = ReusePool()
    kept = _Kept()
    pool.give_back({"n": 1}, 2, cast(Any, kept))
    pool._expire(cast(Any, kept))
    assert kept.shut_down == 1
    taken, reused = pool.take({"n": 1}, 2, _new)
    assert cast(Any, taken) is not kept and not reused
    pool._expire(cast(Any, kept))  # a second firing does nothing
    assert kept.shut_down == 1
