"""Small virtual environments for the image tests, made offline in about a second.

Wheels are written directly as zip files (a wheel is a zip with a dist-info), and the
editable project carries its own 40-line PEP 517 backend (``backend-path``), so pip
installs everything with ``--no-index`` and no build dependency.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path


def make_venv(path: Path) -> Path:
    """A venv without pip (pip runs from the test environment with ``--python``)."""
    subprocess.run(
        [sys._base_executable, "-m", "venv", "--without-pip", str(path)],  # type: ignore[attr-defined]
        check=True,
    )
    return path


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(
    directory: Path,
    name: str,
    version: str,
    files: dict[str, str],
    tag: str = "py3-none-any",
    entry_points: str = "",
) -> Path:
    """A wheel with the given files (path inside site-packages → text), pure-Python by
    default; another ``tag`` (``cp311-cp311-manylinux_2_17_aarch64``) makes a wheel for
    that platform (files named ``*.so`` stand for compiled modules, never loaded)."""
    dist_info = f"{name}-{version}.dist-info"
    contents = {path: text.encode() for path, text in files.items()}
    contents[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    )
    purelib = "true" if tag.endswith("-none-any") else "false"
    contents[f"{dist_info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: k8sx-tests\nRoot-Is-Purelib: {purelib}\nTag: {tag}\n"
    ).encode()
    if entry_points:
        contents[f"{dist_info}/entry_points.txt"] = entry_points.encode()
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in contents.items())
    record += f"{dist_info}/RECORD,,\n"
    contents[f"{dist_info}/RECORD"] = record.encode()
    wheel = directory / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in contents.items():
            zf.writestr(path, data)
    return wheel


def pip_install(venv: Path, *args: str) -> None:
    """pip of the test environment, installing into ``venv``, offline."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "--disable-pip-version-check",
            "--no-input",
            "-q",
            "install",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            *args,
        ],
        check=True,
    )


_BACKEND = '''
"""A PEP 517 backend with only what an editable install needs (PEP 660)."""
import base64, hashlib, os, zipfile

NAME, VERSION = "{name}", "0.1"
DIST = f"{{NAME}}-{{VERSION}}.dist-info"

def _h(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    root = os.path.dirname(os.path.abspath(__file__))
    meta = f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\n"
    wheel = "Wheel-Version: 1.0\\nGenerator: k8sx\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    files = {{
        f"_{{NAME}}_editable.pth": (os.path.join(root, "src") + "\\n").encode(),
        f"{{DIST}}/METADATA": meta.encode(),
        f"{{DIST}}/WHEEL": wheel.encode(),
    }}
    record = "".join(f"{{p}},{{_h(d)}},{{len(d)}}\\n" for p, d in files.items())
    record += f"{{DIST}}/RECORD,,\\n"
    files[f"{{DIST}}/RECORD"] = record.encode()
    name = f"{{NAME}}-{{VERSION}}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return name

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise NotImplementedError("editable installs only")
'''


def make_editable_project(directory: Path, name: str, module_text: str) -> Path:
    """A project (``src/<name>/__init__.py``) that pip can install with ``-e``."""
    (directory / "src" / name).mkdir(parents=True)
    (directory / "src" / name / "__init__.py").write_text(textwrap.dedent(module_text))
    (directory / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    )
    (directory / "backend.py").write_text(_BACKEND.format(name=name))
    return directory
