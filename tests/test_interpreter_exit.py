"""A script that ends with its executor still open: its calls finish and the run is cleaned
up, with s3:// storage (a moto server) as with a local directory.

The interpreter's exit runs ``concurrent.futures``' own hook, which shuts every thread pool
(the event loop's default executor too, which s3fs's aiobotocore uses to resolve hosts), so
the executor must finish its work before that hook runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3server import S3Server, s3_server

BUCKET = "k8sx-exit"

PRINT = """
import json, sys
from k8s_executor import KubernetesExecutor

options = json.loads(sys.argv[2])
ex = KubernetesExecutor(backend="local", storage=sys.argv[1], storage_options=options)
ex.submit(print, "apple")
print(ex.run_id, file=sys.stderr)
"""

# The result reaches this process at exit, and a callback writes it to a file.
RESULT = """
import json, sys
from k8s_executor import KubernetesExecutor
from tests import helpers

options = json.loads(sys.argv[2])
ex = KubernetesExecutor(backend="local", storage=sys.argv[1], storage_options=options)
future = ex.submit(helpers.square, 12)
future.add_done_callback(lambda f: open(sys.argv[3], "w").write(str(f.result())))
print(ex.run_id, file=sys.stderr)
"""


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server(buckets=(BUCKET,)) as server:
        yield server


def _keys(s3: S3Server, prefix: str) -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem(**s3.storage_options())
    fs.invalidate_cache()
    return [str(p) for p in fs.find(f"{BUCKET}/{prefix}")]


def _run(script: str, storage: str, options: dict[str, object], *extra: str) -> tuple[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", script, storage, json.dumps(options), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "cannot" not in done.stderr, done.stderr
    return done.stdout, done.stderr.splitlines()[0]


@pytest.mark.parametrize("where", ["s3", "local-dir"])
def test_open_executor_at_exit_finishes_its_call(where: str, s3: S3Server, tmp_path: Path) -> None:
    if where == "s3":
        storage, options = f"s3://{BUCKET}/print", s3.storage_options()
    else:
        storage, options = str(tmp_path / "storage"), {}
    out, run_id = _run(PRINT, storage, options)
    assert out == "apple\n"
    if where == "s3":
        assert _keys(s3, "print") == []
    else:
        assert not (tmp_path / "storage" / run_id).exists()


def test_open_executor_at_exit_delivers_its_result(s3: S3Server, tmp_path: Path) -> None:
    result = tmp_path / "result"
    _run(RESULT, f"s3://{BUCKET}/result", s3.storage_options(), str(result))
    assert result.read_text() == "144"
    assert _keys(s3, "result") == []
