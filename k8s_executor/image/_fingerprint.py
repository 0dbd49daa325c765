"""The environment's fingerprint: equal fingerprints mean an identical image.

It is computed on every executor start, so it must cost a few milliseconds even for a
venv of several hundred megabytes. It therefore reads metadata, never package contents:

- every ``*.dist-info/RECORD`` (pip writes the hash of every installed file there, so an
  upgrade, a downgrade or a reinstall of other content changes it) and ``direct_url.json``;
- every ``*.pth`` file, and the names of top-level entries of site-packages (a module
  dropped there by hand has no RECORD);
- for editable installs, the path, size and mtime of every file of the source tree (that
  is where the code changes between runs);
- the Python major.minor, the platform, the venv's absolute path (the image keeps it),
  the base image digest and :data:`LAYOUT_VERSION`.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path

from ._cache import cache_dir, load_json, store_json
from ._scan import Environment, iter_source_tree

__all__ = ["LAYOUT_VERSION", "fingerprint", "platform_tag"]

LAYOUT_VERSION = 1
"""Bump whenever the layer layout or the tar format changes: old images become stale."""


def platform_tag() -> str:
    """The local platform, as far as compiled extensions care (OS, arch, libc)."""
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or "unknown-libc"
    except (ValueError, OSError):  # not glibc (musl, macOS)
        libc = "unknown-libc"
    return f"{sysconfig.get_platform()}/{libc}"


def fingerprint(env: Environment, *, base_digest: str, platform: str | None = None) -> str:
    """Fingerprint of ``env`` built on the base image ``base_digest``.

    Args:
        env: The scanned environment (:func:`~k8s_executor.image._scan.scan_environment`).
        base_digest: Digest of the base image (``sha256:...``).
        platform: Platform tag; default :func:`platform_tag`.

    Returns:
        32 hex characters, usable in an image tag.
    """
    h = hashlib.sha256()

    def add(*parts: object) -> None:
        for part in parts:
            data = part if isinstance(part, bytes) else str(part).encode()
            # Length-prefixed, so ("ab", "c") and ("a", "bc") cannot collide.
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)

    add("layout", LAYOUT_VERSION, "python", *env.python, "platform", platform or platform_tag())
    add("base", base_digest, "prefix", env.prefix)
    for sp in env.site_packages:
        add("site-packages", sp)
        with os.scandir(sp) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name == "__pycache__":
                continue  # appears on first import of a top-level module
            add("entry", entry.name)
            if entry.name.endswith(".pth"):
                with open(entry.path, "rb") as f:
                    add(f.read())
    memo_path = (
        cache_dir() / "records" / f"{hashlib.sha256(bytes(env.prefix)).hexdigest()[:16]}.json"
    )
    memo = _RecordMemo(memo_path)
    for dist in env.distributions:
        add("dist", dist.dist_info.name, memo.digest(dist.dist_info / "RECORD"))
        add(dist.direct_url or b"")
    memo.save()
    for root in env.editable_roots:
        add("source", root)
        for rel, st in iter_source_tree(root, exclude=env.prefix):
            add(rel, st.st_size, st.st_mtime_ns, st.st_mode)
    return h.hexdigest()[:32]


class _RecordMemo:
    """RECORD digests keyed by the file's stat, as git's index does for the worktree.

    Reading and hashing every RECORD of a large venv (10 MB for 200 distributions) takes
    ~15 ms; a stat per file takes ~1 ms. pip rewrites RECORD on every install, so a
    changed RECORD always has a new inode, ctime or size.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        loaded = load_json(path)
        self._old: dict[str, list[object]] = loaded if isinstance(loaded, dict) else {}
        self._new: dict[str, list[object]] = {}

    def digest(self, record: Path) -> str:
        key = str(record)
        try:
            st = os.stat(record)
        except FileNotFoundError:
            return "no-record"
        sig: list[object] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        cached = self._old.get(key)
        if cached is not None and cached[:4] == sig:
            self._new[key] = cached
            return str(cached[4])
        with open(record, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        self._new[key] = [*sig, digest]
        return digest

    def save(self) -> None:
        if self._new != self._old:
            store_json(self._path, self._new)
