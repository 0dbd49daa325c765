"""Suite-wide fixtures: kubesim, and the cluster the Kubernetes tests run against.

By default that cluster is a fresh kubesim per test. ``K8SX_TEST_CLUSTER=cluster.json``
switches to real-cluster mode (``docs/testing.md``): the ``cluster`` fixture is then the
cluster that file describes, checked once per session, and the tests that need kubesim
itself are deselected, with one summary line saying how many and why. A test is
kubesim-only when it asks for the ``kubesim`` or ``kubesim_factory`` fixture (its store,
fault injection, kubelet evictions, lost nodes, clock...) or is marked ``kubesim_only``.

``./run tests`` runs the suite in pytest-xdist worker processes (``noxfile.py``). Each
worker collects the whole suite and runs its share; the controller collects nothing and
never loads the conftest files below ``tests/``. So what the session's summary owes
(the kubesim-only line, the ``-s3`` deselection line of ``tests/behaviour``, their counts
in the final "N deselected") is noted with :func:`summary_note` where the deselection
happens, and shipped from the workers to the controller (xdist's ``workeroutput``).
Session-scoped fixtures run once per worker: each makes its own servers on ephemeral
ports, under the worker's own ``tmp_path_factory`` directory.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import SharedPath
from tests.kube_helpers import (
    CLUSTER_CONFIG,
    ENV_VAR,
    ClusterConfigError,
    ClusterUnderTest,
    KubesimCluster,
    RealCluster,
    load_cluster_config,
    real_cluster_config,
)
from tests.kube_helpers import shared_dir as make_shared_dir

pytest_plugins = ["tests.kubesim.fixture", "tests.containers"]

KUBESIM_FIXTURES = frozenset({"kubesim", "kubesim_factory"})
KUBESIM_OWN_TESTS = "tests/kubesim_tests/"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"kubesim_only: needs kubesim's internals; not run against a real cluster ({ENV_VAR})",
    )
    path = os.environ.get(ENV_VAR)
    try:
        config.stash[CLUSTER_CONFIG] = load_cluster_config(path) if path else None
    except ClusterConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> str | None:
    c = real_cluster_config(config)
    if c is None:
        return None
    return (
        f"{ENV_VAR}={c.path}: Kubernetes tests run on the real cluster of {c.kubeconfig} "
        f"(context {c.context or '(current)'}, namespace {c.namespace}), storage {c.storage}"
    )


def is_kubesim_only(item: pytest.Item) -> bool:
    fixtures = set(getattr(item, "fixturenames", ()))
    return bool(fixtures & KUBESIM_FIXTURES) or item.get_closest_marker("kubesim_only") is not None


# -- the session's summary, with or without pytest-xdist ----------------------------------

SUMMARY = pytest.StashKey[dict[str, dict[str, Any]]]()
WORKER_OUTPUT = "k8sx_summary"  # the key in xdist's workeroutput
SIGINT_CHANGED = pytest.StashKey[list[str]]()


def summary_note(
    config: pytest.Config,
    key: str,
    line: str,
    *,
    deselected: list[str],
    yellow: bool = False,
    details: list[str] | None = None,
) -> None:
    """Say ``line`` at the end of the session's summary (``details`` too under ``-v``),
    for the ``deselected`` node ids a collection hook just deselected. In an xdist worker
    the note also goes into ``workeroutput``: the controller prints it once (every worker
    collects the same items) and counts ``deselected`` in its final line."""
    note = {"line": line, "yellow": yellow, "deselected": deselected, "details": details or []}
    config.stash.setdefault(SUMMARY, {})[key] = note
    workeroutput: dict[str, Any] | None = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput.setdefault(WORKER_OUTPUT, {})[key] = note


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook, called on the controller
def pytest_testnodedown(node: Any, error: object | None) -> None:
    notes = (getattr(node, "workeroutput", None) or {}).get(WORKER_OUTPUT, {})
    config: pytest.Config = node.config
    mine = config.stash.setdefault(SUMMARY, {})
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for key, note in notes.items():
        if key in mine:
            continue  # another worker's copy of the same note
        mine[key] = note
        if reporter is not None:  # what pytest_deselected counts without xdist
            reporter.stats.setdefault("deselected", []).extend(note["deselected"])


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    for note in config.stash.get(SUMMARY, {}).values():
        terminalreporter.write_line(note["line"], yellow=note["yellow"])
        if config.option.verbose > 0:
            for detail in note["details"]:
                terminalreporter.write_line(detail)


@pytest.hookimpl(trylast=True)  # after -k / -m: count only what would have run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if real_cluster_config(config) is None:
        return
    kubesim_only = [item for item in items if is_kubesim_only(item)]
    if kubesim_only:
        config.hook.pytest_deselected(items=kubesim_only)
        items[:] = [item for item in items if not is_kubesim_only(item)]
    skipped = [item.nodeid for item in kubesim_only]
    summary_note(
        config,
        "kubesim-only",
        kubesim_only_line(skipped),
        deselected=skipped,
        yellow=bool(skipped),
        details=[f"  kubesim-only: {nodeid}" for nodeid in skipped],
    )


def kubesim_only_line(skipped: list[str]) -> str:
    own = sum(nodeid.startswith(KUBESIM_OWN_TESTS) for nodeid in skipped)
    internals = len(skipped) - own
    why = []
    if internals:
        why.append(
            f"{internals} {'needs' if internals == 1 else 'need'} kubesim's internals "
            "(its store, fault injection, kubelet evictions, lost nodes, its kubelet's processes)"
        )
    if own:
        why.append(f"{own} {'tests' if own == 1 else 'test'} kubesim itself")
    noun = "test" if len(skipped) == 1 else "tests"
    line = f"{ENV_VAR}: {len(skipped)} kubesim-only {noun} not run on the real cluster"
    return line + (f": {', '.join(why)}" if why else "")


def _sigint_state() -> tuple[object, bool]:
    """SIGINT's handler in this process and whether this thread blocks it."""
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return signal.getsignal(signal.SIGINT), blocked


