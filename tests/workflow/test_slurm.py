"""The whole tiny workflow through Snakemake's SLURM executor on a real one-node SLURM cluster.

Skipped where SLURM is not installed. With INFLOW_TEST_SLURM_INSTALL=1 (set by .ci/run) and
root on Debian, the fixture installs Debian's slurmctld/slurmd/munge first. The cluster is
started by tests/slurm/cluster.sh (copied from the project lead's recipe) and stopped after.
The workflow is driven exactly as a user drives it, `snakemake --profile slurm` (the profile
`make` links into ~/.config/snakemake), plus the few settings of this one-node test cluster on
the command line (TEST_CLUSTER).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, copy_run, run_snakemake, snakemake_command

from inflow.core.io import read_table

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
# The test cluster's settings, given on the command line after `--profile slurm`:
TEST_CLUSTER = [
    "--default-resources", "slurm_partition=debug",  # the one partition of tests/slurm/cluster.sh
    "--jobs", "4",
    "--latency-wait", "5",
    "--retries", "0",  # a failure must fail the test, not be retried
    "--max-threads", "1",  # the node has 2 CPUs; 1 thread per job keeps results equal to a local --max-threads 1 run
    "--slurm-status-command", "squeue",  # no slurmdbd: sacct would fail and the plugin would hang
    "--slurm-init-seconds-before-status-checks", "2",
    "--slurm-keep-successful-logs",  # the test checks each job's SLURM log
]  # fmt: skip
LINKED_PROFILE = Path.home() / ".config" / "snakemake" / "slurm" / "config.yaml"
HEAVY_RULES = {
    "prepare_data",
    "train",
    "predict",
    "factors",
    "curvature",
    "precondition",
    "tile_topk",
    "retrain",
    "predict_clean",
}

pytestmark = pytest.mark.slurm


def _sinfo_state() -> str:
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


@pytest.fixture(scope="module")
def slurm_cluster():
    if shutil.which("sinfo") is None:
        can_install = os.environ.get("INFLOW_TEST_SLURM_INSTALL") == "1" and os.geteuid() == 0 and shutil.which("apt-get")
        if not can_install:
            pytest.skip("SLURM is not installed (set INFLOW_TEST_SLURM_INSTALL=1 as root on Debian to install it)")
        subprocess.run(["bash", str(CLUSTER), "install"], check=True, capture_output=True)
    started = False
    if not _sinfo_state():  # a cluster that answers (idle, or busy with another run's jobs) is used as it is, never restarted
        proc = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"could not start the local SLURM cluster: {proc.stderr[-500:]}")
        started = True
    yield
    if started:
        subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True)


def test_dry_run_with_the_cluster_profile_needs_no_slurm(tmp_path) -> None:
    proc = run_snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "slurm"), cores=None)
    assert "tile_topk" in proc.stdout


def test_workflow_runs_as_slurm_jobs_and_matches_a_local_run(slurm_cluster, tiny_run, tmp_path) -> None:
    if not LINKED_PROFILE.is_file() or LINKED_PROFILE.read_text() != (REPO / "profiles/slurm/config.yaml").read_text():
        pytest.fail(f"{LINKED_PROFILE} is not this repository's profiles/slurm/config.yaml; run `make` (README set-up) first")
    t0 = time.perf_counter()
    slurm = run_snakemake(tmp_path / "slurm", "--profile", "slurm", *TEST_CLUSTER, cores=None)
    wall = time.perf_counter() - t0
    print(f"SLURM run wall time: {wall:.0f}s")
    out = slurm.stdout + slurm.stderr

    # every heavy rule really went through sbatch: a SLURM job id per job, and the job's own log
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S+/slurm_logs/rule_(\w+)/\S+\.log)\)", out)
    rules_seen = {rule for _, _, rule in submitted}
    assert HEAVY_RULES <= rules_seen, f"rules not submitted to SLURM: {HEAVY_RULES - rules_seen}\n{out[-3000:]}"
    remote_jobs = len(re.findall(r"^rule \w+:", out, flags=re.MULTILINE))  # localrules print as "localrule x:"
    assert len({job_id for job_id, _, _ in submitted}) == len(submitted) == remote_jobs, (
        f"{len(submitted)} sbatch job ids for {remote_jobs} jobs"
    )
    assert all(Path(log).is_file() for _, log, _ in submitted)
    assert (
        not {"accumulate_topk", "mislabel", "self_influence", "review", "clean_comparison", "dashboard"} & rules_seen
    )  # localrules stayed local

    # the same results as a local run with the same thread counts (the session's shared run: --max-threads 1)
    for rel in ("results/influence/topk.parquet", "results/influence/self_influence.parquet", "results/mislabel/ranking.parquet"):
        a, b = read_table(tmp_path / "slurm" / rel), read_table(tiny_run / rel)
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=rel)
    rel = "results/clean/comparison.csv"  # the retrained models too
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "slurm" / rel), pd.read_csv(tiny_run / rel), check_exact=True, obj=rel)
    # the checkpoints saw a CUDA_VISIBLE_DEVICES without a GPU and fell back to the CPU
    assert "device cpu" in (tmp_path / "slurm" / "logs" / "train.log").read_text()


INFLUENCE = ["results/influence/topk.parquet", "results/influence/test_summary.parquet", "results/influence/self_influence.parquet"]


def _job_state(job_id: str) -> str:
    """SLURM state of one job (``RUNNING``, ``PENDING``, ...; empty once squeue forgets it)."""
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def _node() -> str:
    return subprocess.run(["sinfo", "-h", "-o", "%N"], capture_output=True, text=True).stdout.strip()


def _set_node(state: str) -> None:
    """``scontrol update State=...`` of the one node; RESUME is a no-op once the node is back by itself."""
    proc = subprocess.run(
        ["scontrol", "update", f"NodeName={_node()}", f"State={state}", "Reason=inflow-test"], capture_output=True, text=True
    )
    assert proc.returncode == 0 or state == "RESUME", proc.stderr


def _kill_job_processes(job_ids: list[str]) -> None:
    """SIGKILL every process of these SLURM jobs, as losing their node would. On this localhost node
    (proctrack/linuxproc) SLURM marks the jobs NODE_FAIL but leaves their processes running."""
    wanted = {f"SLURM_JOB_ID={job}".encode() for job in job_ids}
    for proc in Path("/proc").iterdir():
        try:
            env = set((proc / "environ").read_bytes().split(b"\0"))
            if proc.name.isdigit() and wanted & env:
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


@pytest.mark.parametrize("fault", ["scancel", "node_lost"])
def test_a_tile_job_cancelled_or_on_a_lost_node_is_retried_to_the_undisturbed_results(slurm_cluster, tiny_run, tmp_path, fault) -> None:
    """Issue 19: in the middle of a ``--profile slurm`` run with retries, one running tile_topk job
    (influence.mode fused: every checkpoint's products of one tile) is cancelled (``scancel``), or the
    node under it is lost (``scontrol update State=DOWN``, which kills its jobs as NODE_FAIL, then
    ``RESUME`` after 3 s); the run finishes by itself and the top-k, summary and self-influence equal
    the shared local run's.

    Only epoch 3's train factors and the influence results are made again (on a copy of the shared
    run), so the run is some 15 SLURM jobs; only this run's own jobs are touched."""
    wd = copy_run(tiny_run, tmp_path / "run")
    for rel in ("results/factors/epoch_3/train.parquet", *INFLUENCE):
        (wd / rel).unlink()
    log = tmp_path / "snakemake.txt"
    with open(log, "w") as fh:
        run = subprocess.Popen(
            snakemake_command(
                wd, "--profile", "slurm", *TEST_CLUSTER, "--retries", "1", *INFLUENCE, cores=None
            ),  # targets after --configfile
            cwd=wd,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        try:
            hit, deadline = None, time.monotonic() + 900
            while hit is None:
                assert run.poll() is None, f"the run ended before a tile job could be hit:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "no tile_topk job ever ran"
                tiles = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S+/rule_tile_topk/", log.read_text())
                hit = next((job for job in tiles if _job_state(job) == "RUNNING"), None)
                time.sleep(0.5)
            time.sleep(2)  # mid-run: the job's own snakemake has started
            if fault == "scancel":
                subprocess.run(["scancel", hit], check=True)
            else:
                _set_node("DOWN")
                _kill_job_processes(re.findall(r"submitted with SLURM jobid (\d+)", log.read_text()))  # this run's jobs only
                time.sleep(3)
                _set_node("RESUME")
            assert run.wait(timeout=1200) == 0, log.read_text()[-3000:]
        finally:
            if fault == "node_lost" and "down" in _sinfo_state():
                _set_node("RESUME")
            if run.poll() is None:
                run.kill()
                run.wait()
                own_jobs = re.findall(r"submitted with SLURM jobid (\d+)", log.read_text())
                subprocess.run(["scancel", *own_jobs], capture_output=True)  # this run's jobs only: the cluster may be shared
    out = log.read_text()
    tile_jobs = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S+/rule_tile_topk/", out)
    assert hit in tile_jobs
    if fault == "scancel":
        assert "Trying to restart job" in out, out[-3000:]
        assert len(tile_jobs) == 4 + 1, tile_jobs  # 4 tiles, and the retry
    else:  # every job running on the lost node failed: Snakemake resubmits each (or SLURM requeued it)
        assert len(tile_jobs) >= 4 and ("Trying to restart job" in out or len(tile_jobs) == 4), out[-3000:]
    for rel in INFLUENCE:
        pd.testing.assert_frame_equal(read_table(wd / rel), read_table(tiny_run / rel), check_exact=True, obj=rel)


def test_a_job_over_its_memory_is_killed_and_retried_with_more(slurm_cluster, tiny_run, tmp_path) -> None:
    """Issue 19: every tile_topk job's first attempt asks SLURM for 200 MB (``--set-resources`` with an
    attempt expression, as a user would undersize a rule), far below what it uses; SLURM kills it
    (memory is enforced: tests/slurm/cluster.sh), Snakemake resubmits it with 4000 MB, and the run ends
    by itself with the results of the undisturbed local run."""
    wd = copy_run(tiny_run, tmp_path / "run")
    for rel in INFLUENCE:
        (wd / rel).unlink()
    undersized = ["--set-resources", "tile_topk:mem_mb=200+3800*(attempt>1)"]
    proc = run_snakemake(wd, "--profile", "slurm", *TEST_CLUSTER, "--retries", "1", *undersized, "--", *INFLUENCE, cores=None, timeout=1200)
    out = proc.stdout + proc.stderr
    tile_jobs = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S+/rule_tile_topk/", out)
    assert len(tile_jobs) == 2 * 4, tile_jobs  # 4 tiles, each killed once and retried once
    assert out.count("Trying to restart job") >= 4, out[-3000:]
    killed = [log for log in (wd / ".snakemake/slurm_logs/rule_tile_topk").rglob("*.log") if "memory limit" in log.read_text().lower()]
    assert killed, "no tile_topk job's SLURM log says it was killed for memory"
    for rel in INFLUENCE:
        pd.testing.assert_frame_equal(read_table(wd / rel), read_table(tiny_run / rel), check_exact=True, obj=rel)
