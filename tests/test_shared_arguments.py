"""Large arguments passed to many calls are stored once per run (Batching.share_min_bytes).

The storage is a real directory and the workers real subprocesses; what the client
writes is observed by listing that directory while the run is alive, or by recording
``RunStore.put`` in the client (workers write from their own processes, unrecorded).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

import k8s_executor.joblib
from k8s_executor import Batching, KubernetesExecutor
from k8s_executor import _payload as wire
from k8s_executor._store import RunStore
from tests.kube_helpers import kubesim_kwargs

KEY = b"s" * 32
MB = 1 << 20


def checksum(x: np.ndarray, i: int) -> float:
    return float(x.sum()) + i


def scale_in_place(x: np.ndarray, factor: float) -> float:
    x *= factor  # the worker's copy must be writable, and its own
    return float(x.sum())


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def big() -> np.ndarray:
    return np.arange(MB // 2, dtype=np.float64)  # 4 MiB


def test_array_given_to_many_calls_is_stored_once(tmp_path: Path, big: np.ndarray) -> None:
    with KubernetesExecutor(backend="local", max_workers=2, storage=str(tmp_path)) as ex:
        futures = [ex.submit(checksum, big, i) for i in range(12)]
        results = list(ex.map(checksum, [big] * 8, range(8)))
        assert [f.result() for f in futures] == [float(big.sum()) + i for i in range(12)]
        files = _files(tmp_path / ex.run_id)
    assert results == [float(big.sum()) + i for i in range(8)]
    shared = {k: v for k, v in files.items() if k.startswith("shared/")}
    assert shared == {f"shared/{wire.buffer_key(big.tobytes())}": big.nbytes}
    # Everything else (functions, inputs, outcomes) stays small: no copy of the array.
    assert sum(v for k, v in files.items() if k not in shared) < MB


def column_sum(x: np.ndarray, column: int) -> float:
    return float(x[:, column].sum())


def test_sliced_array_is_shared_too(tmp_path: Path) -> None:
    # A column slice is neither C- nor F-contiguous (scikit-learn's load_digits data is
    # one): NumPy pickles it in band, so it is shared as a contiguous copy.
    table = np.arange(2 * MB // 8 * 9, dtype=np.float64).reshape(-1, 9)
    view = table[:, :8]
    assert not (view.flags.c_contiguous or view.flags.f_contiguous)
    with KubernetesExecutor(backend="local", max_workers=2, storage=str(tmp_path)) as ex:
        results = list(ex.map(column_sum, [view] * 8, range(8)))
        files = _files(tmp_path / ex.run_id)
    assert results == [float(view[:, c].sum()) for c in range(8)]
    contiguous = np.ascontiguousarray(view)
    shared = {k: v for k, v in files.items() if k.startswith("shared/")}
    assert shared == {f"shared/{wire.buffer_key(contiguous.tobytes())}": contiguous.nbytes}
    assert sum(v for k, v in files.items() if k not in shared) < MB


def test_array_given_once_travels_inside_its_input(tmp_path: Path, big: np.ndarray) -> None:
    with KubernetesExecutor(backend="local", storage=str(tmp_path)) as ex:
        assert ex.submit(checksum, big, 1).result() == float(big.sum()) + 1
        files = _files(tmp_path / ex.run_id)
    assert not any(k.startswith("shared/") for k in files)  # one use: no extra object
    assert sum(files.values()) > big.nbytes


def test_workers_get_writable_private_copies(tmp_path: Path, big: np.ndarray) -> None:
    with KubernetesExecutor(backend="local", max_workers=1) as ex:
        # One worker runs all four calls: each must see the original, not the
        # previous call's change to a buffer the worker downloaded once.
        results = list(ex.map(scale_in_place, [big] * 4, [2.0, 3.0, 4.0, 5.0]))
    assert results == [float(big.sum()) * f for f in (2.0, 3.0, 4.0, 5.0)]


def test_changing_the_array_after_submit_does_not_reach_the_call(big: np.ndarray) -> None:
    with KubernetesExecutor(backend="local", batching=Batching(window=5.0)) as ex:
        before = ex.submit(checksum, big, 0)
        big[:] = 1.0  # while the first call still waits in the batching window
        after = ex.submit(checksum, big, 0)
    assert before.result() == float(np.arange(MB // 2, dtype=np.float64).sum())
    assert after.result() == float(big.size)


def test_turned_off_every_call_carries_its_copy(tmp_path: Path, big: np.ndarray) -> None:
    batching = Batching(share_min_bytes=None)
    with KubernetesExecutor(backend="local", storage=str(tmp_path), batching=batching) as ex:
        assert list(ex.map(checksum, [big] * 3, range(3)))[2] == float(big.sum()) + 2
        files = _files(tmp_path / ex.run_id)
    assert not any(k.startswith("shared/") for k in files)
    assert sum(files.values()) > 3 * big.nbytes


def test_small_arrays_stay_inline() -> None:
    small = np.ones(100)
    blob, large = wire.dump_calls_sharing(None, [((small,), {})], MB)
    assert large == []
    assert wire.load_calls(blob, [])[0][0][0].tolist() == small.tolist()


def test_bad_threshold_is_a_config_error() -> None:
    with pytest.raises(Exception, match="Batching.share_min_bytes"):
        Batching(share_min_bytes=0)


def _worker(url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "JOB_COMPLETION_INDEX": "0",
        "K8S_EXECUTOR_KEY": KEY.hex(),
    }
    argv = [sys.executable, "-m", "k8s_executor.worker", url]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_worker_refuses_a_shared_buffer_changed_in_storage(tmp_path: Path, big: np.ndarray) -> None:
    run = RunStore(str(tmp_path / "run"))
    batch = RunStore(str(tmp_path / "run" / "b00000"))
    blob, large = wire.dump_calls_sharing(None, [((big, 0), {})], MB)
    key = wire.buffer_key(large[0])
    tampered = bytearray(large[0])
    tampered[0] ^= 0xFF
    run.put(f"shared/{key}", bytes(tampered))
    table = wire.FunctionTable((wire.dump_function(checksum),), ("checksum",), None, None)
    batch.put("fn", table.seal(KEY))
    batch.put("in/0", wire.seal_inputs(KEY, [wire.TaskInput(1, 0, blob, (key,))]))
    done = _worker(batch.url)
    assert done.returncode != 0
    outcomes = wire.open_outcomes(KEY, batch.get("out/0"))
    assert isinstance(outcomes, list) and outcomes[0].error is not None
    error = wire.rebuild_exception(outcomes[0].error, "checksum")
    assert "does not match its SHA-256" in str(error)

    run.put(f"shared/{key}", bytes(large[0]))  # the genuine bytes: the call runs
    assert _worker(batch.url).returncode == 0
    outcomes = wire.open_outcomes(KEY, batch.get("out/0"))
    assert isinstance(outcomes, list) and outcomes[0].results is not None
    assert wire.load_results(outcomes[0].results, "checksum") == [float(big.sum())]


@pytest.fixture
def client_puts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(key, size) of every object the client writes (workers run elsewhere)."""
    puts: list[tuple[str, int]] = []
    real_put = RunStore.put

    def put(self: RunStore, key: str, data: bytes) -> None:
        puts.append((key, len(data)))
        real_put(self, key, data)

    monkeypatch.setattr(RunStore, "put", put)
    return puts


