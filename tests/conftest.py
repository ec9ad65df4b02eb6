"""Shared test helpers: the one way tests run Snakemake, the shared finished tiny run, random
factor files and the brute-force TracIn reference.

Tests that run the workflow are marked ``e2e`` (``make test-fast`` leaves them out). Tests that
only read a finished run use the session fixture :func:`tiny_run`; a test that changes a run
works on a copy (:func:`copy_run`).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml

from inflow.core.io import read_table
from inflow.data.prepare import prepare_data
from inflow.tracin.factors import write_factors
from inflow.tracin.influence import influence_shard
from inflow.tracin.topk import accumulate_topk, tile_topk
from inflow.workflow.config import schema_errors, semantic_errors, version_schema_errors

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"


def snakemake_command(workdir: Path, *args: str, configfiles: Sequence[Path | str] = (TINY,), cores: int | None = 2) -> list[str]:
    """``python -m snakemake`` on the repository's Snakefile in ``workdir`` with ``configfiles`` (merged in order).

    ``-s`` picks up profiles/default (rerun-incomplete) beside the Snakefile, as a user's run does.
    """
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    if configfiles:
        cmd += ["--configfile", *map(str, configfiles)]
    if cores is not None:
        cmd += ["--cores", str(cores)]
    return cmd + list(args)


def run_snakemake(
    workdir: Path,
    *args: str,
    configfiles: Sequence[Path | str] = (TINY,),
    cores: int | None = 2,
    check: bool = True,
    timeout: float = 1500,
) -> subprocess.CompletedProcess:
    """Run Snakemake (see :func:`snakemake_command`); with ``check``, fail the test with the end of its output."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    cmd = snakemake_command(workdir, *args, configfiles=configfiles, cores=cores)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def dry_run_jobs(workdir: Path, *targets: str, configfiles: Sequence[Path | str] = (TINY,)) -> dict[str, int]:
    """Rule -> job count that ``snakemake -n`` plans for ``targets`` ({} if nothing to do)."""
    return job_counts(run_snakemake(workdir, "-n", *targets, configfiles=configfiles).stdout)


SCHEMA = str(REPO / "schemas" / "config.schema.yaml")


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in, nested sections key by key (a copy)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def config_errors(over: dict) -> list[str]:
    """What rules/common.smk reports for the tiny config with ``over`` applied: schema lines, else semantic lines."""
    from snakemake.utils import validate

    cfg = merge(yaml.safe_load(TINY.read_text()), over)
    lines = schema_errors(cfg, SCHEMA)
    if lines:
        return lines
    validate(cfg, SCHEMA, set_default=True)
    return version_schema_errors(cfg, SCHEMA) + semantic_errors(cfg)


def synthetic_data(folder: Path, image_size: int, n_train: int, n_test: int, noise_rate: float, val_fraction: float) -> tuple[str, str]:
    """The built-in synthetic dataset, prepared in ``folder``: (images.npy, manifest.parquet) paths."""
    cfg = {
        "source": "synthetic",
        "image_size": image_size,
        "noise_rate": noise_rate,
        "val_fraction": val_fraction,
        "synthetic": {"n_train": n_train, "n_test": n_test},
    }
    images, manifest = str(folder / "images.npy"), str(folder / "manifest.parquet")
    prepare_data(cfg, 0, images, manifest, str(folder / "skipped.csv"), str(folder / "classes.json"))
    return images, manifest


@pytest.fixture(scope="session")
def images_8px(tmp_path_factory) -> tuple[str, str]:
    """(images.npy, manifest.parquet): 48 training and 12 test images of 8 x 8 pixels, 10% labels flipped (read-only)."""
    return synthetic_data(tmp_path_factory.mktemp("images_8px"), image_size=8, n_train=48, n_test=12, noise_rate=0.1, val_fraction=0.0)


# One thread per job: the results then equal a SLURM run's (tests/workflow/test_slurm.py passes --max-threads 1)
# and a killed-and-resumed run's (tests/workflow/test_resume.py), bit for bit.
TINY_RUN_ARGS = ("--max-threads", "1")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny config run once for the whole session, the way a user builds it up: one picture
    alone first (only data and training run), then one factor file (no influence yet), then the
    whole DAG with the report and the cleaning branch. Read-only: copy it to change anything."""
    wd = tmp_path_factory.mktemp("tiny_run")
    run_snakemake(wd, "results/report/figures/training_curves.png", *TINY_RUN_ARGS)
    assert (wd / "results/report/figures/training_curves.png").read_bytes().startswith(b"\x89PNG")
    assert not (wd / "results/factors").exists()  # only what that picture needs: data and training
    run_snakemake(wd, "results/factors/epoch_2/test.parquet", *TINY_RUN_ARGS)
    assert (wd / "results/factors/epoch_2/test.parquet").exists()
    assert not (wd / "results/influence").exists()  # only what that one target needs
    run_snakemake(wd, *TINY_RUN_ARGS)
    return wd


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a finished run (results, logs and Snakemake's records, modification times kept) at ``dest``."""
    shutil.copytree(run, dest, symlinks=True)
    return dest


