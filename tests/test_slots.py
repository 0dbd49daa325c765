"""Slot planning, pure: max_workers shared among a run's Jobs."""

from __future__ import annotations

from k8s_executor.backends import _slots


def test_in_use_is_capped_by_what_jobs_can_still_use() -> None:
    assert _slots.in_use({"a": 4, "b": 2}, {"a": 1, "b": 2}) == 3
    assert _slots.in_use({}, {}) == 0


def test_new_job_gets_free_slots_or_waits() -> None:
    assert _slots.initial(10, {"a": 3}, {"a": 3}, max_workers=4) == 1
    assert _slots.initial(10, {"a": 4}, {"a": 4}, max_workers=4) == 0
    assert _slots.initial(2, {}, {}, max_workers=4) == 2


def test_replan_drops_finished_and_grows_waiting_in_launch_order() -> None:
    planned = {"a": 2, "b": 0, "c": 0}
    demand = {"a": 0, "b": 3, "c": 5}  # a finished: its 2 slots free up
    assert _slots.replan(planned, demand, max_workers=4) == {"b": 3, "c": 1}


def test_replan_never_lowers_a_running_job() -> None:
    # More planned than max_workers now allows (max_workers is a bound on new slots only).
    assert _slots.replan({"a": 4, "b": 1}, {"a": 4, "b": 5}, max_workers=4) == {"a": 4, "b": 1}


def test_behind_lists_jobs_owed_a_patch_once_they_exist() -> None:
    planned = {"a": 3, "b": 2, "c": 1}
    sent = {"a": 3, "b": 0}
    assert _slots.behind(planned, sent, created={"a", "b"}) == ["b"]
    assert _slots.behind(planned, sent, created={"a", "b", "c"}) == ["b", "c"]
