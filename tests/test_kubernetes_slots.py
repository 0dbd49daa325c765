"""Worker slots across batches: a Job that finds no free slot waits suspended.

``max_workers`` bounds the run's pods over all its Jobs. A Job created while every slot
is taken is created with ``suspend: true``, so its ``activeDeadlineSeconds`` clock (which
starts at ``status.startTime``) does not run while it waits; it is resumed, with its
share of the slots, when an earlier Job's indexes finish.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from k8s_executor import KubernetesExecutor
from tests import helpers
from tests.kube_helpers import cold, kubesim_kwargs


def _jobs(sim: Any, run_id: str) -> dict[str, dict[str, Any]]:
    selector = f"k8s-executor.io/run={run_id}"
    jobs = sim.store.list("jobs", "default", label_selector=selector)[0]
    return {j["metadata"]["labels"]["k8s-executor.io/batch"]: j for j in jobs}


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_job_without_free_slots_waits_suspended(kubesim: Any, tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    kw = cold(kubesim_kwargs(kubesim, tmp_path / "storage"))
    with KubernetesExecutor(max_workers=1, **kw) as ex:
        first = ex.submit(helpers.touch_then_wait, str(started), str(release))
        helpers.wait_for(first.running, 60, "the first call to run")
        second = ex.submit(helpers.square, 7)
        helpers.wait_for(lambda: len(_jobs(kubesim, ex.run_id)) == 2, 30, "the second Job")
        waiting = _jobs(kubesim, ex.run_id)["b00001"]
        assert waiting["spec"]["suspend"] is True
        assert waiting["spec"]["parallelism"] == 0
        assert "startTime" not in waiting.get("status", {})

        released_at = datetime.now(UTC).replace(microsecond=0)  # API times are in seconds
        release.touch()
        assert first.result(timeout=60) > 0
        assert second.result(timeout=60) == 49
        resumed = _jobs(kubesim, ex.run_id)["b00001"]
    assert resumed["spec"]["suspend"] is False
    assert resumed["spec"]["parallelism"] == 1
    # Its deadline clock started when it resumed: after the first call was released,
    # not when the Job was created (it had no startTime while it waited).
    assert _when(resumed["status"]["startTime"]) >= released_at
    assert "Suspended" in {c["type"] for c in resumed["status"].get("conditions", [])}


def test_job_with_free_slots_is_not_suspended(kubesim: Any, tmp_path: Path) -> None:
    kw = cold(kubesim_kwargs(kubesim, tmp_path / "storage"))
    with KubernetesExecutor(max_workers=2, **kw) as ex:
        assert list(ex.map(helpers.square, range(4))) == [0, 1, 4, 9]
        (job,) = _jobs(kubesim, ex.run_id).values()
    assert job["spec"]["suspend"] is False
    assert job["spec"]["parallelism"] == 2


def test_slots_freed_while_the_waiting_job_is_created_resume_it(
    kubesim: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    # The first Job's index finishes while the second Job's create request is on its way:
    # the slot is planned for a Job the cluster does not have yet, and must reach it once
    # it exists (else the Job stays suspended and its call never runs).
    started, release = tmp_path / "started", tmp_path / "release"
    kw = cold(kubesim_kwargs(kubesim, tmp_path / "storage"))
    with KubernetesExecutor(max_workers=1, **kw) as ex:
        first = ex.submit(helpers.touch_then_wait, str(started), str(release))
        helpers.wait_for(first.running, 60, "the first call to run")
        backend: Any = ex._backend
        create = backend._api.batch.create_namespaced_job

        def create_after_the_slot_is_freed(*args: Any, **kwargs: Any) -> Any:
            release.touch()
            helpers.wait_for(
                lambda: backend._launches.planned("b00001") == 1, 60, "the slot to be planned"
            )
            return create(*args, **kwargs)

        monkeypatch.setattr(
            backend._api.batch, "create_namespaced_job", create_after_the_slot_is_freed
        )
        second = ex.submit(helpers.square, 7)
        assert first.result(timeout=60) > 0
        assert second.result(timeout=60) == 49
        job = _jobs(kubesim, ex.run_id)["b00001"]
        assert job["spec"]["suspend"] is False
        assert job["spec"]["parallelism"] == 1


def test_resume_throttled_past_its_retries_is_sent_again(kubesim: Any, tmp_path: Path) -> None:
    # Issue 19's hang: map A fills both slots, map B waits in a suspended Job; then exactly
    # the retry budget of PATCHes (8) gets 429 with Retry-After: 1, as an apiserver under
    # API Priority and Fairness answers. Nothing resumed B afterwards: its futures never
    # resolved and shutdown() never returned. The owed PATCH is re-sent by the tick.
    started, release = tmp_path / "started", tmp_path / "release"
    kw = cold(kubesim_kwargs(kubesim, tmp_path / "storage"))
    with KubernetesExecutor(max_workers=2, **kw) as ex:
        first = [
            ex.submit(helpers.touch_then_wait, str(started) + str(i), str(release))
            for i in range(2)
        ]
        helpers.wait_for(lambda: all(f.running() for f in first), 60, "A to fill both slots")
        waiting = ex.map(helpers.square, range(4))
        helpers.wait_for(lambda: "b00001" in _jobs(kubesim, ex.run_id), 60, "B's Job")
        assert _jobs(kubesim, ex.run_id)["b00001"]["spec"]["suspend"] is True
        kubesim.faults.fail_next(8, 429, retry_after=1, methods="PATCH")
        release.touch()
        assert [f.result(timeout=60) for f in first] and list(waiting) == [0, 1, 4, 9]
