"""The public surface is explicit, sorted and light to import."""

from __future__ import annotations

import subprocess
import sys

import k8s_executor


def test_all_is_sorted_and_complete() -> None:
    names = k8s_executor.__all__
    assert names == sorted(names)
    public = {n for n in dir(k8s_executor) if not n.startswith("_")} - {
        "errors",
        "backends",
        "worker",
        "cli",
        "joblib",
        "image",
    }
    assert public == set(names) - {"__version__"}


def test_every_public_name_has_a_docstring() -> None:
    for name in k8s_executor.__all__:
        obj = getattr(k8s_executor, name)
        if name != "__version__":
            assert obj.__doc__, name


def test_import_does_not_pull_client_side_dependencies() -> None:
    code = (
        "import sys, k8s_executor, k8s_executor.worker\n"
        "heavy = {'kubernetes', 'podman', 'joblib', 's3fs', 'boto3'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_worker_start_loads_only_what_it_needs() -> None:
    # A worker starts once per pod: it must not pay for the executor, the backends,
    # multiprocessing (BrokenProcessPool's module) or fsspec when storage is local.
    code = (
        "import sys, k8s_executor.worker\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'multiprocessing', 'fsspec', 'kubernetes', 'podman'}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('k8s_executor.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, ours = out.stdout.strip().splitlines()
    assert heavy == "[]"
    assert "k8s_executor._executor" not in ours
    assert "k8s_executor.backends" not in ours
