"""_batches: packing tasks into indexes, the function table, where large buffers go.
Pure: no storage, no threads."""

from __future__ import annotations

import collections
import threading
from concurrent.futures import Future
from dataclasses import dataclass

import pytest

from k8s_executor import FunctionPicklingError
from k8s_executor import _payload as wire
from k8s_executor._batches import Task, function_table, index_inputs, pack, place_buffers
from tests import helpers


@dataclass
class Sized:
    n_calls: int


@pytest.mark.parametrize(
    ("calls", "slots", "expected"),
    [
        ([1, 1, 1, 1], 2, [[1, 1], [1, 1]]),
        ([1, 1, 1, 1, 1], 2, [[1, 1, 1], [1, 1]]),
        ([1, 1], 8, [[1], [1]]),  # never more indexes than tasks
        ([5], 3, [[5]]),  # a task is never split
        ([4, 1, 1, 1, 1], 2, [[4], [1, 1, 1, 1]]),  # by calls, not by tasks
        ([1, 1, 1, 1, 1, 1], 3, [[1, 1], [1, 1], [1, 1]]),
        ([], 4, []),
    ],
)
def test_pack_into_contiguous_groups_of_about_equal_calls(
    calls: list[int], slots: int, expected: list[list[int]]
) -> None:
    tasks = [Sized(n) for n in calls]
    groups = pack(tasks, slots)
    assert [[t.n_calls for t in g] for g in groups] == expected
    assert [t for g in groups for t in g] == tasks  # in order, each once


def test_pack_never_exceeds_the_slots() -> None:
    for n in range(1, 40):
        for slots in range(1, 10):
            groups = pack([Sized(1 + i % 3) for i in range(n)], slots)
            assert 1 <= len(groups) <= min(n, slots)
            assert all(groups)


def test_function_table_pickles_each_function_once() -> None:
    table = function_table([helpers.square, len, helpers.square])
    assert table.fn_index == (0, 1, 0)
    assert table.names == ("tests.helpers.square", "len")
    assert len(table.blobs) == 2 and not table.failed


def test_a_function_that_cannot_be_pickled_is_reported_not_raised() -> None:
    lock = threading.Lock()

    def holds_a_lock() -> object:
        return lock

    table = function_table([helpers.square, holds_a_lock])
    assert table.fn_index == (0, 1)
    assert list(table.failed) == [1]
    assert isinstance(table.failed[1], FunctionPicklingError)
    assert table.blobs[1] == b""


def test_place_buffers_inline_shared_and_already_stored() -> None:
    uses = collections.Counter({"once": 1, "twice": 2, "stored": 3})
    data = {"once": b"1", "twice": b"22", "stored": b"333"}
    placement = place_buffers(["twice", "once", "twice", "stored"], uses, data, {"stored"})
    assert placement.placed == {"once": b"1", "twice": "twice", "stored": "stored"}
    assert placement.uploads == [("shared/twice", b"22")]
    assert data == {}  # every copy placed is dropped; `stored` came from a racing submit


def test_index_inputs_are_signed_per_index() -> None:
    key = wire.new_key()
    tasks = [
        Task(Future(), len, b"calls-%d" % i, 1, True, task_id=i, fn_index=0, buffers=bufs)
        for i, bufs in enumerate([(), ("k",), ()])
    ]
    writes = index_inputs(key, "b00002", [tasks[:2], tasks[2:]], {"k": "k"})
    assert [name for name, _ in writes] == ["b00002/in/0", "b00002/in/1"]
    first = wire.open_inputs(key, writes[0][1])
    assert [(t.task_id, t.calls, t.buffers) for t in first] == [
        (0, b"calls-0", ()),
        (1, b"calls-1", ("k",)),
    ]
    assert [t.task_id for t in wire.open_inputs(key, writes[1][1])] == [2]
