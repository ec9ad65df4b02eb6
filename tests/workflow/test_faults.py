"""Faults a cluster user meets (issue 19), through Snakemake on copies of the shared tiny run.

* An output damaged after it was made (a copy cut short): the next job that reads it stops with
  one line that names the file and says to delete it and rerun; no pyarrow/torch traceback.

Unit-level checks of the same readers, and the disk-full write, are in tests/core/test_io_faults.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import TINY_RUN_ARGS, copy_run, run_snakemake

pytestmark = pytest.mark.e2e


def cut_short(path: Path) -> None:
    """Keep the first half of ``path``'s bytes, as a copy that was interrupted would; the
    modification time stays, so Snakemake sees nothing changed and only the forced job reads it."""
    stat = path.stat()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def error_lines(output: str) -> list[str]:
    """The lines a workflow script prints for an InflowError (one per failed job)."""
    return [line for line in output.splitlines() if line.startswith("inflow error in rule ")]


# (file of results/ cut short, a target whose job reads it first): one of each kind of file
DAMAGED = [
    ("results/data/images.npy", "results/predictions/predictions.parquet"),
    ("results/data/manifest.parquet", "results/predictions/predictions.parquet"),
    ("results/train/checkpoints/epoch_2.pt", "results/factors/epoch_2/test.parquet"),
    ("results/train/checkpoints/epoch_2.json", "results/factors/epoch_2/test.parquet"),
    ("results/factors/epoch_2/train.parquet", "results/curvature/epoch_2.npz"),
    ("results/curvature/epoch_2.npz", "results/curvature/epoch_2/test_left.parquet"),
    ("results/influence/topk.parquet", "results/mislabel/ranking.parquet"),
]


@pytest.mark.parametrize("damaged,target", DAMAGED, ids=[Path(d).name for d, _ in DAMAGED])
def test_a_file_cut_short_stops_the_next_job_in_one_line(tiny_run, tmp_path, damaged, target) -> None:
    wd = copy_run(tiny_run, tmp_path / "run")
    cut_short(wd / damaged)
    proc = run_snakemake(wd, "-f", target, *TINY_RUN_ARGS, check=False, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = error_lines(out)
    assert len(lines) == 1 and damaged in lines[0] and "delete it and rerun" in lines[0], out[-3000:]
    assert "Traceback" not in out and "pyarrow" not in out and "torch/" not in out, out[-3000:]
    assert not (wd / target).exists()  # Snakemake removes the forced job's old output; nothing half-written
    assert not list((wd / target).parent.glob(f".{Path(target).name}.*.part"))
