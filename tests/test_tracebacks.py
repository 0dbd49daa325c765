"""Remote tracebacks name the real file and lines of code pickled by value (a script run
as ``__main__``, a notebook cell), and the client fills in the source lines a worker could
not read."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

from k8s_executor import _payload as wire

SCRIPT = textwrap.dedent(
    """\
    import sys
    import traceback

    from k8s_executor import KubernetesExecutor


    class TaskFailed(Exception):
        pass


    def inner(x):
        raise TaskFailed(f"bad {x}")


    def task(x):
        return inner(x) + 1


    if __name__ == "__main__":
        with KubernetesExecutor(max_workers=1, backend="local", storage=sys.argv[1]) as ex:
            try:
                ex.submit(task, 3).result()
            except TaskFailed as exc:
                traceback.print_exception(exc, file=sys.stdout)
    """
)


def test_main_script_traceback_names_its_file_lines_and_source(tmp_path: Path) -> None:
    script = tmp_path / "my_script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "storage")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    remote = done.stdout.split('"""')[1]  # the _RemoteTraceback's text
    assert "<dynamic-code>" not in remote
    assert f'  File "{script}", line 16, in task\n    return inner(x) + 1\n' in remote
    assert f'  File "{script}", line 12, in inner\n    raise TaskFailed(f"bad {{x}}")\n' in remote
    assert "TaskFailed: bad 3" in remote


def test_code_pickled_by_value_keeps_its_file_name() -> None:
    namespace: dict[str, object] = {}
    exec(compile("def cell(x):\n    return 1 / x\n", "/notebooks/cell_7.py", "exec"), namespace)
    fn = pickle.loads(wire.dump_function(namespace["cell"]))
    assert fn.__code__.co_filename == "/notebooks/cell_7.py"
    assert fn.__code__.co_firstlineno == 1
    assert fn(4) == 0.25


def test_client_fills_in_source_lines_the_worker_could_not_read(tmp_path: Path) -> None:
    source = tmp_path / "only_here.py"
    source.write_text("def f():\n    return g()\n\ndef g():\n    raise KeyError('k')\n")
    tb = (
        "Traceback (most recent call last):\n"
        '  File "/venv/k8s_executor/worker.py", line 182, in run\n'
        "    results.append(fn(*args, **kwargs))\n"
        f'  File "{source}", line 2, in f\n'
        f'  File "{source}", line 5, in g\n'
        '  File "/not/on/this/machine.py", line 9, in h\n'
        "KeyError: 'k'\n"
    )
    error = wire.TaskError(wire.RAISED, "KeyError", "'k'", tb, wire.dumps(KeyError("k")))
    exc = wire.rebuild_exception(error, "f")
    assert isinstance(exc, KeyError)
    assert str(exc.__cause__) == (
        '\n"""\nTraceback (most recent call last):\n'
        '  File "/venv/k8s_executor/worker.py", line 182, in run\n'
        "    results.append(fn(*args, **kwargs))\n"
        f'  File "{source}", line 2, in f\n'
        "    return g()\n"
        f'  File "{source}", line 5, in g\n'
        "    raise KeyError('k')\n"
        '  File "/not/on/this/machine.py", line 9, in h\n'
        "KeyError: 'k'\n"
        '"""'
    )
