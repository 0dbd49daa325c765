"""A small on-disk cache of facts that are slow to recompute (hashes, layer digests).

Entries are JSON files written atomically; a missing or corrupt file is an empty cache,
so deleting the directory is always safe.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "load_json", "store_json"]


def cache_dir() -> Path:
    """``K8SX_CACHE_DIR``, else ``$XDG_CACHE_HOME/k8s-executor``, else ``~/.cache/k8s-executor``."""
    explicit = os.environ.get("K8SX_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "k8s-executor"


def load_json(path: Path) -> Any:
    """The JSON value stored at ``path``, or ``None`` when absent or unreadable."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def store_json(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` atomically; a failure to cache is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError:
        pass
