"""Rule ``method_comparison``: attribution methods and mislabel baselines in one table.

Rows, each scored against the injected label noise (recall when inspecting the top 10% of the
training set, AUROC) and, for TracIn, by the linear datamodeling score (LDS, with its 95%
bootstrap interval) on the same subset models:

* ``tracin:<method>`` for every compared factor method: its LDS, and its self-influence alone
  as the mislabel ranking;
* ``workflow ranking``: the main DAG's combined ranking (``mislabel.score`` signals);
* ``training loss``: the best model's loss on the given label (the plain baseline);
* ``cleanlab``: cleanlab's label quality on K-fold out-of-sample probabilities
  (:mod:`inflow.validation.cleanlab_baseline`), with how many samples ``find_label_issues`` flags.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from inflow.core.errors import InflowError
from inflow.core.figures import save_figure
from inflow.core.io import atomic_path, read_json, read_table
from inflow.mislabel.ranking import ranking_metrics

log = logging.getLogger(__name__)

COLUMNS = ["row", "kind", "lds", "lds_ci_low", "lds_ci_high", "recall_at_10pct", "auroc", "n_flagged", "note"]
METHOD_NOTES = {
    "last_layer": "TracIn on the head's final Linear layer",
    "head_layers": "TracIn on every Linear layer of the head",
    "projection": "TracIn on all parameters, randomly projected",
}


def training_truth(manifest: pd.DataFrame) -> pd.Series | None:
    """``flipped`` of every training sample indexed by sample_id, or None when the true labels are unknown."""
    train = manifest[manifest.split == "train"].set_index("sample_id")
    if "flipped" not in train.columns or train.flipped.isna().any():
        return None
    return train.flipped.astype(bool)


def tracin_row(method: str, self_influence_path: str, lds_path: str, truth: pd.Series | None) -> dict[str, Any]:
    """One TracIn method: LDS and its interval from ``lds.json``; recall and AUROC of its self-influence."""
    lds = read_json(lds_path)
    if not isinstance(lds, dict) or "lds" not in lds or "ci95" not in lds:
        raise InflowError(f"{lds_path}: not an LDS result (needs lds and ci95); delete it and rerun the method_lds rule")
    row = {
        "row": f"tracin:{method}",
        "kind": "tracin",
        "lds": lds["lds"],
        "lds_ci_low": lds["ci95"][0],
        "lds_ci_high": lds["ci95"][1],
        "note": f"{METHOD_NOTES.get(method, method)}; LDS output {lds.get('output')}, {lds.get('n_models')} subset models; recall and AUROC of self-influence alone",
    }
    if truth is not None:
        table = read_table(self_influence_path).set_index("sample_id")
        missing = truth.index.difference(table.index)
        if len(missing):
            raise InflowError(
                f"{self_influence_path}: lacks {len(missing)} training sample(s) of the manifest; it comes from another run, rerun the method_self_influence rule"
            )
        metrics = ranking_metrics(table.self_influence.loc[truth.index].to_numpy(dtype=float), truth.to_numpy())
        row.update(recall_at_10pct=metrics["recall_at_10pct"], auroc=metrics["auroc"])
    return row


def mislabel_rows(metrics_path: str) -> list[dict[str, Any]]:
    """The workflow's combined ranking and the training-loss baseline, from ``mislabel_metrics.json``."""
    metrics = read_json(metrics_path)
    signals = " + ".join(metrics.get("score", []))
    rows = [
        {"row": "workflow ranking", "kind": "ranking", "note": f"main DAG's combined mislabel ranking ({signals})"},
        {"row": "training loss", "kind": "baseline", "note": "the best model's loss on the given label"},
    ]
    for row, key in zip(rows, ("ranking", "baseline_loss")):
        if key in metrics:
            row.update(recall_at_10pct=metrics[key]["recall_at_10pct"], auroc=metrics[key]["auroc"])
        else:
            row["note"] += "; true labels unknown"
    return rows


