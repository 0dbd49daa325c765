"""Cross-platform snapshots: the platform-specific distributions, installed for the target.

When the cluster's platform (``platform=``) differs from this machine's (a Mac, an arm64
laptop and a linux/amd64 cluster), copying the venv as it is would ship binaries the
nodes cannot load. Each distribution is then copied or installed again:

=====================================  ===============================================
platform-independent: every tag in     copied as it is (the same files pip would
its ``WHEEL`` is ``*-none-any`` and    install on the target), whether it came from an
its ``RECORD`` lists no compiled file  index, a local directory or an editable install
(``.so``, ``.pyd``, ``.dylib``)
platform-specific, from an index (or   frozen as ``name==version`` and installed for the
a wheelhouse, or a downloaded archive) target by pip: ``--platform`` (the manylinux tags
                                       the base image's libc accepts),
                                       ``--python-version``, ``--implementation cp``,
                                       ``--abi``, ``--only-binary=:all:``, ``--no-deps``
platform-specific, local (a source     :class:`PlatformError` naming it and the fixes:
directory, an editable install, a VCS  there is nothing to install it from for the
checkout)                              target
=====================================  ===============================================

pip runs with the user's own configuration (``pip.conf``, ``PIP_INDEX_URL``,
``PIP_EXTRA_INDEX_URL``, ``PIP_FIND_LINKS``, ``PIP_NO_INDEX``, ...), as a ``pip install``
would, so private indexes and offline wheelhouses work the same way.

Installed distributions are kept in the cache (``staged/<target>/<name>-<version>/``, one
directory per distribution, laid out as ``site/`` for site-packages and ``root/`` for the
venv's ``bin/`` and data), so a later build installs only what is new, and unchanged files
keep their stat: their layers are recognised without being written again.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import logging
import os
import posixpath
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ._cache import cache_dir
from ._errors import PlatformError
from ._platform import Libc, local_platform, wheel_platform_tags
from ._scan import Distribution, Environment, iter_source_tree, normalize_name

__all__ = ["Split", "Staged", "Target", "is_compiled", "prepare", "split_distributions"]

_log = logging.getLogger(__name__)

_STAGE_VERSION = 1
"""Bump when the layout of the staged directories changes."""
_COMPILED = re.compile(r"\.(?:so|pyd|dylib)(?:\.[0-9][0-9.]*)?$")
# pip --target installs into <tmp>/lib/python (the "home" scheme), then moves that
# directory's content, and <tmp>/bin, <tmp>/share..., into the target directory; the
# RECORD paths stay relative to <tmp>/lib/python.
_PIP_HOME_LIB = "lib/python"
_NOT_FOUND = re.compile(
    r"(?:No matching distribution found for|"
    r"Could not find a version that satisfies the requirement)\s+([A-Za-z0-9][A-Za-z0-9._-]*)=="
)


def is_compiled(path: str) -> bool:
    """A native library or extension module, by name (``_x.cpython-311-darwin.so``,
    ``libfoo.so.1``, ``x.pyd``, ``libbar.dylib``)."""
    return _COMPILED.search(posixpath.basename(path)) is not None


@dataclass(frozen=True)
class Target:
    """What the distributions are installed for."""

    platform: str
    """``linux/amd64`` or ``linux/arm64``."""
    python: tuple[int, int]
    libc: Libc
    """The base image's C library: the newest manylinux (or musllinux) tag it loads."""
    prefix: Path
    """The venv's path: console scripts installed by pip carry it in their shebang."""

    @property
    def platform_tags(self) -> list[str]:
        return wheel_platform_tags(self.platform, self.libc)

    def describe(self) -> str:
        return f"{self.platform} (CPython {self.python[0]}.{self.python[1]}, {self.libc})"

    def key(self) -> str:
        """Names the cache directory of the distributions installed for this target."""
        parts = [_STAGE_VERSION, self.platform, list(self.python), str(self.libc)]
        parts += [str(self.prefix)]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Split:
    """Where each distribution of the environment comes from on the target."""

    copied: tuple[Distribution, ...]
    resolved: tuple[Distribution, ...]
    """Platform-specific, from an index: installed again for the target."""
    refused: tuple[tuple[Distribution, str], ...]
    """Platform-specific and local: (distribution, what makes it platform-specific)."""


