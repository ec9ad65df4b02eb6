"""Findings and recommendations for a reviewer: which classes need more data, which training
samples to review first, whether the health score calls for cleaning, and where to look for
the most common confusion. Every recommendation is computed from a report table and names it
(column ``source``); nothing is canned text.

The dashboard and ``influence_report.txt`` show the table :func:`recommendations` returns.
"""

from __future__ import annotations

import logging

import pandas as pd

from inflow.core.io import read_table
from inflow.mislabel.ranking import budget_count
from inflow.report.tables import write_both

log = logging.getLogger(__name__)

HEALTH_TABLE = "results/report/tables/health_score.csv"
CONFUSION_TABLE = "results/report/tables/confusion_pairs.csv"
TRAINING_TABLE = "results/report/tables/training_influence.csv"
RANKING_TABLE = "results/mislabel/ranking.parquet"
GOOD_HEALTH = 80.0  # lowest score of the GOOD band (inflow.report.tables.HEALTH_BANDS)
MAX_CLASSES, MAX_IDS = 3, 10  # classes and sample ids named in one recommendation


def ids_text(ids: list[int]) -> str:
    """``train 12, 45, 78`` (at most :data:`MAX_IDS`, then ``and N more``)."""
    shown = ", ".join(str(i) for i in ids[:MAX_IDS])
    return f"train {shown}" + (f" and {len(ids) - MAX_IDS} more" if len(ids) > MAX_IDS else "")


def collect_data(health: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, str]:
    """Classes to collect more data for: those whose health score is below GOOD (< 80 %), weakest first,
    each with its most common confusion; or the statement that every class is GOOD or better."""
    weak = health[(health.scope != "all") & (health.score_pct < GOOD_HEALTH)].sort_values(["score_pct", "scope"], kind="stable")
    if weak.empty:
        text = f"No class needs more data first: every class has a health score of {GOOD_HEALTH:.0f}% or more (GOOD or better)."
        return {"topic": "collect data", "recommendation": text, "source": HEALTH_TABLE}
    parts = []
    for r in weak.head(MAX_CLASSES).itertuples():
        conf = pairs[pairs.true_class == r.scope]
        most = f"; {conf['count'].iloc[0]} of its test samples predicted as {conf.pred_class.iloc[0]}" if len(conf) else ""
        parts.append(f"{r.scope} (health {r.score_pct:.0f}%, {r.band}{most})")
    extra = len(weak) - MAX_CLASSES
    more = f" (and {extra} more class{'es' if extra > 1 else ''} below {GOOD_HEALTH:.0f}%)" if extra > 0 else ""
    text = "Collect more training data for " + ", ".join(parts) + more + "."
    return {"topic": "collect data", "recommendation": text, "source": f"{HEALTH_TABLE}, {CONFUSION_TABLE}"}


def review_first(ranking: pd.DataFrame, training: pd.DataFrame, n_review: int) -> dict[str, str]:
    """The candidates to review first: within the review budget's top of the mislabel ranking, those
    whose summed influence on the test set is negative (they harm the test set), in ranking order;
    then the rest of the budget."""
    top = ranking.sort_values("rank", kind="stable").head(n_review)
    net = training.set_index("train_id").net_influence.reindex(top.sample_id)
    harmful = top.sample_id[(net < 0).to_numpy()].tolist()
    source = f"{RANKING_TABLE}, {TRAINING_TABLE}"
    if not n_review:
        return {"topic": "review first", "recommendation": "The review budget (clean.budget) is 0: nothing to review.", "source": source}
    if harmful:
        text = (
            f"Review first {ids_text(harmful)}: {len(harmful)} of the top {n_review} mislabel candidates (the review budget) "
            f"also have a negative net influence on the test set; then the other {n_review - len(harmful)} of the top {n_review}."
        )
    else:
        text = (
            f"Review the top {n_review} mislabel candidates in ranking order ({ids_text(top.sample_id.tolist())}); "
            "none of them has a negative net influence on the test set."
        )
    return {"topic": "review first", "recommendation": text, "source": source}


def cleaning(health: pd.DataFrame, training: pd.DataFrame, n_review: int) -> dict[str, str]:
    """Whether the overall health score calls for cleaning: yes below GOOD (< 80 %), else optional."""
    h = health[health.scope == "all"].iloc[0]
    n_neg = int((training.net_influence < 0).sum())
    share = f"{n_neg} of {len(training)} training samples ({100 * n_neg / max(len(training), 1):.1f}%) have a negative net influence"
    if h.score_pct < GOOD_HEALTH:
        text = (
            f"Cleaning is called for: the health score is {h.score_pct:.1f}% ({h.band}), below {GOOD_HEALTH:.0f}%, and {share}. "
            f"Review the top {n_review} of the mislabel ranking (results/clean/review.csv) and retrain."
        )
    else:
        text = f"Cleaning is optional: the health score is {h.score_pct:.1f}% ({h.band}); {share}."
    return {"topic": "cleaning", "recommendation": text, "source": f"{HEALTH_TABLE}, {TRAINING_TABLE}"}


def confusion(pairs: pd.DataFrame) -> dict[str, str]:
    """Where to look for the most common confusion: its test count and the training images that oppose those test samples most."""
    if pairs.empty:
        return {
            "topic": "confusion",
            "recommendation": "No test sample is mispredicted: no confusion to inspect.",
            "source": CONFUSION_TABLE,
        }
    r = pairs.iloc[0]
    ids = [int(i) for i in str(r.implicated_train_ids).split(";") if i]
    who = f"; inspect {ids_text(ids)}, the training images that oppose these test samples most" if ids else ""
    text = (
        f"Most common confusion: {r.true_class} predicted as {r.pred_class} ({r['count']} test samples, "
        f"{100 * r.share_of_errors:.0f}% of the errors){who} ({r.implicated_labelled_pred} of them labelled {r.pred_class})."
    )
    return {"topic": "confusion", "recommendation": text, "source": CONFUSION_TABLE}


def recommendations(
    health: pd.DataFrame, pairs: pd.DataFrame, training: pd.DataFrame, ranking: pd.DataFrame, n_review: int
) -> pd.DataFrame:
    """The recommendations, one row each: ``topic`` (collect data, review first, cleaning, confusion),
    ``recommendation`` (a sentence with the numbers) and ``source`` (the table(s) it comes from).

    ``health``: :func:`inflow.report.tables.health_table`; ``pairs``:
    :func:`inflow.report.rankings.confusion_pairs`; ``training``:
    :func:`inflow.report.rankings.training_influence`; ``ranking``: the mislabel ranking;
    ``n_review``: the review budget (``clean.budget`` as a count).
    """
    rows = [collect_data(health, pairs), review_first(ranking, training, n_review), cleaning(health, training, n_review), confusion(pairs)]
    return pd.DataFrame(rows, columns=["topic", "recommendation", "source"])


def write_recommendations(
    health_path: str, pairs_path: str, training_path: str, ranking_path: str, budget: float, parquet_out: str, csv_out: str
) -> None:
    """Rule ``recommendations``."""
    training, ranking = read_table(training_path), read_table(ranking_path)
    table = recommendations(read_table(health_path), read_table(pairs_path), training, ranking, budget_count(budget, len(ranking)))
    for r in table.itertuples():
        log.info("%s: %s [%s]", r.topic, r.recommendation, r.source)
    write_both(table, parquet_out, csv_out)
