"""Worker slots: how ``max_workers`` is shared among a run's Jobs (pure functions).

``max_workers`` bounds the pods of the whole run, not of each Job. A Job holds as many
slots as its ``spec.parallelism`` can still use (never more than its unfinished indexes).
A new Job gets the slots that are free when it is created (none: it is created
suspended); as indexes finish, freed slots go to the waiting Jobs in launch order. A
running Job's parallelism is only ever raised: lowering it would delete running pods.

The backend keeps two maps: the plan (``planned``, what each Job should have) and what the
cluster was last told (``sent``). Any difference is a PATCH still owed, re-sent by a later
pass when one fails (throttling, a Job not created yet): the plan is the state the
backend reconciles the cluster to.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

__all__ = ["behind", "in_use", "initial", "replan"]


def in_use(planned: Mapping[str, int], demand: Mapping[str, int]) -> int:
    """Slots held: each Job's parallelism, capped by what its unfinished indexes use."""
    return sum(min(p, demand.get(b, 0)) for b, p in planned.items())


def initial(
    indexes: int, planned: Mapping[str, int], demand: Mapping[str, int], max_workers: int
) -> int:
    """The parallelism of a new Job of ``indexes`` indexes: the slots free now (0: it
    waits suspended)."""
    return min(indexes, max(0, max_workers - in_use(planned, demand)))


def replan(
    planned: Mapping[str, int], demand: Mapping[str, int], max_workers: int
) -> dict[str, int]:
    """The next plan: Jobs with nothing left to run drop out, and the free slots go to
    the Jobs that can use more, in launch order (the order of ``planned``)."""
    plan = {b: p for b, p in planned.items() if demand.get(b, 0) > 0}
    free = max_workers - in_use(plan, demand)
    for batch_id, parallelism in plan.items():
        if free <= 0:
            break
        extra = min(free, demand[batch_id] - parallelism)
        if extra > 0:
            plan[batch_id] = parallelism + extra
            free -= extra
    return plan


def behind(
    planned: Mapping[str, int], sent: Mapping[str, int], created: Collection[str]
) -> list[str]:
    """The Jobs the cluster has not been told their planned parallelism yet (and that
    exist, so that a PATCH can reach them)."""
    return [b for b, p in planned.items() if b in created and p != sent.get(b, 0)]
