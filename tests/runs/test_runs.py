"""Cross-run comparison logic on small hand-made runs with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from inflow.core.errors import InflowError
from inflow.runs.comparison import (
    Run,
    accuracy_table,
    jaccard,
    majority,
    mislabel_candidates,
    persistent_errors,
    recurrence,
    top_influential,
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
    assert table.run.tolist() == ["seed_0", "seed_1"] and table.main.tolist() == [True, False]
    assert table.test_accuracy.tolist() == [0.5, 0.25]
    assert table.n_test_errors.tolist() == [2, 3]
    assert table.test_loss.tolist() == [1.25, 1.25] and table.train_accuracy.tolist() == [1.0, 1.0]
    assert table.mislabel_recall_at_10pct.tolist() == [1.0, 0.5]


def test_persistent_errors_are_wrong_in_every_run() -> None:
    table = persistent_errors([RUN_A, RUN_B], MANIFEST)
    assert table.test_id.tolist() == [11, 12]  # 11: both say fox (same prediction) first; 12: dog vs cat
    assert table.same_prediction.tolist() == [True, False]
    assert table.pred_seed_0.tolist() == ["fox", "dog"] and table.pred_seed_1.tolist() == ["fox", "cat"]
    assert table.label.tolist() == ["dog", "fox"]
    np.testing.assert_allclose(table.mean_confidence, [0.7, 0.8])


def test_persistent_errors_need_the_same_test_samples() -> None:
    other = Run("seed_2", 2, RUN_B.predictions[RUN_B.predictions.sample_id != 13], RUN_B.topk, RUN_B.ranking, RUN_B.metrics)
    with pytest.raises(InflowError, match="different test samples"):
        persistent_errors([RUN_A, other], MANIFEST)


def test_top_influential_ranks_by_appearances_then_total_influence() -> None:
    assert top_influential(RUN_A, MANIFEST, 3).to_dict() == {0: 1, 3: 2, 1: 3}  # 0 twice; then 3 (|-1.5|) before 1 (1.0)
    assert top_influential(RUN_B, MANIFEST, 2).to_dict() == {2: 1, 3: 2}  # 2 twice; 3 (|-4|) before 0 (2)


def test_recurrence_counts_runs_and_flags_most() -> None:
    selections = {"seed_0": top_influential(RUN_A, MANIFEST, 2), "seed_1": top_influential(RUN_B, MANIFEST, 2)}  # {0, 3} and {2, 3}
    table = recurrence(selections, MANIFEST)
    assert table.sample_id.tolist() == [3, 0, 2]
    assert table.n_runs.tolist() == [2, 1, 1] and table.in_most_runs.tolist() == [True, False, False]
    assert table.share.tolist() == [1.0, 0.5, 0.5]
    assert table.flipped.tolist() == [True, False, False] and table.true_label.tolist() == ["fox", "cat", "fox"]
    assert table.rank_seed_0.tolist()[:2] == [2.0, 1.0] and np.isnan(table.rank_seed_0.iloc[2])
    assert table.mean_rank.tolist() == [2.0, 1.0, 1.0]


def test_recurring_mislabel_candidates() -> None:
    selections = {run.name: mislabel_candidates(run, 2) for run in (RUN_A, RUN_B)}  # [3, 1] and [3, 2]
    table = recurrence(selections, MANIFEST)
    assert table[table.in_most_runs].sample_id.tolist() == [3]
    assert table.sample_id.tolist() == [3, 1, 2]


def test_jaccard() -> None:
    overlap = jaccard({"a": pd.Series([1, 2], index=[0, 3]), "b": pd.Series([1, 2], index=[2, 3]), "c": pd.Series(dtype=float)})
    np.testing.assert_allclose(overlap.to_numpy(), [[1, 1 / 3, 0], [1 / 3, 1, 0], [0, 0, 0]])
