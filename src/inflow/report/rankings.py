"""Report tables that rank training samples: by influence magnitude over the whole test set, per
test class (the galleries' contents), per confusion (true -> predicted), and the plain CSV
exports of the core tables.

Inputs, besides those of :mod:`inflow.report.tables` (``samples``, ``topk``, ``test_summary``):

* ``train_summary``: ``train_id, positive_sum, negative_sum, net_influence, n_positive``, the
  column sums of the influence matrix ``I (n_test, n_train)`` (summed over checkpoints):
  ``net_influence[j] = sum_i I[i, j]`` over every test sample ``i``.

The ``write_*`` functions are the rule bodies.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from inflow.core.errors import InflowError
from inflow.core.io import atomic_path, read_table
from inflow.report.tables import load_samples, write_both

log = logging.getLogger(__name__)

GALLERY_KINDS = {"positive": "proponent", "negative": "opponent"}  # gallery side -> top-k kind


def training_influence(train_summary: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Every training sample by its influence summed over the whole test set (most helpful first).

    Columns: ``train_id, label, pred, confidence, flipped, net_influence`` (``sum_i I[i, j]``),
    ``mean_influence`` (``net_influence / n_test``), ``positive_sum, negative_sum`` (sums of its
    positive and of its negative influences), ``n_helped`` (test samples with ``I[i, j] > 0``),
    ``helpful_rank`` (1 = largest net influence), ``harmful_rank`` (1 = most negative).
    Sorted by ``helpful_rank``; ties broken by ``train_id``.
    """
    s = samples.set_index("sample_id")
    train_ids = set(s.index[s.split == "train"])
    if set(train_summary.train_id) != train_ids:
        raise InflowError(
            "report: results/influence/train_summary.parquet does not list the training samples of the manifest; rerun accumulate_topk"
        )
    n_test = int((s.split == "test").sum())
    info = s.reindex(train_summary.train_id)
    out = pd.DataFrame(
        {
            "train_id": train_summary.train_id.to_numpy(dtype=np.int64),
            "label": info.label_name.to_numpy(),
            "pred": info.pred_name.to_numpy(),
            "confidence": info.confidence.to_numpy(dtype=np.float64),
            "flipped": pd.array(info.flipped.to_numpy(), dtype="boolean"),
            "net_influence": train_summary.net_influence.to_numpy(dtype=np.float64),
            "mean_influence": train_summary.net_influence.to_numpy(dtype=np.float64) / max(n_test, 1),
            "positive_sum": train_summary.positive_sum.to_numpy(dtype=np.float64),
            "negative_sum": train_summary.negative_sum.to_numpy(dtype=np.float64),
            "n_helped": train_summary.n_positive.to_numpy(dtype=np.int64),
        }
    )
    out = out.sort_values(["net_influence", "train_id"], ascending=[False, True], kind="stable", ignore_index=True)
    out.insert(len(out.columns), "helpful_rank", np.arange(1, len(out) + 1))
    harmful = out.sort_values(["net_influence", "train_id"], ascending=[True, True], kind="stable").index
    out["harmful_rank"] = pd.Series(np.arange(1, len(out) + 1), index=harmful).reindex(out.index).to_numpy()
    return out


