"""Ranking metrics and signal combination on hand-made inputs with known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from inflow.mislabel.ranking import auroc, build_signals, combine, ranking_metrics


def brute_force_auroc(scores, positive) -> float:
    pos, neg = scores[positive], scores[~positive]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pairwise_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=40).astype(float)  # many ties
    positive = rng.uniform(size=40) < 0.3
    assert auroc(scores, positive) == pytest.approx(brute_force_auroc(scores, positive))


def test_ranking_metrics_known_answer() -> None:
    # 20 samples, positives at the ranks 1, 2, 5, 15 of the score ordering
    scores = np.arange(20, 0, -1).astype(float)
    positive = np.zeros(20, bool)
    positive[[0, 1, 4, 14]] = True
    m = ranking_metrics(scores, positive, fractions=(0.10, 0.25))
    assert m["recall_at_10pct"] == 0.5  # top 2 of 20 hold 2 of 4
    assert m["precision_at_10pct"] == 1.0
    assert m["recall_at_25pct"] == 0.75  # top 5 hold 3 of 4
    assert m["precision_at_25pct"] == 0.6
    assert m["precision_at_n_positive"] == 0.5  # top 4 hold 2
    assert m["auroc"] == pytest.approx(brute_force_auroc(scores, positive))


def test_combine_averages_percentile_ranks() -> None:
    df = pd.DataFrame({"x": [1.0, 100.0, 10.0], "y": [3.0, 1.0, 2.0]})
    assert combine(df, ["x", "y"]).tolist() == pytest.approx([(1 / 3 + 1) / 2, (1 + 1 / 3) / 2, (2 / 3 + 2 / 3) / 2])


def test_build_signals_counts_opponents() -> None:
    manifest = pd.DataFrame(
        {
            "sample_id": [0, 1, 2, 9],
            "split": ["train", "train", "train", "test"],
            "path": None,
            "label": [0, 1, 1, 0],
            "label_name": ["a", "b", "b", "a"],
            "true_label": [0, 0, 1, 0],
            "true_label_name": ["a", "a", "b", "a"],
            "flipped": [False, True, False, False],
        }
    )
    topk = pd.DataFrame(
        {
            "test_id": [9, 9, 8, 8],
            "kind": ["opponent", "proponent", "opponent", "opponent"],
            "rank": [1, 1, 1, 2],
            "train_id": [1, 0, 1, 2],
            "influence": [-1.0, 1.0, -2.0, -0.5],
        }
    )
    preds = pd.DataFrame(
        {
            "sample_id": [0, 1, 2],
            "split": "train",
            "pred": [0, 0, 1],
            "pred_name": ["a", "a", "b"],
            "confidence": [0.9, 0.8, 0.7],
            "p_label": [0.9, 0.1, 0.7],
            "loss": [0.1, 2.3, 0.36],
        }
    )
    sig = build_signals(manifest, pd.DataFrame({"sample_id": [0, 1, 2], "self_influence": [0.1, 5.0, 0.2]}), topk, preds)
    assert sig.set_index("sample_id").opponent_count.to_dict() == {0: 0, 1: 2, 2: 1}
    assert sig.set_index("sample_id").opponent_share.to_dict() == {0: 0.0, 1: 1.0, 2: 0.5}
    assert sig.set_index("sample_id").disagreement[1] == pytest.approx(0.9)
