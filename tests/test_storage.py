"""Storage through fsspec: local files and a real S3 API server (moto), including
transient errors injected between client and server that the retry must absorb."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from k8s_executor import KubernetesExecutor, StorageError, StorageRetry
from k8s_executor._store import RunStore, is_transient
from tests import helpers
from tests.s3server import S3Server, s3_server

FAST_RETRY = StorageRetry(attempts=8, initial_delay=0.01, max_delay=0.1)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server(buckets=("bucket",)) as server:
        yield server


@pytest.fixture(autouse=True)
def _reset_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "s3" in request.fixturenames:
        server: S3Server = request.getfixturevalue("s3")
        server.faults.count = 0


def test_local_put_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    store = RunStore(str(tmp_path / "run"))
    store.put("b0/out/0", b"payload")
    assert store.get("b0/out/0") == b"payload"
    assert [p.name for p in (tmp_path / "run/b0/out").iterdir()] == ["0"]
    assert store.get_or_none("b0/out/1") is None
    store.delete_all()
    assert not (tmp_path / "run").exists()
    store.delete_all()  # deleting twice is fine


def test_missing_fsspec_implementation_says_what_to_install() -> None:
    with pytest.raises(StorageError, match="nosuchproto.*use an fsspec URL such as s3:"):
        RunStore("nosuchproto://bucket/x")


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (OSError(errno.EBUSY, "SlowDown"), True),
        (OSError(121, "Internal Server Error"), True),
        (FileNotFoundError(), False),
        (PermissionError(), False),
        (ValueError(), False),
    ],
)
def test_transient_classification(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_s3_roundtrip(s3: S3Server) -> None:
    store = RunStore("s3://bucket/k8sx/run1", s3.storage_options(), FAST_RETRY)
    store.put("b0/fn", b"x" * 1000)
    assert store.get("b0/fn") == b"x" * 1000
    assert store.get_or_none("b0/out/0") is None
    store.delete_all()
    assert store.get_or_none("b0/fn") is None


def test_s3_transient_errors_absorbed_by_retry(s3: S3Server) -> None:
    store = RunStore("s3://bucket/k8sx/run2", s3.storage_options(), FAST_RETRY)
    s3.faults.seen = 0
    s3.faults.status, s3.faults.code, s3.faults.count = 500, "InternalError", 3
    store.put("b0/in/0", b"data")
    assert s3.faults.seen == 3  # the errors really happened...
    assert store.get("b0/in/0") == b"data"  # ...and the write still landed once


def test_s3_persistent_errors_become_storage_error(s3: S3Server) -> None:
    retry = StorageRetry(attempts=2, initial_delay=0.01, max_delay=0.01)
    store = RunStore("s3://bucket/k8sx/run3", s3.storage_options(), retry)
    s3.faults.status, s3.faults.code, s3.faults.count = 500, "InternalError", 1000
    with pytest.raises(
        StorageError, match="cannot write b0/fn at s3://bucket/k8sx/run3 after 2 tries"
    ):
        store.put("b0/fn", b"x")


@pytest.mark.parametrize("attempts", [1, 3])
def test_workers_retry_storage_as_told(s3: S3Server, attempts: int) -> None:
    # The worker cannot read its input: it gives up after the executor's StorageRetry
    # attempts (not its own default of 5), and says so.
    s3.faults.status, s3.faults.code, s3.faults.count = 500, "InternalError", 1000
    s3.faults.method, s3.faults.path_regex = "GET", r"/in/0"
    retry = StorageRetry(attempts=attempts, initial_delay=0.01, max_delay=0.05)
    try:
        with KubernetesExecutor(
            backend="local",
            max_workers=1,
            storage="s3://bucket/k8sx",
            storage_options=s3.storage_options(),
            storage_retry=retry,
        ) as ex:
            future = ex.submit(helpers.add, 2, b=3)
            with pytest.raises(StorageError, match=rf"cannot read in/0 .* after {attempts} tries"):
                future.result(timeout=60)
    finally:
        s3.faults.method, s3.faults.path_regex, s3.faults.count = None, ".*", 0


def test_executor_over_s3_with_transient_errors(s3: S3Server) -> None:
    s3.faults.seen = 0
    s3.faults.status, s3.faults.code, s3.faults.count = 503, "SlowDown", 4
    s3.faults.method = "PUT"
    try:
        with KubernetesExecutor(
            backend="local",
            storage="s3://bucket/k8sx",
            storage_options=s3.storage_options(),
            storage_retry=FAST_RETRY,
        ) as ex:
            assert list(ex.map(helpers.square, range(20))) == [x * x for x in range(20)]
            assert ex.submit(helpers.add, 2, b=3).result(timeout=60) == 5
            run_id = ex.run_id
    finally:
        s3.faults.method = None
    assert s3.faults.seen == 4
    import s3fs

    fs = s3fs.S3FileSystem(**s3.storage_options())
    assert not fs.exists(f"bucket/k8sx/{run_id}")  # shutdown deleted the run's prefix


def test_write_to_a_missing_bucket_is_a_storage_error_naming_url_and_fix(s3: S3Server) -> None:
    store = RunStore("s3://no-such-bucket/k8sx/run4", s3.storage_options(), FAST_RETRY)
    with pytest.raises(
        StorageError,
        match=r"cannot write b0/fn at s3://no-such-bucket/k8sx/run4: .*does the bucket exist",
    ):
        store.put("b0/fn", b"x")
    assert store.get_or_none("b0/fn") is None  # reading a missing key is still not an error


def test_write_to_an_uncreatable_directory_is_a_storage_error() -> None:
    store = RunStore("/proc/k8sx/run5", None, FAST_RETRY)
    with pytest.raises(StorageError, match=r"cannot write b0/fn at /proc/k8sx/run5: .*directory"):
        store.put("b0/fn", b"x")
