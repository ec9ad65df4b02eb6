"""A run killed mid-way resumes to exactly the results of an uninterrupted run; nothing is half-written.

The tiny config runs twice from scratch: once uninterrupted (the reference: the session's shared
run, conftest.tiny_run, with the same one-thread jobs), once killed with
SIGKILL (snakemake and all its jobs: the whole process group) during training and again
during the influence tiles (influence.mode fused: each tile_topk job sums every checkpoint), then resumed. The two runs' top-k tables and mislabel rankings
must be identical, which also shows that two runs from scratch with one seed agree on CPU.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY_RUN_ARGS, run_snakemake, snakemake_command

# Only what the comparison needs: keeps the test independent of report/replay rules.
TARGETS = ["results/influence/topk.parquet", "results/influence/test_summary.parquet", "results/mislabel/ranking.parquet"]
COMPARED = [
    "results/influence/topk.parquet",
    "results/influence/test_summary.parquet",
    "results/influence/self_influence.parquet",
    "results/mislabel/ranking.parquet",
]
TIMEOUT = 900


pytestmark = pytest.mark.e2e


def command(workdir: Path, *args: str) -> list[str]:
    """The shared run's invocation (one thread per job), so that the results can be compared bit for bit."""
    return snakemake_command(workdir, *args, *TINY_RUN_ARGS)


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_snakemake(workdir, *args, *TINY_RUN_ARGS, check=check, timeout=TIMEOUT)


def run_until_killed(workdir: Path, ready) -> str:
    """Start snakemake in its own session, SIGKILL its whole process group once ``ready()``; return its output."""
    out = workdir / f"killed_{time.monotonic_ns()}.txt"
    with open(out, "w") as fh:
        proc = subprocess.Popen(command(workdir, *TARGETS), cwd=workdir, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + TIMEOUT
            while not ready():
                if proc.poll() is not None:
                    raise AssertionError(f"snakemake ended (rc {proc.returncode}) before the kill point:\n{out.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError("kill point not reached in time")
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out.read_text()


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def check_no_partial_files(workdir: Path) -> list[str]:
    """Every visible file under results/ must be complete and readable; returns the hidden temp files found."""
    hidden = []
    for f in sorted((workdir / "results").rglob("*")):
        if not f.is_file():
            continue
        if f.name.startswith("."):
            hidden.append(str(f.relative_to(workdir)))
            continue
        if f.suffix == ".parquet":
            pq.read_table(f)
        elif f.suffix == ".npy":
            np.load(f)
        elif f.suffix == ".npz":
            with np.load(f) as z:
                [z[k] for k in z.files]
        elif f.suffix == ".pt":
            torch.load(f, weights_only=True)
        elif f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".csv":
            pd.read_csv(f)
    return hidden


def unlock_after_kill(workdir: Path) -> None:
    """The next snakemake refuses with a one-line hint to run --unlock (a killed run leaves its lock); do that."""
    locked = snakemake(workdir, *TARGETS, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr, locked.stdout + locked.stderr
    snakemake(workdir, "--unlock")


def read_results(workdir: Path) -> dict[str, pd.DataFrame]:
    return {rel: pd.read_parquet(workdir / rel) for rel in COMPARED}


@pytest.fixture
def reference(tiny_run: Path) -> dict:
    """The uninterrupted run's results: the session's shared tiny run."""
    res: dict = read_results(tiny_run)
    res["metrics"] = json.loads((tiny_run / "results/mislabel/mislabel_metrics.json").read_text())
    return res


def test_killed_runs_resume_to_identical_results(reference, tmp_path) -> None:
    wd = tmp_path

    # 1. Kill during training, after the epoch-2 checkpoint was written and while epoch 3 runs.
    run_until_killed(wd, lambda: "epoch 3: " in text(wd / "logs/train.log"))
    assert "rule train: done" not in text(wd / "logs/train.log")
    assert not (wd / "results/train/metrics.parquet").exists()
    assert (wd / "results/train/checkpoints/epoch_2.pt").exists()  # the killed job had written part of its outputs
    check_no_partial_files(wd)

    # 2. Resume; kill again once one influence tile is done and another has started.
    unlock_after_kill(wd)

    def tiles_underway() -> bool:
        logs = list((wd / "logs/tile_topk").glob("*.log"))
        return len(logs) >= 2 and any("done in" in text(f) for f in logs)

    run_until_killed(wd, tiles_underway)
    assert "rule train: done" in text(wd / "logs/train.log")  # the first resume retrained from scratch
    assert not (wd / "results/influence/topk.parquet").exists()
    done_tiles = [p for p in (wd / "results/influence/tiles").glob("*.npz") if not p.name.startswith(".")]
    assert 1 <= len(done_tiles) < 4
    check_no_partial_files(wd)
    finished = {
        p: p.stat().st_mtime_ns
        for p in [*(wd / "results/train").rglob("*"), *(wd / "results/factors").rglob("*")]
        if p.is_file() and not p.name.startswith(".")
    }

    # 3. Resume to the end: only the unfinished jobs run, and the results equal the uninterrupted run's.
    snakemake(wd, "--unlock")
    final = snakemake(wd, *TARGETS)
    log = final.stdout + final.stderr
    assert not re.search(r"^\s*(local)?rule train:", log, re.M), log[-3000:]
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # finished checkpoints and factors were kept, not redone
    # Unfinished tiles rerun. A tile job that had renamed its file into place but was killed before
    # Snakemake recorded it as finished is incomplete to Snakemake and reruns too (at most --cores 2 in flight).
    reruns = len(re.findall(r"^\s*(local)?rule tile_topk:", log, re.M))
    assert 4 - len(done_tiles) <= reruns <= 4 - len(done_tiles) + 2, (reruns, len(done_tiles))
    results, expected = read_results(wd), reference
    for rel in COMPARED:
        pd.testing.assert_frame_equal(results[rel], expected[rel], check_exact=True, obj=rel)
    assert json.loads((wd / "results/mislabel/mislabel_metrics.json").read_text()) == expected["metrics"]
    assert check_no_partial_files(wd) == []  # leftover temp files of killed jobs are cleaned up by the rerun
