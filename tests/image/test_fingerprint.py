"""The fingerprint: stable when nothing changed, different when anything that matters did."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from k8s_executor.image import EnvironmentSnapshotError, fingerprint, scan_environment
from tests.image.conftest import TinyEnv
from tests.image.envs import make_wheel, pip_install

BASE = "sha256:" + "0" * 64


def fp(venv: Path, base: str = BASE) -> str:
    return fingerprint(scan_environment(venv), base_digest=base)


def test_stable_across_calls_and_scans(tiny_env: TinyEnv) -> None:
    assert fp(tiny_env.venv) == fp(tiny_env.venv)
    assert len(fp(tiny_env.venv)) == 32


def test_scan_finds_distributions_and_the_editable_source(tiny_env: TinyEnv) -> None:
    env = scan_environment(tiny_env.venv)
    names = {d.name for d in env.distributions}
    assert names == {"tinypkg", "localpkg"}
    assert env.editable_roots == (tiny_env.project,)
    assert env.python[:1] == (3,)


def test_installing_a_package_changes_it(tiny_env: TinyEnv) -> None:
    before = fp(tiny_env.venv)
    pip_install(tiny_env.venv, str(make_wheel(tiny_env.wheels, "other", "1.0", {"other.py": ""})))
    assert fp(tiny_env.venv) != before


def test_upgrading_a_package_changes_it(tiny_env: TinyEnv) -> None:
    before = fp(tiny_env.venv)
    wheel = make_wheel(tiny_env.wheels, "tinypkg", "1.1", {"tinypkg/__init__.py": "VALUE = 43\n"})
    pip_install(tiny_env.venv, str(wheel))
    assert fp(tiny_env.venv) != before


def test_editing_the_editable_source_changes_it(tiny_env: TinyEnv) -> None:
    before = fp(tiny_env.venv)
    source = tiny_env.project / "src" / "localpkg" / "__init__.py"
    source.write_text(source.read_text() + "X = 1\n")
    assert fp(tiny_env.venv) != before


def test_caches_in_the_source_tree_do_not_change_it(tiny_env: TinyEnv) -> None:
    before = fp(tiny_env.venv)
    for cache in ("__pycache__", ".pytest_cache", ".git"):
        (tiny_env.project / "src" / "localpkg" / cache).mkdir()
        (tiny_env.project / "src" / "localpkg" / cache / "x").write_text("noise")
    assert fp(tiny_env.venv) == before


def test_a_top_level_pycache_does_not_change_it(tiny_env: TinyEnv) -> None:
    # Appears in site-packages when a top-level module is first imported.
    before = fp(tiny_env.venv)
    site = scan_environment(tiny_env.venv).site_packages[0]
    (site / "__pycache__").mkdir()
    assert fp(tiny_env.venv) == before


def test_a_module_dropped_into_site_packages_changes_it(tiny_env: TinyEnv) -> None:
    before = fp(tiny_env.venv)
    (scan_environment(tiny_env.venv).site_packages[0] / "handmade.py").write_text("")
    assert fp(tiny_env.venv) != before


def test_base_image_changes_it(tiny_env: TinyEnv) -> None:
    assert fp(tiny_env.venv) != fp(tiny_env.venv, base="sha256:" + "1" * 64)


def test_rewritten_record_with_the_same_stat_is_rehashed(tiny_env: TinyEnv) -> None:
    # The RECORD memo must not trust a file rewritten in place with the same size/mtime:
    # its ctime changes on every write.
    before = fp(tiny_env.venv)
    record = next(
        d.dist_info / "RECORD"
        for d in scan_environment(tiny_env.venv).distributions
        if d.name == "tinypkg"
    )
    st = record.stat()
    data = record.read_bytes()
    record.write_bytes(data.replace(b"tinypkg/util.py", b"tinypkg/utiL.py"))
    os.utime(record, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fp(tiny_env.venv) != before


def test_not_a_venv_is_explained(tmp_path: Path) -> None:
    with pytest.raises(
        EnvironmentSnapshotError, match=r"not a virtual environment.*python -m venv"
    ):
        scan_environment(tmp_path)


def test_speed_of_the_running_environment(capsys: pytest.CaptureFixture[str]) -> None:
    # Reported, not asserted (benchmarks/ holds performance claims): the dev venv has
    # ~120 distributions and ~700 MB.
    env = scan_environment()
    fingerprint(env, base_digest=BASE)  # warm the RECORD memo
    start = time.perf_counter()
    for _ in range(10):
        fingerprint(scan_environment(), base_digest=BASE)
    per_call = (time.perf_counter() - start) / 10
    with capsys.disabled():
        print(f"\nfingerprint of {len(env.distributions)} distributions: {per_call * 1e3:.1f} ms")
