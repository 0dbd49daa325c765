"""``progress=``: the live bar of calls done / running / pending / failed."""

from __future__ import annotations

import io
import re
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest

from k8s_executor import ConfigError, KubernetesExecutor, _progress
from k8s_executor._progress import Progress, wanted

from .helpers import fail_with_value_error, square, touch_then_wait, wait_for


def _final_line(err: str, description: str) -> str:
    """The last state drawn of the bar named ``description`` (tqdm redraws with \\r)."""
    frames = [f for f in re.split(r"[\r\n]+", err) if f.startswith(description)]
    assert frames, f"no bar {description!r} in {err!r}"
    return frames[-1]


def test_off_by_default_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("K8S_EXECUTOR_PROGRESS", raising=False)
    with KubernetesExecutor(backend="local", max_workers=2) as ex:
        assert list(ex.map(square, range(20))) == [x * x for x in range(20)]
    assert capsys.readouterr().err == ""


def test_bar_to_a_pipe_keeps_output_intact(capsys: pytest.CaptureFixture[str]) -> None:
    with KubernetesExecutor(backend="local", max_workers=2, progress=True) as ex:
        futures: list[Future[object]] = [ex.submit(square, i) for i in range(30)]
        futures.append(ex.submit(fail_with_value_error, "boom"))
        print("results", [f.result() for f in futures[:-1]])
        with pytest.raises(ValueError, match="boom"):
            futures[-1].result()
    out, err = capsys.readouterr()
    # The bar goes to stderr only: what the program prints is untouched.
    assert out == f"results {[i * i for i in range(30)]}\n"
    # Not a terminal: plain lines, no carriage returns or cursor codes (issue 14 item 15).
    assert "\r" not in err and "\x1b" not in err
    final = _final_line(err, f"k8s_executor {ex.run_id}")
    assert "31/31" in final
    assert "running=0 pending=0 failed=1" in final


