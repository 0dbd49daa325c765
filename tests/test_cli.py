"""The k8s-executor command's parts that need no cluster (the rest runs against kubesim)."""

from __future__ import annotations

import subprocess
import sys

import kubernetes_validate
import pytest
import yaml

from k8s_executor import cli


def test_rbac_prints_valid_role_and_binding(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["rbac", "-n", "ml", "--service-account", "alice"]) == 0
    role, binding = yaml.safe_load_all(capsys.readouterr().out)
    for doc in (role, binding):
        kubernetes_validate.validate(doc, "1.33.0", strict=True)
    rules = {(r["apiGroups"][0], r["resources"][0]): r["verbs"] for r in role["rules"]}
    assert "create" in rules[("batch", "jobs")]
    assert "watch" in rules[("", "pods")]
    assert rules[("", "pods/log")] == ["get"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "alice", "namespace": "ml"}]


def test_cleanup_needs_a_selection(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["cleanup", "--older-than", "soon"])
    assert info.value.code == 2
    assert "not a duration like 30m, 2h or 7d" in capsys.readouterr().err


def test_console_script_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "k8s_executor.cli", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    for command in ("ls", "cleanup", "rbac"):
        assert command in done.stdout


def test_no_cluster_config_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    assert cli.main(["ls"]) == 1
    err = capsys.readouterr().err
    assert "no usable Kubernetes configuration" in err
    assert "KUBECONFIG" in err
