"""Cross-version comparison logic on small hand-made versions with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from inflow.core.errors import InflowError
from inflow.runs.recommendations import noise_and_cleaning, recommendations
from inflow.runs.tables import (
    Run,
    accuracy_table,
    class_errors,
    confusion_pairs,
    influence_stats,
    jaccard,
    majority,
    mislabel_candidates,
    persistent_errors,
    recurrence,
    summary_table,
    top_influential,
    with_appearances,
)

CLASSES = ["cat", "dog", "fox"]
# samples 0-3 train (sample 3's label flipped from fox to cat), 10-13 test
MANIFEST = pd.DataFrame(
    {
        "sample_id": [0, 1, 2, 3, 10, 11, 12, 13],
        "split": ["train"] * 4 + ["test"] * 4,
        "row": range(8),
        "label": [0, 1, 2, 0, 0, 1, 2, 2],
        "label_name": ["cat", "dog", "fox", "cat", "cat", "dog", "fox", "fox"],
        "true_label_name": ["cat", "dog", "fox", "fox", "cat", "dog", "fox", "fox"],
        "flipped": [False, False, False, True, False, False, False, False],
    }
)


def predictions(test_preds: list[int], confidence: list[float]) -> pd.DataFrame:
    """Train samples predicted as labelled; test samples as given."""
    pred = [0, 1, 2, 0, *test_preds]
    return pd.DataFrame(
        {
            "sample_id": MANIFEST.sample_id,
            "split": MANIFEST.split,
            "label": MANIFEST.label,
            "pred": pred,
            "pred_name": [CLASSES[p] for p in pred],
            "confidence": [0.9] * 4 + confidence,
            "loss": [0.1] * 4 + [0.5, 1.0, 1.5, 2.0],
        }
    )


def topk(pairs: list[tuple[int, str, int, float]]) -> pd.DataFrame:
    """Rows ``(test_id, kind, train_id, influence)``; ranks by order within (test, kind)."""
    df = pd.DataFrame(pairs, columns=["test_id", "kind", "train_id", "influence"])
    df["rank"] = df.groupby(["test_id", "kind"]).cumcount() + 1
    return df[["test_id", "kind", "rank", "train_id", "influence"]]


def ranking(order: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"rank": np.arange(1, len(order) + 1), "sample_id": order})


RUN_A = Run(
    "seed_0",
    0,
    predictions([0, 2, 1, 2], [0.9, 0.8, 0.7, 0.6]),  # wrong: 11 (as fox), 12 (as dog)
    topk([(10, "proponent", 0, 3.0), (11, "proponent", 0, 2.0), (11, "opponent", 3, -1.5), (12, "proponent", 1, 1.0)]),
    ranking([3, 1, 0, 2]),
    {"ranking": {"recall_at_10pct": 1.0, "auroc": 0.9}},
)
RUN_B = Run(
    "seed_1",
    1,
    predictions([1, 2, 0, 2], [0.5, 0.6, 0.9, 0.8]),  # wrong: 10 (as dog), 11 (as fox), 12 (as cat)
    topk([(10, "proponent", 2, 3.0), (11, "proponent", 0, 2.0), (12, "opponent", 3, -4.0), (12, "proponent", 2, 1.0)]),
    ranking([3, 2, 0, 1]),
    {"ranking": {"recall_at_10pct": 0.5, "auroc": 0.8}},
)


def test_majority_is_more_than_half() -> None:
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]


def test_accuracy_table() -> None:
    table = accuracy_table([RUN_A, RUN_B])
    assert table.version.tolist() == ["seed_0", "seed_1"] and table.main.tolist() == [True, False]
    assert table.test_accuracy.tolist() == [0.5, 0.25]
    assert table.n_test_errors.tolist() == [2, 3]
    assert table.test_loss.tolist() == [1.25, 1.25] and table.train_accuracy.tolist() == [1.0, 1.0]
    assert table.mislabel_recall_at_10pct.tolist() == [1.0, 0.5]
    assert table.val_accuracy.isna().all() and table.cleaned.tolist() == [False, False]  # no val split here


def test_persistent_errors_count_k_of_n() -> None:
    table = persistent_errors([RUN_A, RUN_B], MANIFEST)
    assert table.test_id.tolist() == [11, 12, 10]  # wrong in both first: 11 (both say fox) before 12 (dog vs cat)
    assert table.n_wrong.tolist() == [2, 2, 1] and table.k_of_n.tolist() == ["2 of 2", "2 of 2", "1 of 2"]
    assert table.persistent.tolist() == [True, True, False]
    assert table.same_prediction.tolist() == [True, False, True]
    assert table.pred_seed_0.tolist() == ["fox", "dog", "cat"] and table.pred_seed_1.tolist() == ["fox", "cat", "dog"]
    assert table.label.tolist() == ["dog", "fox", "cat"]
    np.testing.assert_allclose(table.mean_confidence, [0.7, 0.8, 0.5])  # 10: only seed_1's wrong prediction


def test_confusion_pairs_and_class_errors() -> None:
    pairs = confusion_pairs([RUN_A, RUN_B], MANIFEST)
    assert pairs[["true", "predicted"]].values.tolist() == [["dog", "fox"], ["cat", "dog"], ["fox", "cat"], ["fox", "dog"]]
    assert pairs.count_seed_0.tolist() == [1, 0, 0, 1] and pairs.count_seed_1.tolist() == [1, 1, 1, 0]
    assert pairs.total.tolist() == [2, 1, 1, 1] and pairs.n_versions.tolist() == [2, 1, 1, 1]
    classes = class_errors([RUN_A, RUN_B], MANIFEST).set_index("class")
    assert classes.total.to_dict() == {"fox": 2, "dog": 2, "cat": 1} and classes.n_test.to_dict() == {"fox": 2, "dog": 1, "cat": 1}
    assert classes.main_confusion.to_dict() == {"fox": "cat", "dog": "fox", "cat": "dog"}  # fox: cat and dog tie, first name
    assert classes.errors_seed_1.to_dict() == {"fox": 1, "dog": 1, "cat": 1}


def test_summary_measures_the_cleaning_gain_against_the_uncleaned_spread() -> None:
    accuracy = pd.DataFrame(
        {"version": ["main", "s1", "s2", "clean"], "test_accuracy": [0.80, 0.84, 0.82, 0.90], "cleaned": [False, False, False, True]}
    )
    row = summary_table(accuracy).iloc[0]
    assert row.best_version == "clean" and row.best_uncleaned_version == "s1"
    assert row.uncleaned_std == pytest.approx(0.02) and row.cleaning_gain == pytest.approx(0.06)
    assert row.gain_in_std == pytest.approx(3.0) and bool(row.beyond_noise)
    one = summary_table(accuracy.iloc[[0, 3]]).iloc[0]
    assert np.isnan(one.uncleaned_std) and pd.isna(one.beyond_noise)
    none = summary_table(accuracy.iloc[:3]).iloc[0]
    assert none.cleaned_version == "" and np.isnan(none.cleaning_gain)


def test_influence_stats_and_appearances() -> None:
    stats = influence_stats([RUN_A])
    assert stats[["version", "kind", "n"]].values.tolist() == [["seed_0", "proponent", 3], ["seed_0", "opponent", 1]]
    assert stats.iloc[0][["mean", "median", "min", "max"]].tolist() == [2.0, 2.0, 1.0, 3.0]
    table = with_appearances(pd.DataFrame({"sample_id": [0, 3, 2]}), [RUN_A, RUN_B])
    assert table.appearances_seed_0.tolist() == [2, 1, 0] and table.appearances_seed_1.tolist() == [1, 1, 2]


def test_recommendations_name_their_source_tables() -> None:
    runs = [RUN_A, RUN_B]
    accuracy = accuracy_table(runs)
    errors = persistent_errors(runs, MANIFEST)
    pairs = confusion_pairs(runs, MANIFEST)
    mislabel = recurrence({r.name: mislabel_candidates(r, 2) for r in runs}, MANIFEST)
    influential = recurrence({r.name: top_influential(r, MANIFEST, 2) for r in runs}, MANIFEST)
    recs = recommendations(accuracy, summary_table(accuracy), errors, pairs, class_errors(runs, MANIFEST), mislabel, influential)
    assert recs.topic.tolist() == [
        "best version",
        "noise",
        "persistent errors",
        "class",
        "confusion",
        "mislabel candidates",
        "influential samples",
    ]
    assert recs.source.tolist()[2:] == [
        "persistent_errors.csv",
        "class_errors.csv",
        "confusion_pairs.csv",
        "recurring_mislabel.csv",
        "recurring_influential.csv",
    ]
    assert (
        "seed_0" in recs.recommendation[0]
        and "11, 12" in recs.recommendation[2]
        and "(3; 100% of them were flipped" in recs.recommendation[5]
    )


def test_persistent_errors_need_the_same_test_samples() -> None:
    other = Run("seed_2", 2, RUN_B.predictions[RUN_B.predictions.sample_id != 13], RUN_B.topk, RUN_B.ranking, RUN_B.metrics)
    with pytest.raises(InflowError, match="different test samples"):
        persistent_errors([RUN_A, other], MANIFEST)


def test_top_influential_ranks_by_appearances_then_total_influence() -> None:
    assert top_influential(RUN_A, MANIFEST, 3).to_dict() == {0: 1, 3: 2, 1: 3}  # 0 twice; then 3 (|-1.5|) before 1 (1.0)
    assert top_influential(RUN_B, MANIFEST, 2).to_dict() == {2: 1, 3: 2}  # 2 twice; 3 (|-4|) before 0 (2)


def test_recurrence_counts_versions_and_flags_most() -> None:
    selections = {"seed_0": top_influential(RUN_A, MANIFEST, 2), "seed_1": top_influential(RUN_B, MANIFEST, 2)}  # {0, 3} and {2, 3}
    table = recurrence(selections, MANIFEST)
    assert table.sample_id.tolist() == [3, 0, 2]
    assert table.n_versions.tolist() == [2, 1, 1] and table.in_most_versions.tolist() == [True, False, False]
    assert table.share.tolist() == [1.0, 0.5, 0.5]
    assert table.flipped.tolist() == [True, False, False] and table.true_label.tolist() == ["fox", "cat", "fox"]
    assert table.rank_seed_0.tolist()[:2] == [2.0, 1.0] and np.isnan(table.rank_seed_0.iloc[2])
    assert table.mean_rank.tolist() == [2.0, 1.0, 1.0]


def test_recurring_mislabel_candidates() -> None:
    selections = {run.name: mislabel_candidates(run, 2) for run in (RUN_A, RUN_B)}  # [3, 1] and [3, 2]
    table = recurrence(selections, MANIFEST)
    assert table[table.in_most_versions].sample_id.tolist() == [3]
    assert table.sample_id.tolist() == [3, 1, 2]


def test_jaccard() -> None:
    overlap = jaccard({"a": pd.Series([1, 2], index=[0, 3]), "b": pd.Series([1, 2], index=[2, 3]), "c": pd.Series(dtype=float)})
    np.testing.assert_allclose(overlap.to_numpy(), [[1, 1 / 3, 0], [1 / 3, 1, 0], [0, 0, 0]])


@pytest.mark.parametrize(
    ("cleaned", "expected"),
    [
        (0.90, "helps beyond run-to-run noise"),
        (0.85, "within run-to-run noise"),
        (0.81, "within run-to-run noise"),
        (0.70, "hurts beyond noise"),
    ],
)
def test_cleaning_recommendation_compares_the_gain_with_the_noise(cleaned: float, expected: str) -> None:
    accuracy = pd.DataFrame(
        {"version": ["main", "s1", "s2", "clean"], "test_accuracy": [0.80, 0.84, 0.82, cleaned], "cleaned": [False, False, False, True]}
    )  # best uncleaned 0.84, std 0.02: noise band +-0.04
    lines = noise_and_cleaning(summary_table(accuracy))
    assert [line[0] for line in lines] == ["noise", "cleaning"] and expected in lines[1][1]
