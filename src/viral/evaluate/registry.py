"""The benchmark registry: a plain dict from name to constructor."""

from __future__ import annotations

from typing import Callable

from viral.evaluate.base import Benchmark
from viral.evaluate.cvbench import CVBench
from viral.evaluate.mme import MME
from viral.evaluate.mmstar import MMStar
from viral.evaluate.mmvp import MMVP
from viral.evaluate.pope import POPE
from viral.evaluate.shapes import ShapesBench
from viral.evaluate.whatsup import WhatsUp

BENCHMARKS: dict[str, Callable[[], Benchmark]] = {
    "cvbench": CVBench,
    "whatsup": WhatsUp,
    "mmvp": MMVP,
    "pope": POPE,
    "mme": MME,
    "mmstar": MMStar,
    "shapes": ShapesBench,
}


def get_benchmark(name: str) -> Benchmark:
    """A fresh benchmark by name; a KeyError listing the known names otherwise."""
    try:
        constructor = BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}") from None
    return constructor()
