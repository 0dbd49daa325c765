"""The progress bar says why calls wait, as the cluster says it (issue 14 item 12, issue
16): a pod stuck on a missing Secret, a quota full of running pods. On kubesim, through
the official client."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kubernetes import client

from k8s_executor import KubernetesExecutor, Timeouts
from tests import helpers
from tests.kube_helpers import kubesim_kwargs


def _note(ex: KubernetesExecutor) -> str:
    bar = ex._run._bar
    assert bar is not None
    return bar.text().partition("; ")[2]


def test_bar_names_a_pod_stuck_on_a_missing_secret(kubesim: Any, tmp_path: Path) -> None:
    kw = kubesim_kwargs(kubesim, tmp_path / "storage", secrets=("no-such-secret",))
    kw["timeouts"] = Timeouts(startup=120, startup_error=120, heartbeat=1, heartbeat_grace=30)
    ex = KubernetesExecutor(progress=True, **kw)
    try:
        future = ex.submit(helpers.square, 2)
        helpers.wait_for(lambda: _note(ex), 30, "the bar to say why the call waits")
        assert _note(ex).startswith("CreateContainerConfigError: ")
        assert "no-such-secret" in _note(ex)
        assert not future.done()  # well inside Timeouts.startup_error
    finally:
        ex.shutdown(cancel_futures=True, kill_workers=True)


def test_bar_says_waiting_for_quota_until_room_comes(kubesim: Any, tmp_path: Path) -> None:
    with kubesim.api_client() as api:
        body: Any = {"metadata": {"name": "tight"}, "spec": {"hard": {"pods": "1"}}}
        client.CoreV1Api(api).create_namespaced_resource_quota("default", body)
    kw = kubesim_kwargs(kubesim, tmp_path / "storage")
    kw["timeouts"] = dataclasses.replace(kw["timeouts"], startup=2)
    started, release = tmp_path / "started", tmp_path / "release"
    with KubernetesExecutor(max_workers=2, progress=True, **kw) as ex:
        first = ex.submit(helpers.touch_then_wait, started, release)
        helpers.wait_for(first.running, 60, "the first call to run")
        second = ex.submit(helpers.square, 5)
        helpers.wait_for(lambda: _note(ex), 60, "the bar to say the second call waits")
        assert _note(ex) == (
            "waiting for quota: tight, requested: pods=1, used: pods=1, limited: pods=1"
        )
        release.touch()
        assert second.result(timeout=60) == 25
        helpers.wait_for(lambda: not _note(ex), 30, "the note to go once room came")
