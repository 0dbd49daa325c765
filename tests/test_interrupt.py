"""Ctrl-C during map leaves no worker process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import helpers

WITH = """
import sys
from k8s_executor import KubernetesExecutor
from tests import helpers

started = sys.argv[1]
with KubernetesExecutor(backend="local", max_workers=2) as ex:
    for _ in ex.map(helpers.touch_then_block, [f"{started}/a", f"{started}/b", f"{started}/c"]):
        pass
"""

# No `with`: nothing but map itself sees the KeyboardInterrupt (the interpreter's exit
# then shuts the executor down, which would wait for the running calls forever).
WITHOUT = """
import sys
from k8s_executor import KubernetesExecutor
from tests import helpers

started = sys.argv[1]
ex = KubernetesExecutor(backend="local", max_workers=2)
for _ in ex.map(helpers.touch_then_block, [f"{started}/a", f"{started}/b", f"{started}/c"]):
    pass
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("script", [WITH, WITHOUT], ids=["with", "without-with"])
def test_keyboard_interrupt_during_map_kills_workers(script: str, tmp_path: Path) -> None:
    started = tmp_path / "started"
    started.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(started)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    helpers.wait_for(lambda: len(list(started.iterdir())) == 2, 60, "two tasks to start")
    # Each file is created a moment before its pid is written into it.
    pids = [int(helpers.wait_for_text(p, 60, f"task {p.name}'s pid")) for p in started.iterdir()]
    assert all(_alive(pid) for pid in pids)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in stderr
    helpers.wait_for(lambda: not any(_alive(pid) for pid in pids), 60, "workers to be gone")
    # The third call (packed behind another in the same worker) never started.
    assert len(list(started.iterdir())) == 2
