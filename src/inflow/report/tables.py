"""Report tables: mispredictions cross-referenced with their influences, influential training
samples, class-to-class influence, influence statistics, the health score and the text summary.

The pure functions take DataFrames and return DataFrames (unit-tested on hand-made inputs);
the ``write_*`` functions are the rule bodies: they read the workflow's files and write the
report tables atomically.

Inputs, as the core rules write them:

* ``samples``: one row per sample (see :func:`sample_table`): ``sample_id, split, label_name,
  pred_name, confidence, correct, flipped, true_label_name``.
* ``topk``: ``test_id, kind (proponent|opponent), rank, train_id, influence``.
* ``test_summary``: ``test_id, positive_sum, negative_sum, net_influence, n_positive`` over
  every training sample.
"""

from __future__ import annotations

import logging
import textwrap
from typing import Any

import numpy as np
import pandas as pd

from inflow.core.errors import InflowError
from inflow.core.io import atomic_path, read_json, read_metadata, read_table, write_json, write_table

log = logging.getLogger(__name__)

# Health score bands, checked from the top: (name, lowest share in percent, inclusive?).
HEALTH_BANDS: tuple[tuple[str, float, bool], ...] = (
    ("EXCELLENT", 95.0, False),  # > 95 %
    ("GOOD", 80.0, True),  # 80 % <= share <= 95 %
    ("FAIR", 60.0, True),  # 60 % <= share < 80 %
    ("NEEDS ATTENTION", float("-inf"), True),  # < 60 %
)

HEALTH_DEFINITION = (
    "health score = 100 * (number of test samples with net influence > 0) / (number of test samples); "
    "a test sample's net influence is the sum of the TracIn influence of every training sample on it "
    "(net_influence in results/influence/test_summary.parquet, summed over all checkpoints). "
    "Bands: EXCELLENT > 95 %, GOOD 80-95 % (both ends included), FAIR 60-80 % (60 included), NEEDS ATTENTION < 60 %."
)


# ---------------------------------------------------------------------------------------------
# Pure table logic
# ---------------------------------------------------------------------------------------------


