"""Layer planning and the reproducible tar writer (no podman or registry needed)."""

from __future__ import annotations

import importlib.util
import io
import shutil
import tarfile
from pathlib import Path
from typing import Any

import pytest

from k8s_executor.image._layers import (
    EPOCH,
    Compression,
    LayerBlob,
    LayerPlan,
    plan_layers,
    write_layer,
)
from k8s_executor.image._scan import scan_environment
from tests.image.conftest import TinyEnv
from tests.image.envs import make_wheel, pip_install

PY = "/usr/bin/python3.11"


def plans_of(venv: Path, **kw: Any) -> dict[str, LayerPlan]:
    return {p.name: p for p in plan_layers(scan_environment(venv), base_python=PY, **kw)}


def names(plan: LayerPlan) -> list[str]:
    return [e.arcname for e in plan.entries]


def tar_of(plan: LayerPlan, compression: Compression = "none") -> tuple[LayerBlob, bytes]:
    buf = io.BytesIO()
    blob = write_layer(plan, buf, compression)
    return blob, buf.getvalue()


def test_groups(tiny_env: TinyEnv) -> None:
    plans = plans_of(tiny_env.venv)
    venv = str(tiny_env.venv).lstrip("/")
    assert list(plans)[-3:] == ["unowned", "shell", "local"]
    (bucket,) = [p for n, p in plans.items() if n.startswith("bucket-")]
    assert bucket.distributions == ("tinypkg",)
    site = f"{venv}/lib/python3.11/site-packages"
    assert f"{site}/tinypkg/__init__.py" in names(bucket)
    assert f"{site}/tinypkg/__pycache__/util.cpython-311.pyc" in names(bucket)
    assert f"{site}/tinypkg-1.0.dist-info/RECORD" in names(bucket)
    assert f"{venv}/bin/activate" in names(plans["unowned"])
    local = names(plans["local"])
    project = str(tiny_env.project).lstrip("/")
    assert f"{project}/src/localpkg/__init__.py" in local
    assert f"{site}/_localpkg_editable.pth" in local
    assert not any("__pycache__" in n for n in local if n.startswith(project))


def test_big_distributions_get_their_own_layer(tiny_env: TinyEnv) -> None:
    plans = plans_of(tiny_env.venv, big_threshold=10)
    assert "dist-tinypkg" in plans
    assert not any(n.startswith("bucket-") for n in plans)


def test_the_shell_points_at_the_base_interpreter(tiny_env: TinyEnv) -> None:
    shell = plans_of(tiny_env.venv)["shell"]
    entries = {e.arcname.rsplit("/", 1)[1]: e for e in shell.entries if e.kind != "dir"}
    assert {n for n, e in entries.items() if e.kind == "symlink"} == {
        "python",
        "python3",
        "python3.11",
    }
    assert all(e.linkname == PY for e in entries.values() if e.kind == "symlink")
    data = entries["pyvenv.cfg"].data
    assert data is not None
    cfg = data.decode()
    assert "home = /usr/bin\n" in cfg
    assert "include-system-site-packages = false" in cfg
    assert "pyenv" not in cfg and "command" not in cfg


def test_tar_is_normalised(tiny_env: TinyEnv) -> None:
    plan = plans_of(tiny_env.venv)["unowned"]
    _, data = tar_of(plan)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "", "", EPOCH)}
    assert {m.mode for m in members} <= {0o644, 0o755, 0o777}
    assert not any(m.pax_headers for m in members)


def test_same_inputs_give_identical_bytes(tiny_env: TinyEnv) -> None:
    for plan in plans_of(tiny_env.venv).values():
        for compression in ("none", "gzip"):
            first, data1 = tar_of(plan, compression)
            second, data2 = tar_of(plan, compression)
            assert data1 == data2
            assert first == second


def test_reinstalling_identical_files_keeps_the_digest(pip_tiny_env: TinyEnv) -> None:
    # pip gives reinstalled files new mtimes and recompiles their .pyc files: the tars
    # must not change, or an unchanged package would be pushed again.
    tiny_env = pip_tiny_env
    before = {n: tar_of(p)[0].digest for n, p in plans_of(tiny_env.venv).items()}
    wheel = next(tiny_env.wheels.glob("tinypkg-*.whl"))
    pip_install(tiny_env.venv, "--force-reinstall", str(wheel))
    after = {n: tar_of(p)[0].digest for n, p in plans_of(tiny_env.venv).items()}
    assert after == before


def test_pyc_headers_record_the_normalised_mtime(tiny_env: TinyEnv) -> None:
    (bucket,) = [p for n, p in plans_of(tiny_env.venv).items() if n.startswith("bucket-")]
    _, data = tar_of(bucket)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        pycs = [m for m in tar.getmembers() if m.name.endswith(".pyc")]
        assert len(pycs) == 2
        for member in pycs:
            extracted = tar.extractfile(member)
            assert extracted is not None
            header = extracted.read(16)
            source = member.name.replace("__pycache__/", "").replace(".cpython-311.pyc", ".py")
            assert header[:4] == importlib.util.MAGIC_NUMBER
            assert int.from_bytes(header[8:12], "little") == EPOCH
            assert int.from_bytes(header[12:16], "little") == tar.getmember(source).size
            assert tar.getmember(source).mtime == EPOCH


def test_a_stale_pyc_is_left_out(tiny_env: TinyEnv) -> None:
    site = scan_environment(tiny_env.venv).site_packages[0]
    # Another size: with the same size and within the same second, CPython itself would
    # still take the old pyc for valid (its header only records whole seconds and size).
    (site / "tinypkg" / "util.py").write_text("def twice(x):\n    return x + x  # changed\n")
    (bucket,) = [p for n, p in plans_of(tiny_env.venv).items() if n.startswith("bucket-")]
    _, data = tar_of(bucket)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        pycs = [m.name for m in tar.getmembers() if m.name.endswith(".pyc")]
    assert pycs == [n for n in pycs if "util" not in n] and len(pycs) == 1


def test_a_new_small_package_changes_one_bucket_only(tiny_env: TinyEnv) -> None:
    before = {n: p.cache_key("gzip") for n, p in plans_of(tiny_env.venv).items()}
    wheel = make_wheel(tiny_env.wheels, "newpkg", "1.0", {"newpkg.py": "X = 1\n"})
    pip_install(tiny_env.venv, str(wheel))
    after = {n: p.cache_key("gzip") for n, p in plans_of(tiny_env.venv).items()}
    changed = {n for n in after if before.get(n) != after[n]}
    assert len(changed) == 1 and next(iter(changed)).startswith("bucket-")


def test_a_file_changing_while_written_is_reported(tiny_env: TinyEnv) -> None:
    from k8s_executor.image import EnvironmentSnapshotError

    (bucket,) = [p for n, p in plans_of(tiny_env.venv).items() if n.startswith("bucket-")]
    site = scan_environment(tiny_env.venv).site_packages[0]
    (site / "tinypkg" / "__init__.py").write_text("VALUE = 4242424242\n")
    with pytest.raises(EnvironmentSnapshotError, match="changed while the image was being written"):
        tar_of(bucket)


def test_editable_tree_excludes_the_venv_inside_it(tmp_path: Path, tiny_env: TinyEnv) -> None:
    # A project's own .venv inside the source tree must not be copied twice.
    inner = tiny_env.project / ".venv"
    shutil.copytree(tiny_env.venv, inner, symlinks=True)
    local = names(plans_of(tiny_env.venv)["local"])
    assert not any("/.venv/" in n for n in local)