def class_top_influences(topk: pd.DataFrame, samples: pd.DataFrame, class_names: list[str], n: int) -> pd.DataFrame:
    """Per test class, the ``n`` training samples with the largest positive and negative influence on it.

    A training sample's influence on class ``c`` is the sum of its top-k entries over the test
    samples labelled ``c``: its proponent entries for the ``positive`` side (largest sum first),
    its opponent entries for the ``negative`` side (most negative sum first).

    Columns: ``class, side`` (positive|negative), ``rank, train_id, label, pred, flipped,
    influence`` (that sum), ``n_tests`` (test samples of the class whose list it is in),
    ``mean_influence`` (``influence / n_tests``). Classes in ``class_names`` order, positive first.
    """
    s = samples.set_index("sample_id")
    df = topk.assign(test_class=s.label_name.reindex(topk.test_id).to_numpy())
    parts = []
    for cls in class_names:
        for side, kind in GALLERY_KINDS.items():
            rows = df[(df.test_class == cls) & (df.kind == kind)]
            g = rows.groupby("train_id").influence.agg(["sum", "size"]).reset_index()
            g = g.sort_values(["sum", "train_id"], ascending=[side == "negative", True], kind="stable").head(n)
            info = s.reindex(g.train_id)
            parts.append(
                pd.DataFrame(
                    {
                        "class": cls,
                        "side": side,
                        "rank": np.arange(1, len(g) + 1),
                        "train_id": g.train_id.to_numpy(dtype=np.int64),
                        "label": info.label_name.to_numpy(),
                        "pred": info.pred_name.to_numpy(),
                        "flipped": pd.array(info.flipped.to_numpy(), dtype="boolean"),
                        "influence": g["sum"].to_numpy(dtype=np.float64),
                        "n_tests": g["size"].to_numpy(dtype=np.int64),
                    }
                )
            )
    out = pd.concat(parts, ignore_index=True)
    out["mean_influence"] = out.influence / out.n_tests.where(out.n_tests > 0)
    return out


def confusion_pairs(samples: pd.DataFrame, topk: pd.DataFrame, n_implicated: int) -> pd.DataFrame:
    """Every (label -> prediction) confusion of the test set, with the training images most implicated.

    A pair's implicated training images are the top-k **opponents** of its test samples (the
    training samples that push those test samples away from their label), ranked by their
    summed opponent influence over the pair's test samples (most negative first).

    Columns: ``true_class, pred_class, count`` (test samples), ``share_of_class`` (count / test
    samples labelled ``true_class``), ``share_of_errors`` (count / mispredicted test samples),
    ``test_ids`` (``;``-separated, most confident mistake first), ``implicated_train_ids``,
    ``implicated_influence``, ``implicated_labels`` (``;``-separated, the first ``n_implicated``),
    ``implicated_labelled_pred`` (how many of those are labelled ``pred_class``). Sorted by count
    (descending), then true and predicted class.
    """
    s = samples.set_index("sample_id")
    test = samples[samples.split == "test"]
    wrong = test[~test.correct].sort_values(["confidence", "sample_id"], ascending=[False, True], kind="stable")
    per_class = test.label_name.value_counts()
    opp = topk[topk.kind == "opponent"]
    rows = []
    for (true, pred), block in wrong.groupby(["label_name", "pred_name"], sort=False):
        imp = opp[opp.test_id.isin(block.sample_id)].groupby("train_id").influence.sum().reset_index()
        imp = imp.sort_values(["influence", "train_id"], kind="stable").head(n_implicated)
        labels = s.label_name.reindex(imp.train_id).to_numpy()
        rows.append(
            {
                "true_class": true,
                "pred_class": pred,
                "count": len(block),
                "share_of_class": len(block) / int(per_class[true]),
                "share_of_errors": len(block) / len(wrong),
                "test_ids": ";".join(map(str, block.sample_id)),
                "implicated_train_ids": ";".join(map(str, imp.train_id)),
                "implicated_influence": ";".join(f"{v:.6g}" for v in imp.influence),
                "implicated_labels": ";".join(map(str, labels)),
                "implicated_labelled_pred": int((labels == pred).sum()),
            }
        )
    cols = [
        "true_class",
        "pred_class",
        "count",
        "share_of_class",
        "share_of_errors",
        "test_ids",
        "implicated_train_ids",
        "implicated_influence",
        "implicated_labels",
        "implicated_labelled_pred",
    ]
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["count", "true_class", "pred_class"], ascending=[False, True, True], kind="stable", ignore_index=True)


