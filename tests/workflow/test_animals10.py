"""The shipped Animals-10 config (configs/animals10.yaml) on a stand-in folder of the same layout.

Ten class folders with a few tiny images each; the dry run through the SLURM profile shows the
jobs, the runtime the 105-epoch training asks for and the GPUs.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from conftest import REPO, job_counts, run_snakemake
from PIL import Image

ANIMALS = ("cane", "cavallo", "elefante", "farfalla", "gallina", "gatto", "mucca", "pecora", "ragno", "scoiattolo")
CONFIG = REPO / "configs" / "animals10.yaml"

pytestmark = pytest.mark.e2e


def job_resources(dry_run_stdout: str) -> dict[str, list[dict[str, str]]]:
    """Rule -> the ``resources:`` of each of its planned jobs, from ``snakemake -n`` output."""
    jobs: dict[str, list[dict[str, str]]] = {}
    rule = None
    for line in dry_run_stdout.splitlines():
        if m := re.match(r"(?:local)?rule (\w+):", line.strip()):
            rule = m.group(1)
        elif rule and line.strip().startswith("resources:"):
            pairs = [item.split("=", 1) for item in line.strip().removeprefix("resources:").split(",")]
            jobs.setdefault(rule, []).append({k.strip(): v.strip() for k, v in pairs})
            rule = None
    return jobs


def test_animals10_dry_run_plans_the_seeds_run(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for name in ANIMALS:  # 14 images per class: 3 test, 1 val, 10 train (top_k 100 needs 100 training images)
        (tmp_path / "raw-img" / name).mkdir(parents=True)
        for i in range(14):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "raw-img" / name / f"{i}.jpeg")
    path = tmp_path / "path.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"imagefolder": {"path": str(tmp_path / "raw-img")}}}))
    proc = run_snakemake(
        tmp_path / "run", "-n", "--profile", str(REPO / "profiles" / "slurm"), configfiles=[CONFIG, path], cores=None, timeout=600
    )
    counts = job_counts(proc.stdout)
    assert counts["train"] == 1 and counts["factors"] == 20  # 10 checkpoints x {train, test}
    assert "influence_shard" not in counts and counts["tile_topk"] == 8  # influence.mode fused: 2 x 4 tiles
    assert "retrain" not in counts  # clean.enabled: false
    resources = job_resources(proc.stdout)
    (train,) = resources["train"]
    assert train["runtime"] == str(105 * 10) and train["gpu"] == "1"  # train.epochs x runtime_per_epoch minutes, one GPU
    for rule in ("predict", "factors", "tile_topk"):
        assert all(job.get("gpu") == "1" for job in resources[rule]), rule
    assert "gpu" not in resources["prepare_data"][0] and "gpu" not in resources["mislabel"][0]
    assert not (tmp_path / "run" / "results").exists()
