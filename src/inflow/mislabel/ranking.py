"""Rule ``mislabel``: rank training samples by evidence of a wrong label, and score the ranking.

Signals per training sample (higher = more suspicious):

* ``self_influence``: TracIn self-influence (Pruthi et al. 2020).
* ``opponent_share``: fraction of test samples whose top-k opponents include it.
* ``disagreement``: ``1 - p(given label)`` under the best model.
* ``loss``: the best model's cross-entropy on the given label: the plain baseline.

Scores are combined by averaging percentile ranks (scale-free, robust to the heavy tail of
self-influence). ``mislabel.score`` in config picks the signals that make up the ranking.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from inflow.core.errors import InflowError
from inflow.core.io import read_table, write_json, write_table

log = logging.getLogger(__name__)

SIGNALS = ("self_influence", "opponent_share", "disagreement", "loss")


def percentile_rank(x: pd.Series) -> pd.Series:
    """Average-rank percentile in (0, 1]; ties share a rank."""
    return x.rank(method="average", pct=True)


def combine(signals: pd.DataFrame, names: list[str]) -> pd.Series:
    """Mean percentile rank of the named signal columns, ``(n,)``."""
    return pd.concat([percentile_rank(signals[n]) for n in names], axis=1).mean(axis=1)


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney U statistic (ties count half)."""
    pos = positive.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def ranking_metrics(scores: np.ndarray, positive: np.ndarray, fractions: tuple[float, ...] = (0.05, 0.10, 0.20)) -> dict[str, float]:
    """Recall and precision of ``positive`` when inspecting the top fractions of the ranking by ``scores``.

    Also ``precision_at_n_positive`` (R-precision: inspect exactly as many as there are
    positives) and ``auroc``.
    """
    order = np.argsort(-scores, kind="stable")
    hits = positive[order].astype(bool)
    n, n_pos = len(hits), int(hits.sum())
    out: dict[str, float] = {}
    for f in fractions:
        k = max(1, int(round(f * n)))
        pct = int(round(100 * f))
        out[f"recall_at_{pct}pct"] = float(hits[:k].sum() / max(n_pos, 1))
        out[f"precision_at_{pct}pct"] = float(hits[:k].mean())
    out["precision_at_n_positive"] = float(hits[: max(n_pos, 1)].mean())
    out["auroc"] = auroc(scores, positive)
    return out


