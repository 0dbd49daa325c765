"""The admin surface (k8s_executor._admin): the command line's only door into private
modules, and what a run's Jobs and pods say about each index (pure, no server)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from k8s_executor import _admin

CLI = Path(__file__).parent.parent / "k8s_executor" / "cli"


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules a CLI module imports (``from . import x`` included)."""
    package = "k8s_executor.cli"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            if node.module is None:  # from . import doctor: the names are modules
                found.update(f"{module}.{alias.name}" for alias in node.names)
            else:
                found.add(module)
    return found


def test_the_cli_imports_no_private_module_but_admin() -> None:
    private = {
        module
        for path in CLI.glob("*.py")
        for module in _imported_modules(path)
        if module.startswith("k8s_executor.")
        and not module.startswith("k8s_executor.cli")
        and any(p.startswith("_") and not p.startswith("__") for p in module.split(".")[1:])
    }
    assert private == {"k8s_executor._admin"}


def _job(batch: str, completions: int, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"k8s-executor.io/batch": batch}},
        "spec": {"completions": completions, "suspend": status.pop("suspend", False)},
        "status": status,
    }


def _pod(name: str, batch: str, index: int, failures: int = 0) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {
                "k8s-executor.io/batch": batch,
                "batch.kubernetes.io/job-completion-index": str(index),
            },
            "annotations": {"batch.kubernetes.io/job-index-failure-count": str(failures)},
        }
    }


def test_run_indexes_from_jobs_and_pods() -> None:
    jobs = [
        _job("b00000", 4, completedIndexes="0,2-3", failedIndexes="1"),
        _job("b00001", 2, suspend=True),
    ]
    # The retry (one failure before it) is listed after the first attempt, whatever the
    # order the API returned them in; a pod whose Job is gone still names its index.
    pods = [_pod("b-1-retry", "b00000", 1, failures=1), _pod("b-1", "b00000", 1)]
    pods.append(_pod("orphan", "b00009", 0))
    found = _admin.run_indexes(jobs, pods)
    assert sorted(found) == [
        ("b00000", 0), ("b00000", 1), ("b00000", 2), ("b00000", 3),
        ("b00001", 0), ("b00001", 1), ("b00009", 0),
    ]  # fmt: skip
    assert [found["b00000", i].job_says for i in range(4)] == [
        "Succeeded", "Failed", "Succeeded", "Succeeded"
    ]  # fmt: skip
    assert [p["metadata"]["name"] for p in found["b00000", 1].pods] == ["b-1", "b-1-retry"]
    assert found["b00001", 1].queued
    assert not found["b00000", 0].queued
    assert found["b00009", 0].name == "b00009/0"
    assert found["b00009", 0].job_says == ""
