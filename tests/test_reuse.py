"""Unit tests of the rule that decides whether a kept executor serves a new joblib call."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from k8s_executor import Batching, Timeouts
from k8s_executor._reuse import same_options


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