def test_joblib_training_set_is_uploaded_once(
    client_puts: list[tuple[str, int]], big: np.ndarray
) -> None:
    k8s_executor.joblib.register()
    with joblib.parallel_config(backend="kubernetes", n_jobs=2, executor_backend="local"):
        results = joblib.Parallel()(joblib.delayed(checksum)(big, i) for i in range(20))
    assert results == [float(big.sum()) + i for i in range(20)]
    shared = [size for key, size in client_puts if key.startswith("shared/")]
    assert shared == [big.nbytes]
    # 20 calls; without sharing the inputs would hold 20 copies (80 MiB).
    assert sum(size for key, size in client_puts) < 3 * big.nbytes


def test_shared_on_kubernetes(kubesim: Any, tmp_path: Path, big: np.ndarray) -> None:
    """Pods find the run's shared buffers as local workers do (kubesim, process kubelet)."""
    kw = kubesim_kwargs(kubesim, tmp_path / "storage")
    with KubernetesExecutor(max_workers=2, **kw) as ex:
        results = list(ex.map(checksum, [big] * 6, range(6)))
        files = _files(tmp_path / "storage" / ex.run_id)
    assert results == [float(big.sum()) + i for i in range(6)]
    assert [k for k in files if k.startswith("shared/")] == [
        f"shared/{wire.buffer_key(big.tobytes())}"
    ]


def test_warm_worker_keeps_the_shared_buffers_of_its_last_index(
    tmp_path: Path, big: np.ndarray
) -> None:
    storage = tmp_path / "runs"
    with KubernetesExecutor(max_workers=1, backend="local", storage=str(storage)) as ex:
        first = list(ex.map(checksum, [big] * 3, range(3)))
        pid = ex.submit(os.getpid).result()
        (stored,) = storage.rglob("shared/*")
        stored.unlink()  # the next batch can only use the worker's kept copy
        second = list(ex.map(checksum, [big] * 3, range(3)))
        assert ex.submit(os.getpid).result() == pid  # the same warm worker
    assert second == first


def test_kept_buffers_hold_no_more_than_the_busiest_index_used() -> None:
    from k8s_executor.worker import _KeptBuffers

    kept = _KeptBuffers()
    kept.keep({"a": b"x" * 10, "b": b"y" * 10})  # busiest index so far: 20 bytes
    kept.keep({})  # an index without shared buffers drops nothing
    assert kept.get("a") == b"x" * 10
    kept.keep({"c": b"z" * 10})  # 30 bytes kept > 20: the least recently used goes
    assert kept.get("a") is None
    assert kept.get("b") == b"y" * 10
    assert kept.get("c") == b"z" * 10
    kept.keep({"d": b"w" * 40})  # a bigger index raises the bound, keeps its own
    assert kept.get("d") == b"w" * 40
    assert kept.get("b") is None and kept.get("c") is None
