"""joblib's behaviours through the "kubernetes" joblib backend, on real local workers."""

from __future__ import annotations

import inspect
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures.process import _RemoteTraceback
from pathlib import Path
from typing import Any

import joblib
import pytest
from joblib import Parallel, delayed

import k8s_executor.joblib as k8sx_joblib
from k8s_executor import Batching, ConfigError, ExecutorBrokenError, KubernetesExecutor, Timeouts
from tests import helpers
from tests import joblib_helpers as jh
from tests import no_joblib_helpers as nh


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    k8sx_joblib.register()
    yield
    k8sx_joblib.shutdown_idle_executors()  # executors kept for the next Parallel call


@pytest.fixture
def launches() -> list[int]:
    """Worker counts of every launch made through ``config(...)``."""
    return []


def config(launches: list[int] | None = None, **options: Any) -> Any:
    """parallel_config for the backend on local workers, counting launches if asked."""
    record = launches if launches is not None else []
    options.setdefault("n_jobs", 2)
    return joblib.parallel_config(
        backend="kubernetes",
        executor_backend=lambda: jh.CountingLocalBackend(record),
        **options,
    )


def test_list_results_in_order_and_few_workers(launches: list[int]) -> None:
    with config(launches):
        results = Parallel()(delayed(jh.inc)(i) for i in range(10_000))
    assert results == [i + 1 for i in range(10_000)]
    # 10 000 trivial calls: a probe wave and one more, each with one worker per n_jobs,
    # not a worker (or a wave) per call or per joblib batch.
    assert sum(launches) <= 6, launches


def test_generator_yields_in_order() -> None:
    with config():
        gen = Parallel(return_as="generator")(delayed(jh.inc)(i) for i in range(50))
        assert inspect.isgenerator(gen)
        assert list(gen) == [i + 1 for i in range(50)]


def test_generator_unordered_yields_by_completion(tmp_path: Path) -> None:
    release = tmp_path / "release"
    with config():
        gen = Parallel(return_as="generator_unordered")(
            delayed(jh.wait_if_first)(i, str(release)) for i in range(4)
        )
        # Call 0 (and whatever shares its worker) is held back; another worker's calls
        # arrive first, which an ordered generator could not do.
        first = next(gen)
        assert first != 0
        release.touch()
        rest = list(gen)
    assert sorted([first, *rest]) == [0, 1, 2, 3]


def test_exception_reraised_with_remote_traceback() -> None:
    with config(), pytest.raises(ValueError, match="boom") as info:
        Parallel()(delayed(helpers.fail_with_value_error)("boom") for _ in range(3))
    cause = info.value.__cause__
    assert isinstance(cause, _RemoteTraceback)
    assert "fail_with_value_error" in str(cause)


def test_abort_on_first_error_cancels_and_kills(tmp_path: Path) -> None:
    started = tmp_path / "started"
    started.mkdir()
    # One call per worker start (max_indexes), so call 0's failure is reported as soon
    # as it happens rather than when the rest of its worker's calls are done.
    with (
        config(batching=Batching(max_indexes=8)),
        pytest.raises(ValueError, match="on purpose"),
    ):
        Parallel()(delayed(jh.fail_or_block)(i, str(started)) for i in range(8))
    pids = [int(text) for p in started.iterdir() if (text := p.read_text())]
    # At most one other call got a worker (n_jobs=2) before the failure: the rest were
    # cancelled, never started; the ones that started were killed.
    assert len(pids) <= 2
    assert not any(helpers.alive(pid) for pid in pids)


def test_parallel_timeout_raises_and_kills(tmp_path: Path) -> None:
    def pids() -> list[int]:
        return [int(text) for p in tmp_path.iterdir() if (text := p.read_text())]

    with config():
        # As a generator, Parallel dispatches the calls at once but starts counting the
        # timeout only when asked for a result: both workers are running by then, so
        # the timeout certainly has running workers to kill.
        results = Parallel(timeout=0.5, return_as="generator")(
            delayed(helpers.touch_then_block)(str(tmp_path / str(i))) for i in range(2)
        )
        helpers.wait_for(lambda: len(pids()) == 2, 60, "both calls to start")
        started = pids()
        assert all(helpers.alive(pid) for pid in started)
        with pytest.raises(multiprocessing.TimeoutError):
            next(results)
    assert not any(helpers.alive(pid) for pid in started)


