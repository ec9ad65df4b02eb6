"""Rankings, galleries and recommendations on tiny hand-made inputs with answers worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inflow.core.errors import InflowError
from inflow.report.galleries import class_gallery, inspection_ids, inspection_page, magnitude_gallery
from inflow.report.rankings import class_top_influences, confusion_pairs, per_test_export, topk_export, training_influence
from inflow.report.recommendations import recommendations
from inflow.report.tables import health_table, sample_table

CLASSES = ["a", "b", "c"]


@pytest.fixture
def samples() -> pd.DataFrame:
    """Train 1..4 and test 100..103; tests 100 and 103 (label a) are mispredicted as b.

    train 1: a -> a, 2: b -> b, 3: a -> b (flipped), 4: c -> c.
    test 100: a -> b (0.95), 101: b -> b, 102: c -> c, 103: a -> b (0.6).
    """
    manifest = pd.DataFrame(
        {
            "sample_id": [1, 2, 3, 4, 100, 101, 102, 103],
            "split": ["train"] * 4 + ["test"] * 4,
            "row": np.arange(8),
            "label": [0, 1, 0, 2, 0, 1, 2, 0],
            "label_name": ["a", "b", "a", "c", "a", "b", "c", "a"],
            "true_label_name": ["a", "b", "b", "c", "a", "b", "c", "a"],
            "flipped": pd.array([False, False, True, False, False, False, False, False], dtype="boolean"),
        }
    )
    preds = pd.DataFrame(
        {
            "sample_id": [1, 2, 3, 4, 100, 101, 102, 103],
            "pred": [0, 1, 1, 2, 1, 1, 2, 1],
            "pred_name": ["a", "b", "b", "c", "b", "b", "c", "b"],
            "confidence": [0.9, 0.8, 0.7, 0.6, 0.95, 0.5, 0.4, 0.6],
        }
    )
    return sample_table(manifest, preds)


@pytest.fixture
def topk() -> pd.DataFrame:
    """Top-2 lists of the four test samples (values exact in binary)."""
    rows = [
        (100, "proponent", 1, 1, 0.5),
        (100, "proponent", 2, 3, 0.25),
        (100, "opponent", 1, 2, -0.5),
        (100, "opponent", 2, 4, -0.125),
        (101, "proponent", 1, 2, 0.75),
        (101, "proponent", 2, 3, 0.5),
        (101, "opponent", 1, 1, -0.25),
        (101, "opponent", 2, 4, -0.25),
        (102, "proponent", 1, 4, 1.0),
        (102, "proponent", 2, 2, 0.125),
        (102, "opponent", 1, 2, -0.25),
        (102, "opponent", 2, 3, -0.125),
        (103, "proponent", 1, 3, 0.5),
        (103, "proponent", 2, 1, 0.25),
        (103, "opponent", 1, 4, -0.75),
        (103, "opponent", 2, 2, -0.25),
    ]
    return pd.DataFrame(rows, columns=["test_id", "kind", "rank", "train_id", "influence"])


@pytest.fixture
def train_summary() -> pd.DataFrame:
    """Column sums over the 4 test samples: train 3 most helpful, train 4 most harmful."""
    return pd.DataFrame(
        {
            "train_id": [1, 2, 3, 4],
            "positive_sum": [1.0, 1.0, 2.0, 1.0],
            "negative_sum": [-0.5, -1.5, -0.25, -1.5],
            "net_influence": [0.5, -0.5, 1.75, -0.5],
            "n_positive": [2, 2, 3, 1],
        }
    )


@pytest.fixture
def images(tmp_path: Path) -> str:
    """images.npy for the 8 samples: 4 x 4 pixels, image ``i`` filled with ``10 * i``."""
    path = tmp_path / "images.npy"
    np.save(path, (10 * np.arange(8, dtype=np.uint8))[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8))
    return str(path)


def test_training_influence_ranks_by_summed_influence(samples, train_summary) -> None:
    t = training_influence(train_summary, samples)
    assert t.train_id.tolist() == [3, 1, 2, 4]  # net 1.75, 0.5, -0.5 (ties by id), -0.5
    assert t.helpful_rank.tolist() == [1, 2, 3, 4] and t.set_index("train_id").harmful_rank.to_dict() == {2: 1, 4: 2, 1: 3, 3: 4}
    assert t.mean_influence.tolist() == [1.75 / 4, 0.5 / 4, -0.5 / 4, -0.5 / 4]
    r = t.set_index("train_id").loc[3]
    assert (r.label, r.pred, bool(r.flipped), r.n_helped, r.positive_sum, r.negative_sum) == ("a", "b", True, 3, 2.0, -0.25)
    with pytest.raises(InflowError, match="does not list the training samples of the manifest"):
        training_influence(train_summary[train_summary.train_id != 4], samples)


def test_class_top_influences_sums_each_class_top_k_entries(samples, topk) -> None:
    t = class_top_influences(topk, samples, CLASSES, 2)
    a_pos = t[(t["class"] == "a") & (t.side == "positive")]
    # class a = tests 100 and 103: proponent sums train 3: 0.25 + 0.5, train 1: 0.5 + 0.25
    assert a_pos.train_id.tolist() == [1, 3] and a_pos.influence.tolist() == [0.75, 0.75] and a_pos.n_tests.tolist() == [2, 2]
    a_neg = t[(t["class"] == "a") & (t.side == "negative")]
    # opponent sums: train 4: -0.125 - 0.75, train 2: -0.5 - 0.25
    assert a_neg.train_id.tolist() == [4, 2] and a_neg.influence.tolist() == [-0.875, -0.75] and a_neg["rank"].tolist() == [1, 2]
    c_pos = t[(t["class"] == "c") & (t.side == "positive")]
    assert c_pos.train_id.tolist() == [4, 2] and c_pos.mean_influence.tolist() == [1.0, 0.125]
    assert t["class"].unique().tolist() == CLASSES


def test_confusion_pairs_count_share_and_implicated_opponents(samples, topk) -> None:
    pairs = confusion_pairs(samples, topk, 2)
    assert len(pairs) == 1
    p = pairs.iloc[0]
    assert (p.true_class, p.pred_class, p["count"], p.share_of_class, p.share_of_errors) == ("a", "b", 2, 1.0, 1.0)
    assert p.test_ids == "100;103"  # most confident mistake first
    # opponents of tests 100 and 103: train 4: -0.125 - 0.75, train 2: -0.5 - 0.25
    assert p.implicated_train_ids == "4;2" and p.implicated_influence == "-0.875;-0.75" and p.implicated_labels == "c;b"
    assert p.implicated_labelled_pred == 1
    assert confusion_pairs(samples[samples.sample_id.isin([1, 2, 101])], topk, 2).empty


def test_csv_exports_carry_labels_and_predictions(samples, topk) -> None:
    out = topk_export(topk, samples)
    assert len(out) == len(topk) and out.influence.tolist() == topk.influence.tolist()
    assert out.iloc[1][["test_label", "test_pred", "train_id", "train_label", "train_pred"]].tolist() == ["a", "b", 3, "a", "b"]
    assert bool(out.iloc[1].train_flipped)
    summary = pd.DataFrame(
        {
            "test_id": [101, 100],
            "positive_sum": [1.0, 2.0],
            "negative_sum": [-0.5, -3.0],
            "net_influence": [0.5, -1.0],
            "n_positive": [3, 1],
        }
    )
    per_test = per_test_export(summary, samples)
    assert per_test.label.tolist() == ["b", "a"] and per_test.correct.tolist() == [True, False]
    assert per_test.net_influence.tolist() == [0.5, -1.0]


def test_recommendations_come_from_the_tables(samples, topk, train_summary) -> None:
    net = pd.DataFrame({"test_id": [100, 101, 102, 103], "net_influence": [-1.0, 1.0, 1.0, -0.5]})
    health = health_table(net, samples, CLASSES)  # overall 50 % (NEEDS ATTENTION); class a 0 %
    training = training_influence(train_summary, samples)
    ranking = pd.DataFrame({"rank": [1, 2, 3, 4], "sample_id": [2, 3, 1, 4]})
    recs = recommendations(health, confusion_pairs(samples, topk, 2), training, ranking, 2).set_index("topic")
    collect = recs.loc["collect data", "recommendation"]
    assert "for a (health 0%, NEEDS ATTENTION; 2 of its test samples predicted as b)" in collect and "b (" not in collect
    assert "health_score.csv" in recs.loc["collect data", "source"] and "confusion_pairs.csv" in recs.loc["collect data", "source"]
    # the top 2 of the ranking are 2 (net -0.5: harmful) and 3 (net 1.75)
    assert recs.loc["review first", "recommendation"].startswith("Review first train 2: 1 of the top 2 mislabel candidates")
    assert "ranking.parquet" in recs.loc["review first", "source"] and "training_influence.csv" in recs.loc["review first", "source"]
    assert recs.loc["cleaning", "recommendation"].startswith("Cleaning is called for: the health score is 50.0% (NEEDS ATTENTION)")
    assert "2 of 4 training samples (50.0%) have a negative net influence" in recs.loc["cleaning", "recommendation"]
    assert "a predicted as b (2 test samples, 100% of the errors); inspect train 4, 2" in recs.loc["confusion", "recommendation"]
    good = health_table(net.assign(net_influence=1.0), samples, CLASSES)
    recs = recommendations(good, confusion_pairs(samples, topk, 2), training, ranking, 2).set_index("topic")
    assert recs.loc["collect data", "recommendation"].startswith("No class needs more data first")
    assert recs.loc["cleaning", "recommendation"].startswith("Cleaning is optional: the health score is 100.0% (EXCELLENT)")


def test_inspection_ids(samples, train_summary) -> None:
    training = training_influence(train_summary, samples)
    assert inspection_ids(training, 1, []) == {"train_samples": [3, 2]}
    assert inspection_ids(training, 3, []) == {"train_samples": [3, 1, 2, 4]}  # a sample on both ends is listed once
    assert inspection_ids(training, 1, [4]) == {"train_samples": [4]}
    with pytest.raises(InflowError, match=r"report.train_samples: \[100\] are not training sample ids"):
        inspection_ids(training, 1, [100])


def test_gallery_cells_are_the_table_rows(samples, topk, train_summary, images) -> None:
    tops = class_top_influences(topk, samples, CLASSES, 2)
    fig, cells = class_gallery("a", tops, samples, images, 2)
    want = tops[tops["class"] == "a"]
    assert cells.panel.tolist() == want.side.tolist() and cells.sample_id.tolist() == want.train_id.tolist()
    assert cells.value.tolist() == want.influence.tolist() and cells.caption.iloc[1].startswith("#2 train 3 (flipped)")
    training = training_influence(train_summary, samples)
    fig, cells = magnitude_gallery(training, samples, images, 2)
    assert cells[cells.panel == "helpful"].sample_id.tolist() == [3, 1] and cells[cells.panel == "harmful"].sample_id.tolist() == [2, 4]
    assert cells[cells.panel == "harmful"].value.tolist() == [-0.5, -0.5]
    fig, cells = inspection_page(3, training, topk, samples, images, 2)
    assert cells.iloc[0][["panel", "sample_id", "value"]].tolist() == ["training", 3, 1.75]
    assert "true label: b" in cells.caption.iloc[0]  # flipped on purpose: the truth is shown
    # train 3 is a proponent of 100 (0.25), 101 (0.5), 103 (0.5) and an opponent of 102 (-0.125)
    assert cells[cells.panel == "helps"].sample_id.tolist() == [101, 103] and cells[cells.panel == "harms"].sample_id.tolist() == [102]
    with pytest.raises(InflowError, match="training sample 100 is not a sample of the training split"):
        inspection_page(100, training, topk, samples, images, 2)
