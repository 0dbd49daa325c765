"""The documentation: generated reference pages match the code, every public name is
documented, and the mkdocs site builds without a warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import k8s_executor
from tests import helpers

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def load_generator() -> ModuleType:
    return helpers.load_module(DOCS / "gen_reference.py", "gen_reference")


def test_generated_reference_is_up_to_date() -> None:
    gen = load_generator()
    pages = gen.generate()
    for name, text in pages.items():
        committed = DOCS / "reference" / name
        assert committed.is_file(), f"docs/reference/{name} is missing"
        assert committed.read_text(encoding="utf-8") == text, (
            f"docs/reference/{name} is out of date: run python docs/gen_reference.py"
        )
    extra = {p.name for p in (DOCS / "reference").glob("*.md")} - set(pages)
    assert not extra, f"docs/reference/ has pages the generator does not write: {extra}"


def test_every_option_field_and_executor_keyword_is_documented() -> None:
    # generate() raises DocError for an undocumented field or keyword; check that its
    # output really covers them, against the live objects.
    import dataclasses
    import inspect

    pages = load_generator().generate()
    for page, cls in (
        ("batching.md", k8s_executor.Batching),
        ("storage-retry.md", k8s_executor.StorageRetry),
        ("resources.md", k8s_executor.Resources),
        ("scheduling.md", k8s_executor.Scheduling),
        ("pod-options.md", k8s_executor.PodOptions),
        ("volume-mount.md", k8s_executor.VolumeMount),
        ("timeouts.md", k8s_executor.Timeouts),
    ):
        for field in dataclasses.fields(cls):
            assert f"## `{field.name}`" in pages[page], (cls.__name__, field.name)
    signature = inspect.signature(k8s_executor.KubernetesExecutor)
    for name in signature.parameters:
        assert f"### `{name}`" in pages["executor.md"], name


def test_generator_refuses_an_undocumented_keyword() -> None:
    import ast

    gen = load_generator()
    tree = ast.parse(
        'class KubernetesExecutor:\n    """Doc.\n\n    Args:\n        a: documented.\n    """\n'
        "    def __init__(self, a=1, *, b=2): ...\n"
    )
    with pytest.raises(gen.DocError, match=r"undocumented \['b'\]"):
        gen.executor_page(tree)


def test_every_public_name_appears_in_the_docs() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md"))
    missing = [
        name
        for name in k8s_executor.__all__
        if not re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text)
    ]
    assert not missing, f"not mentioned anywhere in docs/: {missing}"


def test_mkdocs_build_is_strict_clean(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,  # the snippets extension reads benchmarks/README.md relative to it
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert (tmp_path / "troubleshooting" / "index.html").is_file()
    assert (tmp_path / "reference" / "resources" / "index.html").is_file()
