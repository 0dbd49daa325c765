"""Stragglers (issue 18, ``Batching(speculate=True)``): the rule, the first-writer-wins
write per storage, and a straggler that finishes through its duplicate on the local
backend and on kubesim, its slow copy stopped."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import Batching, ConfigError, KubernetesExecutor, Timeouts
from k8s_executor._batches import Batch, Index
from k8s_executor._first_write import (
    POLL,
    POLL_LOCAL,
    POLL_MAX,
    OutcomeWatch,
    poll_intervals,
)
from k8s_executor._progress import Progress
from k8s_executor._speculate import Rule, Speculator, copy_id, stragglers
from k8s_executor._store import RunStore
from k8s_executor.backends._base import LaunchSpec
from tests.kube_helpers import kubesim_kwargs

# -- the rule (pure) ---------------------------------------------------------------------

RULE = Rule(after=0.75, slowdown=4.0, min_seconds=10.0)


def test_no_duplicate_before_most_of_the_batch_has_finished() -> None:
    # 5 of 8 finished (< 0.75): the long runner waits.
    assert stragglers(RULE, 8, 5, [1.0] * 5, {5: 100.0, 6: 100.0, 7: 100.0}) == []


def test_an_index_far_past_the_median_is_duplicated_longest_first() -> None:
    running = {6: 50.0, 7: 80.0}
    assert stragglers(RULE, 8, 6, [1.0, 2.0, 3.0, 3.0, 4.0, 20.0], running) == [7, 6]


def test_the_bar_is_slowdown_times_the_median_or_the_minimum() -> None:
    # median 5 s → bar 20 s: 19 s is not late, 21 s is.
    assert stragglers(RULE, 4, 3, [5.0, 5.0, 5.0], {3: 19.0}) == []
    assert stragglers(RULE, 4, 3, [5.0, 5.0, 5.0], {3: 21.0}) == [3]
    # median 1 s → bar max(10, 4) = 10 s.
    assert stragglers(RULE, 4, 3, [1.0, 1.0, 1.0], {3: 9.0}) == []
    assert stragglers(RULE, 4, 3, [1.0, 1.0, 1.0], {3: 11.0}) == [3]


def test_finished_indexes_that_never_ran_give_no_median() -> None:
    # Every finished index was cancelled before it started: nothing to compare with.
    assert stragglers(RULE, 4, 3, [], {3: 1000.0}) == []


def test_copy_ids_are_distinct_per_index() -> None:
    assert copy_id("b00001", 3) == "b00001s3" != copy_id("b00001", 13)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"speculate": "yes"}, "Batching.speculate"),
        ({"speculate_after": 1.0}, "Batching.speculate_after"),
        ({"speculate_after": 0}, "Batching.speculate_after"),
        ({"speculate_after": float("nan")}, "Batching.speculate_after"),
        ({"speculate_slowdown": 1.0}, "Batching.speculate_slowdown"),
        ({"speculate_slowdown": True}, "Batching.speculate_slowdown"),
        ({"speculate_min": -1}, "Batching.speculate_min"),
    ],
)
def test_bad_speculation_options_name_the_option(kwargs: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
        Batching(**kwargs)


def test_rule_comes_from_the_options() -> None:
    b = Batching(speculate=True, speculate_after=0.5, speculate_slowdown=2, speculate_min=0)
    assert Rule.of(b) == Rule(0.5, 2, 0)


def test_progress_counts_speculative_runs() -> None:
    bar = Progress("t", total=4)
    try:
        bar.speculative(+1)
        bar.speculative(+1)
        bar.speculative(-1)
        assert "speculative=1/2" in bar.text()
    finally:
        bar.close()


def test_speculating_jobs_tell_their_workers() -> None:
    from k8s_executor.backends import _manifest as m

    def env(**changes: Any) -> dict[str, str]:
        params = m.JobParams(
            run_id="r0123456789a",
            batch_id="b00003s2",
            indexes=1,
            parallelism=1,
            image="registry.example/k8sx@sha256:" + "0" * 64,
            batch_url="s3://bucket/k8sx/r0123456789a/b00003",
            **changes,
        )
        container = m.job_manifest(params)["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value", "") for e in container["env"]}

    duplicate = env(speculate=True, batch_indexes=(2,), timeouts=Timeouts(keep_warm=0))
    assert duplicate["K8S_EXECUTOR_SPECULATE"] == "1"
    assert duplicate["K8S_EXECUTOR_INDEXES"] == "2"
    assert "K8S_EXECUTOR_KEEP_WARM" not in duplicate
    assert "K8S_EXECUTOR_SPECULATE" not in env()


# -- the Speculator over a batch (no backend) ---------------------------------------------


class _Backend:
    """Records launches; every other Backend member is unused here."""

    name = "fake"

    def __init__(self) -> None:
        self.launched: list[LaunchSpec] = []
        self.event = threading.Event()

    def launch(self, spec: LaunchSpec) -> None:
        self.launched.append(spec)
        self.event.set()


def _straggling_batch() -> Batch:
    now = time.monotonic()
    entries = [Index([]) for _ in range(4)]
    for e in entries[:3]:  # ran 1 s each
        e.started, e.started_at, e.finished, e.finished_at = True, now - 30, True, now - 29
    entries[3].started, entries[3].started_at = True, now - 30  # 30 s and counting
    return Batch("b00007", entries, ["f"])


def _speculator(max_workers: int, backend: _Backend, rooms: list[int]) -> tuple[Any, Any]:
    cond = threading.Condition(threading.RLock())
    batch = _straggling_batch()
    reports: list[tuple[str, int]] = []

    def spec(batch_id: str, indexes: tuple[int, ...]) -> LaunchSpec:
        return LaunchSpec(
            "r1",
            batch_id,
            f"/s/{batch_id}",
            len(indexes),
            b"k",
            batch_indexes=indexes,
            launch_id="p9",
            keep_warm=60.0,
        )

    sp = Speculator(
        cond,
        {batch.batch_id: batch},
        Rule(0.75, 4.0, 1.0),
        max_workers=max_workers,
        spec=spec,
        backend=backend,  # type: ignore[arg-type]
        finished=lambda b, i, exit: reports.append((b, i)),
        make_room=lambda: rooms.append(1),
    )
    return sp, cond


def test_a_straggler_gets_one_duplicate_of_its_index_when_a_slot_is_free() -> None:
    backend, rooms = _Backend(), list[int]()
    sp, cond = _speculator(2, backend, rooms)
    sp.start()
    try:
        assert backend.event.wait(30)
    finally:
        sp.stop()
    [spec] = backend.launched
    assert (spec.batch_id, spec.batch_indexes, spec.keep_warm) == ("b00007s3", (3,), 0.0)
    assert spec.batch_url == "/s/b00007" and spec.name == "b00007s3"
    assert sp.origin("b00007s3") == ("b00007", 3)
    with cond:  # the first copy to report: the other still runs; then the last one
        assert sp.other_copy("b00007", 3) is True
        assert sp.other_copy("b00007", 3) is False
        assert sp.other_copy("b00007", 2) is None  # never duplicated


def test_no_duplicate_without_a_free_slot() -> None:
    backend, rooms = _Backend(), list[int]()
    sp, _ = _speculator(1, backend, rooms)  # the straggler holds the only slot
    sp.start()
    try:
        _wait_for(lambda: len(rooms) >= 3, within=30)  # three passes saw the straggler
    finally:
        sp.stop()
    assert len(rooms) >= 3
    assert backend.launched == []


# -- first writer wins, per storage --------------------------------------------------------


def _race(store: RunStore) -> list[bool]:
    """Eight writers at once on one key: who wrote."""
    start = threading.Barrier(8)
    wrote: list[bool] = []

    def write(i: int) -> None:
        start.wait()
        wrote.append(store.put_new("out/0", f"copy {i}".encode()))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return wrote


def test_local_put_new_first_writer_wins(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "run"))
    assert store.first_writer_wins
    wrote = _race(store)
    assert wrote.count(True) == 1
    assert store.get("out/0").startswith(b"copy ")
    assert store.put_new("out/0", b"late") is False
    assert store.list_keys("out") == ["out/0"]  # no temporary left behind


def test_s3_put_new_first_writer_wins() -> None:
    pytest.importorskip("s3fs")
    from tests.s3server import s3_server

    with s3_server(buckets=("race",)) as server:
        store = RunStore("s3://race/run", server.storage_options())
        assert store.first_writer_wins
        wrote = _race(store)
        assert wrote.count(True) == 1  # moto honours If-None-Match: * as S3 does
        first = store.get("out/0")
        assert store.put_new("out/0", b"late") is False
        assert store.get("out/0") == first


@pytest.fixture
def s3_bucket() -> Iterator[Any]:
    """A moto server with the bucket ``race``."""
    from tests.s3server import s3_server

    with s3_server(buckets=("race",)) as server:
        yield server


def test_workers_look_for_the_outcome_less_often_as_they_run_on() -> None:
    looks = list(itertools.islice(poll_intervals(local=False), 400))
    assert looks[0] == POLL and min(looks) == POLL
    assert looks == sorted(looks) and max(looks) == POLL_MAX
    assert sum(looks[:10]) == 10 * POLL  # a straggler's loser stops within seconds
    assert list(itertools.islice(poll_intervals(local=True), 1)) == [POLL_LOCAL]


def test_a_copy_whose_outcome_is_written_stops_writing(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "batch"))
    store.put("out/2", b"the other copy's")
    watch = OutcomeWatch(store, 2)
    assert watch.written()
    assert watch.put(b"mine") is False
    assert store.get("out/2") == b"the other copy's"


# -- a straggler on a backend ------------------------------------------------------------

STRAGGLER = 3
SLOW = 60.0  # the straggler's first run: far past every bound below, and the test's own
NORMAL = 0.3


def straggle(i: int, marks: str) -> tuple[str, int]:
    """Index ``STRAGGLER`` sleeps SLOW s the first time it runs (decided by an O_EXCL
    marker file), NORMAL s when run again; the others NORMAL s."""
    pid = os.getpid()
    if i == STRAGGLER:
        try:
            fd = os.open(os.path.join(marks, "first"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            threading.Event().wait(NORMAL)
            return ("again", pid)
        os.write(fd, str(pid).encode())
        os.close(fd)
        threading.Event().wait(SLOW)
        open(os.path.join(marks, "slow-finished"), "w").close()
        return ("slow", pid)
    threading.Event().wait(NORMAL)
    return ("normal", pid)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # exited, not reaped yet


def _wait_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        threading.Event().wait(0.1)
    return _gone(pid)


@pytest.mark.parametrize(
    ("backend", "keep_warm"), [("local", 0), ("local", 60), ("local-s3", 0), ("kubernetes", 0)]
)
def test_a_straggler_finishes_through_its_duplicate(
    backend: str, keep_warm: float, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With keep_warm, the batch's finished workers idle in the slots the duplicate
    needs: they are asked to leave."""
    storage = tmp_path / "storage"
    marks = tmp_path / "marks"
    marks.mkdir()
    if backend == "kubernetes":
        kw: dict[str, Any] = kubesim_kwargs(request.getfixturevalue("kubesim"), storage)
    elif backend == "local-s3":
        # Outcomes written with If-None-Match: *; the slow copy HEADs out/<index>.
        pytest.importorskip("s3fs")
        s3 = request.getfixturevalue("s3_bucket")
        kw = {"backend": "local", "storage": "s3://race/k8sx", "timeouts": Timeouts()}
        kw["storage_options"] = s3.storage_options()
    else:
        kw = {"backend": "local", "storage": str(storage), "timeouts": Timeouts()}
    kw["timeouts"] = Timeouts(**{**_fields(kw["timeouts"]), "keep_warm": keep_warm})
    # Over S3 every worker imports s3fs and botocore: 4 workers, not 8, on a busy machine.
    n = 4 if backend == "local-s3" else 8
    batching = Batching(speculate=True, speculate_min=1.0, speculate_slowdown=3.0)
    with KubernetesExecutor(max_workers=n, batching=batching, progress=False, **kw) as ex:
        results = list(ex.map(straggle, range(n), [str(marks)] * n))
        slow_pid = int((marks / "first").read_text())
        # The slow copy notices the outcome and stops by itself, before the shutdown.
        assert _wait_gone(slow_pid, within=30), "the slow copy is still running"
    assert results[STRAGGLER][0] == "again"  # the duplicate's outcome won
    assert results[STRAGGLER][1] != slow_pid
    assert [r[0] for i, r in enumerate(results) if i != STRAGGLER] == ["normal"] * (n - 1)
    assert not (marks / "slow-finished").exists()


