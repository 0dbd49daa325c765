"""ProcessPoolExecutor's contract where CPython's own tests check it (issue 14): no stale
references once a future is done, ``shutdown(cancel_futures=True)`` reaching calls already
packed into a started worker, ``submit`` refused from an atexit handler, a script that ends
without ``shutdown``, and an engine that breaks (never hangs) when its storage fails.

Each test runs on the local backend and, where it applies, on kubesim (process kubelet)."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import os
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import ExecutorBrokenError, KubernetesExecutor, StorageError
from k8s_executor._store import RunStore
from tests import helpers
from tests.kube_helpers import KubesimCluster, local_or_kubesim
from tests.s3server import S3Server, s3_server

BOUND = 90  # seconds within which every future resolves, whatever fails


class Payload:
    """An object with a method, as in CPython's test_no_stale_references."""

    def method(self) -> int:
        return 7


def make_payload(_x: int = 0) -> Payload:
    return Payload()


def sleep_then(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


def record_slowly(record_dir: str, name: str, release: str, at_least: float) -> str:
    """Record that this call ran; the first one (``release`` given) then waits for the
    release file and for ``at_least`` seconds, so that the worker re-reads its skip
    marker (rate-limited) before its next call."""
    Path(record_dir, name).write_text(name)
    if release:
        began = time.monotonic()
        helpers.wait_for_file(release)
        remaining = at_least - (time.monotonic() - began)
        if remaining > 0:
            time.sleep(remaining)
    return name


@pytest.fixture(params=["local", "kubernetes"])
def kwargs(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    return local_or_kubesim(request, tmp_path / "storage")


@pytest.fixture
def make(kwargs: dict[str, Any]) -> Iterator[Callable[..., KubernetesExecutor]]:
    made: list[KubernetesExecutor] = []

    def factory(**extra: Any) -> KubernetesExecutor:
        executor = KubernetesExecutor(**{**kwargs, **extra})
        made.append(executor)
        return executor

    yield factory
    for executor in made:
        executor.shutdown(wait=True, cancel_futures=True)


def _collected(ref: weakref.ref[Any]) -> bool:
    gc.collect()
    return ref() is None


# -- item 2: no reference held once a future is done ---------------------------------------


def test_object_passed_to_submit_is_freed_once_done(
    make: Callable[..., KubernetesExecutor],
) -> None:
    ex = make(max_workers=2)
    payload = Payload()
    ref = weakref.ref(payload)
    future = ex.submit(payload.method)
    del payload
    assert future.result(timeout=BOUND) == 7
    # The future's callbacks (which release the engine's hold) run just after result()
    # may return: wait for that, not for a time.
    helpers.wait_for(lambda: _collected(ref), 30, "the submitted object to be freed")


def test_result_is_freed_when_its_future_is_dropped(
    make: Callable[..., KubernetesExecutor],
) -> None:
    ex = make(max_workers=2)
    # Two calls in one batch: the other one's index keeps the batch alive meanwhile.
    blocker = ex.submit(sleep_then, 0.5, 1)
    future = ex.submit(make_payload)
    result = future.result(timeout=BOUND)
    assert isinstance(result, Payload)
    ref = weakref.ref(result)
    del result, future
    helpers.wait_for(lambda: _collected(ref), 30, "the result to be freed")
    assert blocker.result(timeout=BOUND) == 1


def test_map_results_are_freed_as_they_are_consumed(
    make: Callable[..., KubernetesExecutor],
) -> None:
    # CPython's test_free_reference: the result iterator keeps no result it handed out.
    ex = make(max_workers=2)
    for chunksize in (1, 4):
        for obj in ex.map(make_payload, range(8), chunksize=chunksize):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None


# -- item 3: shutdown(cancel_futures=True) reaches calls in a started worker --------------


def test_shutdown_cancel_futures_cancels_calls_packed_in_started_workers(
    make: Callable[..., KubernetesExecutor],
) -> None:
    # CPython's test_cancel_futures: many slow calls, 2 workers.
    ex = make(max_workers=2)
    futures = [ex.submit(sleep_then, 0.1, i) for i in range(50)]
    helpers.wait_for(futures[0].running, BOUND, "the first call to run")
    ex.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    assert len(cancelled) > 20
    others = [f for f in futures if not f.cancelled()]
    assert others, "the running calls finish"
    for f in others:
        assert f.done()
        assert f.exception() is None


def test_cancel_reaches_a_call_queued_behind_another_in_its_worker(
    make: Callable[..., KubernetesExecutor], tmp_path: Path
) -> None:
    record, release = tmp_path / "record", tmp_path / "release"
    record.mkdir()
    ex = make(max_workers=1)
    first = ex.submit(record_slowly, str(record), "a", str(release), 0.5)
    second = ex.submit(record_slowly, str(record), "b", "", 0)
    third = ex.submit(record_slowly, str(record), "c", "", 0)
    helpers.wait_for(first.running, BOUND, "the first call to run")
    assert not second.running()  # queued behind it in the same worker
    assert second.cancel()
    release.touch()
    assert first.result(timeout=BOUND) == "a"
    assert third.result(timeout=BOUND) == "c"
    assert second.cancelled()
    assert sorted(p.name for p in record.iterdir()) == ["a", "c"]


# -- items 5 and 6: interpreter exit -------------------------------------------------------

ATEXIT_SUBMIT = """
import atexit, sys, types
from k8s_executor import KubernetesExecutor
from tests import helpers

used = KubernetesExecutor(backend="local")
unused = KubernetesExecutor(backend="local")

def late():
    for name, ex in (("used", used), ("unused", unused)):
        try:
            ex.submit(helpers.square, 2)
        except RuntimeError as exc:
            print(name, "refused:", exc)
        else:
            print(name, "accepted")

atexit.register(late)
print(used.submit(helpers.square, 3).result())
"""


def _client_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}


def test_submit_from_atexit_handler_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-c", ATEXIT_SUBMIT],
        env=_client_env(),
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert done.returncode == 0, done.stderr
    message = "cannot schedule new futures after interpreter shutdown"
    assert done.stdout.splitlines() == [
        "9",
        f"used refused: {message}",
        f"unused refused: {message}",
    ], done.stderr


NO_SHUTDOWN = """
import sys, types
from k8s_executor import KubernetesExecutor
from tests import helpers
from tests.kube_helpers import kubesim_kwargs

storage, kubeconfig, out = sys.argv[1:4]
if kubeconfig:
    kw = kubesim_kwargs(types.SimpleNamespace(kubeconfig_path=kubeconfig), storage)
else:
    kw = {"backend": "local", "storage": storage}
ex = KubernetesExecutor(max_workers=2, **kw)
print(ex.run_id, flush=True)
for i in range(3):
    f = ex.submit(helpers.record_name, out, f"call{i}")
"""


@pytest.mark.parametrize("where", ["local", "kubernetes"])
def test_script_without_shutdown_runs_its_work_and_exits(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    kubeconfig = ""
    if where == "kubernetes":
        sim = request.getfixturevalue("kubesim")
        kubeconfig = str(sim.kubeconfig_path)
    out, storage = tmp_path / "out", tmp_path / "storage"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", NO_SHUTDOWN, str(storage), kubeconfig, str(out)],
        env=_client_env(),
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["call0", "call1", "call2"]
    run_id = done.stdout.split()[0]
    assert not (storage / run_id).exists()
    if where == "kubernetes":
        cluster = KubesimCluster(request.getfixturevalue("kubesim"))
        try:
            assert cluster.run_objects(run_id) == {"jobs": [], "pods": [], "secrets": []}
        finally:
            cluster.close()


# -- item 7: storage that fails at each operation ------------------------------------------


class Injected(RuntimeError):
    """A failure the engine does not expect (not a StorageError)."""


def _failing(monkeypatch: pytest.MonkeyPatch, operation: str, error: type[BaseException]) -> None:
    """Make this process's storage fail at ``operation`` (workers are not affected)."""
    put, get, delete_all = RunStore.put, RunStore.get, RunStore.delete_all

    def fail() -> None:
        raise error(f"injected failure: {operation}")

    def failing_put(self: RunStore, key: str, data: bytes) -> None:
        name = key.rsplit("/", 2)
        if (
            (operation == "put fn" and key.endswith("/fn"))
            or (operation == "put in" and len(name) == 3 and name[1] == "in")
            or (operation == "heartbeat" and key == "heartbeat")
        ):
            fail()
        put(self, key, data)

    def failing_get(self: RunStore, key: str) -> bytes:
        if operation == "get out" and "/out/" in key:
            fail()
        return get(self, key)

    def failing_delete_all(self: RunStore) -> None:
        if operation == "delete":
            fail()
        delete_all(self)

    monkeypatch.setattr(RunStore, "put", failing_put)
    monkeypatch.setattr(RunStore, "get", failing_get)
    monkeypatch.setattr(RunStore, "delete_all", failing_delete_all)


OPERATIONS = ["put fn", "put in", "get out", "heartbeat", "delete"]


@pytest.mark.parametrize("error", [StorageError, Injected], ids=["StorageError", "unexpected"])
@pytest.mark.parametrize("operation", OPERATIONS)
def test_storage_failing_at_each_operation_resolves_every_future(
    operation: str,
    error: type[BaseException],
    kwargs: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local_heartbeat = operation == "heartbeat" and kwargs["backend"] == "local"
    _failing(monkeypatch, operation, error)
    ex = KubernetesExecutor(max_workers=2, **kwargs)
    futures: list[cf.Future[int]] = []
    errors: list[BaseException | None] = []
    try:
        for i in range(5):
            try:
                futures.append(ex.submit(helpers.square, i))
            except ExecutorBrokenError as exc:  # or the call raises
                errors.append(exc)
        _, not_done = cf.wait(futures, timeout=BOUND)
        assert not not_done, "every future resolves"
    finally:
        ex.shutdown(wait=True)  # returns, whatever failed
    if (
        operation in ("delete",)
        or (operation == "heartbeat" and error is StorageError)
        or local_heartbeat
    ):
        # Nothing the calls need failed (a heartbeat is retried at the next beat; local
        # workers have no heartbeat to write: their client is their parent process).
        assert [f.result() for f in futures] == [i * i for i in range(5)]
        return
    errors += [f.exception() for f in futures]
    assert len(errors) == 5
    for raised in errors:
        assert raised is not None
        if isinstance(raised, ExecutorBrokenError):
            # The thread that met it died of it: the executor is broken, with the cause.
            assert isinstance(raised.__cause__, error), repr(raised.__cause__)
        else:
            assert operation != "heartbeat"
            assert isinstance(raised, error), repr(raised)


@pytest.fixture(scope="module")
def empty_s3() -> Iterator[S3Server]:
    with s3_server(buckets=()) as server:
        yield server


@pytest.mark.parametrize("storage", ["/proc/k8sx", "s3://no-such-bucket/x"])
def test_storage_that_cannot_be_written_fails_the_calls(
    storage: str, kwargs: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    extra: dict[str, Any] = {"storage": storage}
    if storage.startswith("s3://"):
        server: S3Server = request.getfixturevalue("empty_s3")
        extra["storage_options"] = server.storage_options()
    ex = KubernetesExecutor(max_workers=2, **{**kwargs, **extra})
    try:
        future = ex.submit(helpers.square, 3)
        assert future.exception(timeout=BOUND) is not None
        with pytest.raises(Exception) as raised:
            list(ex.map(helpers.square, range(3), timeout=BOUND))
        assert not isinstance(raised.value, TimeoutError)
    finally:
        ex.shutdown(wait=True)
