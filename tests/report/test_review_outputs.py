"""The reviewer's outputs of the tiny run checked against the tables they come from: training samples
by summed influence, per-class galleries, inspection pages, confusion pairs, recommendations and the
CSV exports; the pictures through their sidecar CSVs (the ids and values of their captions)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_RUN_ARGS, copy_run, run_snakemake

from inflow.core.io import read_table

pytestmark = pytest.mark.e2e
NEIGHBOURS = 4  # report.neighbours of tests/configs/tiny.yaml


@pytest.fixture
def wd(tiny_run: Path) -> Path:
    return tiny_run


def test_training_influence_is_the_column_sums(wd: Path) -> None:
    train_summary = read_table(wd / "results/influence/train_summary.parquet")
    test_summary = read_table(wd / "results/influence/test_summary.parquet")
    # the matrix's column sums and row sums add up to the same total
    assert train_summary.net_influence.sum() == pytest.approx(test_summary.net_influence.sum(), rel=1e-4)
    assert train_summary.positive_sum.sum() == pytest.approx(test_summary.positive_sum.sum(), rel=1e-4)
    preds = read_table(wd / "results/predictions/predictions.parquet")
    assert sorted(train_summary.train_id) == sorted(preds[preds.split == "train"].sample_id)
    table = pd.read_csv(wd / "results/report/tables/training_influence.csv")
    assert table.net_influence.is_monotonic_decreasing and table.helpful_rank.tolist() == list(range(1, len(table) + 1))
    t = table.set_index("train_id")
    s = train_summary.set_index("train_id")
    assert np.allclose(t.net_influence.reindex(s.index), s.net_influence) and (t.n_helped.reindex(s.index) == s.n_positive).all()
    assert np.allclose(t.mean_influence, t.net_influence / len(test_summary))
    assert t.harmful_rank.idxmin() == t.net_influence.idxmin()
    # the gallery of the two ends shows the table's first and last rows
    cells = pd.read_csv(wd / "results/report/grids/influence_magnitude.csv")
    assert cells[cells.panel == "helpful"].sample_id.tolist() == table.train_id.head(NEIGHBOURS).tolist()
    assert cells[cells.panel == "harmful"].sample_id.tolist() == table.train_id.iloc[::-1].head(NEIGHBOURS).tolist()
    assert np.allclose(cells.value, t.net_influence.reindex(cells.sample_id))


def test_class_galleries_show_the_largest_summed_top_k_influences(wd: Path) -> None:
    topk = read_table(wd / "results/influence/topk.parquet")
    labels = read_table(wd / "results/data/manifest.parquet").set_index("sample_id").label_name
    tops = pd.read_csv(wd / "results/report/tables/class_top_influences.csv")
    for cls in ("disk", "ring"):
        mine = topk[labels.reindex(topk.test_id).to_numpy() == cls]
        cells = pd.read_csv(wd / f"results/report/grids/classes/{cls}.csv")
        for side, kind in (("positive", "proponent"), ("negative", "opponent")):
            sums = mine[mine.kind == kind].groupby("train_id").influence.sum()
            want = (sums.sort_values(ascending=False) if side == "positive" else sums.sort_values()).head(NEIGHBOURS)
            got = cells[cells.panel == side]
            assert got.sample_id.tolist() == want.index.tolist(), (cls, side)
            assert np.allclose(got.value, want.to_numpy())
            row = tops[(tops["class"] == cls) & (tops.side == side)]
            assert row.train_id.tolist() == want.index.tolist()
            assert all(f"train {i}" in c for i, c in zip(got.sample_id, got.caption))


def test_inspection_pages_of_the_most_helpful_and_harmful(wd: Path) -> None:
    table = pd.read_csv(wd / "results/report/tables/training_influence.csv")
    ids = json.loads((wd / "results/report/inspection.json").read_text())["train_samples"]
    assert ids[:3] == table.train_id.head(3).tolist()  # report.inspect_samples: 3 (default)
    assert set(ids[3:]) <= set(table.train_id.tail(3))
    topk = read_table(wd / "results/influence/topk.parquet")
    for train_id in ids:
        cells = pd.read_csv(wd / f"results/report/inspection/train_{train_id}.csv")
        assert cells.iloc[0].panel == "training" and cells.iloc[0].sample_id == train_id
        assert cells.iloc[0].value == pytest.approx(table.set_index("train_id").net_influence[train_id])
        for panel, kind in (("helps", "proponent"), ("harms", "opponent")):
            mine = topk[(topk.train_id == train_id) & (topk.kind == kind)]
            want = (mine.sort_values("influence", ascending=kind == "opponent")).head(NEIGHBOURS)
            got = cells[cells.panel == panel]
            assert got.sample_id.tolist() == want.test_id.tolist() and np.allclose(got.value, want.influence)


def test_confusion_pairs_and_recommendations(wd: Path) -> None:
    preds = read_table(wd / "results/predictions/predictions.parquet")
    labels = read_table(wd / "results/data/manifest.parquet").set_index("sample_id").label_name
    test = preds[preds.split == "test"].assign(label_name=lambda d: labels.reindex(d.sample_id).to_numpy())
    wrong = test[test.pred != test.label]
    pairs = pd.read_csv(wd / "results/report/tables/confusion_pairs.csv")
    counts = wrong.groupby(["label_name", "pred_name"]).size()
    assert pairs["count"].sum() == len(wrong) and pairs["count"].is_monotonic_decreasing
    for r in pairs.itertuples():
        assert counts[(r.true_class, r.pred_class)] == r.count
        assert r.share_of_class == pytest.approx(r.count / (test.label_name == r.true_class).sum())
        ids = [int(i) for i in r.test_ids.split(";")]
        assert sorted(ids) == sorted(wrong[(wrong.label_name == r.true_class) & (wrong.pred_name == r.pred_class)].sample_id)
    topk = read_table(wd / "results/influence/topk.parquet")
    top = pairs.iloc[0]
    opp = topk[(topk.kind == "opponent") & topk.test_id.isin([int(i) for i in top.test_ids.split(";")])]
    want = opp.groupby("train_id").influence.sum().sort_values(kind="stable").head(NEIGHBOURS)
    assert [int(i) for i in top.implicated_train_ids.split(";")] == want.index.tolist()

    recs = pd.read_csv(wd / "results/report/tables/recommendations.csv").set_index("topic")
    assert recs.index.tolist() == ["collect data", "review first", "cleaning", "confusion"]
    assert all("results/" in src for src in recs.source)  # each names its table(s)
    health = pd.read_csv(wd / "results/report/tables/health_score.csv").set_index("scope")
    h = health.loc["all"]
    assert f"{h.score_pct:.1f}% ({h.band})" in recs.loc["cleaning", "recommendation"]
    weakest = health.drop("all").rename_axis("name").sort_values(["score_pct", "name"], kind="stable")  # ties by class name, as the code
    if (weakest.score_pct < 80).any():
        assert f"for {weakest.index[0]} (health {weakest.score_pct.iloc[0]:.0f}%" in recs.loc["collect data", "recommendation"]
    ranking = read_table(wd / "results/mislabel/ranking.parquet")
    first = re.search(r"train (\d+)", recs.loc["review first", "recommendation"]).group(1)
    assert int(first) in ranking.sample_id.head(round(0.1 * len(ranking))).tolist()  # clean.budget: 0.1
    assert f"{top.true_class} predicted as {top.pred_class}" in recs.loc["confusion", "recommendation"]
    text = (wd / "results/report/influence_report.txt").read_text()
    assert (
        "Findings and recommendations" in text
        and "cleaning: Cleaning is" in text
        and "[from results/report/tables/health_score.csv" in text
    )


def test_csv_exports_equal_the_parquet_tables(wd: Path) -> None:
    topk = read_table(wd / "results/influence/topk.parquet")
    csv = pd.read_csv(wd / "results/report/tables/topk.csv")
    assert csv[["test_id", "kind", "rank", "train_id"]].equals(topk[["test_id", "kind", "rank", "train_id"]])
    assert np.allclose(csv.influence, topk.influence) and csv.train_label.notna().all()
    summary = read_table(wd / "results/influence/test_summary.parquet")
    per_test = pd.read_csv(wd / "results/report/tables/test_summary.csv")
    assert per_test.test_id.tolist() == summary.test_id.tolist() and np.allclose(per_test.net_influence, summary.net_influence)
    preds = read_table(wd / "results/predictions/predictions.parquet").set_index("sample_id")
    assert (per_test.correct == (preds.pred.reindex(per_test.test_id) == preds.label.reindex(per_test.test_id)).to_numpy()).all()
    ranking = read_table(wd / "results/mislabel/ranking.parquet")
    exported = pd.read_csv(wd / "results/report/tables/mislabel_ranking.csv")
    assert exported.columns.tolist() == ranking.columns.tolist() and "path" in exported.columns
    assert exported.sample_id.tolist() == ranking.sample_id.tolist() and np.allclose(exported.score, ranking.score)


def test_any_gallery_or_inspection_page_alone(wd: Path, tmp_path: Path) -> None:
    wd = copy_run(wd, tmp_path / "copy")
    chosen = json.loads((wd / "results/report/inspection.json").read_text())["train_samples"]
    preds = read_table(wd / "results/predictions/predictions.parquet")
    other = int(preds[(preds.split == "train") & ~preds.sample_id.isin(chosen)].sample_id.iloc[0])
    targets = [f"results/report/inspection/train_{other}.png", "results/report/grids/classes/square.png"]
    proc = run_snakemake(wd, *targets, *TINY_RUN_ARGS)
    jobs = re.findall(r"^(?:local)?rule (\w+):", proc.stdout + proc.stderr, flags=re.M)
    assert sorted(jobs) == ["class_gallery", "inspection_page"]
    assert all((wd / t).read_bytes().startswith(b"\x89PNG") for t in targets)
    cells = pd.read_csv(wd / f"results/report/inspection/train_{other}.csv")
    assert cells.iloc[0].sample_id == other
    test_id = int(preds[preds.split == "test"].sample_id.iloc[0])
    bad = run_snakemake(wd, f"results/report/inspection/train_{test_id}.png", *TINY_RUN_ARGS, check=False)
    assert bad.returncode != 0 and f"training sample {test_id} is not a sample of the training split" in bad.stdout + bad.stderr
    assert not (wd / f"results/report/inspection/train_{test_id}.png").exists()