@dataclass(frozen=True)
class Staged:
    """The resolved distributions as files at their place in the venv."""

    files: dict[str, tuple[str, os.stat_result]]
    """Path relative to the venv → (the file in the cache, its lstat)."""
    owners: dict[str, Distribution]
    """Path relative to the venv → the (installed-for-the-target) distribution."""
    replaced: frozenset[str]
    """Names of the local distributions whose files these replace."""


def split_distributions(env: Environment) -> Split:
    """Sort the environment's distributions into copied, resolved and refused."""
    copied: list[Distribution] = []
    resolved: list[Distribution] = []
    refused: list[tuple[Distribution, str]] = []
    for dist in env.distributions:
        tags = _wheel_tags(dist)
        compiled = _compiled_files(dist, env.prefix)
        specific = [t for t in tags if not t.endswith("-none-any")]
        if not compiled and not specific:
            copied.append(dist)
        elif dist.from_index:
            resolved.append(dist)
        elif compiled:
            more = f" and {len(compiled) - 3} more" if compiled[3:] else ""
            shown = ", ".join(compiled[:3]) + more
            refused.append((dist, f"compiled files: {shown}"))
        else:
            refused.append((dist, f"a wheel tagged {specific[0]}"))
    return Split(tuple(copied), tuple(resolved), tuple(refused))


def prepare(env: Environment, target: Target) -> Staged:
    """The environment's platform-specific distributions, installed for ``target``.

    Raises:
        PlatformError: A local distribution is platform-specific; a distribution has no
            wheel for the target; pip is missing or failed.
    """
    split = split_distributions(env)
    if split.refused:
        raise PlatformError(_refused_message(split.refused, target))
    root = cache_dir() / "staged" / target.key()
    wanted = {d.name: d for d in split.resolved}
    missing = [d for d in split.resolved if not (root / _dist_dir_name(d)).is_dir()]
    if missing:
        _install(missing, target, root)
        lost = [d.name for d in missing if not (root / _dist_dir_name(d)).is_dir()]
        if lost:
            raise PlatformError(
                f"pip reported installing {', '.join(lost)} for {target.describe()}, but "
                "left no .dist-info for them: build again, or report this as a bug"
            )
    site_rel = {
        d.name: posixpath.relpath(d.site_packages.as_posix(), env.prefix.as_posix())
        for d in split.resolved
    }
    files: dict[str, tuple[str, os.stat_result]] = {}
    owners: dict[str, Distribution] = {}
    for name, local in wanted.items():
        directory = root / _dist_dir_name(local)
        dist_infos = sorted((directory / "site").glob("*.dist-info"))
        staged = Distribution(
            name=name,
            dist_info=dist_infos[0] if dist_infos else directory / "site",
            site_packages=local.site_packages,
            direct_url=None,
            editable_root=None,
        )
        for part, prefix in (("site", site_rel[name]), ("root", "")):
            for rel, path, st in _walk(directory / part):
                where = posixpath.join(prefix, rel) if prefix else rel
                files[where] = (path, st)
                owners[where] = staged
    return Staged(files, owners, frozenset(wanted))


# --- classification --------------------------------------------------------------------------


def _wheel_tags(dist: Distribution) -> list[str]:
    """The ``Tag:`` lines of the distribution's WHEEL file, expanded (``py2.py3-none-any``
    is two tags); empty when there is no WHEEL file."""
    try:
        text = (dist.dist_info / "WHEEL").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    tags: list[str] = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() != "tag":
            continue
        parts = value.strip().split("-")
        if len(parts) != 3:
            continue
        for py in parts[0].split("."):
            for abi in parts[1].split("."):
                for plat in parts[2].split("."):
                    tags.append(f"{py}-{abi}-{plat}")
    return tags


