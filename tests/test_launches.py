"""The Kubernetes backend's launches, without a server: which launch started a batch
index's worker, the slots each Job gets, and the PATCHes that resume and grow Jobs (a
failed one stays owed until a later pass gets it across)."""

from __future__ import annotations

import threading
from typing import Any

from k8s_executor.backends._base import LaunchSpec
from k8s_executor.backends._launches import Launches
from k8s_executor.backends._tracker import RunTracker
from k8s_executor.errors import ClusterError


class FakeApi:
    """What Launches uses of KubeApi: ``call`` on ``batch.patch_namespaced_job``."""

    namespace = "ns"

    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.refuse = 0
        self.batch = self

    def patch_namespaced_job(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        assert namespace == "ns"
        self.patches.append((name, body["spec"]))

    def call(self, what: str, fn: Any, *args: Any, stop: threading.Event) -> None:
        if self.refuse:
            self.refuse -= 1
            raise ClusterError(f"cannot {what}: throttled", status=429)
        fn(*args)


def spec(
    batch_id: str, indexes: int, *, part: tuple[int, ...] = (), launch: str = ""
) -> LaunchSpec:
    return LaunchSpec(
        run_id="r1",
        batch_id=batch_id,
        batch_url=f"mem://r1/{batch_id}",
        indexes=indexes,
        key=b"k",
        batch_indexes=part,
        launch_id=launch,
    )


def make(max_workers: int) -> tuple[Launches, RunTracker, FakeApi, threading.Event]:
    tracker, stop, api = RunTracker(startup_timeout=60), threading.Event(), FakeApi()
    launches = Launches(threading.Lock(), tracker, stop)
    launches.start(api, max_workers)  # type: ignore[arg-type]
    return launches, tracker, api, stop


def launch(launches: Launches, s: LaunchSpec, *, queued: bool = False) -> int:
    parallelism = launches.add(s, queued=queued)
    launches.job_named(s.name, f"job-{s.name}")
    launches.created(s.name, parallelism, queued=queued)
    return parallelism


def finish(tracker: RunTracker, launch: str, *indexes: int) -> None:
    for i in indexes:
        tracker.jobs[launch].indexes[i].finished = True


def test_worker_of_a_batch_index_is_found_in_its_launch() -> None:
    launches, *_ = make(max_workers=8)
    launch(launches, spec("b1", 3))
    launch(launches, spec("b2", 2, part=(4, 7), launch="b2p1"))
    assert launches.worker("b1", 2) == ("b1", 2)
    assert launches.worker("b2", 7) == ("b2p1", 1)
    assert launches.worker("b2", 0) is None
    assert launches.batch_index("b2p1", 1) == ("b2", 7)
    assert launches.batch_index("unknown", 3) == ("unknown", 3)
    # An index launched again (a warm worker never took it): the first launch answers.
    launch(launches, spec("b2", 1, part=(7,), launch="b2p2"))
    assert launches.worker("b2", 7) == ("b2p1", 1)


def test_job_without_free_slots_is_resumed_when_slots_free_up() -> None:
    launches, tracker, api, _ = make(max_workers=2)
    assert launch(launches, spec("a", 2)) == 2
    assert launch(launches, spec("b", 3)) == 0  # created suspended
    assert launch(launches, spec("q", 4), queued=True) == 2  # Kueue's: outside the plan
    assert launches.planned("q") is None
    finish(tracker, "a", 0)
    launches.rebalance()
    assert api.patches == [("job-b", {"parallelism": 1, "suspend": False})]
    finish(tracker, "a", 1)
    launches.rebalance()
    assert api.patches[1:] == [("job-b", {"parallelism": 2})]
    assert launches.planned("a") is None and launches.planned("b") == 2
    assert not launches.owed()


def test_failed_patch_stays_owed_until_sent() -> None:
    launches, tracker, api, _ = make(max_workers=1)
    launch(launches, spec("a", 1))
    launch(launches, spec("b", 1))
    finish(tracker, "a", 0)
    api.refuse = 1
    launches.rebalance()
    assert api.patches == [] and launches.owed()
    launches.rebalance()
    assert api.patches == [("job-b", {"parallelism": 1, "suspend": False})]
    assert not launches.owed()


def test_slots_freed_before_the_job_exists_reach_it_once_created() -> None:
    launches, tracker, api, _ = make(max_workers=1)
    launch(launches, spec("a", 1))
    parallelism = launches.add(spec("b", 1), queued=False)
    launches.job_named("b", "job-b")
    finish(tracker, "a", 0)
    launches.rebalance()  # planned for b, but b's Job does not exist yet
    assert api.patches == [] and launches.planned("b") == 1
    launches.created("b", parallelism, queued=False)
    assert api.patches == [("job-b", {"parallelism": 1, "suspend": False})]


def test_job_not_created_gives_its_slots_back() -> None:
    launches, tracker, _, _ = make(max_workers=2)
    launches.add(spec("a", 2), queued=False)
    launches.job_named("a", "job-a")
    launches.not_created("a")
    assert launches.planned("a") is None and "a" not in tracker.jobs
    assert launch(launches, spec("b", 2)) == 2
    assert launches.take_jobs() == ["job-a", "job-b"]  # a's name stays known, to delete
    assert launches.take_jobs() == []


def test_abandoned_launch_counts_its_indexes_finished() -> None:
    launches, tracker, api, stop = make(max_workers=1)
    launch(launches, spec("a", 3))
    launch(launches, spec("b", 1))
    finish(tracker, "a", 1)
    assert launches.abandon("a") == ("job-a", [0, 2])
    assert tracker.jobs["a"].done
    assert launches.abandon("a") == (None, [])
    stop.set()  # closing: the slot is planned, but no PATCH goes out any more
    launches.rebalance()
    assert launches.planned("b") == 1 and api.patches == []


def test_update_runs_for_the_launch_of_a_job_name() -> None:
    launches, *_ = make(max_workers=1)
    launch(launches, spec("a", 1))
    seen: list[str] = []

    def update(tracker: RunTracker, launch: str) -> list[Any]:
        seen.append(launch)
        return []

    launches.update(["other", "job-a"], update)
    launches.update(["other"], update)
    assert seen == ["a"]
