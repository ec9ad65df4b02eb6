"""Cleaning logic on small hand-made manifests with known answers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inflow.cleaning.review import (
    apply_review,
    budget_count,
    clean_manifest,
    comparison_table,
    oracle_fix,
    propose_actions,
    random_removal,
    read_review,
    review_table,
)
from inflow.core.errors import InflowError
from inflow.core.io import read_table, write_table

CLASSES = ["cat", "dog", "fox"]


def manifest() -> pd.DataFrame:
    """8 train samples (ids 0-7; 1, 4 and 6 flipped) and 2 test samples (ids 8, 9)."""
    true = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    label = true.copy()
    label[[1, 4, 6]] = [2, 0, 1]
    names = np.asarray(CLASSES, dtype=object)
    return pd.DataFrame(
        {
            "sample_id": np.arange(10),
            "split": ["train"] * 8 + ["test"] * 2,
            "row": np.arange(10),
            "path": [f"img{i}.jpg" for i in range(10)],
            "label": label,
            "label_name": names[label],
            "true_label": pd.array(true, dtype="Int64"),
            "true_label_name": names[true],
            "flipped": pd.array(label != true, dtype="boolean"),
        }
    )


def test_budget_is_a_fraction_below_one_else_a_count() -> None:
    assert budget_count(0.1, 2700) == 270
    assert budget_count(25, 2700) == 25
    assert budget_count(5000, 2700) == 2700


def test_proposed_action_relabels_only_confident_other_class() -> None:
    cands = pd.DataFrame({"given_label": ["cat", "cat", "dog"], "suggested_label": ["dog", "dog", "dog"], "confidence": [0.9, 0.3, 0.9]})
    assert propose_actions(cands, 0.5).tolist() == ["relabel", "drop", "drop"]


def test_review_table_takes_the_top_ranked() -> None:
    ranking = pd.DataFrame(
        {
            "rank": [2, 1, 3],
            "sample_id": [4, 1, 0],
            "path": ["b", "a", "c"],
            "label_name": ["cat", "fox", "cat"],
            "suggested_label_name": ["dog", "dog", "cat"],
            "confidence": [0.4, 0.8, 0.9],
            "score": [0.8, 0.9, 0.1],
        }
    )
    review = review_table(ranking, 2, 0.5)
    assert review.sample_id.tolist() == [1, 4]
    assert review.action.tolist() == ["relabel", "drop"]


def test_apply_review_drops_and_relabels() -> None:
    m = manifest()
    review = pd.DataFrame({"sample_id": [1, 4, 6], "suggested_label": ["dog", "dog", "cat"], "action": ["relabel", "drop", "keep"]})
    out = apply_review(m, review, CLASSES)
    assert 4 not in set(out.sample_id) and len(out) == 9
    row = out.set_index("sample_id").loc[1]
    assert row.label == 1 and row.label_name == "dog"
    assert out.set_index("sample_id").loc[6].label == 1  # kept as given


def test_review_with_drops_only_keeps_label_dtypes() -> None:
    m = manifest()
    out = apply_review(m, pd.DataFrame({"sample_id": [1], "suggested_label": ["dog"], "action": ["drop"]}), CLASSES)
    assert len(out) == 9 and out.label.dtype == m.label.dtype


def test_oracle_fixes_only_flipped_labels_up_to_the_budget() -> None:
    m = manifest()
    out = oracle_fix(m, 2, seed=0)
    fixed = out.label != m.label
    assert fixed.sum() == 2 and set(out.sample_id[fixed]) <= {1, 4, 6}
    assert (out.label[fixed] == m.true_label[fixed]).all()
    assert (oracle_fix(m, 10, seed=0).label == m.true_label).all()  # budget above n_flipped fixes them all


def test_random_removal_drops_training_samples_only_and_is_seeded() -> None:
    m = manifest()
    a, b = random_removal(m, 3, seed=1), random_removal(m, 3, seed=1)
    assert len(a) == 7 and (a.split == "test").sum() == 2
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1,dog,burn", "action 'burn' is not one of keep, drop, relabel"),
        ("8,dog,drop", "not a training sample"),
        ("1,wolf,relabel", "suggested_label 'wolf' is not a class"),
    ],
)
def test_bad_review_lines_are_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "review.csv"
    path.write_text(f"sample_id,suggested_label,action\n0,cat,keep\n{line}\n")
    with pytest.raises(InflowError, match=f"review.csv line 3 \\(sample_id {line.split(',')[0]}\\): .*{message}"):
        read_review(str(path), manifest(), CLASSES)


def test_clean_manifest_writes_the_variant_and_marks_remaining_noise(tmp_path: Path) -> None:
    src = tmp_path / "manifest.parquet"
    write_table(manifest(), src, metadata={"class_names": CLASSES})
    review = tmp_path / "review.csv"
    review.write_text("sample_id,suggested_label,action\n1,cat,relabel\n4,dog,relabel\n")
    out = tmp_path / "influence.parquet"
    clean_manifest("influence", str(src), str(review), budget=2, seed=0, manifest_out=str(out))
    cleaned = read_table(out).set_index("sample_id")
    assert cleaned.loc[1].label == 0 and cleaned.loc[1].flipped  # truly a dog: relabelled to cat, still wrong
    assert cleaned.loc[4].label == 1 and not cleaned.loc[4].flipped  # truly a dog: fixed
    assert cleaned.loc[6].flipped and len(cleaned) == 10


def test_comparison_gains_and_share_of_the_oracle() -> None:
    m = manifest()

    def preds(correct_test: int) -> pd.DataFrame:
        return pd.DataFrame(
            {"split": ["test", "test"], "label": [0, 0], "pred": [0] * correct_test + [1] * (2 - correct_test), "loss": [0.5, 0.5]}
        )

    oracle = oracle_fix(m, 3, seed=0)
    influence = apply_review(
        m, pd.DataFrame({"sample_id": [1, 4], "suggested_label": ["dog", "dog"], "action": ["relabel", "drop"]}), CLASSES
    )
    table = comparison_table(m, {"baseline": (m, preds(0)), "influence": (influence, preds(1)), "oracle": (oracle, preds(2))})
    row = table.set_index("variant")
    assert row.loc["influence", "accuracy_gain"] == 0.5 and row.loc["oracle", "accuracy_gain"] == 1.0
    assert row.loc["influence", "share_of_oracle_gain"] == 0.5
    assert row.loc["influence", "dropped"] == 1 and row.loc["influence", "relabelled"] == 1
    assert row.loc["influence", "dropped_truly_flipped"] == 1 and row.loc["influence", "relabelled_to_truth"] == 1
    assert row.loc["influence", "wrong_labels_left"] == 1 and row.loc["oracle", "wrong_labels_left"] == 0
    assert math.isnan(comparison_table(m, {"baseline": (m, preds(0))}).share_of_oracle_gain.iloc[0])
