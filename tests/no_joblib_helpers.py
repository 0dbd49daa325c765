"""Calls for joblib tests from a module that does not import joblib: unpickling them in
a worker does not import it either (the worker imports this module by reference)."""

from __future__ import annotations

import os
import sys


def joblib_imported(x: int) -> tuple[int, bool]:
    """Whether the worker running this call has imported joblib."""
    return x, "joblib" in sys.modules


def nested_after_lazy_import(n: int) -> tuple[bool, int, list[int], str]:
    """Import joblib only now, inside the call, then run a nested Parallel."""
    was_imported = "joblib" in sys.modules
    import joblib
    from joblib.parallel import get_active_backend

    backend, _ = get_active_backend()
    pids = joblib.Parallel(n_jobs=2)(joblib.delayed(os.getpid)() for _ in range(n))
    return was_imported, os.getpid(), pids, type(backend).__name__
