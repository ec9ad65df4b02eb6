"""Faults a cluster user meets (issue 19), through Snakemake on copies of the shared tiny run.

* An output damaged after it was made (a copy cut short): the next job that reads it stops with
  one line that names the file and says to delete it and rerun; no pyarrow/torch traceback.
* A disk that fills up while a factor file or an influence tile is written (injected with
  ``INFLOW_FAULT_DISK_FULL``): the job stops in one line naming the path and the bytes it needs,
  nothing that looks complete is left, and the rerun after space is freed gives identical results.
* A second ``snakemake`` in the same folder while one runs: refused by Snakemake's lock, with
  inflow's one-line hint; the first run finishes with the results of an undisturbed run.

Unit-level checks of the same readers, and the disk-full write, are in tests/core/test_io_faults.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_RUN_ARGS, copy_run, run_snakemake, snakemake_command

from inflow.core.io import DISK_FULL_HOOK, read_table
from inflow.workflow.smk import LOCK_HINT

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


def test_a_damaged_report_selection_stops_the_dag_in_one_line(tiny_run, tmp_path) -> None:
    """The report's selection files (selection.json, inspection.json) are read by Snakemake itself (checkpoints, rules/common.smk) while it
    builds the DAG: a copy cut short names the file and says to delete it, with no json traceback."""
    wd, damaged = copy_run(tiny_run, tmp_path / "run"), "results/report/selection.json"
    cut_short(wd / damaged)
    proc = run_snakemake(wd, "-n", check=False, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{damaged}: not valid JSON (" in out and "delete it and rerun" in out, out[-3000:]
    assert "json/decoder.py" not in out and "JSONDecodeError" not in out, out[-3000:]


# ---- a full disk ----------------------------------------------------------------------------------

INFLUENCE = ["results/influence/topk.parquet", "results/influence/test_summary.parquet", "results/influence/self_influence.parquet"]


def hidden_parts(folder: Path) -> list[Path]:
    """Temporary files of interrupted writes under ``folder``."""
    return sorted(folder.rglob(".*.part"))


def test_disk_full_stops_in_one_line_and_the_rerun_is_identical(tiny_run, tmp_path, monkeypatch) -> None:
    """Epoch 3's factors and every influence result are made again: first the train factor file's
    write meets a full disk, then (its factors made) one influence tile's; then space is freed."""
    wd = copy_run(tiny_run, tmp_path / "run")
    for rel in ("results/factors/epoch_3/train.parquet", *INFLUENCE):
        (wd / rel).unlink()
    for damaged, needs in [
        ("results/factors/epoch_3/train.parquet", r"more than the \d+ bytes written so far"),
        ("results/influence/tiles/tile_0-1.npz", r"more than the \d+ bytes written so far"),
    ]:
        monkeypatch.setenv(DISK_FULL_HOOK, f"*{damaged}")
        proc = run_snakemake(wd, *INFLUENCE, *TINY_RUN_ARGS, check=False, timeout=600)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0
        lines = error_lines(out)
        assert len(lines) == 1, out[-3000:]
        assert re.search(
            rf"{re.escape(damaged)}: disk full while writing it \(it needs {needs}, \d+ bytes are free there\); nothing was kept", lines[0]
        ), lines
        assert "Traceback" not in out
        assert not (wd / damaged).exists() and hidden_parts(wd / "results") == []
    monkeypatch.delenv(DISK_FULL_HOOK)
    run_snakemake(wd, *INFLUENCE, *TINY_RUN_ARGS, timeout=600)
    for rel in INFLUENCE:
        pd.testing.assert_frame_equal(read_table(wd / rel), read_table(tiny_run / rel), check_exact=True, obj=rel)


# ---- two runs at once -----------------------------------------------------------------------------


def test_a_second_run_in_the_same_folder_is_refused(tiny_run, tmp_path) -> None:
    """The first run remakes epoch 3's factors and the influence results; a second one with the same
    targets starts once the first holds the lock, and is refused without touching anything."""
    wd = copy_run(tiny_run, tmp_path / "run")
    for rel in ("results/factors/epoch_3/train.parquet", *INFLUENCE):
        (wd / rel).unlink()
    log = tmp_path / "first.txt"
    with open(log, "w") as fh:
        first = subprocess.Popen(snakemake_command(wd, *INFLUENCE, *TINY_RUN_ARGS), cwd=wd, stdout=fh, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not list((wd / ".snakemake/locks").glob("*.lock")):
                assert first.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the first run never took the lock"
                time.sleep(0.2)
            second = run_snakemake(wd, *INFLUENCE, *TINY_RUN_ARGS, check=False, timeout=300)
            assert first.poll() is None, "the first run ended before the second was refused: the test proves nothing"
            assert first.wait(timeout=900) == 0, log.read_text()[-3000:]
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    out = second.stdout + second.stderr
    assert second.returncode != 0
    assert "Directory cannot be locked" in out and out.count(LOCK_HINT) == 1, out[-3000:]
    assert "Traceback" not in out
    for rel in INFLUENCE:
        pd.testing.assert_frame_equal(read_table(wd / rel), read_table(tiny_run / rel), check_exact=True, obj=rel)
    assert not list((wd / ".snakemake/locks").glob("*.lock"))  # the first run released its lock