def sample_table(manifest: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per sample: manifest label columns joined with the best model's prediction.

    Columns: ``sample_id, split, row, label, label_name, pred, pred_name, confidence, correct,
    flipped, true_label_name`` (``flipped``/``true_label_name`` are missing when the truth is unknown).
    """
    cols = ["sample_id", "split", "row", "label", "label_name", "true_label_name", "flipped"]
    df = manifest[cols].merge(predictions[["sample_id", "pred", "pred_name", "confidence"]], on="sample_id", how="left", validate="1:1")
    if df.pred.isna().any():
        raise InflowError("report: predictions do not cover every sample of the manifest; rerun predict")
    df["pred"] = df.pred.astype(np.int64)
    df["correct"] = df.pred == df.label
    return df


def cross_reference(topk: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Every top-k proponent and opponent of every mispredicted test sample.

    A test sample is mispredicted when its prediction differs from its label. ``same_error``
    is true when the training sample is predicted (by the same model) as the class the test
    sample was wrongly predicted as: ``train_pred == test_pred``. ``train_correct`` tells
    whether that training prediction agrees with the training label.

    Returns:
        One row per (mispredicted test sample, kind, rank): ``test_id, test_label, test_pred,
        test_confidence, kind, rank, train_id, train_label, train_pred, train_correct,
        train_flipped, influence, same_error``, ordered by test_id, kind (proponents first), rank.
    """
    s = samples.set_index("sample_id")
    wrong = s[(s.split == "test") & ~s.correct]
    rows = topk[topk.test_id.isin(wrong.index)]
    test = wrong.loc[rows.test_id]
    train = s.reindex(rows.train_id)
    if train.label_name.isna().any():
        raise InflowError("report: top-k lists name training samples missing from the manifest; rerun the workflow from prepare_data")
    out = pd.DataFrame(
        {
            "test_id": rows.test_id.to_numpy(),
            "test_label": test.label_name.to_numpy(),
            "test_pred": test.pred_name.to_numpy(),
            "test_confidence": test.confidence.to_numpy(),
            "kind": rows.kind.to_numpy(),
            "rank": rows["rank"].to_numpy(),
            "train_id": rows.train_id.to_numpy(),
            "train_label": train.label_name.to_numpy(),
            "train_pred": train.pred_name.to_numpy(),
            "train_correct": train.correct.to_numpy(dtype=bool),
            "train_flipped": pd.array(train.flipped.to_numpy(), dtype="boolean"),
            "influence": rows.influence.to_numpy(dtype=np.float64),
        }
    )
    out["same_error"] = out.train_pred == out.test_pred
    kind_order = out.kind.map({"proponent": 0, "opponent": 1})
    return out.assign(_k=kind_order).sort_values(["test_id", "_k", "rank"], kind="stable", ignore_index=True).drop(columns="_k")


def cross_summary(cross: pd.DataFrame, n_mispredicted: int) -> pd.DataFrame:
    """Headline numbers of :func:`cross_reference`, for proponents, opponents and both.

    Columns: ``kind`` (proponent, opponent, all), ``mispredicted_test`` (test samples with a wrong
    prediction), ``pairs`` (top-k entries of those samples), ``same_error_matches`` (entries with
    ``same_error``), ``same_error_share`` (matches / pairs), ``tests_with_match`` (mispredicted
    test samples with at least one match), ``unique_train`` (distinct training samples
    implicated), ``unique_train_same_error`` (distinct training samples among the matches).
    """
    rows = []
    for kind in ("proponent", "opponent", "all"):
        part = cross if kind == "all" else cross[cross.kind == kind]
        matches = part[part.same_error]
        rows.append(
            {
                "kind": kind,
                "mispredicted_test": int(n_mispredicted),
                "pairs": len(part),
                "same_error_matches": len(matches),
                "same_error_share": float(len(matches) / len(part)) if len(part) else float("nan"),
                "tests_with_match": int(matches.test_id.nunique()),
                "unique_train": int(part.train_id.nunique()),
                "unique_train_same_error": int(matches.train_id.nunique()),
            }
        )
    return pd.DataFrame(rows)


def influential_training(topk: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Training samples ranked by how often they appear in the test samples' top-k lists.

    Columns: ``train_id, label, pred, flipped, appearances`` (top-k lists of any kind it is in),
    ``proponent_appearances, opponent_appearances, test_share`` (appearances / test samples),
    ``mean_influence`` (over all its appearances), ``mean_proponent_influence,
    mean_opponent_influence`` (NaN when it never appears as that kind), ``total_influence``.
    Only training samples that appear at least once; sorted by appearances, then by
    ``|total_influence|``, both descending.
    """
    n_test = max(topk.test_id.nunique(), 1)
    g = topk.groupby("train_id")
    by_kind = topk.pivot_table(index="train_id", columns="kind", values="influence", aggfunc=["size", "mean"])
    out = pd.DataFrame({"appearances": g.size(), "mean_influence": g.influence.mean(), "total_influence": g.influence.sum()})
    for kind in ("proponent", "opponent"):
        out[f"{kind}_appearances"] = by_kind[("size", kind)] if ("size", kind) in by_kind else 0
        out[f"mean_{kind}_influence"] = by_kind[("mean", kind)] if ("mean", kind) in by_kind else np.nan
    out[["proponent_appearances", "opponent_appearances"]] = (
        out[["proponent_appearances", "opponent_appearances"]].fillna(0).astype(np.int64)
    )
    out["test_share"] = out.appearances / n_test
    s = samples.set_index("sample_id").reindex(out.index)
    out["label"], out["pred"], out["flipped"] = (
        s.label_name.to_numpy(),
        s.pred_name.to_numpy(),
        pd.array(s.flipped.to_numpy(), dtype="boolean"),
    )
    out = out.rename_axis("train_id").reset_index()
    out["_abs"] = out.total_influence.abs()
    out = out.sort_values(["appearances", "_abs", "train_id"], ascending=[False, False, True], kind="stable", ignore_index=True).drop(
        columns="_abs"
    )
    cols = [
        "train_id",
        "label",
        "pred",
        "flipped",
        "appearances",
        "proponent_appearances",
        "opponent_appearances",
        "test_share",
        "mean_influence",
        "mean_proponent_influence",
        "mean_opponent_influence",
        "total_influence",
    ]
    return out[cols]


def most_helpful(influential: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` training samples most often among the top-k proponents (ties: larger mean proponent influence)."""
    df = influential[influential.proponent_appearances > 0]
    return df.sort_values(
        ["proponent_appearances", "mean_proponent_influence", "train_id"], ascending=[False, False, True], kind="stable"
    ).head(n)


def most_harmful(influential: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` training samples most often among the top-k opponents (ties: more negative mean opponent influence)."""
    df = influential[influential.opponent_appearances > 0]
    return df.sort_values(
        ["opponent_appearances", "mean_opponent_influence", "train_id"], ascending=[False, True, True], kind="stable"
    ).head(n)


def class_influence_matrix(topk: pd.DataFrame, samples: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """Which training classes drive which test classes, from the top-k lists.

    One row per (train_class, test_class) pair of ``class_names`` (every pair, zeros included),
    classes by the given labels: ``n_proponent, n_opponent`` (top-k entries), ``proponent_influence,
    opponent_influence`` (their summed influence), ``net_influence`` (the sum of both) and
    ``proponent_share``: the pair's share of the test class's total top-k proponent influence
    (each test class's shares sum to 1 over the training classes).
    """
    labels = samples.set_index("sample_id").label_name
    df = topk.assign(train_class=labels.reindex(topk.train_id).to_numpy(), test_class=labels.reindex(topk.test_id).to_numpy())
    full = pd.MultiIndex.from_product([class_names, class_names], names=["train_class", "test_class"])
    out = pd.DataFrame(index=full)
    for kind in ("proponent", "opponent"):
        g = df[df.kind == kind].groupby(["train_class", "test_class"]).influence
        out[f"n_{kind}"] = g.size().reindex(full, fill_value=0).astype(np.int64)
        out[f"{kind}_influence"] = g.sum().reindex(full, fill_value=0.0).astype(np.float64)
    out["net_influence"] = out.proponent_influence + out.opponent_influence
    per_test = out.groupby(level="test_class").proponent_influence.transform("sum")
    out["proponent_share"] = (out.proponent_influence / per_test.where(per_test != 0)).fillna(0.0)
    return out.reset_index()


def describe(values: pd.Series) -> dict[str, float]:
    """``n, min, max, range, mean, median, std`` (sample std, ddof=1) of ``values``; NaN when empty."""
    v = values.astype(np.float64)
    if v.empty:
        return {"n": 0, "min": np.nan, "max": np.nan, "range": np.nan, "mean": np.nan, "median": np.nan, "std": np.nan}
    return {
        "n": int(len(v)),
        "min": float(v.min()),
        "max": float(v.max()),
        "range": float(v.max() - v.min()),
        "mean": float(v.mean()),
        "median": float(v.median()),
        "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
    }


def influence_stats(
    topk: pd.DataFrame, test_summary: pd.DataFrame, self_influence: pd.DataFrame, samples: pd.DataFrame, class_names: list[str]
) -> pd.DataFrame:
    """Range, mean, median and standard deviation of the influence quantities, overall and per class.

    Quantities: ``proponent_influence`` and ``opponent_influence`` (the top-k entries),
    ``net_influence`` (one value per test sample, over all training samples) and
    ``self_influence`` (one value per training sample). The class of the first three is the
    test sample's label, of ``self_influence`` the training sample's label.

    Returns:
        Columns ``quantity, scope`` (``all`` or a class name), then :func:`describe`'s columns.
    """
    labels = samples.set_index("sample_id").label_name
    values = {
        "proponent_influence": (topk[topk.kind == "proponent"].influence, topk[topk.kind == "proponent"].test_id),
        "opponent_influence": (topk[topk.kind == "opponent"].influence, topk[topk.kind == "opponent"].test_id),
        "net_influence": (test_summary.net_influence, test_summary.test_id),
        "self_influence": (self_influence.self_influence, self_influence.sample_id),
    }
    rows = []
    for quantity, (v, ids) in values.items():
        cls = labels.reindex(ids).to_numpy()
        v = pd.Series(v.to_numpy(dtype=np.float64))
        rows.append({"quantity": quantity, "scope": "all", **describe(v)})
        rows.extend({"quantity": quantity, "scope": c, **describe(v[cls == c])} for c in class_names)
    return pd.DataFrame(rows)


def health_band(share_pct: float) -> str:
    """Band of a health score in percent: EXCELLENT > 95, GOOD 80-95, FAIR 60-80, NEEDS ATTENTION < 60."""
    for name, low, inclusive in HEALTH_BANDS:
        if share_pct > low or (inclusive and share_pct == low):
            return name
    return HEALTH_BANDS[-1][0]


def health_score(net_influence: pd.Series) -> dict[str, Any]:
    """Share of test samples whose net influence is positive (> 0), in percent, with its band.

    Returns ``{"n_test", "n_positive", "score_pct", "band"}``; a score of NaN (band
    NEEDS ATTENTION) when there are no test samples.
    """
    n = int(len(net_influence))
    n_pos = int((net_influence.to_numpy(dtype=np.float64) > 0).sum())
    score = 100.0 * n_pos / n if n else float("nan")
    return {"n_test": n, "n_positive": n_pos, "score_pct": score, "band": health_band(score) if n else "NEEDS ATTENTION"}


def health_table(test_summary: pd.DataFrame, samples: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """:func:`health_score` over all test samples (scope ``all``) and per test class (by label)."""
    labels = samples.set_index("sample_id").label_name
    cls = labels.reindex(test_summary.test_id).to_numpy()
    rows = [{"scope": "all", **health_score(test_summary.net_influence)}]
    rows.extend({"scope": c, **health_score(test_summary.net_influence[cls == c])} for c in class_names)
    return pd.DataFrame(rows)


def accuracy_by_split(samples: pd.DataFrame) -> dict[str, float]:
    """Accuracy of the best model against the given labels, per split present."""
    return {
        split: float(samples[samples.split == split].correct.mean()) for split in ("train", "val", "test") if (samples.split == split).any()
    }


def overall_health(health: pd.DataFrame) -> dict[str, Any]:
    """The ``all`` row of :func:`health_table` as a dict."""
    return health[health.scope == "all"].iloc[0].to_dict()


def key_findings(
    samples: pd.DataFrame,
    health: pd.DataFrame,
    cross_sum: pd.DataFrame,
    influential: pd.DataFrame,
    matrix: pd.DataFrame,
    mislabel_metrics: dict[str, Any],
) -> list[str]:
    """A few sentences with the headline numbers, for the dashboard and the text report."""
    test = samples[samples.split == "test"]
    wrong = test[~test.correct]
    out = [f"Test accuracy {100 * test.correct.mean():.1f}%: {len(wrong)} of {len(test)} test samples are mispredicted."]
    if len(wrong):
        pair = wrong.groupby(["label_name", "pred_name"]).size().sort_values(ascending=False, kind="stable")
        (lab, pred), n = pair.index[0], int(pair.iloc[0])
        out[-1] += f" Most common confusion: {lab} predicted as {pred} ({n}x)."
    h = overall_health(health)
    per_class = health[health.scope != "all"].sort_values("score_pct", kind="stable")
    weakest = f"; weakest class: {per_class.scope.iloc[0]} ({per_class.score_pct.iloc[0]:.0f}%)" if len(per_class) else ""
    out.append(
        f"Health score {h['score_pct']:.1f}% ({h['band']}): {h['n_positive']} of {h['n_test']} test samples have positive net influence{weakest}."
    )
    both = cross_sum[cross_sum.kind == "all"].iloc[0]
    opp = cross_sum[cross_sum.kind == "opponent"].iloc[0]
    if both.pairs:
        out.append(
            f"In the top-k lists of the mispredicted test samples, {100 * both.same_error_share:.1f}% of the training samples are predicted as the same "
            f"wrong class ({100 * opp.same_error_share:.1f}% of opponents); {both.unique_train} distinct training samples are implicated."
        )
    if len(influential):
        r = influential.iloc[0]
        flip = ", label flipped on purpose" if pd.notna(r.flipped) and bool(r.flipped) else ""
        out.append(
            f"Most influential training sample: {r.train_id} (label {r.label}, predicted {r.pred}{flip}) appears in {r.appearances} top-k lists "
            f"({r.proponent_appearances} as proponent, {r.opponent_appearances} as opponent)."
        )
    cross_class = matrix[matrix.train_class != matrix.test_class].sort_values("n_opponent", ascending=False, kind="stable")
    if len(cross_class) and cross_class.n_opponent.iloc[0] > 0:
        r = cross_class.iloc[0]
        out.append(
            f"Strongest cross-class opposition: training class {r.train_class} appears {r.n_opponent} times among the opponents of {r.test_class} test samples."
        )
    if "ranking" in mislabel_metrics:
        m = mislabel_metrics["ranking"]
        out.append(
            f"Mislabel ranking: inspecting the top 10% of training samples finds {100 * m['recall_at_10pct']:.1f}% of the {mislabel_metrics['n_flipped']} "
            f"injected label flips (AUROC {m['auroc']:.3f})."
        )
    return out


def text_summary(
    samples: pd.DataFrame,
    health: pd.DataFrame,
    cross_sum: pd.DataFrame,
    influential: pd.DataFrame,
    stats: pd.DataFrame,
    ranking: pd.DataFrame,
    mislabel_metrics: dict[str, Any],
    n_show: int = 10,
    recommendations: pd.DataFrame | None = None,
) -> str:
    """The plain-text influence report: headline numbers a reviewer reads first, then the
    ``recommendations`` (``topic, recommendation, source`` rows) when given."""
    acc = accuracy_by_split(samples)
    test = samples[samples.split == "test"]
    h = overall_health(health)
    counts = samples.split.value_counts()
    lines = ["inflow influence report", "=======================", ""]
    lines.append("Data: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("train", "val", "test")) + " samples")
    lines.append("Accuracy (given labels): " + ", ".join(f"{s} {100 * a:.1f}%" for s, a in acc.items()))
    lines.append(f"Mispredicted test samples: {int((~test.correct).sum())} of {len(test)}")
    lines += [
        "",
        "Health score",
        "------------",
        f"{h['score_pct']:.1f}% -> {h['band']} ({h['n_positive']} of {h['n_test']} test samples have positive net influence)",
        textwrap.fill(HEALTH_DEFINITION, 100),
        textwrap.fill(
            "Per class: " + ", ".join(f"{r.scope} {r.score_pct:.0f}% ({r.band})" for r in health.itertuples() if r.scope != "all"), 100
        ),
    ]
    lines += ["", "Influence statistics (all samples)", "----------------------------------"]
    for r in stats[stats.scope == "all"].itertuples():
        lines.append(
            f"{r.quantity:<20} n={r.n:<6} min={r.min:.4g} max={r.max:.4g} range={r.range:.4g} mean={r.mean:.4g} median={r.median:.4g} std={r.std:.4g}"
        )
    lines += ["", "Mispredicted test samples and their top-k influences", "----------------------------------------------------"]
    for r in cross_sum.itertuples():
        lines.append(
            f"{r.kind:<10} pairs {r.pairs:<5} same-error matches {r.same_error_matches:<5} ({100 * r.same_error_share:.1f}%), "
            f"tests with a match {r.tests_with_match}, unique training samples {r.unique_train} ({r.unique_train_same_error} with the same error)"
        )
    lines += ["", f"Most influential training samples (appearances in the top-k lists of {len(test)} test samples)", "-" * 80]
    for r in influential.head(n_show).itertuples():
        lines.append(
            f"train {r.train_id:<6} label {r.label:<12} pred {r.pred:<12} appearances {r.appearances:<4} "
            f"(proponent {r.proponent_appearances}, opponent {r.opponent_appearances})  mean influence {r.mean_influence:+.4g}"
        )
    lines += ["", "Top mislabel candidates", "-----------------------"]
    known = ranking.flipped.notna().all()
    for r in ranking.head(n_show).itertuples():
        truth = (f"  (flipped on purpose, true {r.true_label_name})" if r.flipped else "  (label is correct)") if known else ""
        lines.append(
            f"#{r.rank:<4} train {r.sample_id:<6} label {r.label_name:<12} suggested {r.suggested_label_name:<12} score {r.score:.4f}{truth}"
        )
    if "ranking" in mislabel_metrics:
        m = mislabel_metrics["ranking"]
        lines.append(
            f"Against the {mislabel_metrics['n_flipped']} injected label flips: inspecting the top 10% finds {100 * m['recall_at_10pct']:.1f}% of them "
            f"(precision {100 * m['precision_at_10pct']:.1f}%), AUROC {m['auroc']:.3f}"
        )
    if recommendations is not None:
        lines += ["", "Findings and recommendations", "----------------------------"]
        for r in recommendations.itertuples():
            lines.append(textwrap.fill(f"{r.topic}: {r.recommendation} [from {r.source}]", 100, subsequent_indent="    "))
    return "\n".join(lines) + "\n"


def select_items(class_names: list[str], false_predictions: pd.DataFrame, test_ids: list[int], cfg: dict[str, Any]) -> dict[str, Any]:
    """Classes for the per-class dashboards and test samples for the proponent/opponent grids.

    ``cfg`` is the config's ``report`` section: ``classes`` (empty: every class) and
    ``test_samples`` win; when ``test_samples`` is empty, the first ``n_test_samples``
    mispredicted test samples of ``false_predictions`` (most confident mistake first).
    """
    unknown_cls = [c for c in cfg["classes"] if c not in class_names]
    if unknown_cls:
        raise InflowError(f"report.classes: {unknown_cls} are not classes of the dataset {class_names}")
    unknown = sorted(set(cfg["test_samples"]) - set(test_ids))
    if unknown:
        raise InflowError(
            f"report.test_samples: {unknown} are not test sample ids; pick sample_ids of the test split (results/predictions/predictions.parquet)"
        )
    classes = [c for c in class_names if c in cfg["classes"]] if cfg["classes"] else list(class_names)
    samples = [int(i) for i in cfg["test_samples"]] or [int(i) for i in false_predictions.sample_id.head(cfg["n_test_samples"])]
    return {"classes": classes, "test_samples": samples}


# ---------------------------------------------------------------------------------------------
# Rule bodies
# ---------------------------------------------------------------------------------------------


def write_both(df: pd.DataFrame, parquet_out: str, csv_out: str) -> None:
    """Write a report table twice: Parquet (types kept, read by later rules) and CSV (for people)."""
    write_table(df, parquet_out)
    write_table(df, csv_out)


def load_classes(manifest_path: str) -> list[str]:
    """Class names stored with the manifest (without importing torch, unlike :mod:`inflow.data.manifest`)."""
    names = read_metadata(manifest_path).get("class_names")
    if not names:
        raise InflowError(f"{manifest_path}: manifest has no class_names metadata; rerun prepare_data")
    return list(names)


def load_samples(manifest_path: str, predictions_path: str) -> tuple[pd.DataFrame, list[str]]:
    """:func:`sample_table` from the workflow files, and the class names."""
    class_names = load_classes(manifest_path)
    return sample_table(read_table(manifest_path), read_table(predictions_path)), class_names


def check_class(cls: str, class_names: list[str]) -> None:
    """Stop with one line when ``cls`` (a rule's class wildcard) is not one of the dataset's classes."""
    if cls not in class_names:
        raise InflowError(f"class {cls!r} is not one of the dataset's classes {class_names}; see results/data/classes.json")


def write_selection(classes_path: str, false_predictions_path: str, predictions_path: str, cfg: dict[str, Any], out: str) -> None:
    """Rule ``report_selection``: the classes and test samples that get their own pictures (JSON)."""
    preds = read_table(predictions_path, columns=["sample_id", "split"])
    false = pd.read_csv(false_predictions_path, usecols=["sample_id"])
    selection = select_items(read_json(classes_path)["class_names"], false, preds[preds.split == "test"].sample_id.tolist(), cfg)
    log.info("%d classes, test samples %s", len(selection["classes"]), selection["test_samples"])
    write_json(selection, out)


def write_cross_analysis(manifest_path: str, predictions_path: str, topk_path: str, outputs: dict[str, str]) -> None:
    """Rule ``misprediction_cross_analysis``: the cross-reference table and its summary.

    ``outputs`` has the keys ``table``, ``table_csv``, ``summary``, ``summary_csv``.
    """
    samples, _ = load_samples(manifest_path, predictions_path)
    cross = cross_reference(read_table(topk_path), samples)
    n_wrong = int(((samples.split == "test") & ~samples.correct).sum())
    summary = cross_summary(cross, n_wrong)
    log.info("%d mispredicted test samples, %d top-k pairs, same-error share %.3f", n_wrong, len(cross), summary.same_error_share.iloc[-1])
    write_both(cross, outputs["table"], outputs["table_csv"])
    write_both(summary, outputs["summary"], outputs["summary_csv"])


def write_influential(manifest_path: str, predictions_path: str, topk_path: str, parquet_out: str, csv_out: str) -> None:
    """Rule ``influential_training``: training samples by appearances in the top-k lists."""
    samples, _ = load_samples(manifest_path, predictions_path)
    table = influential_training(read_table(topk_path), samples)
    log.info("%d training samples appear in some top-k list", len(table))
    write_both(table, parquet_out, csv_out)


def write_class_matrix(manifest_path: str, predictions_path: str, topk_path: str, parquet_out: str, csv_out: str) -> None:
    """Rule ``class_influence``: the class-to-class influence table."""
    samples, class_names = load_samples(manifest_path, predictions_path)
    write_both(class_influence_matrix(read_table(topk_path), samples, class_names), parquet_out, csv_out)


def write_stats(
    manifest_path: str, predictions_path: str, topk_path: str, summary_path: str, self_influence_path: str, parquet_out: str, csv_out: str
) -> None:
    """Rule ``influence_stats``: influence statistics overall and per class."""
    samples, class_names = load_samples(manifest_path, predictions_path)
    stats = influence_stats(read_table(topk_path), read_table(summary_path), read_table(self_influence_path), samples, class_names)
    write_both(stats, parquet_out, csv_out)


def write_health(manifest_path: str, predictions_path: str, summary_path: str, parquet_out: str, csv_out: str) -> None:
    """Rule ``health_score``: the health score overall (scope ``all``) and per test class."""
    samples, class_names = load_samples(manifest_path, predictions_path)
    table = health_table(read_table(summary_path), samples, class_names)
    log.info("health score %.1f%% (%s); %s", table.score_pct.iloc[0], table.band.iloc[0], HEALTH_DEFINITION)
    write_both(table, parquet_out, csv_out)


def write_text_report(
    manifest_path: str,
    predictions_path: str,
    health_path: str,
    cross_summary_path: str,
    influential_path: str,
    stats_path: str,
    ranking_path: str,
    mislabel_metrics_path: str,
    out: str,
    recommendations_path: str | None = None,
) -> None:
    """Rule ``influence_report``: the plain-text summary (with the recommendations table when given)."""
    samples, _ = load_samples(manifest_path, predictions_path)
    health = read_table(health_path)
    text = text_summary(
        samples,
        health,
        read_table(cross_summary_path),
        read_table(influential_path),
        read_table(stats_path),
        read_table(ranking_path),
        read_json(mislabel_metrics_path),
        recommendations=read_table(recommendations_path) if recommendations_path else None,
    )
    with atomic_path(out) as tmp:
        tmp.write_text(text)