def test_task_timeout_fails_only_that_call(tmp_path: Path) -> None:
    never = str(tmp_path / "never")
    # joblib submits the four calls (one per joblib batch at first) in a loop: a window
    # no loop outlasts, closed by the fourth submit (max_calls), puts them in one
    # executor batch, packed two per worker. The timeout leaves calls that return at
    # once a wide margin over any pause of their worker.
    with config(n_jobs=2, task_timeout=2, batching=Batching(window=60, max_calls=4)):
        results = Parallel()(delayed(jh.wait_unless_timed_out)(i, never) for i in range(4))
    values = [value for value, _ in results]
    assert values == ["timed out", 1, 2, 3]
    # The worker that ran call 0 lived on and ran the call packed after it.
    assert results[0][1] == results[1][1]


def test_task_timeout_reaches_the_caller_when_not_caught(tmp_path: Path) -> None:
    with (
        config(task_timeout=0.3),
        pytest.raises(k8sx_joblib.TaskTimeoutError, match="task_timeout=0.3s") as info,
    ):
        Parallel()(delayed(jh.wait_for_release)(str(tmp_path / "never"), 30) for _ in range(2))
    assert isinstance(info.value, TimeoutError)


def test_nested_parallel_runs_inside_the_worker() -> None:
    with config():
        results = Parallel()(delayed(jh.nested_parallel)(4) for _ in range(2))
    for worker_pid, nested_pids, backend in results:
        assert worker_pid != os.getpid()
        assert nested_pids == [worker_pid] * 4  # threads in the worker, not new workers
        assert backend in ("ThreadingBackend", "SequentialBackend")


def test_n_jobs_minus_one_is_the_executors_default(launches: list[int]) -> None:
    default = KubernetesExecutor(backend="local").max_workers
    with config(launches, n_jobs=-1):
        assert joblib.effective_n_jobs() == default
        assert joblib.effective_n_jobs(-2) == max(default - 1, 1)
        assert Parallel()(delayed(jh.inc)(i) for i in range(20)) == list(range(1, 21))
    assert max(launches) <= default


def test_parallel_keywords_override_config() -> None:
    # Call 0 waits for a file no one creates: only the overriding timeout ends it. (Long
    # enough that call 1, which returns at once, never meets it however its worker is
    # paused.)
    with config():
        results = Parallel(task_timeout=2)(
            delayed(jh.wait_unless_timed_out)(i, "/nonexistent/never") for i in range(2)
        )
    assert [value for value, _ in results] == ["timed out", 1]


def test_sklearn_n_jobs_runs_on_the_backend(launches: list[int]) -> None:

    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1.0, 10.0]}
    expected = GridSearchCV(LogisticRegression(max_iter=500), grid, cv=3).fit(X, y)
    with config(launches):
        search = GridSearchCV(LogisticRegression(max_iter=500), grid, cv=3, n_jobs=2).fit(X, y)
    assert launches, "the fits did not run on the backend"
    assert search.best_params_ == expected.best_params_
    assert list(search.cv_results_["mean_test_score"]) == pytest.approx(
        list(expected.cv_results_["mean_test_score"])
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_workers": 4}, "set n_jobs instead"),
        ({"backend_for_executor": "local"}, "unexpected keyword"),
        ({"task_timeout": 0}, "task_timeout=0 is not allowed"),
        ({"lookahead": -1}, "lookahead=-1 is not allowed"),
        ({"executor_backend": 3}, "executor_backend=3 is not allowed"),
    ],
)
def test_bad_options_fail_at_parallel_config(options: dict[str, Any], message: str) -> None:
    with pytest.raises((ConfigError, TypeError), match=message):
        joblib.parallel_config(backend="kubernetes", **options)


def test_import_does_not_register_or_import_joblib() -> None:
    import subprocess
    import sys

    code = "import sys, k8s_executor; assert 'joblib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_workers_import_joblib_only_when_calls_need_it() -> None:
    with config():
        results = Parallel()(delayed(nh.joblib_imported)(i) for i in range(6))
    assert results == [(i, False) for i in range(6)]


def test_nested_parallel_after_joblib_is_imported_inside_the_call() -> None:
    with config():
        results = Parallel()(delayed(nh.nested_after_lazy_import)(3) for _ in range(2))
    for was_imported, worker_pid, nested_pids, backend in results:
        assert was_imported is False
        assert worker_pid != os.getpid()
        assert nested_pids == [worker_pid] * 3  # threads in the worker, not new workers
        assert backend == "ThreadingBackend"