def cleanlab_row(json_path: str) -> dict[str, Any]:
    """cleanlab's row from ``cleanlab.json``: recall and AUROC of its label-quality ranking, samples flagged."""
    result = read_json(json_path)
    row: dict[str, Any] = {"row": "cleanlab", "kind": "baseline"}
    if not result.get("available"):
        row["note"] = result.get("note", "cleanlab not available")
        return row
    row["n_flagged"] = result["n_flagged"]
    row["note"] = (
        f"cleanlab {result.get('cleanlab_version')}, {result['n_folds']}-fold out-of-sample probabilities; "
        f"recall and AUROC of the label-quality ranking; find_label_issues flags {result['n_flagged']}"
    )
    if "metrics" in result:
        row.update(recall_at_10pct=result["metrics"]["recall_at_10pct"], auroc=result["metrics"]["auroc"])
        row["note"] += f" (recall {result['flagged_recall']:.3f}, precision {result['flagged_precision']:.3f} of the flagged set)"
    else:
        row["note"] += "; true labels unknown"
    return row


def compare_methods(
    manifest_path: str,
    mislabel_metrics_path: str,
    methods: list[str],
    self_influence_paths: list[str],
    lds_paths: list[str],
    cleanlab_paths: list[str],
    table_out: str,
    plot_out: str,
) -> pd.DataFrame:
    """Write the comparison table (CSV, one row per method or baseline) and its picture; return the table.

    ``self_influence_paths[i]`` and ``lds_paths[i]`` belong to ``methods[i]``; ``cleanlab_paths``
    holds the cleanlab result, or nothing when ``compare.cleanlab_folds`` is 0.
    """
    if not (len(methods) == len(self_influence_paths) == len(lds_paths)):
        raise InflowError(
            f"method_comparison: {len(methods)} methods but {len(self_influence_paths)} self-influence and {len(lds_paths)} LDS files; rerun with the current config"
        )
    truth = training_truth(read_table(manifest_path))
    rows = [tracin_row(m, s, p, truth) for m, s, p in zip(methods, self_influence_paths, lds_paths)]
    rows += mislabel_rows(mislabel_metrics_path)
    rows += [cleanlab_row(p) for p in cleanlab_paths]
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    table["n_flagged"] = table.n_flagged.astype("Int64")
    if truth is None:
        log.info("true labels unknown: no recall or AUROC (set dataset.noise_rate > 0 to measure on injected noise)")
    for r in table.itertuples():
        log.info(
            "%-20s LDS %s  recall@10%% %s  AUROC %s",
            r.row,
            _fmt(r.lds, (r.lds_ci_low, r.lds_ci_high)),
            _fmt(r.recall_at_10pct),
            _fmt(r.auroc),
        )
    with atomic_path(table_out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    plot_comparison(table, plot_out)
    return table


def _fmt(value: Any, ci: tuple[Any, Any] | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def plot_comparison(table: pd.DataFrame, path: str) -> None:
    """Two panels: LDS with its 95% interval per TracIn method; recall at 10% (and AUROC) per row. PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8))
    ax_lds, ax_rec = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    tracin = table[table.kind == "tracin"]
    y = np.arange(len(tracin))
    lds = tracin.lds.to_numpy(dtype=float)
    err = np.vstack([lds - tracin.lds_ci_low.to_numpy(dtype=float), tracin.lds_ci_high.to_numpy(dtype=float) - lds])
    ax_lds.barh(y, lds, xerr=err, color="#1565c0", capsize=4)
    ax_lds.axvline(0, color="black", linewidth=0.8)
    ax_lds.set_yticks(y, [r.removeprefix("tracin:") for r in tracin.row])
    ax_lds.invert_yaxis()
    ax_lds.set_xlabel("LDS (Spearman, mean over test samples), 95% CI")
    ax_lds.set_title("Does summed TracIn predict retraining?", fontsize=10)
    y = np.arange(len(table))
    recall = table.recall_at_10pct.to_numpy(dtype=float)
    colors = [{"tracin": "#1565c0", "ranking": "#2e7d32", "baseline": "#757575"}[k] for k in table.kind]
    ax_rec.barh(y, np.nan_to_num(recall), color=colors)
    for i, (rec, auc) in enumerate(zip(recall, table.auroc.to_numpy(dtype=float))):
        label = "n/a" if math.isnan(rec) else f"{rec:.3f} (AUROC {auc:.3f})"
        ax_rec.text(0.01 if math.isnan(rec) else rec + 0.01, i, label, va="center", fontsize=8)
    ax_rec.set_yticks(y, [r.removeprefix("tracin:") + (" (self-infl.)" if k == "tracin" else "") for r, k in zip(table.row, table.kind)])
    ax_rec.invert_yaxis()
    ax_rec.set_xlim(0, 1.25)
    ax_rec.set_xlabel("mislabel recall when inspecting the top 10%")
    ax_rec.set_title("Which ranking finds the flipped labels?", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
