"""Every script in examples/ runs on the local backend and prints the result it promises.

The scripts are found by globbing examples/, so a new one is run as soon as it exists; it
also needs an entry in CHECKS saying what its output must show
(test_every_example_has_a_check fails until it has one)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests import helpers

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def number(pattern: str, text: str) -> float:
    """The number captured by ``pattern`` in ``text``; fails the test when it is absent."""
    match = re.search(pattern, text)
    assert match, f"no match for {pattern!r} in the output:\n{text}"
    return float(match.group(1))


def load(path: Path) -> ModuleType:
    """Import an example as a module (its ``__main__`` guard keeps it from running)."""
    return helpers.load_module(path, f"example_{path.stem}")


def check_quickstart(out: str) -> None:
    assert abs(number(r"pi ≈ (\d+\.\d+)", out) - math.pi) < 0.01
    for n in (3, 7, 11):
        assert f"{n} squared is {n * n}" in out
    assert "a lambda ran remotely" in out
    assert "the remote ValueError came back: invalid literal for int()" in out


def check_sklearn_grid_search(out: str) -> None:
    assert "18 fits on the local backend" in out
    assert number(r"accuracy (\d\.\d+)", out) > 0.9


def check_batch_inference(out: str) -> None:
    # load_digits has 1797 images; half of them (rounded up) are the test set.
    assert "classified 899 images in 9 chunks" in out
    assert number(r"accuracy (\d\.\d+)", out) > 0.95


def check_monte_carlo(out: str) -> None:
    price = number(r"Monte-Carlo price (\d+\.\d+)", out)
    std_error = number(r"standard error (\d+\.\d+)", out)
    exact = number(r"Black-Scholes price (\d+\.\d+)", out)
    assert abs(exact - 8.021352) < 1e-6  # the textbook value of this option
    assert 0 < std_error < 0.02
    assert abs(price - exact) < 4 * std_error
    # Reproducible: the same streams drawn here, one after another in this process, give
    # the very digits the workers gave.
    example = load(ROOT / "examples" / "monte_carlo.py")
    seeds = np.random.SeedSequence(example.SEED).spawn(example.TASKS)
    parts = [example.simulate(example.OPTION, seed, example.PATHS_PER_TASK) for seed in seeds]
    here, _ = example.combine(parts, example.TASKS * example.PATHS_PER_TASK)
    assert f"Monte-Carlo price {here:.6f}," in out


def check_threadpool_to_cluster(out: str) -> None:
    assert "forecast 40 stores" in out
    # The stores' sales have 4% noise: a forecast that fits is off by about 3%.
    assert number(r"median absolute percentage error (\d+\.\d+)%", out) < 5


def check_shared_cluster(out: str) -> None:
    assert "backend=local: 4 workers of cpu 1, memory 1Gi" in out
    assert "24 fits on the local backend (8 alphas x 3 folds)" in out
    # The very errors the workers computed: the same fits, here, pick the same alpha.
    example = load(ROOT / "examples" / "shared_cluster.py")
    errors = {
        alpha: [example.validation_error(alpha, fold) for fold in range(example.FOLDS)]
        for alpha in example.ALPHAS
    }
    alpha, error = example.best_alpha(errors)
    assert f"best alpha {alpha:g}, mean validation error {error:.4f}" in out


CHECKS: dict[str, Callable[[str], None]] = {
    "quickstart.py": check_quickstart,
    "sklearn_grid_search.py": check_sklearn_grid_search,
    "batch_inference.py": check_batch_inference,
    "monte_carlo.py": check_monte_carlo,
    "threadpool_to_cluster.py": check_threadpool_to_cluster,
    "shared_cluster.py": check_shared_cluster,
}


def test_every_example_has_a_check() -> None:
    assert EXAMPLES, "no examples found"
    names = {path.name for path in EXAMPLES}
    assert names - CHECKS.keys() == set(), "add what these examples print to CHECKS"
    assert CHECKS.keys() - names == set(), "CHECKS names examples that no longer exist"


@pytest.mark.parametrize("path", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs_on_the_local_backend(path: Path, tmp_path: Path) -> None:
    # As is, as a new user runs it (issue 14 item 16): no cluster and no executor setting
    # of the developer's shell leaks in, nothing names a backend. The scripts run from an
    # empty directory with their own TMPDIR, which the local backend's storage must leave
    # empty.
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "KUBECONFIG" and not name.startswith("K8S_EXECUTOR_")
    }
    env["HOME"] = str(tmp_path)  # no ~/.kube/config either
    temp = tmp_path / "tmp"
    temp.mkdir()
    env["TMPDIR"] = str(temp)
    cwd = tmp_path / "cwd"
    cwd.mkdir()

    done = subprocess.run(
        [sys.executable, str(path)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )

    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    CHECKS[path.name](done.stdout)
    assert list(cwd.iterdir()) == []
    assert list(temp.iterdir()) == []