@pytest.fixture(autouse=True)
def _sigint_kept(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test leaves SIGINT as it found it: a child process started later inherits
    an ignored or blocked SIGINT, and a Ctrl-C test's client then never sees its
    KeyboardInterrupt (tests/test_interrupt.py, twice under xdist). A test that changed
    it has it restored and is named at the end of the summary."""
    before = _sigint_state()
    yield
    after = _sigint_state()
    if after == before or threading.current_thread() is not threading.main_thread():
        return
    handler, blocked = before
    if callable(handler) or handler in (signal.SIG_DFL, signal.SIG_IGN):
        signal.signal(signal.SIGINT, handler)  # type: ignore[arg-type]
    signal.pthread_sigmask(signal.SIG_BLOCK if blocked else signal.SIG_UNBLOCK, [signal.SIGINT])
    changed = request.config.stash.setdefault(SIGINT_CHANGED, [])
    changed.append(f"{request.node.nodeid}: {before} -> {after}")
    summary_note(
        request.config,
        "sigint" + os.environ.get("PYTEST_XDIST_WORKER", ""),
        f"{len(changed)} test(s) left SIGINT changed (restored): {'; '.join(changed)}",
        deselected=[],
        yellow=True,
    )


@pytest.fixture(scope="session")
def real_cluster(request: pytest.FixtureRequest) -> Iterator[RealCluster]:
    """The real cluster of ``K8SX_TEST_CLUSTER``, checked end to end on first use. When
    it is not usable, that first test errors with the reason and the session stops."""
    config = real_cluster_config(request.config)
    assert config is not None, f"real_cluster is only for real-cluster mode ({ENV_VAR})"
    cluster = RealCluster(config)
    problem = None
    try:
        cluster.prepare()
    except ClusterConfigError as exc:
        problem = str(exc)
    if problem is not None:
        cluster.close()
        request.session.shouldstop = f"{ENV_VAR}: the cluster of {config.path} is not usable"
        pytest.fail(f"{ENV_VAR}={config.path}: {problem}", pytrace=False)
    yield cluster
    cluster.close()


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[ClusterUnderTest]:
    """The cluster of a Kubernetes test: a fresh kubesim, or the real one (real-cluster
    mode). Tests reach it through the API only, so they run on either."""
    if real_cluster_config(request.config) is not None:
        yield request.getfixturevalue("real_cluster")
        return
    target = KubesimCluster(request.getfixturevalue("kubesim"))
    yield target
    target.close()


@pytest.fixture
def shared_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SharedPath]:
    """A directory this test and the workers of ``cluster`` both reach: ``tmp_path``, or
    a fresh prefix under the real cluster's storage (removed afterwards)."""
    with make_shared_dir(tmp_path, real_cluster_config(request.config)) as shared:
        yield shared
