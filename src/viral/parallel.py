"""Run independent jobs side by side: `run_parallel(function, calls, jobs)` (data generation, study runs).

With `jobs` > 1 every call runs in its own spawned process with one torch thread (`threads=1` is passed
to the function), which on a small CPU beats one process with several threads for these tiny models.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Callable


def run_parallel(function: Callable, calls: list[tuple], jobs: int = 1) -> list[Any]:
    """`[function(*args) for args in calls]`, in up to `jobs` processes when jobs > 1 (order kept)."""
    if jobs <= 1 or len(calls) <= 1:
        return [function(*args) for args in calls]
    root = logging.getLogger()
    with ProcessPoolExecutor(max_workers=min(jobs, len(calls)), mp_context=get_context("spawn"),
                             initializer=_log_like_parent, initargs=(root.level,)) as pool:
        futures = [pool.submit(function, *args, threads=1) for args in calls]
        return [future.result() for future in futures]


def _log_like_parent(level: int) -> None:
    """A spawned worker logs progress (encoder steps, run starts) to stderr like the parent process, and
    draws no progress bars of its own (transformers' loading and saving bars): several workers' bars
    would interleave on one terminal; the parent shows the progress."""
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
