"""Developer sessions. They run in the environment nox itself runs in (the project's
.venv, prepared by ./run), so a session starts in a second instead of building a venv."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]

PATHS = [
    p
    for p in ("k8s_executor", "tests", "examples", "benchmarks", "docs", "noxfile.py")
    if Path(p).exists()
]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, ruff format --check and mypy (strict for the package)."""
    session.run("ruff", "check", *PATHS)
    session.run("ruff", "format", "--check", *PATHS)
    session.run("mypy", *PATHS)


# Most tests mostly wait (pods starting, retry back-offs, grace periods): the suite runs in
# pytest-xdist worker processes, tests handed out one by one; tests marked with the same
# xdist_group run in one worker (to share what a session fixture or cache built there).
# See docs/testing.md, "The suite's time". K8SX_TEST_WORKERS=0 runs it in one process;
# `./run tests -n 0 ...` does too. The 30 slowest tests are listed at the end, so every
# CI log shows where the suite's time went.
TEST_WORKERS = os.environ.get("K8SX_TEST_WORKERS", "2")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (kubesim and podman tests included)."""
    session.run(
        "pytest", "-n", TEST_WORKERS, "--dist", "loadgroup", "--durations=30", *session.posargs
    )


@nox.session
def demo(session: nox.Session) -> None:
    """The quickstart example, on the local backend unless K8S_EXECUTOR_BACKEND says else."""
    session.run("python", "examples/quickstart.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks; results are written into benchmarks/README.md with --write."""
    session.run("python", "benchmarks/dispatch.py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Check the generated reference is current, then build the site (warnings are errors)."""
    session.run("python", "docs/gen_reference.py", "--check")
    session.run("mkdocs", "build", "--strict")
