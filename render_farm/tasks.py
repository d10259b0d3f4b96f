"""Which slice of the work this process owns: SLURM array tasks or --rank/--world-size.

Task t of T takes the items whose id hashes to t (``task_of``): disjoint, deterministic, stable when a task is
re-run (a requeued array task picks up exactly its own objects again), and a function of each id alone, so array
tasks that list a directory while it grows still never share an object (a position in a sorted list would shift).
The Zero123 pass splits its few, fixed input shards round-robin instead (``round_robin``), so each task gets one.
"""

from __future__ import annotations

import hashlib
import os
from typing import Sequence, TypeVar

T = TypeVar("T")


def resolve_task(rank: int | None = None, world_size: int | None = None, env=os.environ) -> tuple[int, int]:
    """(task, count): explicit arguments win, then SLURM_ARRAY_TASK_ID/COUNT (minus the array's minimum id), else
    (0, 1)."""
    if rank is None and world_size is None and "SLURM_ARRAY_TASK_ID" in env:
        task = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        count = int(env.get("SLURM_ARRAY_TASK_COUNT", 1))
    else:
        task, count = rank or 0, world_size or 1
    if count < 1 or not 0 <= task < count:
        raise ValueError(f"task {task} is outside 0..{count - 1}: check --rank/--world-size or the SLURM array range")
    return task, count


def task_of(item_id: str, count: int) -> int:
    """The task (of ``count``) that owns ``item_id``: the first 8 bytes of its SHA-1, modulo ``count``."""
    return int.from_bytes(hashlib.sha1(str(item_id).encode()).digest()[:8], "big") % count


def task_slice(items: Sequence[T], task: int, count: int, key=lambda x: x) -> list[T]:
    """The items of task ``task`` of ``count``, sorted by ``key`` (a string id)."""
    return [x for x in sorted(items, key=key) if count == 1 or task_of(key(x), count) == task]


def round_robin(items: Sequence[T], task: int, count: int, key=lambda x: x) -> list[T]:
    """``sorted(items)[task::count]``: balanced, for a few coarse inputs fixed when the array is submitted (the
    Zero123 pass's input shards: every task gets one while there are at least as many shards as tasks)."""
    return sorted(items, key=key)[task::count]


def report_task(summary, out_dir: str, task: int, max_failures: int = 20) -> None:
    """A finished task's report on stdout: the summary line (``summary.line()``), the first of ``summary.failures``
    ((id, reason) pairs) and, when any failed, where the failure manifest is."""
    print(summary.line(), flush=True)
    for key, reason in summary.failures[:max_failures]:
        print(f"  failed {key}: {reason}", flush=True)
    if summary.failed:
        print(f"  failure manifest: {out_dir}/_state/task-{task:05d}.failures.jsonl", flush=True)
