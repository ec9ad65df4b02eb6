"""The replay picture: targets chosen by sample id (replay.target_ids), each beside its most positive
and most negative training images by metagradient; the picture's cells equal the replay top-k."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, TINY_RUN_ARGS, run_snakemake

from inflow.core.io import read_table

pytestmark = pytest.mark.e2e


def test_replay_picture_of_targets_chosen_by_id(tmp_path: Path) -> None:
    extra = tmp_path / "replay.yaml"
    extra.write_text("replay: {enabled: true, epochs: 1, max_targets: 2, group_size: 2, lds_models: 0, target_ids: [15, 4]}\n")
    wd = tmp_path / "run"
    run_snakemake(wd, "results/report/replay/targets.png", "results/report/replay/target_4.png", *TINY_RUN_ARGS, configfiles=[TINY, extra])
    targets = read_table(wd / "results/replay/targets.parquet")
    assert targets.test_id.tolist() == [15, 4]  # replay.target_ids, in its order
    topk = read_table(wd / "results/replay/topk.parquet")
    cells = pd.read_csv(wd / "results/report/replay/targets.csv")
    assert cells[cells.panel == "target"].sample_id.tolist() == [15, 4]
    for (target, kind), block in cells[cells.panel != "target"].groupby(["target_id", "panel"]):
        want = topk[(topk.test_id == target) & (topk.kind == kind)].sort_values("rank").head(8)  # report.neighbours of tiny.yaml: 4
        assert block.sample_id.tolist() == want.train_id.head(len(block)).tolist() and len(block) == 4
        assert block.value.tolist() == pytest.approx(want.influence.head(len(block)).tolist())
        assert (block.value > 0).all() if kind == "proponent" else (block.value < 0).all()
    one = pd.read_csv(wd / "results/report/replay/target_4.csv")
    assert set(one.target_id) == {4} and one.sample_id.tolist() == cells[cells.target_id == 4].sample_id.tolist()
    assert (wd / "results/report/replay/target_4.png").read_bytes().startswith(b"\x89PNG")
    bad = run_snakemake(wd, "results/report/replay/target_5.png", *TINY_RUN_ARGS, configfiles=[TINY, extra], check=False)
    assert bad.returncode != 0 and "test sample 5 is not a replay target ([15, 4])" in bad.stdout + bad.stderr
    assert not (wd / "results/report/replay/target_5.png").exists()
