"""pytest fixtures that run kubesim (registered through ``tests/conftest.py``).

``kubesim``: a fresh control plane per test with the process runtime, torn down afterwards
with nothing left running. ``kubesim_factory``: build one with other options
(``kubesim_factory(runtime="podman", controllers=False, ...)``); every one built is closed at
the end of the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.kubesim.kubeconfig import Kubesim


@pytest.fixture
def kubesim_factory() -> Iterator[Callable[..., Kubesim]]:
    built: list[Kubesim] = []

    def make(**options: Any) -> Kubesim:
        options.setdefault("runtime", "process")
        sim = Kubesim(**options)
        built.append(sim)
        return sim.start()

    try:
        yield make
    finally:
        for sim in reversed(built):
            sim.close()


@pytest.fixture
def kubesim(kubesim_factory: Callable[..., Kubesim]) -> Kubesim:
    return kubesim_factory()
