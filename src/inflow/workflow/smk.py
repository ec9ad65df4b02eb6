"""Glue between a Snakemake ``script:`` and the package: logging and error reporting.

Each workflow script is::

    from inflow.workflow.smk import run
    from inflow.train.loop import train_from_files
    run(snakemake, train_from_files, ...)

``run`` sends stderr and Python logging to the rule's log file, calls the function, and
turns an :class:`~inflow.core.errors.InflowError` into one clear line (in the log and on the
terminal) and exit status 1, with no traceback.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inflow.core.errors import InflowError

log = logging.getLogger("inflow")


def setup_logging(log_path: str | None) -> None:
    """Log to ``log_path`` (or stderr when the rule has no log) at INFO with timestamps.

    Job output stays in its log so parallel jobs do not interleave on the terminal; errors are
    also printed to the terminal by :func:`run`.
    """
    handlers: list[logging.Handler] = [logging.FileHandler(log_path, mode="w") if log_path else logging.StreamHandler(sys.__stderr__)]
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    if log_path:
        sys.stderr = open(log_path, "a", buffering=1)  # warnings and stray prints land in the log too


def run(snakemake: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``func(*args, **kwargs)`` as the body of a rule, with logging and clean errors."""
    log_path = snakemake.log[0] if len(snakemake.log) else None
    setup_logging(log_path)
    rule = getattr(snakemake, "rule", "?")
    log.info("rule %s: start (threads=%s)", rule, snakemake.threads)
    set_threads(snakemake.threads)
    t0 = time.perf_counter()
    try:
        result = func(*args, **kwargs)
    except InflowError as exc:
        log.error("%s", exc)
        print(f"inflow error in rule {rule}: {exc}", file=sys.__stderr__)
        sys.exit(1)
    log.info("rule %s: done in %.1fs", rule, time.perf_counter() - t0)
    return result


def set_threads(threads: int) -> None:
    """Let torch use the cores Snakemake gave the job.

    Only where the rule's module already imported torch: importing it costs seconds, and
    table and picture rules do not need it.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(max(1, int(threads)))


LOCK_HINT = (
    "inflow: another snakemake holds this folder's lock (.snakemake/locks): if one is still running here, "
    "let it finish, a second run over the same results is refused (never --unlock a running one); "
    "if none runs (it was killed), run `snakemake --unlock` once, then start again"
)


def lock_hint(workdir: str | Path) -> str | None:
    """:data:`LOCK_HINT` when Snakemake's lock files of ``workdir`` exist (another run holds them, or a
    killed run left them), else None. Printed by the Snakefile before Snakemake's own lock error, whose
    advice to use ``--unlock`` is wrong while the other run still runs."""
    locks = Path(workdir) / ".snakemake" / "locks"
    return LOCK_HINT if locks.is_dir() and any(locks.glob("*.lock")) else None
