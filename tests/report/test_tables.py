"""Report tables on tiny hand-made inputs with answers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from inflow.core.errors import InflowError
from inflow.report.tables import (
    HEALTH_DEFINITION,
    class_influence_matrix,
    cross_reference,
    cross_summary,
    describe,
    health_band,
    health_score,
    health_table,
    influence_stats,
    influential_training,
    key_findings,
    most_harmful,
    most_helpful,
    sample_table,
    select_items,
    text_summary,
)

CLASSES = ["a", "b", "c"]


@pytest.fixture
def samples() -> pd.DataFrame:
    """Train 1..4 and test 100..102; test 100 (label a) is mispredicted as b.

    train 1: a -> a, 2: b -> b, 3: a -> b (mispredicted, flipped), 4: c -> c.
    test 100: a -> b (wrong), 101: b -> b, 102: c -> c.
    """
    manifest = pd.DataFrame(
        {
            "sample_id": [1, 2, 3, 4, 100, 101, 102],
            "split": ["train"] * 4 + ["test"] * 3,
            "row": np.arange(7),
            "label": [0, 1, 0, 2, 0, 1, 2],
            "label_name": ["a", "b", "a", "c", "a", "b", "c"],
            "true_label_name": ["a", "b", "b", "c", "a", "b", "c"],
            "flipped": pd.array([False, False, True, False, False, False, False], dtype="boolean"),
        }
    )
    preds = pd.DataFrame(
        {
            "sample_id": [1, 2, 3, 4, 100, 101, 102],
            "pred": [0, 1, 1, 2, 1, 1, 2],
            "pred_name": ["a", "b", "b", "c", "b", "b", "c"],
            "confidence": [0.9, 0.8, 0.7, 0.6, 0.95, 0.5, 0.4],
        }
    )
    return sample_table(manifest, preds)


@pytest.fixture
def topk() -> pd.DataFrame:
    """Top-k lists (values exact in binary so ties are exact)."""
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
        (102, "opponent", 1, 2, -0.25),
    ]
    return pd.DataFrame(rows, columns=["test_id", "kind", "rank", "train_id", "influence"])


def test_sample_table_marks_correct_predictions(samples) -> None:
    assert samples.set_index("sample_id").correct.to_dict() == {1: True, 2: True, 3: False, 4: True, 100: False, 101: True, 102: True}


def test_cross_reference_lists_only_mispredicted_tests_with_same_error(samples, topk) -> None:
    cross = cross_reference(topk, samples)
    assert cross.test_id.unique().tolist() == [100]
    assert list(zip(cross.kind, cross["rank"], cross.train_id)) == [
        ("proponent", 1, 1),
        ("proponent", 2, 3),
        ("opponent", 1, 2),
        ("opponent", 2, 4),
    ]
    # test 100 is wrongly predicted as b: training samples predicted b are the same error
    assert cross.same_error.tolist() == [False, True, True, False]
    assert cross.train_correct.tolist() == [True, False, True, True]
    assert cross.train_flipped.tolist() == [False, True, False, False]
    assert (cross.test_label == "a").all() and (cross.test_pred == "b").all()


def test_cross_summary_counts_matches_and_unique_training_samples(samples, topk) -> None:
    summary = cross_summary(cross_reference(topk, samples), n_mispredicted=1).set_index("kind")
    assert summary.loc["all", ["pairs", "same_error_matches", "tests_with_match", "unique_train", "unique_train_same_error"]].tolist() == [
        4,
        2,
        1,
        4,
        2,
    ]
    assert summary.loc["all", "same_error_share"] == 0.5
    assert summary.loc["proponent", "same_error_share"] == 0.5 and summary.loc["opponent", "same_error_matches"] == 1
    assert (summary.mispredicted_test == 1).all()


def test_cross_summary_of_no_mispredictions_is_empty_not_an_error(samples, topk) -> None:
    summary = cross_summary(cross_reference(topk[topk.test_id != 100], samples), n_mispredicted=0)
    assert (summary.pairs == 0).all() and summary.same_error_share.isna().all()


def test_influential_training_counts_appearances(samples, topk) -> None:
    table = influential_training(topk, samples)
    # appearances: train 2 and 4 three times, 1 and 3 twice; ties broken by |total influence|
    assert table.train_id.tolist() == [4, 2, 3, 1]
    t = table.set_index("train_id")
    assert t.appearances.to_dict() == {4: 3, 2: 3, 3: 2, 1: 2}
    assert t.proponent_appearances.to_dict() == {4: 1, 2: 1, 3: 2, 1: 1}
    assert t.opponent_appearances.to_dict() == {4: 2, 2: 2, 3: 0, 1: 1}
    assert t.loc[4, "total_influence"] == 0.625 and t.loc[4, "mean_influence"] == pytest.approx(0.625 / 3)
    assert t.loc[2, "mean_opponent_influence"] == -0.375 and math.isnan(t.loc[3, "mean_opponent_influence"])
    assert t.loc[3, "test_share"] == pytest.approx(2 / 3)
    assert t.loc[3, "label"] == "a" and t.loc[3, "pred"] == "b" and bool(t.loc[3, "flipped"])


def test_most_helpful_and_harmful(samples, topk) -> None:
    table = influential_training(topk, samples)
    assert most_helpful(table, 2).train_id.tolist() == [3, 4]  # 3: two proponent lists; then 4 (mean 1.0 beats 0.75, 0.5)
    assert most_harmful(table, 2).train_id.tolist() == [2, 4]  # both twice; 2 has the more negative mean


def test_class_influence_matrix(samples, topk) -> None:
    m = class_influence_matrix(topk, samples, CLASSES).set_index(["train_class", "test_class"])
    assert len(m) == 9
    assert m.loc[("a", "a"), ["n_proponent", "proponent_influence"]].tolist() == [2, 0.75]
    assert m.loc[("a", "b"), ["n_proponent", "n_opponent", "net_influence"]].tolist() == [1, 1, 0.25]
    assert m.loc[("b", "a"), ["n_opponent", "opponent_influence"]].tolist() == [1, -0.5]
    assert m.loc[("c", "c"), "proponent_influence"] == 1.0
    assert m.loc[("b", "c"), "n_opponent"] == 1 and m.loc[("c", "a"), "n_proponent"] == 0
    assert m.loc[("a", "b"), "proponent_share"] == pytest.approx(0.4) and m.loc[("b", "b"), "proponent_share"] == pytest.approx(0.6)
    np.testing.assert_allclose(m.groupby(level="test_class").proponent_share.sum().to_numpy(), 1.0)


def test_describe() -> None:
    d = describe(pd.Series([4.0, 1.0, 3.0, 2.0]))
    assert d == {"n": 4, "min": 1.0, "max": 4.0, "range": 3.0, "mean": 2.5, "median": 2.5, "std": pytest.approx(math.sqrt(5 / 3))}
    assert describe(pd.Series([], dtype=float))["n"] == 0


def test_influence_stats_overall_and_per_class(samples, topk) -> None:
    summary = pd.DataFrame({"test_id": [100, 101, 102], "net_influence": [-1.0, 2.0, 5.0]})
    self_inf = pd.DataFrame({"sample_id": [1, 2, 3, 4], "self_influence": [1.0, 2.0, 3.0, 10.0]})
    stats = influence_stats(topk, summary, self_inf, samples, CLASSES).set_index(["quantity", "scope"])
    assert stats.loc[("proponent_influence", "all"), ["n", "min", "max", "range", "mean", "median"]].tolist() == [
        5,
        0.25,
        1.0,
        0.75,
        0.6,
        0.5,
    ]
    assert stats.loc[("proponent_influence", "a"), "mean"] == 0.375  # test 100 (label a): 0.5, 0.25
    assert stats.loc[("opponent_influence", "c"), "n"] == 1
    assert stats.loc[("net_influence", "all"), ["min", "max", "median"]].tolist() == [-1.0, 5.0, 2.0]
    assert stats.loc[("self_influence", "a"), "mean"] == 2.0  # train 1 and 3 are labelled a
    assert stats.loc[("self_influence", "c"), "std"] == 0.0


@pytest.mark.parametrize(
    "pct,band",
    [
        (100.0, "EXCELLENT"),
        (95.01, "EXCELLENT"),
        (95.0, "GOOD"),
        (80.0, "GOOD"),
        (79.99, "FAIR"),
        (60.0, "FAIR"),
        (59.99, "NEEDS ATTENTION"),
        (0.0, "NEEDS ATTENTION"),
    ],
)
def test_health_bands(pct, band) -> None:
    assert health_band(pct) == band


def test_health_score_counts_strictly_positive_net_influence() -> None:
    assert health_score(pd.Series([1.0, -1.0, 0.0, 2.0])) == {"n_test": 4, "n_positive": 2, "score_pct": 50.0, "band": "NEEDS ATTENTION"}
    assert health_score(pd.Series([1.0] * 19 + [-1.0]))["band"] == "GOOD"  # exactly 95 %
    assert health_score(pd.Series([1.0] * 20))["band"] == "EXCELLENT"
    assert health_score(pd.Series([1.0] * 7 + [-1.0] * 3))["band"] == "FAIR"
    assert health_score(pd.Series([], dtype=float))["n_test"] == 0
    assert "net influence > 0" in HEALTH_DEFINITION and "EXCELLENT > 95" in HEALTH_DEFINITION


def test_health_table_per_class(samples) -> None:
    summary = pd.DataFrame({"test_id": [100, 101, 102], "net_influence": [-1.0, 2.0, 0.5]})
    table = health_table(summary, samples, CLASSES).set_index("scope")
    assert table.loc["all", "score_pct"] == pytest.approx(200 / 3) and table.loc["all", "band"] == "FAIR"
    assert table.loc["a", "score_pct"] == 0.0 and table.loc["b", "band"] == "EXCELLENT"


def test_select_items() -> None:
    false = pd.DataFrame({"sample_id": [7, 3, 9]})
    cfg = {"classes": [], "test_samples": [], "n_test_samples": 2}
    assert select_items(CLASSES, false, [3, 7, 9, 11], cfg) == {"classes": CLASSES, "test_samples": [7, 3]}
    assert select_items(CLASSES, false, [3, 7, 9, 11], {**cfg, "classes": ["c", "a"], "test_samples": [11]}) == {
        "classes": ["a", "c"],
        "test_samples": [11],
    }
    with pytest.raises(InflowError, match="report.test_samples"):
        select_items(CLASSES, false, [3, 7], {**cfg, "test_samples": [5]})
    with pytest.raises(InflowError, match="report.classes"):
        select_items(CLASSES, false, [3, 7], {**cfg, "classes": ["zebra"]})


def test_key_findings_and_text_summary(samples, topk) -> None:
    summary = pd.DataFrame({"test_id": [100, 101, 102], "net_influence": [-1.0, 2.0, 0.5]})
    health = health_table(summary, samples, CLASSES)
    cross = cross_summary(cross_reference(topk, samples), 1)
    influential = influential_training(topk, samples)
    findings = key_findings(samples, health, cross, influential, class_influence_matrix(topk, samples, CLASSES), {})
    assert findings[0].startswith("Test accuracy 66.7%: 1 of 3") and "a predicted as b" in findings[0]
    assert any("Health score 66.7% (FAIR)" in f for f in findings)
    ranking = pd.DataFrame(
        {
            "rank": [1],
            "sample_id": [3],
            "label_name": ["a"],
            "suggested_label_name": ["b"],
            "score": [0.9],
            "flipped": pd.array([True], dtype="boolean"),
            "true_label_name": ["b"],
        }
    )
    stats = influence_stats(
        topk, summary, pd.DataFrame({"sample_id": [1, 2, 3, 4], "self_influence": [1.0, 2.0, 3.0, 4.0]}), samples, CLASSES
    )
    text = text_summary(samples, health, cross, influential, stats, ranking, {})
    assert "66.7% -> FAIR" in text and "(flipped on purpose, true b)" in text and "same-error matches 2" in text
