"""``Batching.window=None`` (the default) takes the backend's own batching window."""

from __future__ import annotations

import threading
from typing import Any

from k8s_executor import Batching, KubernetesExecutor
from k8s_executor.backends.kubernetes import KubernetesBackend, KubernetesSettings
from k8s_executor.backends.local import LocalBackend
from tests import helpers


class SlowToStart(LocalBackend):
    """Local workers, but a backend that asks for a long window, and counts launches."""

    batch_window = 30.0

    def __init__(self) -> None:
        super().__init__()
        self.launches: list[int] = []

    def launch(self, spec: Any) -> None:
        self.launches.append(spec.indexes)
        super().launch(spec)


def test_default_window_is_the_backends() -> None:
    assert Batching().window is None
    assert LocalBackend.batch_window == 0.01
    assert KubernetesBackend(KubernetesSettings(image="x")).batch_window == 0.2


def test_submits_apart_share_the_backends_window() -> None:
    backend = SlowToStart()
    with KubernetesExecutor(max_workers=2, backend=backend) as ex:
        futures = []
        for i in range(3):
            futures.append(ex.submit(helpers.square, i))
            threading.Event().wait(0.05)  # a little work between submits, as in a loop
        # Nothing launched yet: the 30 s window is still open (shutdown flushes it).
        assert backend.launches == []
    assert [f.result() for f in futures] == [0, 1, 4]
    assert backend.launches == [2]  # one batch, packed into max_workers indexes


def test_explicit_window_wins() -> None:
    backend = SlowToStart()
    with KubernetesExecutor(max_workers=1, backend=backend, batching=Batching(window=0.0)) as ex:
        first = ex.submit(helpers.square, 3)
        assert first.result(timeout=60) == 9  # launched without waiting 30 s
    assert backend.launches == [1]
