"""kubesim against what a real Kubernetes 1.36 cluster did (issue 22).

Each trace of ``real_traces/`` (README there) is replayed on kubesim: the scenario is rebuilt
from the trace (``traces.scenario_from_trace``), recorded with the same recorder that records
on a real cluster (``recorder.record``, docs/testing.md "Recording a scenario"), and both
recordings are reduced to comparable facts (``traces.summarize``). Timing is not compared;
order is.

Time: kubesim runs on a :class:`ScaledClock`, ``SPEED`` times faster than real time (at most
``MAX_SPEED`` for a scenario whose order rests on a short margin), and the sleeps in the
commands are shortened by the same factor, so a 120 s sleep against a 30 s grace period stays
four times the grace period. Action times, the duration and every clock-driven rule of kubesim
(grace periods, back-offs, retries, the Job controller's 1 s batch) are in the scaled time.
The recording ends at the trace's duration, or later while the facts still differ (a loaded
machine lags behind a fast clock), for at most the scenario's duration in real time
(``patience``).

Differences: ``DIFFERENCES`` is the one table of the facts on which kubesim is known to differ
from the recording, per scenario and runtime, each pointing at its reason in
``tests/kubesim/CONTRACT.md`` ("Differences from the recorded real cluster"). A difference
not in the table fails, and so does a declared one that no longer shows (unless declared as
timing-dependent with a trailing ``?``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.kube_helpers import BASE_IMAGE, podman_cmd
from tests.kubesim.clock import ScaledClock
from tests.kubesim.kubeconfig import Kubesim
from tests.kubesim.recorder import record, with_images
from tests.kubesim.traces import (
    Scenario,
    Summary,
    differences,
    load_trace,
    matches,
    scenario_from_trace,
    summarize,
)
from tests.kubesim_tests.conftest import core_api, wait_for

TRACES = Path(__file__).parent / "real_traces"
RECORDED_IMAGE = "127.0.0.1:5000/k8sx-base:py3.11"  # the recording cluster's Python image
CONTRACT = Path(__file__).parents[1] / "kubesim" / "CONTRACT.md"

# The process runtime starts a command in ~50 ms, podman a container in ~0.6 s: at these
# speeds, 0.5 s and 3 s of scaled time, less than the recorded ~8 s between the start and the
# first action (which waits for the pods to run anyway).
SPEED = {"process": 10.0, "podman": 5.0}
# Scenarios whose recorded order rests on a short margin, replayed at most this fast so the
# margin stays a few tenths of a second of real time on a loaded machine: the handler exits
# well within the Job controller's 1 s batch; the second resume comes 3 s before the first
# pods' sleeps end.
MAX_SPEED = {"delete-running-handler": 4.0, "suspend-resume": 5.0}
# Scenarios that depend on how PID 1 of a container treats SIGTERM: replayed on podman too.
PODMAN_SCENARIOS = ("delete-running-pid1", "delete-running-handler", "suspend-resume")
# Scenarios of about 3 s of wall time or more (and every one on podman).
SLOW = (
    "evicted",
    "suspend-resume",
    "delete-running-pid1",
    "delete-running-handler",
    "missing-secret",
    "image-pull-backoff",
)

# (scenario, runtime) -> {fact pattern: the CONTRACT.md entry giving the reason}. A pattern is
# a fact key of traces.facts() or a dotted prefix of keys, "*" matching within one segment.
# A reason ending in "?" is a difference that depends on timing: it may or may not show in a
# run, so it is never reported as gone; every other declared difference must show.
DIFFERENCES: dict[tuple[str, str], dict[str, str]] = {
    ("delete-running-handler", "podman"): {"index.0.timeline": "D1?"},
}


def _anchor_ids() -> set[str]:
    return set(re.findall(r"^### (D\d+)\b", CONTRACT.read_text(), flags=re.MULTILINE))


def test_every_declared_difference_has_its_reason_in_the_contract() -> None:
    ids = _anchor_ids()
    missing = {
        (scenario, key, reason)
        for scenario, declared in DIFFERENCES.items()
        for key, reason in declared.items()
        if reason.rstrip("?") not in ids
    }
    assert not missing, f"declared without a '### Dn' section in CONTRACT.md: {missing}"
    assert {scenario for scenario, _ in DIFFERENCES} <= set(_NAMES), "unknown scenario"


# --- replaying ---------------------------------------------------------------------------------


def _names() -> list[str]:
    return sorted(p.stem for p in TRACES.glob("*.jsonl"))


_NAMES = _names()


def _shorten_sleeps(code: str, speed: float) -> str:
    return re.sub(
        r"time\.sleep\((\d+(?:\.\d+)?)\)",
        lambda m: f"time.sleep({float(m.group(1)) / speed:g})",
        code,
    )


def for_kubesim(scenario: Scenario, runtime: str, speed: float) -> Scenario:
    """The scenario as kubesim runs it: sleeps shortened by ``speed``; on the process runtime
    the command's ``python3`` is this interpreter; on podman the recording's Python image is
    the local one (image names are an artefact of the recording cluster). The image the
    recording's registry lacked keeps its name: kubesim's kubelet fails to pull it too."""
    job = copy.deepcopy(scenario.job)
    for container in job["spec"]["template"]["spec"]["containers"]:
        command = list(container.get("command") or [])
        if command[:2] == ["python3", "-c"]:
            command[2] = _shorten_sleeps(command[2], speed)
            if runtime == "process":
                command[0] = sys.executable
        container["command"] = command
    scenario = dataclasses.replace(scenario, job=job)
    if runtime == "podman":
        scenario = with_images(scenario, {RECORDED_IMAGE: BASE_IMAGE})
    return scenario


@dataclass
class Verdict:
    diffs: dict[str, tuple[Any, Any]]
    undeclared: dict[str, tuple[Any, Any]]
    stale: dict[str, str]

    @property
    def ok(self) -> bool:
        return not self.undeclared and not self.stale


def judge(real: Summary, observed: Summary, declared: dict[str, str]) -> Verdict:
    diffs = differences(real, observed)
    undeclared = {k: v for k, v in diffs.items() if not any(matches(p, k) for p in declared)}
    stale = {
        p: r
        for p, r in declared.items()
        if not r.endswith("?") and not any(matches(p, k) for k in diffs)
    }
    return Verdict(diffs, undeclared, stale)


def _report(name: str, runtime: str, verdict: Verdict, trace: Path) -> str:
    lines = [f"{name} on kubesim ({runtime}) differs from the real cluster; trace: {trace}"]
    for key, (real, sim) in verdict.undeclared.items():
        lines.append(f"  {key}:\n    real:    {real}\n    kubesim: {sim}")
    for pattern, reason in verdict.stale.items():
        lines.append(f"  declared ({reason}) but no longer different: {pattern}")
    return "\n".join(lines)


def patience(scenario: Scenario, speed: float) -> tuple[float, float]:
    """How long the recorder waits, in the scaled clock's seconds, for pods to start before
    an action (``running_timeout``) and for the facts to come after the scenario's duration
    (``extra``): the scenario's own duration at real speed, as if the clock were not scaled
    at all. The processes and containers keep real time; on a loaded machine they lag far
    behind a clock 5-10 times faster (a container that starts in 0.6 s takes several
    seconds), so a bound in scaled time would end the recording before they catch up. A
    replay that matches stops waiting at once."""
    real = scenario.duration * speed
    return max(60.0, real), real


def replay(
    factory: Callable[..., Kubesim], name: str, runtime: str, out_dir: Path
) -> tuple[Verdict, Path]:
    lines = load_trace(TRACES / f"{name}.jsonl")
    real = summarize(lines)
    speed = min(SPEED[runtime], MAX_SPEED.get(name, SPEED[runtime]))
    options: dict[str, Any] = {"runtime": runtime, "clock": ScaledClock(speed)}
    if runtime == "podman":
        options["kubelet_options"] = {"podman_cmd": podman_cmd()}
    scenario = for_kubesim(scenario_from_trace(name, lines), runtime, speed)
    declared = DIFFERENCES.get((name, runtime), {})
    sim = factory(**options)
    # Upstream's syncJobBatchPeriod (1 s) in scaled time, not kubesim's shortcut for tests:
    # whether a terminating pod is seen still running or already failed depends on it.
    sim.controller.sync_batch_s = 1.0 / speed
    out = out_dir / f"{name}.{runtime}.jsonl"
    running_timeout, extra = patience(scenario, speed)
    with sim.api_client() as api, open(out, "w", encoding="utf-8") as fh:
        recorded = record(
            api,
            scenario,
            fh,
            namespace=name,
            clock=sim.clock.monotonic,
            speed=speed,
            running_timeout=running_timeout,
            extra=extra,
            until=lambda got: judge(real, summarize(got), declared).ok,
            delete_namespace=False,
        )
        _stop_pods(api, name)
    return judge(real, summarize(recorded), declared), out


def _stop_pods(api: Any, namespace: str) -> None:
    """End what still runs at once (a podman container otherwise outlives the pod's grace
    period at kubesim's shutdown): delete every pod with grace 0, wait until none runs. A pod
    not marked for deletion on a later look (its delete was refused, or it was created since)
    is deleted again."""
    core = core_api(api)
    left: list[str] = []

    def stopped() -> bool:
        pods = core.list_namespaced_pod(namespace).items
        running = [p for p in pods if p.status.phase not in ("Succeeded", "Failed")]
        for pod in running:
            if not pod.metadata.deletion_timestamp:
                with contextlib.suppress(ApiException):
                    core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
        left[:] = [
            f"{p.metadata.name} {p.status.phase} deleting={bool(p.metadata.deletion_timestamp)}"
            f" finalizers={p.metadata.finalizers}"
            for p in running
        ]
        return not left

    try:
        wait_for(stopped, 30, f"the pods of {namespace} to stop")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still running: {left}") from None


def _params(runtime: str, names: list[str]) -> list[Any]:
    slow = [pytest.mark.slow]
    marks = {name: slow if name in SLOW or runtime == "podman" else [] for name in names}
    return [pytest.param(name, id=name, marks=marks[name]) for name in names]


@pytest.mark.parametrize("name", _params("process", _NAMES))
def test_replay_on_process_runtime(
    name: str, kubesim_factory: Callable[..., Kubesim], tmp_path: Path
) -> None:
    verdict, trace = replay(kubesim_factory, name, "process", tmp_path)
    assert verdict.ok, _report(name, "process", verdict, trace)


@pytest.fixture
def podman() -> None:
    """As tests/kubesim_tests/test_kubelet_podman.py: podman and the local Python image that
    .ci/containers.sh imports are required under CI=true."""
    if shutil.which("podman") is None:
        problem = "podman is not installed (apt-get install -y podman runc)"
    elif subprocess.run([*podman_cmd(), "image", "exists", BASE_IMAGE], check=False).returncode:
        problem = f"no local podman image {BASE_IMAGE} (bash .ci/containers.sh imports it)"
    else:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(problem)
    pytest.skip(problem)


@pytest.mark.podman
@pytest.mark.parametrize("name", _params("podman", list(PODMAN_SCENARIOS)))
def test_replay_on_podman_runtime(
    name: str, kubesim_factory: Callable[..., Kubesim], tmp_path: Path, podman: None
) -> None:
    verdict, trace = replay(kubesim_factory, name, "podman", tmp_path)
    assert verdict.ok, _report(name, "podman", verdict, trace)


def test_the_facts_tell_every_trace_apart() -> None:
    """The comparison is not vacuous: a recorded trace matches itself and differs from every
    other trace."""
    summaries = {name: summarize(load_trace(TRACES / f"{name}.jsonl")) for name in _NAMES}
    assert len(summaries) == 11
    for name, summary in summaries.items():
        assert differences(summary, summary) == {}
        for other, other_summary in summaries.items():
            if other != name:
                assert differences(summary, other_summary), (name, other)


class _DropWatchesOnce:
    """A trace file that drops every open watch once, when the first pod is running."""

    def __init__(self, sim: Kubesim, out: Any) -> None:
        self.sim, self.out, self.dropped = sim, out, 0

    def write(self, text: str) -> int:
        if not self.dropped and '"phase": "Running"' in text:
            self.dropped = self.sim.faults.drop_watches()
        return int(self.out.write(text))

    def flush(self) -> None:
        self.out.flush()


def test_recording_survives_broken_watches(
    kubesim_factory: Callable[..., Kubesim], tmp_path: Path
) -> None:
    """A watch that breaks (a dropped connection, the watch cache's 504 as in the
    suspend-resume trace) is resumed from the last version seen: nothing is lost."""
    name = "indexed-success"
    lines = load_trace(TRACES / f"{name}.jsonl")
    speed = SPEED["process"]
    scenario = for_kubesim(scenario_from_trace(name, lines), "process", speed)
    real = summarize(lines)
    running_timeout, extra = patience(scenario, speed)
    sim = kubesim_factory(clock=ScaledClock(speed))
    sim.faults.watch_too_large_rv(2, path_regex=r"/pods")
    with sim.api_client() as api, open(tmp_path / "trace.jsonl", "w") as fh:
        out = _DropWatchesOnce(sim, fh)
        recorded = record(
            api,
            scenario,
            out,
            namespace=name,
            clock=sim.clock.monotonic,
            speed=speed,
            # Until the Job's story is complete (a loaded machine runs the pods later than
            # the scaled clock expects), bounded by the scenario at real speed.
            running_timeout=running_timeout,
            extra=extra,
            until=lambda got: differences(real, summarize(got)) == {},
        )
    errors = [line for line in recorded if "error" in line]
    assert out.dropped == 3, "the three watches were running"
    assert sum("Too large resource version" in line["error"] for line in errors) == 2
    assert differences(real, summarize(recorded)) == {}
