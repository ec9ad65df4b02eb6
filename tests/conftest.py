"""Shared fixtures: small random factor files and a tiny workflow config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inflow.tracin.factors import write_factors

REPO = Path(__file__).resolve().parents[1]


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
