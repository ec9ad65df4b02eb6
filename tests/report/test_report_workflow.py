"""The report stage end to end on the tiny config: every picture can be built alone, the tables
agree with the core outputs, and `snakemake --report` embeds every picture in one HTML file."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_RUN_ARGS, copy_run, run_snakemake

from inflow.core.io import read_table

FIXED_OUTPUTS = [
    "results/report/influence_report.txt",
    "results/report/tables/misprediction_cross_analysis.csv",
    "results/report/tables/misprediction_cross_summary.csv",
    "results/report/tables/influential_training.csv",
    "results/report/tables/class_influence_matrix.csv",
    "results/report/tables/influence_stats.csv",
    "results/report/tables/health_score.csv",
    "results/report/figures/dashboard.png",
    "results/report/figures/training_curves.png",
    "results/report/figures/class_influence.png",
    "results/report/grids/mispredictions.png",
    "results/report/grids/mislabel_candidates.png",
    "results/report/grids/most_influential.png",
    "results/report/tables/training_influence.csv",
    "results/report/tables/class_top_influences.csv",
    "results/report/tables/confusion_pairs.csv",
    "results/report/tables/recommendations.csv",
    "results/report/tables/topk.csv",
    "results/report/tables/test_summary.csv",
    "results/report/tables/mislabel_ranking.csv",
    "results/report/grids/influence_magnitude.png",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.e2e


def snakemake(workdir: Path, *args: str) -> str:
    """Snakemake on the tiny config (its `report:` section: classes disk and ring, one test sample); stdout + stderr."""
    proc = run_snakemake(workdir, *args, *TINY_RUN_ARGS)
    return proc.stdout + proc.stderr


def selected_pictures(wd: Path) -> list[str]:
    """The per-class, per-test-sample and per-training-sample pictures built for the report config above."""
    test_ids = json.loads((wd / "results/report/selection.json").read_text())["test_samples"]
    train_ids = json.loads((wd / "results/report/inspection.json").read_text())["train_samples"]
    return (
        [f"results/report/figures/classes/{c}.png" for c in ("disk", "ring")]
        + [f"results/report/grids/classes/{c}.png" for c in ("disk", "ring")]
        + [f"results/report/grids/test_samples/test_{i}.png" for i in test_ids]
        + [f"results/report/inspection/train_{i}.png" for i in train_ids]
    )


@pytest.fixture
def workdir(tiny_run: Path) -> Path:
    """The session's finished tiny run: it built one picture alone first (see conftest.tiny_run), then everything."""
    return tiny_run


def test_every_report_output_exists(workdir: Path) -> None:
    selection = json.loads((workdir / "results/report/selection.json").read_text())
    assert selection["classes"] == ["disk", "ring"] and len(selection["test_samples"]) == 1
    for rel in FIXED_OUTPUTS + selected_pictures(workdir):
        path = workdir / rel
        assert path.stat().st_size > 0, rel
        if rel.endswith(".png"):
            assert path.read_bytes().startswith(PNG_MAGIC), rel
    assert sorted(p.name for p in (workdir / "results/report/figures/classes").glob("*.png")) == ["disk.png", "ring.png"]
    for name in ("health_score", "influence_stats", "influential_training", "class_influence_matrix", "misprediction_cross_analysis"):
        assert (workdir / f"results/report/tables/{name}.parquet").exists(), name  # typed copy for later rules
    assert (workdir / "logs/report/dashboard.log").exists() and (workdir / "logs/benchmarks/report/dashboard.tsv").exists()


def test_any_single_picture_can_be_targeted(workdir: Path, tmp_path: Path) -> None:
    workdir = copy_run(workdir, tmp_path / "copy")
    preds = read_table(workdir / "results/predictions/predictions.parquet")
    chosen = set(json.loads((workdir / "results/report/selection.json").read_text())["test_samples"])
    other = int(preds[(preds.split == "test") & ~preds.sample_id.isin(chosen)].sample_id.iloc[0])
    out = snakemake(workdir, f"results/report/grids/test_samples/test_{other}.png", "results/report/figures/classes/square.png")
    assert (workdir / f"results/report/grids/test_samples/test_{other}.png").read_bytes().startswith(PNG_MAGIC)
    assert (workdir / "results/report/figures/classes/square.png").read_bytes().startswith(PNG_MAGIC)
    jobs = re.findall(r"^(?:local)?rule (\w+):", out, flags=re.M)
    assert sorted(jobs) == ["class_dashboard", "grid_test_sample"], out[-3000:]


def test_tables_agree_with_the_core_outputs(workdir: Path) -> None:
    preds = read_table(workdir / "results/predictions/predictions.parquet").set_index("sample_id")
    cross = pd.read_csv(workdir / "results/report/tables/misprediction_cross_analysis.csv")
    wrong = preds[(preds.split == "test") & (preds.pred != preds.label)]
    assert set(cross.test_id) == set(wrong.index)
    assert (
        cross.same_error == (preds.pred_name.reindex(cross.train_id).to_numpy() == preds.pred_name.reindex(cross.test_id).to_numpy())
    ).all()
    summary = pd.read_csv(workdir / "results/report/tables/misprediction_cross_summary.csv").set_index("kind")
    assert (
        summary.loc["all", "same_error_matches"] == cross.same_error.sum()
        and summary.loc["all", "unique_train"] == cross.train_id.nunique()
    )

    topk = read_table(workdir / "results/influence/topk.parquet")
    influential = pd.read_csv(workdir / "results/report/tables/influential_training.csv")
    assert influential.appearances.sum() == len(topk) and influential.appearances.is_monotonic_decreasing

    net = read_table(workdir / "results/influence/test_summary.parquet").net_influence
    health = pd.read_csv(workdir / "results/report/tables/health_score.csv").set_index("scope")
    assert health.loc["all", "score_pct"] == pytest.approx(100 * (net > 0).mean())
    text = (workdir / "results/report/influence_report.txt").read_text()
    assert f"{health.loc['all', 'score_pct']:.1f}% -> {health.loc['all', 'band']}" in text and "net influence > 0" in text


def test_report_html_embeds_every_picture(workdir: Path, tmp_path: Path) -> None:
    assert "Nothing to be done" in snakemake(workdir, "-n", "review_report")  # the checkpoint does not make later runs rebuild anything
    snakemake(workdir, "--report", str(tmp_path / "report.html"), "review_report")  # the report of everything up to review_report
    html = (tmp_path / "report.html").read_text()
    embedded: dict[str, list[bytes]] = {}
    for _mime, name, data in re.findall(r"data:([\w/+.-]+);charset=[^;]*;filename=([^;]+);base64,([A-Za-z0-9+/=]+)", html):
        embedded.setdefault(name, []).append(base64.b64decode(data))
    for rel in FIXED_OUTPUTS + selected_pictures(workdir):
        content = (workdir / rel).read_bytes()
        assert content in embedded.get(Path(rel).name, []), f"{rel} is not embedded in report.html"
    n_png = len(
        {(name, data) for name, datas in embedded.items() if name.endswith(".png") for data in datas}
    )  # disk.png: dashboard and gallery
    assert n_png == sum(1 for rel in FIXED_OUTPUTS + selected_pictures(workdir) if rel.endswith(".png"))
    for category in ("1. Overview", "2. Mispredictions", "3. Influence", "4. Mislabel candidates", "5. Per class", "9. CSV exports"):
        assert category in html, category
    assert "health score = 100 * (number of test samples with net influence &gt; 0)" in html  # the caption states how it is computed