@pytest.fixture
def one_thread():
    """Tiny float64 problems are fastest on one thread (and the CI machine is small): torch uses one while the test runs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def factor_files(tmp_path: Path):
    """Random factors for 3 checkpoints: returns (paths dict, arrays dict, lrs).

    ``paths[(epoch, split)]`` is a Parquet factor file; ``arrays[(epoch, split)] = (ids, a, e)``.
    """
    rng = np.random.default_rng(0)
    n = {"train": 57, "test": 23}
    ids = {"train": np.arange(100, 157), "test": np.arange(500, 523)}
    d_a, d_out = 9, 4
    lrs = {3: 0.01, 6: 0.005, 9: 0.0025}
    paths, arrays = {}, {}
    for epoch, lr in lrs.items():
        for split in ("train", "test"):
            a = rng.normal(size=(n[split], d_a)).astype(np.float32)
            e = rng.normal(size=(n[split], d_out)).astype(np.float32)
            path = tmp_path / f"epoch_{epoch}_{split}.parquet"
            write_factors(str(path), ids[split], a, e, {"epoch": epoch, "tracin_lr": lr, "split": split})
            paths[(epoch, split)] = str(path)
            arrays[(epoch, split)] = (ids[split], a, e)
    return paths, arrays, lrs


def dense_tracin(arrays, lrs) -> np.ndarray:
    """Brute-force reference: ``sum_c lr_c * <vec(e a^T)_test, vec(e a^T)_train>``, (n_test, n_train) float64.

    Builds every per-sample weight gradient explicitly; no ghost trick.
    """
    total = None
    for epoch, lr in lrs.items():
        _, a_q, e_q = arrays[(epoch, "test")]
        _, a_r, e_r = arrays[(epoch, "train")]
        g_q = np.einsum("no,ni->noi", e_q.astype(np.float64), a_q.astype(np.float64)).reshape(len(a_q), -1)
        g_r = np.einsum("no,ni->noi", e_r.astype(np.float64), a_r.astype(np.float64)).reshape(len(a_r), -1)
        block = lr * g_q @ g_r.T
        total = block if total is None else total + block
    return total


def job_counts(dry_run_stdout: str) -> dict[str, int]:
    """Rule -> job count from the "job count" table of ``snakemake -n`` output ({} if nothing to do)."""
    jobs: dict[str, int] = {}
    in_stats = False
    for line in dry_run_stdout.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_stats = True
        elif in_stats and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            jobs[parts[0]] = int(parts[1])
    return jobs


def run_tiled(paths, lrs, tmp_path, n_test_tiles, n_train_tiles, k, memory_mb=1024):
    """The workflow's influence stage on ``factor_files``: shards per checkpoint and tile, tile top-k, accumulation; (topk, summary)
    tables (the per-training-sample summary is left in ``tmp_path / "train_summary.parquet"``)."""
    tiles = {}
    for q in range(n_test_tiles):
        for r in range(n_train_tiles):
            tile = f"{q}-{r}"
            shards = []
            for epoch in lrs:
                shard = tmp_path / f"shard_{epoch}_{tile}.npy"
                influence_shard(paths[(epoch, "test")], paths[(epoch, "train")], tile, n_test_tiles, n_train_tiles, str(shard), memory_mb)
                shards.append(str(shard))
            tiles[(q, r)] = str(tmp_path / f"tile_{tile}.npz")
            tile_topk(shards, paths[(max(lrs), "train")], tile, n_train_tiles, k, tiles[(q, r)], memory_mb)
    accumulate_topk(
        tiles,
        paths[(max(lrs), "test")],
        n_test_tiles,
        n_train_tiles,
        k,
        str(tmp_path / "topk.parquet"),
        str(tmp_path / "summary.parquet"),
        str(tmp_path / "train_summary.parquet"),
    )
    return read_table(tmp_path / "topk.parquet"), read_table(tmp_path / "summary.parquet")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that reads the shared tiny run is end-to-end, whatever its module says (``make test-fast`` skips it)."""
    for item in items:
        if "tiny_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
