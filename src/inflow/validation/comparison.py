"""Rule ``method_comparison``: attribution methods and mislabel baselines in one table.

Rows, each scored against the injected label noise (recall when inspecting the top 10% of the
training set, AUROC) and, for TracIn, by the linear datamodeling score (LDS, with its 95%
bootstrap interval) on the same subset models:

* ``tracin:<variant>`` for every compared variant (``<method>`` or ``<method>+<preconditioner>``):
  its LDS, and its (preconditioned) self-influence alone as the mislabel ranking;
* ``ensemble:<n> runs`` for n = 1 .. the runs of ``runs.seeds``: the LDS of the main attribution
  summed over the first n runs (TRAK's ensembling), when the comparison has runs to add up;
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
from inflow.core.stats import bootstrap_ci, lds
from inflow.mislabel.ranking import ranking_metrics
from inflow.validation.lds import lds_matrix

log = logging.getLogger(__name__)

COLUMNS = ["row", "kind", "lds", "lds_ci_low", "lds_ci_high", "recall_at_10pct", "auroc", "n_flagged", "note"]
METHOD_NOTES = {
    "last_layer": "TracIn on the head's final Linear layer",
    "head_layers": "TracIn on every Linear layer of the head",
    "projection": "TracIn on all parameters, randomly projected",
    "all_layers": "TracIn on every Linear and Conv2d layer, projected per layer",
}
KIND_COLORS = {"tracin": "#1565c0", "ensemble": "#6a1b9a", "ranking": "#2e7d32", "baseline": "#757575"}
PRECONDITIONER_NOTES = {
    "kfac": "K-FAC preconditioned",
    "ekfac": "EK-FAC preconditioned",
    "gram": "Gram (TRAK) preconditioned",
}


def variant_note(variant: str) -> str:
    """``last_layer+kfac`` -> "TracIn on the head's final Linear layer, K-FAC preconditioned"."""
    method, _, preconditioner = variant.partition("+")
    note = METHOD_NOTES.get(method, method)
    return f"{note}, {PRECONDITIONER_NOTES.get(preconditioner, preconditioner)}" if preconditioner else note


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
        "note": f"{variant_note(method)}; LDS output {lds.get('output')}, {lds.get('n_models')} subset models; recall and AUROC of self-influence alone",
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


ENSEMBLE_COLUMNS = ["n_runs", "seeds", "lds", "lds_ci_low", "lds_ci_high", "recall_at_10pct", "auroc", "n_models", "output"]


def ensemble_table(
    score_paths: list[str],
    self_influence_paths: list[str],
    seeds: list[int],
    outputs_paths: list[str],
    manifest_path: str,
    output: str,
    n_bootstrap: int,
    seed: int,
    out_path: str,
) -> pd.DataFrame:
    """Rule ``ensemble_lds``: the LDS and self-influence recall of ensembles of 1 .. N runs.

    ``score_paths[r]`` is run ``r``'s own subset scores ``(test_id, model, score)`` (rule
    ``run_lds_scores``), ``self_influence_paths[r]`` its own self-influence; the ensemble of the
    first ``n`` runs predicts subset ``m`` by ``sum_{r < n} score_r[:, m]`` (TRAK's ensembling:
    the sum of each run's influence) and ranks mislabels by the summed self-influence. LDS and
    its 95% interval as rule ``lds`` computes them, against the same subset models' ``output``.
    Writes one CSV row per ``n`` (:data:`ENSEMBLE_COLUMNS`).
    """
    if not (len(score_paths) == len(self_influence_paths) == len(seeds)) or not seeds:
        raise InflowError(
            f"ensemble_lds: {len(seeds)} runs but {len(score_paths)} score and {len(self_influence_paths)} self-influence files"
        )
    measured_table = pd.concat([read_table(p) for p in outputs_paths], ignore_index=True)
    first = read_table(score_paths[0])
    test_ids, models = np.sort(first.test_id.unique()), np.sort(first.model.unique())
    measured = lds_matrix(measured_table, output, test_ids, models, "lds outputs")
    truth = training_truth(read_table(manifest_path))
    total = np.zeros((len(test_ids), len(models)))
    self_total: pd.Series | None = None
    rows = []
    for n, (score_path, self_path) in enumerate(zip(score_paths, self_influence_paths), start=1):
        total += lds_matrix(read_table(score_path), "score", test_ids, models, score_path)
        run_self = read_table(self_path).set_index("sample_id").self_influence
        self_total = run_self if self_total is None else self_total.add(run_self)
        value, rho = lds(total, measured)
        lo, hi = bootstrap_ci(rho, n_bootstrap, 0.95, seed)
        row = {"n_runs": n, "seeds": " ".join(map(str, seeds[:n])), "lds": value, "lds_ci_low": lo, "lds_ci_high": hi}
        if truth is not None:
            if self_total.reindex(truth.index).isna().any():
                raise InflowError(
                    f"{self_path}: lacks training samples of the manifest; it comes from another run, rerun its self_influence rule"
                )
            row.update(ranking_metrics(self_total.loc[truth.index].to_numpy(dtype=float), truth.to_numpy()))
        rows.append({**row, "n_models": len(models), "output": output})
        log.info("ensemble of %d run(s) (seeds %s): LDS %.4f [%.4f, %.4f]", n, row["seeds"], value, lo, hi)
    table = pd.DataFrame(rows).reindex(columns=ENSEMBLE_COLUMNS)
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    return table


def ensemble_rows(path: str, variant: str) -> list[dict[str, Any]]:
    """The comparison's rows of :func:`ensemble_table`'s CSV: ``ensemble:<n> runs`` of attribution ``variant``."""
    table = pd.read_csv(path)
    return [
        {
            "row": f"ensemble:{r.n_runs} run{'s' if r.n_runs > 1 else ''}",
            "kind": "ensemble",
            "lds": r.lds,
            "lds_ci_low": r.lds_ci_low,
            "lds_ci_high": r.lds_ci_high,
            "recall_at_10pct": r.recall_at_10pct,
            "auroc": r.auroc,
            "note": f"{variant_note(variant)}, summed over the runs with seeds {r.seeds}; recall and AUROC of the summed self-influence",
        }
        for r in table.itertuples()
    ]


def compare_methods(
    manifest_path: str,
    mislabel_metrics_path: str,
    methods: list[str],
    self_influence_paths: list[str],
    lds_paths: list[str],
    cleanlab_paths: list[str],
    table_out: str,
    plot_out: str,
    ensemble_paths: list[str] | None = None,
    ensemble_variant: str = "last_layer",
) -> pd.DataFrame:
    """Write the comparison table (CSV, one row per variant, ensemble or baseline) and its picture; return the table.

    ``self_influence_paths[i]`` and ``lds_paths[i]`` belong to ``methods[i]``; ``cleanlab_paths``
    holds the cleanlab result, or nothing when ``compare.cleanlab_folds`` is 0;
    ``ensemble_paths`` the :func:`ensemble_table` CSV of the main attribution ``ensemble_variant``
    when ``runs.seeds`` lists runs to add up.
    """
    if not (len(methods) == len(self_influence_paths) == len(lds_paths)):
        raise InflowError(
            f"method_comparison: {len(methods)} methods but {len(self_influence_paths)} self-influence and {len(lds_paths)} LDS files; rerun with the current config"
        )
    truth = training_truth(read_table(manifest_path))
    rows = [tracin_row(m, s, p, truth) for m, s, p in zip(methods, self_influence_paths, lds_paths)]
    rows += [row for path in ensemble_paths or [] for row in ensemble_rows(path, ensemble_variant)]
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

    fig = Figure(figsize=(11, max(3.8, 0.3 * len(table) + 1.2)))
    ax_lds, ax_rec = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    tracin = table[table.kind.isin(["tracin", "ensemble"])]
    y = np.arange(len(tracin))
    lds = tracin.lds.to_numpy(dtype=float)
    err = np.vstack([lds - tracin.lds_ci_low.to_numpy(dtype=float), tracin.lds_ci_high.to_numpy(dtype=float) - lds])
    ax_lds.barh(y, lds, xerr=err, color=[KIND_COLORS[k] for k in tracin.kind], capsize=4)
    ax_lds.axvline(0, color="black", linewidth=0.8)
    ax_lds.set_yticks(y, [r.removeprefix("tracin:") for r in tracin.row])
    ax_lds.invert_yaxis()
    ax_lds.set_xlabel("LDS (Spearman, mean over test samples), 95% CI")
    ax_lds.set_title("Does summed TracIn predict retraining?", fontsize=10)
    y = np.arange(len(table))
    recall = table.recall_at_10pct.to_numpy(dtype=float)
    colors = [KIND_COLORS[k] for k in table.kind]
    ax_rec.barh(y, np.nan_to_num(recall), color=colors)
    for i, (rec, auc) in enumerate(zip(recall, table.auroc.to_numpy(dtype=float))):
        label = "n/a" if math.isnan(rec) else f"{rec:.3f} (AUROC {auc:.3f})"
        ax_rec.text(0.01 if math.isnan(rec) else rec + 0.01, i, label, va="center", fontsize=8)
    ax_rec.set_yticks(
        y, [r.removeprefix("tracin:") + (" (self-infl.)" if k in ("tracin", "ensemble") else "") for r, k in zip(table.row, table.kind)]
    )
    ax_rec.invert_yaxis()
    ax_rec.set_xlim(0, 1.25)
    ax_rec.set_xlabel("mislabel recall when inspecting the top 10%")
    ax_rec.set_title("Which ranking finds the flipped labels?", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