def topk_export(topk: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """The top-k table with both samples' labels and predictions, for a spreadsheet.

    Columns: ``test_id, test_label, test_pred, kind, rank, train_id, train_label, train_pred,
    train_flipped, influence``; rows as in ``topk`` (test sample, kind, rank).
    """
    s = samples.set_index("sample_id")
    test, train = s.reindex(topk.test_id), s.reindex(topk.train_id)
    return pd.DataFrame(
        {
            "test_id": topk.test_id.to_numpy(),
            "test_label": test.label_name.to_numpy(),
            "test_pred": test.pred_name.to_numpy(),
            "kind": topk.kind.to_numpy(),
            "rank": topk["rank"].to_numpy(),
            "train_id": topk.train_id.to_numpy(),
            "train_label": train.label_name.to_numpy(),
            "train_pred": train.pred_name.to_numpy(),
            "train_flipped": pd.array(train.flipped.to_numpy(), dtype="boolean"),
            "influence": topk.influence.to_numpy(dtype=np.float64),
        }
    )


def per_test_export(test_summary: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Per test sample: label, prediction, confidence, correct, and its influence sums over every training sample.

    Columns: ``test_id, label, pred, confidence, correct, positive_sum, negative_sum,
    net_influence, n_positive``; rows in ``test_summary`` order.
    """
    s = samples.set_index("sample_id").reindex(test_summary.test_id)
    out = pd.DataFrame(
        {
            "test_id": test_summary.test_id.to_numpy(),
            "label": s.label_name.to_numpy(),
            "pred": s.pred_name.to_numpy(),
            "confidence": s.confidence.to_numpy(dtype=np.float64),
            "correct": s.correct.to_numpy(dtype=bool),
        }
    )
    for col in ("positive_sum", "negative_sum", "net_influence", "n_positive"):
        out[col] = test_summary[col].to_numpy()
    return out


# ---------------------------------------------------------------------------------------------
# Rule bodies
# ---------------------------------------------------------------------------------------------


def write_training_influence(manifest_path: str, predictions_path: str, train_summary_path: str, parquet_out: str, csv_out: str) -> None:
    """Rule ``training_influence``: every training sample by its influence summed over the test set."""
    samples, _ = load_samples(manifest_path, predictions_path)
    table = training_influence(read_table(train_summary_path), samples)
    log.info(
        "most helpful training sample %d (net %+.4g), most harmful %d (net %+.4g); %d of %d have a negative net influence",
        table.train_id.iloc[0],
        table.net_influence.iloc[0],
        table.train_id.iloc[-1],
        table.net_influence.iloc[-1],
        int((table.net_influence < 0).sum()),
        len(table),
    )
    write_both(table, parquet_out, csv_out)


def write_class_top_influences(manifest_path: str, predictions_path: str, topk_path: str, n: int, parquet_out: str, csv_out: str) -> None:
    """Rule ``class_top_influences``: per test class, the training samples with the largest positive and negative influence."""
    samples, class_names = load_samples(manifest_path, predictions_path)
    write_both(class_top_influences(read_table(topk_path), samples, class_names, n), parquet_out, csv_out)


def write_confusion_pairs(manifest_path: str, predictions_path: str, topk_path: str, n: int, parquet_out: str, csv_out: str) -> None:
    """Rule ``confusion_pairs``: the test set's confusions with the training images most implicated."""
    samples, _ = load_samples(manifest_path, predictions_path)
    table = confusion_pairs(samples, read_table(topk_path), n)
    log.info("%d confusion pairs over %d mispredicted test samples", len(table), int(table["count"].sum()))
    write_both(table, parquet_out, csv_out)


def write_csv(df: pd.DataFrame, out: str) -> None:
    """``df`` as a plain CSV (no index), atomically."""
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)


def write_topk_csv(manifest_path: str, predictions_path: str, topk_path: str, out: str) -> None:
    """Rule ``export_topk``: ``results/influence/topk.parquet`` as CSV, with labels and predictions."""
    samples, _ = load_samples(manifest_path, predictions_path)
    write_csv(topk_export(read_table(topk_path), samples), out)


def write_test_summary_csv(manifest_path: str, predictions_path: str, summary_path: str, out: str) -> None:
    """Rule ``export_test_summary``: ``results/influence/test_summary.parquet`` as CSV, with labels and predictions."""
    samples, _ = load_samples(manifest_path, predictions_path)
    write_csv(per_test_export(read_table(summary_path), samples), out)


def write_ranking_csv(ranking_path: str, out: str) -> None:
    """Rule ``export_mislabel_ranking``: the full mislabel ranking as CSV (every column, the image path included)."""
    write_csv(read_table(ranking_path), out)
