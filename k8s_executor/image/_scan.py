"""What the local virtual environment is made of: site-packages, distributions, sources.

Shared by the fingerprint (which must stay fast: it only reads directory listings and a
few small metadata files) and the layer planner (which then reads every RECORD).
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from ._errors import EnvironmentSnapshotError

__all__ = [
    "SOURCE_EXCLUDES",
    "Distribution",
    "Environment",
    "iter_source_tree",
    "normalize_name",
    "scan_environment",
]

# Directories never copied from a local source tree: caches, VCS data, build outputs and
# nested virtual environments. They change without the code changing, or are huge.
SOURCE_EXCLUDES = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".nox",
        ".tox",
        ".cache",
        ".ipynb_checkpoints",
        "node_modules",
        "build",
        "dist",
        ".eggs",
    }
)

_SITE_PACKAGES = re.compile(r"python(\d+)\.(\d+)$")


def normalize_name(name: str) -> str:
    """The PEP 503 normal form of a distribution name (``Foo_Bar`` → ``foo-bar``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Distribution:
    """One installed distribution (a ``*.dist-info`` directory)."""

    name: str
    """Normalised name."""
    dist_info: Path
    site_packages: Path
    direct_url: bytes | None
    """The raw ``direct_url.json`` (present for installs from a URL or a local path)."""
    editable_root: Path | None
    """For an editable install, the local source tree it points at."""

    @property
    def version(self) -> str:
        """The version, from the ``name-version.dist-info`` directory name (PEP 427)."""
        stem = self.dist_info.name[: -len(".dist-info")]
        return stem.split("-", 1)[1] if "-" in stem else ""

    @property
    def from_index(self) -> bool:
        """Installed by name from a package index (or a wheelhouse, or a downloaded archive):
        the same version can be asked for again, for another platform. Not so for local
        source directories, editable installs and VCS checkouts (PEP 610 ``dir_info`` and
        ``vcs_info``)."""
        if not self.version:
            return False
        return self.direct_url is None or (
            b'"dir_info"' not in self.direct_url and b'"vcs_info"' not in self.direct_url
        )

    @property
    def local(self) -> bool:
        """Installed from a local source directory (editable or not): the user's own code,
        likely to change often. A wheel file from a local path is not "local": wheelhouses
        and offline mirrors install that way."""
        return self.editable_root is not None or (
            self.direct_url is not None
            and b'"dir_info"' in self.direct_url
            and b'"file:' in self.direct_url
        )


@dataclass(frozen=True)
class Environment:
    """The parts of a virtual environment that decide what goes into the image."""

    prefix: Path
    python: tuple[int, int]
    site_packages: tuple[Path, ...]
    distributions: tuple[Distribution, ...]

    @property
    def editable_roots(self) -> tuple[Path, ...]:
        """Distinct source trees of editable installs, sorted."""
        return tuple(sorted({d.editable_root for d in self.distributions if d.editable_root}))


def scan_environment(prefix: str | os.PathLike[str] | None = None) -> Environment:
    """Describe the virtual environment at ``prefix`` (default: the running one).

    Raises:
        EnvironmentSnapshotError: ``prefix`` is not a virtual environment.
    """
    root = Path(prefix if prefix is not None else sys.prefix).absolute()
    if not (root / "pyvenv.cfg").is_file():
        raise EnvironmentSnapshotError(
            f"{root} is not a virtual environment (no pyvenv.cfg): the image is a snapshot "
            "of a venv. Create one (python -m venv .venv), install your dependencies into "
            "it and run from it, or pass image= with a ready-made image."
        )
    site_dirs: list[Path] = []
    python: tuple[int, int] | None = None
    for lib in ("lib", "lib64"):
        # venv makes lib64 a symlink to lib on 64-bit Linux: the same directory twice.
        if (root / lib).is_symlink():
            continue
        try:
            entries = sorted(os.scandir(root / lib), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        for entry in entries:
            match = _SITE_PACKAGES.match(entry.name)
            candidate = Path(entry.path) / "site-packages"
            if match and candidate.is_dir() and not entry.is_symlink():
                site_dirs.append(candidate)
                python = (int(match.group(1)), int(match.group(2)))
    if python is None:
        raise EnvironmentSnapshotError(f"{root} has no lib/pythonX.Y/site-packages directory")
    distributions = [d for sp in site_dirs for d in _distributions(sp)]
    return Environment(root, python, tuple(site_dirs), tuple(distributions))


def _distributions(site_packages: Path) -> Iterator[Distribution]:
    for entry in sorted(os.scandir(site_packages), key=lambda e: e.name):
        if not entry.name.endswith(".dist-info") or not entry.is_dir():
            continue
        dist_info = Path(entry.path)
        try:
            direct_url: bytes | None = (dist_info / "direct_url.json").read_bytes()
        except FileNotFoundError:
            direct_url = None
        yield Distribution(
            name=normalize_name(entry.name[: -len(".dist-info")].split("-")[0]),
            dist_info=dist_info,
            site_packages=site_packages,
            direct_url=direct_url,
            editable_root=_editable_root(direct_url),
        )


def _editable_root(direct_url: bytes | None) -> Path | None:
    # PEP 610: {"url": "file:///path", "dir_info": {"editable": true}}
    if direct_url is None:
        return None
    try:
        info = json.loads(direct_url)
    except ValueError:
        return None
    if not (isinstance(info, dict) and info.get("dir_info", {}).get("editable")):
        return None
    url = urlparse(str(info.get("url", "")))
    if url.scheme != "file":
        return None
    path = Path(unquote(url.path))
    return path if path.is_dir() else None


def iter_source_tree(root: Path, exclude: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Files (and symlinks) under a local source tree, sorted, with their lstat.

    Skips :data:`SOURCE_EXCLUDES`, ``*.egg-info``, nested virtual environments and
    ``exclude`` (the venv itself, often inside the project). Paths are relative to ``root``.
    """
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        subdirs: list[Path] = []
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            path = Path(entry.path)
            if stat.S_ISDIR(st.st_mode):
                if (
                    entry.name in SOURCE_EXCLUDES
                    or entry.name.endswith(".egg-info")
                    or path == exclude
                    or (path / "pyvenv.cfg").exists()
                ):
                    continue
                subdirs.append(path)
            elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                yield os.path.relpath(entry.path, root), st
        # Depth first, in name order: pushed reversed so the smallest name pops first.
        stack.extend(reversed(subdirs))
