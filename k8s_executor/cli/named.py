"""``k8s-executor results RUN`` and ``ls --named``: a named run's outcomes and state, read
from its storage alone (no cluster, no client of the run needed)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import timedelta
from typing import Any

from .._admin import Env, call_states, named_runs, named_runs_root, report
from ._text import print_table


def _root_and_options(args: argparse.Namespace, command: str) -> tuple[str, dict[str, Any]] | None:
    root = named_runs_root(args.storage or Env().storage)
    try:
        options = json.loads(args.storage_options) if args.storage_options else {}
    except ValueError as exc:
        print(f"k8s-executor {command}: --storage-options is not JSON: {exc}", file=sys.stderr)
        return None
    return root, options


def results(args: argparse.Namespace) -> int:
    """``k8s-executor results RUN``: every call's outcome, in submission order."""
    found = _root_and_options(args, "results")
    if found is None:
        return 2
    root, options = found
    states = call_states(root, args.run, options, read_results=True)
    if not states:
        print(f"k8s-executor results: no calls of named run {args.run} in {root}", file=sys.stderr)
        return 1
    position = 0
    for call in states:
        values: list[Any] = call.results if call.results is not None else [None] * call.calls
        if call.single:
            values = [call.results[0] if call.results is not None else None]
        for value in values:
            _print_call(args, position, call.state, call.function, value)
            position += 1
    return 0 if all(c.state == "done" for c in states) else 1


def _print_call(args: argparse.Namespace, position: int, state: str, fn: str, value: Any) -> None:
    if args.json:
        shown: Any = value
        try:
            json.dumps(value)
        except (TypeError, ValueError):  # not JSON: its repr
            shown = repr(value)
        row = {"call": position, "function": fn, "state": state}
        if state == "done":
            row["result"] = shown
        print(json.dumps(row))
    else:
        print(f"{position}  {state}  {fn}" + (f"  {value!r}" if state == "done" else ""))


def _human(seconds: float) -> str:
    delta = timedelta(seconds=max(0, int(seconds)))
    total = int(delta.total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if total >= size:
            return f"{total // size}{unit}"
    return f"{total}s"


def ls(args: argparse.Namespace) -> int:
    """``k8s-executor ls --named``: one line per named run of the storage."""
    found = _root_and_options(args, "ls")
    if found is None:
        return 2
    root, options = found
    names = named_runs(root, options)
    if not names:
        print(f"no named runs in {root}")
        return 0
    now = time.time()
    rows = [("NAME", "AGE", "DONE", "RUNNING", "FAILED", "LOST", "DEADLINE")]
    for name in names:
        r = report(root, name, options)
        age = "?" if r.started is None else _human(now - r.started)
        if r.deadline is None:
            until = "-"
        elif r.deadline < now:
            until = "expired"
        else:
            until = "in " + _human(r.deadline - now)
        c = r.counts
        rows.append(
            (name, age, str(c["done"]), str(c["running"]), str(c["failed"]), str(c["lost"]), until)
        )
    print_table(rows)
    return 0