def test_running_and_pending_are_counted(tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    with KubernetesExecutor(backend="local", max_workers=1, progress=True) as ex:
        held = ex.submit(touch_then_wait, str(started), str(release))
        bar = ex._run._bar
        assert bar is not None
        # The executor marks the future running, then counts it on the bar: wait for the
        # bar itself rather than rely on the next submit waiting for the executor's lock.
        # It stays so: the call holds the only worker slot until the test releases it.
        wait_for(held.running, what="the first call to run")
        wait_for(lambda: bar.running == 1, what="the bar to count the first call running")
        queued = [ex.submit(square, i) for i in range(3)]
        assert bar.text() == "running=1 pending=3 failed=0"
        assert queued[-1].cancel()
        wait_for(lambda: "cancelled=1" in bar.text(), what="the cancel to be counted")
        assert bar.text() == "running=1 pending=2 failed=0 cancelled=1"
        release.touch()
    assert bar.text() == "running=0 pending=0 failed=0 cancelled=1"
    assert (bar.total, bar.done) == (4, 4)


def test_map_gets_its_own_bar_closed_when_it_ends(capsys: pytest.CaptureFixture[str]) -> None:
    with KubernetesExecutor(backend="local", max_workers=2) as ex:
        assert ex._run._bar is None  # no executor-wide bar: not asked for, stderr no terminal
        results = list(ex.map(square, range(25), chunksize=4, progress=True))
        seen = []

        def drawn_to_the_end() -> bool:
            seen.append(capsys.readouterr().err)
            return "25/25" in "".join(seen)

        # Closed without waiting for shutdown: the last call ends the bar.
        wait_for(drawn_to_the_end, what="the map's bar to draw its end")
    assert results == [x * x for x in range(25)]
    final = _final_line("".join(seen), "map(tests.helpers.square)")
    assert "25/25" in final and "failed=0" in final


def test_unpicklable_argument_counts_as_failed() -> None:
    with KubernetesExecutor(backend="local", progress=True) as ex:
        future = ex.submit(square, lambda: None)
        bar = ex._run._bar
        assert bar is not None
        # A lambda pickles (cloudpickle) and fails in the worker; a lock cannot be sent.
        bad = ex.submit(square, threading.Lock())
        assert bad.exception() is not None
        with pytest.raises(TypeError):
            future.result()
    assert bar.failed == 2 and bar.done == 2


def test_environment_variable_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K8S_EXECUTOR_PROGRESS", "1")
    assert wanted(None) is True
    assert wanted(False) is False
    monkeypatch.setenv("K8S_EXECUTOR_PROGRESS", "off")
    assert wanted(None) is False
    assert wanted(True) is True
    monkeypatch.setenv("K8S_EXECUTOR_PROGRESS", "maybe")
    with pytest.raises(ConfigError, match="K8S_EXECUTOR_PROGRESS='maybe'"):
        KubernetesExecutor(backend="local")
    monkeypatch.delenv("K8S_EXECUTOR_PROGRESS")
    with pytest.raises(ConfigError, match="progress='yes' is not allowed"):
        KubernetesExecutor(backend="local", progress="yes")  # type: ignore[arg-type]
    with KubernetesExecutor(backend="local") as ex, pytest.raises(ConfigError, match="progress="):
        ex.map(square, [1], progress=1)  # type: ignore[arg-type]


def test_progress_counters_alone(capsys: pytest.CaptureFixture[str]) -> None:
    bar = Progress("unit", total=3)
    bar.started(2)
    bar.finished(1, was_running=True, failed=False, cancelled=False)
    bar.finished(1, was_running=True, failed=True, cancelled=False)
    assert bar.text() == "running=0 pending=1 failed=1"
    bar.add(2)
    bar.finished(1, was_running=False, failed=False, cancelled=True)
    assert bar.text() == "running=0 pending=2 failed=1 cancelled=1"
    bar.seal()
    bar.finished(2, was_running=False, failed=False, cancelled=False)
    # Sealed and all done: the bar ends by itself.
    wait_for(lambda: not bar._thread.is_alive(), what="the bar to close itself")
    assert "5/5" in _final_line(capsys.readouterr().err, "unit")


def test_note_follows_the_counters_until_cleared() -> None:
    bar = Progress("unit", total=2)
    try:
        bar.note('CreateContainerConfigError: secret "s3-credentials"\nnot found')
        assert bar.text() == (
            'running=0 pending=2 failed=0; CreateContainerConfigError: secret "s3-credentials" '
            "not found"
        )
        bar.clear_note()
        assert bar.text() == "running=0 pending=2 failed=0"
    finally:
        bar.close()


def test_a_log_gets_the_note_as_soon_as_it_changes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # stderr is not a terminal here: plain lines. With the periodic line an hour apart,
    # only the note's change can make one appear while the bar is open.
    monkeypatch.setattr(_progress, "_PIPE_INTERVAL", 3600.0)
    bar = Progress("unit", total=3)
    seen: list[str] = []

    def logged(text: str) -> bool:
        seen.append(capsys.readouterr().err)
        return any(text in line for line in "".join(seen).splitlines())

    try:
        bar.note("waiting for quota: tight, requested: pods=1, used: pods=2, limited: pods=2")
        wait_for(lambda: logged("; waiting for quota: tight"), what="the note's line")
        bar.note("queued: insufficient unused quota for cpu in flavor default-flavor")
        wait_for(lambda: logged("; queued: insufficient"), what="the new note's line")
        bar.clear_note()
        wait_for(lambda: logged("calls done, running=0 pending=3 failed=0"), what="cleared")
    finally:
        bar.close()
    lines = "".join(seen).splitlines() + capsys.readouterr().err.splitlines()
    assert lines == [
        "unit: 0/3 calls done, running=0 pending=3 failed=0; waiting for quota: tight, "
        "requested: pods=1, used: pods=2, limited: pods=2",
        "unit: 0/3 calls done, running=0 pending=3 failed=0; queued: insufficient unused "
        "quota for cpu in flavor default-flavor",
        "unit: 0/3 calls done, running=0 pending=3 failed=0",
    ]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_in_a_terminal_shows_the_note(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = _Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    bar = Progress("unit", total=1)
    try:
        bar.note("queued: waiting for quota in ClusterQueue cq")
        wait_for(lambda: "queued: waiting" in screen.getvalue(), what="the bar to show it")
        bar.finished(1, was_running=False, failed=False, cancelled=False)
        bar.clear_note()
    finally:
        bar.close()
    final = _final_line(screen.getvalue(), "unit")
    assert "1/1" in final and final.rstrip().endswith("running=0 pending=0 failed=0]")


def test_reused_calls_of_a_named_run_are_counted_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 18: "progress shows reused calls apart".
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    kw: dict[str, object] = {"backend": "local", "storage": str(tmp_path / "s"), "run": "bar"}
    with KubernetesExecutor(**kw) as ex:  # type: ignore[arg-type]
        assert list(ex.map(square, range(5))) == [x * x for x in range(5)]
    capsys.readouterr()
    with KubernetesExecutor(progress=True, **kw) as ex:  # type: ignore[arg-type]
        assert list(ex.map(square, range(8))) == [x * x for x in range(8)]
    final = _final_line(capsys.readouterr().err, f"k8s_executor {ex.run_id}")
    assert "8/8" in final
    assert "reused=5" in final
