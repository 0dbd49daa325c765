"""The storage of a run when the storage is gone, and its deletion (moto S3 behind the
fault proxy): an outage costs one retry budget, not one per operation; what shutdown
cannot delete is named with the command that deletes it; and a run prefix holding glob
characters is deleted literally (fsspec's rm would expand it as a pattern)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest

from k8s_executor import StorageError, StorageRetry
from k8s_executor import _store as store_module
from k8s_executor._store import RunStore
from tests import helpers
from tests.s3server import S3Server, s3_server

BUCKET = "outage"
RETRY = StorageRetry(attempts=3, initial_delay=0.01, max_delay=0.02)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server(buckets=(BUCKET,)) as server:
        yield server


@pytest.fixture
def down(s3: S3Server) -> Iterator[S3Server]:
    """The storage answering every request with 500 until the test ends (500: s3fs does
    not retry it inside one try, so requests count tries)."""
    with s3.faults.lock:
        s3.faults.status, s3.faults.code, s3.faults.method = 500, "InternalError", None
        s3.faults.path_regex, s3.faults.count, s3.faults.seen = ".*", 10**9, 0
    yield s3
    with s3.faults.lock:
        s3.faults.count = 0


def _up(s3: S3Server) -> None:
    with s3.faults.lock:
        s3.faults.count = 0


def _seen(s3: S3Server) -> int:
    with s3.faults.lock:
        return s3.faults.seen


def test_an_outage_costs_one_retry_budget_then_one_try_per_operation(down: S3Server) -> None:
    store = RunStore(f"s3://{BUCKET}/k8sx/r1", down.storage_options(), RETRY)
    url = f"s3://{BUCKET}/k8sx/r1"
    with pytest.raises(StorageError, match=f"cannot read b0/out/0 at {url} after 3 tries") as e:
        store.get("b0/out/0")
    assert "down" not in str(e.value)
    full = _seen(down)
    assert full >= 3  # every try reached the storage
    with pytest.raises(StorageError, match=r"after 1 try: .*has been down for \d+ s") as e:
        store.get("b0/out/1")
    assert url in str(e.value)
    assert (_seen(down) - full) * 3 == full  # one try's requests, not three
    with pytest.raises(StorageError, match="after 1 try"):
        store.put("b0/in/0", b"x")

    # The storage answers again: the next operation succeeds, and its full budget is back.
    _up(down)
    store.put("b0/in/0", b"x")
    with down.faults.lock:
        down.faults.count, down.faults.seen = 10**9, 0
    with pytest.raises(StorageError, match="after 3 tries"):
        store.get("b0/out/0")
    assert _seen(down) == full


def test_a_missing_key_is_an_answer_that_ends_the_outage(s3: S3Server) -> None:
    store = RunStore(f"s3://{BUCKET}/k8sx/r2", s3.storage_options(), RETRY)
    with s3.faults.lock:
        s3.faults.status, s3.faults.code, s3.faults.path_regex = 500, "InternalError", ".*"
        s3.faults.method, s3.faults.count = None, 10**9
    try:
        with pytest.raises(StorageError, match="after 3 tries"):
            store.get("b0/out/0")
    finally:
        _up(s3)
    assert store.get_or_none("b0/out/0") is None  # 404: the storage answers
    with s3.faults.lock:
        s3.faults.count = 10**9
    try:
        with pytest.raises(StorageError, match="after 3 tries"):
            store.get("b0/out/0")
    finally:
        _up(s3)


def test_retries_waiting_when_the_storage_goes_down_give_up(
    down: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operation waiting to retry stops waiting when another one finds the storage
    down (its wait would otherwise be a minute)."""
    store = RunStore(
        f"s3://{BUCKET}/k8sx/r3",
        down.storage_options(),
        StorageRetry(attempts=3, initial_delay=60, max_delay=60),
    )
    # The first retry of the "slow" thread waits its full 60 s; every other wait is 0.
    monkeypatch.setattr(
        random, "uniform", lambda a, b: b if threading.current_thread().name == "slow" else 0.0
    )
    errors: list[BaseException] = []

    def slow() -> None:
        try:
            store.put("b0/in/0", b"x")
        except BaseException as exc:
            errors.append(exc)

    waiting = threading.Thread(target=slow, name="slow")
    waiting.start()
    helpers.wait_for(lambda: _seen(down) > 0, 30, "the first try of the waiting write")
    began = time.monotonic()
    with pytest.raises(StorageError, match="after 3 tries"):
        store.get("b0/out/0")
    waiting.join(30)
    assert not waiting.is_alive(), "the waiting retry did not give up"
    assert time.monotonic() - began < 30
    assert len(errors) == 1 and isinstance(errors[0], StorageError)
    assert "after 1 try" in str(errors[0]) and "has been down" in str(errors[0])


def test_what_shutdown_cannot_delete_is_named_with_the_command(down: S3Server) -> None:
    store = RunStore(f"s3://{BUCKET}/k8sx/r4", down.storage_options(), RETRY)
    with pytest.raises(StorageError) as caught:
        store.delete_all()
    said = str(caught.value)
    assert "\n" not in said
    assert f"cannot delete the run at s3://{BUCKET}/k8sx/r4 after 3 tries" in said
    assert "(InternalError, HTTP 500)" in said
    assert f"delete them with `aws s3 rm --recursive s3://{BUCKET}/k8sx/r4/`" in said


def test_the_delete_command_fits_the_storage() -> None:
    command = store_module._delete_command
    assert command("/data/runs/r1", True) == "`rm -r /data/runs/r1`"
    assert command("gs://b/p/r1", False) == "`gcloud storage rm --recursive gs://b/p/r1`"
    assert command("s3a://b/p/r1", False) == "`aws s3 rm --recursive s3://b/p/r1/`"
    assert "everything under memory://p/r1/" in command("memory://p/r1", False)


@pytest.mark.parametrize("prefix", ["exp[1]", "exp?", "exp*"])
def test_a_prefix_with_glob_characters_is_deleted_literally(s3: S3Server, prefix: str) -> None:
    """fsspec's rm(recursive=True) takes ``exp[1]`` for a pattern matching ``exp1``: it
    deleted the neighbour's run and left this one."""
    options = s3.storage_options()
    ours = RunStore(f"s3://{BUCKET}/{prefix}/r5", options, RETRY)
    neighbour = RunStore(f"s3://{BUCKET}/exp1/r5", options, RETRY)
    for store in (ours, neighbour):
        store.put("b0/fn", b"f")
        store.put("b0/in/0", b"i")
        store.put("heartbeat", b"h")
    ours.delete("b0/in/0")
    assert ours.get_or_none("b0/in/0") is None
    assert neighbour.get("b0/in/0") == b"i"
    ours.delete_all()
    assert ours.list_keys("") == []
    assert sorted(neighbour.list_keys("")) == ["b0/fn", "b0/in/0", "heartbeat"]
    ours.delete_all()  # twice: nothing there is no error
    neighbour.delete_all()
    assert neighbour.list_keys("") == []
