"""Platforms: the local one, the cluster's (``platform=``), and the wheel tags of the latter.

A platform is written as in OCI image indexes and ``podman --platform``: ``linux/amd64``,
``linux/arm64``. When the cluster's platform is the local one (a Linux laptop or CI
runner of the same architecture), the venv's files are copied as they are. Otherwise the
platform-specific distributions are installed again for the target (see ``_cross.py``),
and these tags say which wheels fit it.

This module imports nothing heavy: the executor validates its ``platform=`` with it.
"""

from __future__ import annotations

import platform as _platform
import sys
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = [
    "PLATFORMS",
    "Libc",
    "check_platform",
    "default_platform",
    "local_platform",
    "wheel_platform_tags",
]

PLATFORMS = ("linux/amd64", "linux/arm64")
"""The targets images can be built for."""

_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_WHEEL_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}
# The legacy manylinux names: manylinux1 = glibc 2.5, manylinux2010 = 2.12, manylinux2014 = 2.17.
_LEGACY = {(2, 17): "manylinux2014", (2, 12): "manylinux2010", (2, 5): "manylinux1"}
# The oldest glibc each architecture has manylinux wheels for.
_OLDEST_GLIBC = {"x86_64": 5, "aarch64": 17}


def local_platform() -> str:
    """This machine's platform, as ``os/arch`` (``linux/amd64``, ``darwin/arm64``)."""
    machine = _platform.machine().lower()
    system = "windows" if sys.platform == "win32" else sys.platform.rstrip("0123456789")
    return f"{system}/{_ARCH.get(machine, machine)}"


def default_platform() -> str:
    """The local platform on Linux (the venv's files fit the cluster as they are); else
    ``linux/amd64``, what nearly every cluster runs."""
    local = local_platform()
    return local if local.startswith("linux/") else "linux/amd64"


def check_platform(value: object, option: str = "platform") -> str | None:
    """``value`` if it is a platform images can be built for (or None: the default).

    Raises:
        ConfigError: Naming the option, the value and the platforms allowed.
    """
    if value is None:
        return None
    allowed = list(PLATFORMS)
    local = local_platform()
    if local.startswith("linux/") and local not in allowed:
        allowed.append(local)  # e.g. linux/ppc64le: copying the venv works as it always did
    if isinstance(value, str) and value in allowed:
        return value
    choices = ", ".join(repr(p) for p in allowed)
    raise ConfigError(
        f"{option}={value!r} is not allowed: expected one of {choices} (the cluster nodes' "
        "os/arch), or None for the default (this machine's platform on Linux, else "
        "'linux/amd64')"
    )


@dataclass(frozen=True)
class Libc:
    """The C library of the base image: which manylinux/musllinux wheels can load there."""

    kind: str
    """``"glibc"`` or ``"musl"``."""
    version: tuple[int, int]

    def __str__(self) -> str:
        return f"{self.kind} {self.version[0]}.{self.version[1]}"


def wheel_platform_tags(platform: str, libc: Libc) -> list[str]:
    """The wheel platform tags a target accepts, most specific first (pip's ``--platform``).

    ``linux/arm64`` with glibc 2.36 gives ``manylinux_2_36_aarch64`` down to
    ``manylinux_2_17_aarch64`` and ``manylinux2014_aarch64``. ``linux_<arch>`` (wheels
    built on one machine for itself) is left out: nothing says which glibc they need.
    """
    arch = _WHEEL_ARCH[platform.split("/", 1)[1]]
    major, minor = libc.version
    tags: list[str] = []
    if libc.kind == "musl":
        for m in range(minor, -1, -1):
            tags.append(f"musllinux_{major}_{m}_{arch}")
        return tags
    for m in range(minor, _OLDEST_GLIBC[arch] - 1, -1):
        tags.append(f"manylinux_{major}_{m}_{arch}")
        legacy = _LEGACY.get((major, m))
        if legacy is not None:
            tags.append(f"{legacy}_{arch}")
    return tags