def _fields(t: Timeouts) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(t, f.name) for f in dataclasses.fields(t)}


def _first_run(marks: str) -> bool:
    """Whether this is the first run of the straggler (the O_EXCL marker says so)."""
    try:
        fd = os.open(os.path.join(marks, "first"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def _wait_for(predicate: Any, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not predicate() and time.monotonic() < deadline:
        threading.Event().wait(0.05)


def lost_original(i: int, marks: str) -> tuple[str, int]:
    """The straggler's first run waits until its duplicate runs, then dies without an
    outcome (as an OOM-killed pod would); the duplicate returns."""
    if i != STRAGGLER:
        threading.Event().wait(NORMAL)
        return ("normal", os.getpid())
    if not _first_run(marks):
        open(os.path.join(marks, "second"), "w").close()
        threading.Event().wait(NORMAL)
        return ("again", os.getpid())
    _wait_for(lambda: os.path.exists(os.path.join(marks, "second")))
    os._exit(1)


def failing_duplicate(i: int, marks: str) -> tuple[str, int]:
    """The straggler's duplicate dies without an outcome; the first run waits until it
    is gone, then returns."""
    if i != STRAGGLER:
        threading.Event().wait(NORMAL)
        return ("normal", os.getpid())
    second = os.path.join(marks, "second")
    if not _first_run(marks):
        with open(second + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(second + ".tmp", second)
        os._exit(1)
    _wait_for(lambda: os.path.exists(second))
    _wait_for(lambda: _gone(int(Path(second).read_text())))
    return ("slow", os.getpid())


@pytest.mark.parametrize("backend", ["local", "kubernetes"])
@pytest.mark.parametrize(
    ("fn", "expected"), [(lost_original, "again"), (failing_duplicate, "slow")]
)
def test_one_copy_failing_does_not_fail_the_call(
    backend: str, fn: Any, expected: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    storage = tmp_path / "storage"
    marks = tmp_path / "marks"
    marks.mkdir()
    if backend == "kubernetes":
        kw: dict[str, Any] = kubesim_kwargs(request.getfixturevalue("kubesim"), storage)
    else:
        kw = {"backend": "local", "storage": str(storage)}
    batching = Batching(speculate=True, speculate_min=1.0, speculate_slowdown=3.0)
    with KubernetesExecutor(max_workers=8, batching=batching, progress=False, **kw) as ex:
        results = list(ex.map(fn, range(8), [str(marks)] * 8))
    assert results[STRAGGLER][0] == expected
    assert (marks / "second").exists()  # both copies ran


def racing_forever(i: int, marks: str) -> tuple[str, int]:
    """Both copies of the straggler run until killed (the second one says it started)."""
    if i != STRAGGLER:
        threading.Event().wait(NORMAL)
        return ("normal", os.getpid())
    if not _first_run(marks):
        open(os.path.join(marks, "second"), "w").close()
    threading.Event().wait(SLOW)
    return ("slow", os.getpid())


def test_killing_shutdown_during_a_race_settles_every_future(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    batching = Batching(speculate=True, speculate_min=1.0, speculate_slowdown=3.0)
    ex = KubernetesExecutor(
        backend="local",
        storage=str(tmp_path / "storage"),
        max_workers=8,
        batching=batching,
        progress=False,
    )
    futures = [ex.submit(racing_forever, i, str(marks)) for i in range(8)]
    _wait_for((marks / "second").exists)
    assert (marks / "second").exists(), "no duplicate started"
    ex.shutdown(wait=True, kill_workers=True)
    assert all(f.done() for f in futures)
    assert [f.result()[0] for i, f in enumerate(futures) if i != STRAGGLER] == ["normal"] * 7
    assert isinstance(futures[STRAGGLER].exception(), BrokenProcessPool)  # WorkerLostError


# The sitecustomize of the workers of the test below: the second read of in/<STRAGGLER>
# (the duplicate's) fails as a storage outage would; the copy says who it is in marks/second.
_FAILING_READ = f"""
import os
from k8s_executor import _store
from k8s_executor.errors import StorageError

_get = _store.RunStore.get
_MARKS = os.environ["K8SX_TEST_MARKS"]


def _get_or_fail(self, key):
    if key == "in/{STRAGGLER}":
        try:
            fd = os.open(os.path.join(_MARKS, "read"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            second = os.path.join(_MARKS, "second")
            with open(second + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(second + ".tmp", second)
            raise StorageError("cannot read in/{STRAGGLER}: SlowDown (503), gave up") from None
        os.close(fd)
    return _get(self, key)


_store.RunStore.get = _get_or_fail
"""


def waits_for_a_failed_duplicate(i: int, marks: str) -> tuple[str, int]:
    """The straggler's first run returns once its duplicate failed to read its input and
    ended."""
    if i != STRAGGLER:
        threading.Event().wait(NORMAL)
        return ("normal", os.getpid())
    second = os.path.join(marks, "second")
    _wait_for(lambda: os.path.exists(second))
    _wait_for(lambda: _gone(int(Path(second).read_text())))
    return ("slow", os.getpid())


def test_a_duplicate_failing_to_read_its_input_leaves_the_call_to_the_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The duplicate's storage failure is its own: not written first-writer-wins as the
    index's outcome over the original's result (review finding 2)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_FAILING_READ)
    monkeypatch.syspath_prepend(str(site))  # the local backend's workers get sys.path
    monkeypatch.setenv("K8SX_TEST_MARKS", str(marks))
    batching = Batching(speculate=True, speculate_min=1.0, speculate_slowdown=3.0)
    storage = str(tmp_path / "storage")
    with KubernetesExecutor(
        backend="local", storage=storage, max_workers=8, batching=batching, progress=False
    ) as ex:
        results = list(ex.map(waits_for_a_failed_duplicate, range(8), [str(marks)] * 8))
    assert (marks / "second").exists()  # the duplicate ran, and its read failed
    assert results[STRAGGLER][0] == "slow"
    assert [r[0] for i, r in enumerate(results) if i != STRAGGLER] == ["normal"] * 7
