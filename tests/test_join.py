"""Joining the calls of a named run that another client's workers run (issue 18): two
clients at once share the work, and a joined copy that ends without a result is run
again; with the pure parts of detached runs (records, deadlines, manifests)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from k8s_executor import KubernetesExecutor, _config, _contract, _durable, _sessions
from k8s_executor._store import RunStore
from k8s_executor.backends import _expired
from k8s_executor.backends import _manifest as m
from tests import helpers


def mark_and_wait(i: int, marks: str, gate: str, fail_first: bool) -> int:
    """Leave a mark per execution; wait for the gate; raise on the first execution when
    asked to (a copy that ends without a result)."""
    import uuid

    first = not any(p.startswith(f"{i}-") for p in os.listdir(marks))
    with open(os.path.join(marks, f"{i}-{uuid.uuid4().hex}"), "w"):
        pass
    helpers.wait_for(lambda: os.path.exists(gate), 120, "the gate")
    if fail_first and first:
        raise RuntimeError("the first copy fails")
    return i * 10


def _executions(marks: Path) -> int:
    return len(list(marks.iterdir()))


@pytest.mark.parametrize("fail_first", [False, True])
def test_second_client_joins_what_the_first_runs(
    fail_first: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    kw: dict[str, Any] = {"backend": "local", "storage": str(tmp_path / "s"), "run": "both"}
    marks, gate = tmp_path / "marks", tmp_path / "gate"
    marks.mkdir()
    args = (7, str(marks), str(gate), fail_first)
    with KubernetesExecutor(progress=False, **kw) as a, KubernetesExecutor(**kw) as b:
        first = a.submit(mark_and_wait, *args)
        helpers.wait_for(lambda: _executions(marks) == 1, 60, "the first copy to start")
        second = b.submit(mark_and_wait, *args)  # the same call: joined, not started
        assert not second.done()
        gate.touch()
        if fail_first:
            with pytest.raises(RuntimeError, match="the first copy fails"):
                first.result(timeout=60)
        else:
            assert first.result(timeout=60) == 70
        assert second.result(timeout=120) == 70
    # Once, or (the joined copy ended without a result) once more, by the second client.
    assert _executions(marks) == (2 if fail_first else 1)
    named = RunStore(str(tmp_path / "s" / "named" / "both"))
    launched_by = {r.run_id for r in _sessions.read_launches(named)}
    assert launched_by == ({a.run_id, b.run_id} if fail_first else {a.run_id})


def test_expired_runs_and_records(tmp_path: Path) -> None:
    late = 300.0 + _contract.EXPIRY_MARGIN  # the sweeper's clock may run ahead
    named = RunStore(str(tmp_path / "named" / "x"))
    s1 = _sessions.Session("r0123456789a", 100.0, 200.0)
    s2 = _sessions.Session("r0123456789b", 150.0, 300.0)
    for s in (s2, s1):
        _sessions.write_session(named, s)
    assert _sessions.read_sessions(named) == [s1, s2]
    assert not _sessions.expired([s1, s2], 250.0)
    assert not _sessions.expired([s1, s2], 301.0)  # past, within the clocks' margin
    assert not _sessions.expired([s1, s2], late)
    assert _sessions.expired([s1, s2], late + 1)
    assert _sessions.deadline([s1, s2]) == 300.0
    attached = _sessions.Session("r0123456789c", 160.0, None)
    assert not _sessions.expired([s1, attached], 1e12)  # used without detach: kept
    assert _sessions.deadline([s1, attached]) is None
    named.put("sessions/evil.json", b'{"run_id": "../../etc", "started": 1}')
    assert _sessions.read_sessions(named) == [s1, s2]  # not shaped like a run id: ignored
    (tmp_path / "r0123456789a").mkdir()
    (tmp_path / "r0123456789b").mkdir()
    assert _sessions.sweep_expired(str(tmp_path), {}, now=late) == []
    assert _sessions.sweep_expired(str(tmp_path), {}, now=late + 1) == ["x"]
    assert sorted(os.listdir(tmp_path)) == ["named"]


def test_a_session_started_during_the_sweep_keeps_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep deletes an expired session's prefix; a client of the same run name starts
    meanwhile (review finding 3): the old session's records go, the new session's record,
    the run's stored results and this machine's key stay."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    root = str(tmp_path / "s")
    named = RunStore(str(tmp_path / "s" / "named" / "grid"))
    old = _sessions.Session("r0123456789a", 100.0, 200.0)
    _sessions.write_session(named, old)
    _sessions.write_launch(named, _sessions.LaunchRecord(old.run_id, "b00000", 100.0, 200.0))
    RunStore(f"{root}/{old.run_id}").put("b00000/in/0", b"x")
    key = _durable.load_or_create_key(root, "grid")
    new = _sessions.Session("r0123456789b", 400.0, None)
    delete_all = RunStore.delete_all

    def new_client_starts(store: RunStore) -> None:
        delete_all(store)
        if store.url.endswith(old.run_id):  # between the sweep's two reads of sessions/
            _sessions.write_session(named, new)
            named.put("calls/abc", b"a stored result the new session uses")

    monkeypatch.setattr(RunStore, "delete_all", new_client_starts)
    monkeypatch.setattr(_contract, "EXPIRY_MARGIN", 0.0)
    assert _sessions.sweep_expired(root, {}, now=301.0) == []
    assert _sessions.read_sessions(named) == [new]
    assert _sessions.read_launches(named) == []
    assert named.get("calls/abc") == b"a stored result the new session uses"
    assert _durable.load_or_create_key(root, "grid") == key
    assert sorted(os.listdir(root)) == ["named"]  # the old session's prefix went


def test_expired_secrets_are_chosen_by_their_deadline() -> None:
    def secret(run: str, deadline: str | None) -> dict[str, Any]:
        annotations = {} if deadline is None else {m.ANNOTATION_DEADLINE: deadline}
        return {"metadata": {"labels": {m.LABEL_RUN: run}, "annotations": annotations}}

    secrets = [secret("ra", "100"), secret("rb", "300"), secret("rc", None), secret("rd", "x")]
    assert _expired.expired_runs(secrets, 200.0) == []  # within the clocks' margin
    assert _expired.expired_runs(secrets, 200.0 + _contract.EXPIRY_MARGIN) == ["ra"]


def test_a_detached_job_needs_no_client() -> None:
    params = m.JobParams(
        run_id="r0123456789a",
        batch_id="b00000",
        indexes=3,
        parallelism=3,
        image="img",
        batch_url="s3://b/r0123456789a/b00000",
        named="grid",
        deadline=10_000.0,
        now=9_000.0,
    )
    job = m.job_manifest(params)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "K8S_EXECUTOR_HEARTBEAT_GRACE" not in env
    assert env["K8S_EXECUTOR_RUN_DEADLINE"] == "10000.0"
    assert job["spec"]["activeDeadlineSeconds"] == 1000  # ends at the run's deadline
    assert job["spec"]["suspend"] is False
    assert job["metadata"]["labels"][m.LABEL_NAMED] == "grid"
    assert job["metadata"]["annotations"][m.ANNOTATION_DEADLINE] == "10000"
    attached = m.job_manifest(m.JobParams("r1", "b00000", 3, 3, "img", "s3://b/r1/b00000"))
    assert attached["spec"]["activeDeadlineSeconds"] == 24 * 3600
    assert m.LABEL_NAMED not in attached["metadata"]["labels"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("3600", 3600), ("90s", 90), ("90m", 5400), ("12h", 43200), ("2d", 172800)],
)
def test_deadline_durations(text: str, seconds: float) -> None:
    assert _config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5m", "soon", "inf", "h"])
def test_bad_deadline_durations(text: str) -> None:
    with pytest.raises(ValueError):
        _config.parse_duration(text)


def test_when_a_joined_copy_counts_as_alive() -> None:
    from k8s_executor._durable import JOIN_GRACE, START_GRACE, copy_alive

    assert copy_alive(1.0, 1000.0, detached=False)  # a fresh marker
    assert not copy_alive(JOIN_GRACE + 1, 1.0, detached=True)  # its worker stopped
    assert copy_alive(None, START_GRACE - 1, detached=True)  # its pod may be pending
    assert not copy_alive(None, START_GRACE + 1, detached=True)
    assert not copy_alive(None, 0.0, detached=False)  # died with its client, unstarted