def _compiled_files(dist: Distribution, prefix: Path) -> list[str]:
    """Compiled files of the distribution: in its RECORD, and for an editable install in
    its source tree (where in-place builds put extension modules)."""
    found: list[str] = []
    try:
        with open(dist.dist_info / "RECORD", newline="", encoding="utf-8") as f:
            found += [row[0] for row in csv.reader(f) if row and is_compiled(row[0])]
    except OSError:
        pass
    if dist.editable_root is not None:
        found += [
            rel
            for rel, st in iter_source_tree(dist.editable_root, exclude=prefix)
            if stat.S_ISREG(st.st_mode) and is_compiled(rel)
        ]
    return sorted(found)


def _refused_message(refused: tuple[tuple[Distribution, str], ...], target: Target) -> str:
    lines = []
    for dist, why in refused:
        if dist.editable_root is not None:
            kind = f"editable install of {dist.editable_root}"
        elif dist.direct_url is not None and b'"vcs_info"' in dist.direct_url:
            kind = "installed from a VCS checkout"
        else:
            kind = "installed from a local directory"
        lines.append(f"  {dist.name} ({kind}): {why}")
    names = ", ".join(d.name for d, _ in refused)
    return (
        f"cannot build the image for {target.platform} on this {local_platform()} machine: "
        f"{'these local packages have' if len(refused) > 1 else 'this local package has'} "
        "code built for this machine, and no package index has them for the target:\n"
        + "\n".join(lines)
        + f"\nTo fix it: publish a wheel of {names} for {target.platform} (manylinux) to your "
        "package index and install it from there; or build the image on a "
        f"{target.platform} machine or container (`k8s-executor build --platform "
        f"{target.platform}` in CI); or pass image= an image you built with your "
        "dependencies"
    )


# --- installing for the target ----------------------------------------------------------------


def _dist_dir_name(dist: Distribution) -> str:
    return f"{dist.name}-{dist.version}"


def _pip_command(target: Target) -> list[str]:
    """pip of this interpreter, run as the venv's Python when this is not the venv (its
    console scripts then get the venv's python in their shebang, and pycs its magic)."""
    if importlib.util.find_spec("pip") is None:
        raise PlatformError(
            f"building the image for {target.platform} needs pip, to install the "
            f"platform-specific packages for it, and {sys.executable} has no pip: run "
            f"`{sys.executable} -m ensurepip`, or build the image on a {target.platform} machine"
        )
    command = [sys.executable, "-m", "pip"]
    venv_python = target.prefix / "bin" / "python"
    if Path(sys.prefix).resolve() != target.prefix.resolve():
        command += ["--python", str(venv_python)]
    return command


