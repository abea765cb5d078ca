"""Run independent work side by side.

- `run_parallel(function, calls, jobs)`: the same function on a list of argument tuples (data generation,
  the two encoders, the two probes), results in order.
- `run_graph(jobs, workers)`: named jobs that each wait for the jobs they read (the study: encoders, the
  LLM's first stages, the two arms, the probes); a job starts as soon as what it needs has finished and a
  worker is free, the earliest-listed ready job first.

With more than one worker every call runs in its own spawned process with one torch thread (`threads=1`
is passed to the function), which on a small CPU beats one process with several threads for these tiny
models.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Callable


def run_parallel(function: Callable, calls: list[tuple], jobs: int = 1) -> list[Any]:
    """`[function(*args) for args in calls]`, in up to `jobs` processes when jobs > 1 (order kept)."""
    if jobs <= 1 or len(calls) <= 1:
        return [function(*args) for args in calls]
    with _pool(min(jobs, len(calls))) as pool:
        futures = [pool.submit(function, *args, threads=1) for args in calls]
        return [future.result() for future in futures]


@dataclass
class Job:
    """`function(*args)` once every job named in `needs` has finished (names of no job in the graph are
    ignored: a stage that was skipped or reused is not waited for)."""

    name: str
    function: Callable
    args: tuple = ()
    needs: tuple[str, ...] = ()


def run_graph(jobs: list[Job], workers: int = 1,
              finished: Callable[[str, Any], None] | None = None) -> dict[str, tuple[Any, float, float]]:
    """Run every job after the jobs it needs, up to `workers` at once (processes when > 1); the list order is
    the priority among ready jobs. `finished(name, result)` is called in this process as each job ends,
    before the next is started. Returns `{name: (result, start, end)}`, seconds since the graph started."""
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
    needs = {job.name: tuple(n for n in job.needs if n in names) for job in jobs}
    pending, done, results = list(jobs), set(), {}
    origin = time.time()

    def ready() -> list[Job]:
        return [job for job in pending if all(n in done for n in needs[job.name])]

    def record(job: Job, result: Any, start: float) -> None:
        results[job.name] = (result, round(start - origin, 1), round(time.time() - origin, 1))
        done.add(job.name)
        if finished is not None:
            finished(job.name, result)

    if workers <= 1:
        while pending:
            candidates = ready()
            if not candidates:
                raise ValueError(f"jobs wait on each other in a cycle: {[job.name for job in pending]}")
            job = candidates[0]
            pending.remove(job)
            start = time.time()
            record(job, job.function(*job.args), start)
        return results
    with _pool(workers) as pool:
        running: dict[Any, tuple[Job, float]] = {}
        while pending or running:
            for job in ready()[:workers - len(running)]:
                pending.remove(job)
                running[pool.submit(job.function, *job.args, threads=1)] = (job, time.time())
            if not running:
                raise ValueError(f"jobs wait on each other in a cycle: {[job.name for job in pending]}")
            complete, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in complete:
                job, start = running.pop(future)
                record(job, future.result(), start)
    return results


def _pool(workers: int) -> ProcessPoolExecutor:
    root = logging.getLogger()
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                               initializer=_log_like_parent, initargs=(root.level,))


def _log_like_parent(level: int) -> None:
    """A spawned worker logs progress (encoder steps, run starts) to stderr like the parent process, and
    draws no progress bars of its own (transformers' loading and saving bars): several workers' bars
    would interleave on one terminal; the parent shows the progress."""
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
