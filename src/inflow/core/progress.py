"""Progress reporting that reads well in a rule's log file.

A terminal progress bar redraws one line many times; in a log it becomes noise. ``track``
logs a line at roughly every 10% with throughput and an ETA instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def track(
    items: Iterable[T],
    total: int,
    desc: str,
    logger: logging.Logger,
    unit: str = "it",
    every: float = 0.1,
) -> Iterator[T]:
    """Yield from ``items``, logging ``desc: i/total (pct) rate unit/s, ETA`` about every ``every``."""
    start = time.perf_counter()
    step = max(1, int(total * every))
    for i, item in enumerate(items, start=1):
        yield item
        if i % step == 0 or i == total:
            elapsed = time.perf_counter() - start
            rate = i / elapsed if elapsed > 0 else float("inf")
            eta = (total - i) / rate if rate > 0 else 0.0
            logger.info("%s: %d/%d (%3.0f%%) %.1f %s/s, ETA %.0fs", desc, i, total, 100 * i / max(total, 1), rate, unit, eta)