def build_signals(manifest: pd.DataFrame, self_inf: pd.DataFrame, topk: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per training sample with every signal and the manifest columns."""
    train = manifest[manifest.split == "train"][["sample_id", "path", "label", "label_name", "true_label", "true_label_name", "flipped"]]
    n_test = topk.test_id.nunique()
    opp = topk[topk.kind == "opponent"].groupby("train_id").size().rename("opponent_count")
    pro = topk[topk.kind == "proponent"].groupby("train_id").size().rename("proponent_count")
    pred = predictions[predictions.split == "train"][["sample_id", "pred", "pred_name", "confidence", "p_label", "loss"]]
    df = (
        train.merge(self_inf[["sample_id", "self_influence"]], on="sample_id", how="left", validate="1:1")
        .merge(pred, on="sample_id", how="left", validate="1:1")
        .merge(opp, left_on="sample_id", right_index=True, how="left")
        .merge(pro, left_on="sample_id", right_index=True, how="left")
    )
    if df[["self_influence", "loss"]].isna().any().any():
        raise InflowError(
            "mislabel: manifest, self-influence and predictions list different training samples; rerun the workflow from factors"
        )
    df[["opponent_count", "proponent_count"]] = df[["opponent_count", "proponent_count"]].fillna(0).astype(np.int64)
    df["opponent_share"] = df.opponent_count / max(n_test, 1)
    df["disagreement"] = 1.0 - df.p_label
    return df


def _ids_problem(ids: pd.Series, expected: np.ndarray, what: str, exact: bool) -> str | None:
    """Why ``ids`` do not match the manifest's ``expected`` ids, or None if they do."""
    if exact and ids.duplicated().any():
        return f"lists sample_id(s) {ids[ids.duplicated()].unique()[:5].tolist()} more than once"
    unknown = np.setdiff1d(ids.unique(), expected)
    if len(unknown):
        return f"has {what} sample_id(s) {unknown[:5].tolist()} that are not {what} samples of the manifest"
    if exact:
        missing = np.setdiff1d(expected, ids.to_numpy())
        if len(missing):
            return f"lacks {len(missing)} {what} sample(s) of the manifest, e.g. sample_id(s) {missing[:5].tolist()}"
    return None


def check_inputs_match(
    manifest: pd.DataFrame, self_inf: pd.DataFrame, topk: pd.DataFrame, predictions: pd.DataFrame, paths: dict[str, str]
) -> None:
    """Raise if the tables do not describe the manifest's samples (outputs of another run or dataset).

    Self-influence and predictions must cover every training sample exactly once; the top-k
    table may only name test samples and training samples of the manifest.
    """
    need = {
        "self_influence": ["sample_id", "self_influence"],
        "topk": ["test_id", "kind", "train_id"],
        "predictions": ["sample_id", "split", "pred", "pred_name", "confidence", "p_label", "loss"],
    }
    for name, table in (("self_influence", self_inf), ("topk", topk), ("predictions", predictions)):
        missing = [c for c in need[name] if c not in table.columns]
        if missing:
            raise InflowError(f"{paths[name]}: lacks column(s) {', '.join(missing)}; delete it and rerun the rule that makes it")
    train_ids = manifest.loc[manifest.split == "train", "sample_id"].to_numpy()
    test_ids = manifest.loc[manifest.split == "test", "sample_id"].to_numpy()
    checks = [
        ("self_influence", self_inf.sample_id, train_ids, "train", True),
        ("predictions", predictions.loc[predictions.split == "train", "sample_id"], train_ids, "train", True),
        ("topk", topk.train_id, train_ids, "train", False),
        ("topk", topk.test_id, test_ids, "test", False),
    ]
    for name, ids, expected, what, exact in checks:
        problem = _ids_problem(ids, expected, what, exact)
        if problem:
            raise InflowError(
                f"{paths[name]}: {problem} ({paths['manifest']}); it comes from another run or dataset, rerun the workflow from the factors rule"
            )


def rank_mislabels(
    manifest_path: str,
    self_influence_path: str,
    topk_path: str,
    predictions_path: str,
    cfg: dict[str, Any],
    ranking_out: str,
    metrics_out: str,
) -> None:
    """Write the ranked table of likely mislabeled training samples and, when the truth is known, its metrics."""
    manifest = read_table(manifest_path)
    self_inf, topk, predictions = read_table(self_influence_path), read_table(topk_path), read_table(predictions_path)
    check_inputs_match(
        manifest,
        self_inf,
        topk,
        predictions,
        {"manifest": manifest_path, "self_influence": self_influence_path, "topk": topk_path, "predictions": predictions_path},
    )
    df = build_signals(manifest, self_inf, topk, predictions)
    df["score"] = combine(df, cfg["score"])
    df = df.sort_values("score", ascending=False, kind="stable", ignore_index=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    df["suggested_label_name"] = np.where(df.pred != df.label, df.pred_name, df.label_name)
    write_table(df, ranking_out)

    metrics: dict[str, Any] = {"score": cfg["score"], "n_train": len(df)}
    if df.flipped.notna().all():
        truth = df.flipped.to_numpy(dtype=bool)
        metrics["n_flipped"] = int(truth.sum())
        metrics["ranking"] = ranking_metrics(df.score.to_numpy(), truth)
        metrics["signals"] = {name: ranking_metrics(df[name].to_numpy(dtype=float), truth) for name in SIGNALS}
        metrics["baseline_loss"] = metrics["signals"]["loss"]
        log.info(
            "recall@10%%: ranking %.3f, loss baseline %.3f (of %d flipped labels)",
            metrics["ranking"]["recall_at_10pct"],
            metrics["baseline_loss"]["recall_at_10pct"],
            truth.sum(),
        )
        for name, m in metrics["signals"].items():
            log.info("  signal %-15s recall@10%% %.3f  AUROC %.3f", name, m["recall_at_10pct"], m["auroc"])
    else:
        log.info("true labels unknown: no mislabel metrics (set dataset.noise_rate > 0 to measure on injected noise)")
    write_json(metrics, metrics_out)


def budget_count(budget: float, n_train: int) -> int:
    """Samples to review: a fraction of ``n_train`` when ``budget < 1``, else a count (capped)."""
    n = round(budget * n_train) if budget < 1 else int(budget)
    return max(0, min(n, n_train))