@pytest.mark.parametrize("how", ["joblib backend", "plain submit"])
def test_worker_code_naming_the_kubernetes_backend_runs_nested(how: str) -> None:
    # Issue 14 item 18: inside a worker, "kubernetes" was an invalid joblib backend.
    if how == "joblib backend":
        with config():
            (result,) = Parallel()(delayed(jh.parallel_naming_kubernetes)(3) for _ in range(1))
    else:
        with KubernetesExecutor(backend="local") as ex:
            result = ex.submit(jh.parallel_naming_kubernetes, 3).result(timeout=60)
    worker_pid, nested_pids, backend = result
    assert worker_pid != os.getpid()
    assert nested_pids == [worker_pid] * 6  # threads of the worker, not new workers
    assert backend == "NestedKubernetes"


# -- executors kept between Parallel calls ----------------------------------------------


def _pids(n: int = 8) -> set[int]:
    return set(Parallel()(delayed(jh.pid_after)(0.01) for _ in range(n)))


def test_next_parallel_call_runs_in_the_same_warm_workers(launches: list[int]) -> None:
    with config(launches):
        first = _pids()
        second = _pids()
    assert second <= first, (first, second)  # no new worker process
    assert len(launches) == 1, launches  # the second call launched nothing
    # The executor waits for the next call; it is shut down on demand (or after its
    # keep_warm window).
    assert len(k8sx_joblib._IDLE) == 1
    k8sx_joblib.shutdown_idle_executors()
    assert len(k8sx_joblib._IDLE) == 0


def test_executor_is_kept_across_parallel_config_blocks_with_the_same_options() -> None:
    options: dict[str, Any] = {"n_jobs": 2, "executor_backend": "local"}
    with joblib.parallel_config(backend="kubernetes", **options):
        first = _pids()
    with joblib.parallel_config(backend="kubernetes", **options):
        second = _pids()
    assert second <= first, (first, second)


@pytest.mark.parametrize(
    "change",
    [{"n_jobs": 1}, {"retries": 1}, {"timeouts": Timeouts(keep_warm=0)}],
    ids=["other n_jobs", "other option", "keep_warm=0"],
)
def test_executor_is_not_shared_when_options_differ(change: dict[str, Any]) -> None:
    options: dict[str, Any] = {"n_jobs": 2, "executor_backend": "local"}
    with joblib.parallel_config(backend="kubernetes", **options):
        first = _pids()
    with joblib.parallel_config(backend="kubernetes", **{**options, **change}):
        second = _pids()
    assert not second & first, (first, second)
    if "timeouts" in change:
        # An executor that keeps no worker warm is shut down at the end of its call.
        assert len(k8sx_joblib._IDLE) == 1  # only the first one waits


def test_kept_executor_is_shut_down_after_its_keep_warm_window(tmp_path: Path) -> None:
    storage = tmp_path / "runs"
    with joblib.parallel_config(
        backend="kubernetes",
        n_jobs=2,
        executor_backend="local",
        storage=str(storage),
        timeouts=Timeouts(keep_warm=0.5),
    ):
        pids = _pids()
    assert len(k8sx_joblib._IDLE) == 1
    helpers.wait_for(lambda: len(k8sx_joblib._IDLE) == 0, 30, "the idle executor to expire")
    # Its workers and its run's storage are gone.
    helpers.wait_for(lambda: not any(helpers.alive(p) for p in pids), 30, "workers to end")
    helpers.wait_for(lambda: not any(storage.iterdir()), 30, "the run's storage to be deleted")


def test_kept_executor_that_broke_while_idle_is_replaced() -> None:
    options: dict[str, Any] = {"n_jobs": 2, "executor_backend": "local"}
    with joblib.parallel_config(backend="kubernetes", **options):
        first = _pids()
    (kept,) = [idle.executor for idle in k8sx_joblib._IDLE._idle]
    kept._run.backend_broken(RuntimeError("the cluster went away while idle"))
    with joblib.parallel_config(backend="kubernetes", **options):
        second = _pids()
    assert not second & first
    with pytest.raises(ExecutorBrokenError):
        kept.submit(jh.inc, 1)


def test_parallel_call_with_pending_calls_does_not_keep_its_executor(tmp_path: Path) -> None:
    release = tmp_path / "release"
    with config():
        gen = Parallel(return_as="generator_unordered", n_jobs=2)(
            delayed(jh.wait_if_first)(i, str(release)) for i in range(4)
        )
        next(gen)  # a call that did not wait; call 0 still waits
        release.write_text("")
        with pytest.warns(UserWarning, match="cancelled"):
            gen.close()  # the caller walks away: Parallel aborts and terminates
    assert len(k8sx_joblib._IDLE) == 0