def _install(dists: list[Distribution], target: Target, root: Path) -> None:
    """Install ``dists`` (pinned) for ``target`` with pip, then move each into its own
    directory under ``root``. Every missing wheel is named, not only the first."""
    root.mkdir(parents=True, exist_ok=True)
    command = _pip_command(target)
    major, minor = target.python
    options = [
        "--disable-pip-version-check",
        "--no-input",
        "install",
        "--only-binary=:all:",
        "--no-deps",
        "--implementation",
        "cp",
        "--python-version",
        f"{major}.{minor}",
        "--abi",
        f"cp{major}{minor}",
    ]
    for tag in target.platform_tags:
        options += ["--platform", tag]
    env = dict(os.environ)
    # Options that contradict --target; everything else in the user's pip configuration
    # (indexes, find-links, certificates, proxies) applies.
    for variable in ("PIP_TARGET", "PIP_PREFIX", "PIP_ROOT", "PIP_REQUIRE_HASHES"):
        env.pop(variable, None)
    env["PIP_USER"] = "0"
    remaining = list(dists)
    no_wheel: list[Distribution] = []
    work = Path(tempfile.mkdtemp(prefix=".pip-", dir=root))
    try:
        while remaining:
            requirements = work / "frozen.txt"
            requirements.write_text("".join(f"{d.name}=={d.version}\n" for d in remaining))
            into = work / "target"
            shutil.rmtree(into, ignore_errors=True)
            _log.info(
                "installing %s for %s with pip",
                ", ".join(f"{d.name}=={d.version}" for d in remaining),
                target.describe(),
            )
            result = subprocess.run(
                [*command, *options, "--target", str(into), "-r", str(requirements)],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode == 0:
                _split_into(into, {d.name: d for d in remaining}, target, root)
                break
            match = _NOT_FOUND.search(result.stderr)
            name = normalize_name(match.group(1)) if match else None
            failed = next((d for d in remaining if d.name == name), None)
            if failed is None:
                tail = "\n".join(result.stderr.strip().splitlines()[-15:])
                raise PlatformError(
                    f"pip could not install the platform-specific packages for "
                    f"{target.describe()} (exit code {result.returncode}):\n{tail}"
                )
            no_wheel.append(failed)
            remaining.remove(failed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if no_wheel:
        raise PlatformError(_no_wheel_message(no_wheel, target))


def _no_wheel_message(dists: list[Distribution], target: Target) -> str:
    listed = ", ".join(f"{d.name}=={d.version}" for d in dists)
    tags = target.platform_tags
    return (
        f"no wheel for {target.describe()} of {listed}: pip found none in the package indexes "
        "of your pip configuration (pip.conf, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, "
        f"PIP_FIND_LINKS) that fits the target (tags cp{target.python[0]}{target.python[1]}/"
        f"abi3/none with {tags[0]} … {tags[-1]}, or any). These packages are compiled for "
        "this machine, and the image cannot use its copy. To fix it: upgrade or pin them to "
        f"a version that publishes {target.platform} wheels; or add such wheels to your index "
        f"or a wheelhouse (PIP_FIND_LINKS); or build the image on a {target.platform} "
        "machine or container; or pass image= an image you built with your dependencies"
    )


def _split_into(
    installed: Path, dists: dict[str, Distribution], target: Target, root: Path
) -> None:
    """Move each distribution pip installed into ``root/<name>-<version>/`` (``site/``
    and ``root/``), with a RECORD whose paths are right for the venv."""
    site_rel = "lib/python{}.{}/site-packages".format(*target.python)
    for dist_info in sorted(installed.glob("*.dist-info")):
        stem = dist_info.name[: -len(".dist-info")]
        name = normalize_name(stem.split("-")[0])
        local = dists.get(name)
        if local is None:
            continue
        final = root / _dist_dir_name(local)
        if final.is_dir():
            continue  # another build was faster
        building = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            with open(dist_info / "RECORD", newline="", encoding="utf-8") as f:
                rows = [row for row in csv.reader(f) if row and row[0]]
            record_rel = f"{dist_info.name}/RECORD"
            new_rows: list[list[str]] = []
            for row in rows:
                where = posixpath.normpath(posixpath.join(_PIP_HOME_LIB, row[0]))
                if where.startswith(_PIP_HOME_LIB + "/"):
                    rel = where[len(_PIP_HOME_LIB) + 1 :]
                    dest, listed = building / "site" / rel, rel
                else:
                    rel = where
                    dest, listed = building / "root" / rel, posixpath.relpath(rel, site_rel)
                source = installed / rel
                new_rows.append([listed, *row[1:]])
                if rel == record_rel or not (source.is_file() or source.is_symlink()):
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, dest)
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows(new_rows)
            record = building / "site" / record_rel
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(buffer.getvalue(), encoding="utf-8")
            try:
                os.rename(building, final)
            except OSError:
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)


def _walk(directory: Path) -> list[tuple[str, str, os.stat_result]]:
    """(POSIX path relative to ``directory``, path, lstat) of every file and symlink."""
    found: list[tuple[str, str, os.stat_result]] = []
    for dirpath, _dirnames, filenames in os.walk(directory):
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                rel = Path(os.path.relpath(path, directory)).as_posix()
                found.append((rel, path, st))
    return sorted(found)
