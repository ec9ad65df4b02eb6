"""Several training runs of the same data (config ``runs.seeds``), compared.

Each run trains its own model (its seed sets the initialisation, data order and augmentation)
and produces its own predictions, exact top-k influences and mislabel ranking. What survives a
change of seed is what a reviewer should trust most:

* accuracy per run (and mislabel recall, where the true labels are known);
* persistent errors: test samples every run mispredicts;
* recurring influential samples: training samples in a run's top ``n`` by top-k appearances
  (:func:`inflow.report.tables.influential_training`) in most runs;
* recurring mislabel candidates: training samples in the top of most runs' mislabel rankings.

"Most runs" means more than half of them (both, for two runs). The pure functions take one
:class:`Run` per run and return DataFrames; :func:`compare_runs` is the rule body.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from inflow.core.errors import InflowError
from inflow.core.figures import save_figure
from inflow.core.io import read_json, read_table, write_table
from inflow.mislabel.ranking import budget_count
from inflow.report.tables import influential_training, sample_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """One training run's results.

    ``predictions``: the predict rule's table (``sample_id, split, label, pred, pred_name,
    confidence, loss``); ``topk``: ``test_id, kind, rank, train_id, influence``; ``ranking``: the
    mislabel ranking (``rank, sample_id``, best candidate first); ``metrics``: the mislabel
    metrics JSON.
    """

    name: str
    seed: int
    predictions: pd.DataFrame
    topk: pd.DataFrame
    ranking: pd.DataFrame
    metrics: dict[str, Any]


def majority(n_runs: int) -> int:
    """Fewest runs that make "most runs": more than half (2 of 2, 2 of 3, 3 of 4)."""
    return n_runs // 2 + 1


def accuracy_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: ``run, seed, main, test_accuracy, test_loss, train_accuracy, n_test_errors,
    mislabel_recall_at_10pct, mislabel_auroc`` (NaN where the true labels are unknown).

    The first run is the main one.
    """
    rows = []
    for i, run in enumerate(runs):
        p = run.predictions
        test, train = p[p.split == "test"], p[p.split == "train"]
        ranking = run.metrics.get("ranking", {})
        rows.append(
            {
                "run": run.name,
                "seed": run.seed,
                "main": i == 0,
                "test_accuracy": float((test.pred == test.label).mean()),
                "test_loss": float(test.loss.mean()),
                "train_accuracy": float((train.pred == train.label).mean()),
                "n_test_errors": int((test.pred != test.label).sum()),
                "mislabel_recall_at_10pct": float(ranking.get("recall_at_10pct", np.nan)),
                "mislabel_auroc": float(ranking.get("auroc", np.nan)),
            }
        )
    return pd.DataFrame(rows)


def test_errors(runs: list[Run]) -> pd.DataFrame:
    """Which runs mispredict each test sample: ``(n_test, n_runs)`` booleans indexed by sample_id."""
    columns = {}
    for run in runs:
        test = run.predictions[run.predictions.split == "test"].set_index("sample_id")
        columns[run.name] = test.pred != test.label
    errors = pd.DataFrame(columns)
    if errors.isna().any().any():
        raise InflowError("runs comparison: the runs' predictions list different test samples; rerun their predict rules")
    return errors.sort_index()


def persistent_errors(runs: list[Run], manifest: pd.DataFrame) -> pd.DataFrame:
    """Test samples that every run mispredicts.

    Columns: ``test_id, label, pred_<run>`` per run, ``same_prediction`` (every run predicts
    the same wrong class), ``mean_confidence`` (of the wrong predictions, over runs). Sorted by
    ``same_prediction`` then ``mean_confidence``, both descending.
    """
    errors = test_errors(runs)
    ids = errors.index[errors.all(axis=1)]
    names = manifest.set_index("sample_id").label_name
    out = pd.DataFrame({"test_id": ids, "label": names.reindex(ids).to_numpy()})
    confidence = []
    for run in runs:
        p = run.predictions.set_index("sample_id").reindex(ids)
        out[f"pred_{run.name}"] = p.pred_name.to_numpy()
        confidence.append(p.confidence.to_numpy(dtype=float))
    preds = out[[f"pred_{run.name}" for run in runs]]
    out["same_prediction"] = preds.nunique(axis=1).eq(1).to_numpy() if len(out) else np.array([], dtype=bool)
    out["mean_confidence"] = np.mean(confidence, axis=0) if len(out) else np.array([], dtype=float)
    return out.sort_values(
        ["same_prediction", "mean_confidence", "test_id"], ascending=[False, False, True], kind="stable", ignore_index=True
    )


def top_influential(run: Run, manifest: pd.DataFrame, n: int) -> pd.Series:
    """The run's ``n`` most influential training samples: ``train_id -> rank`` (1 = most).

    Ranked by appearances in the test samples' top-k lists, then ``|total influence|``, as in the
    report's influential-training table.
    """
    table = influential_training(run.topk, sample_table(manifest, run.predictions)).head(n)
    return pd.Series(np.arange(1, len(table) + 1), index=table.train_id.to_numpy())


def mislabel_candidates(run: Run, n: int) -> pd.Series:
    """The top ``n`` of the run's mislabel ranking: ``sample_id -> rank`` (1 = most suspicious)."""
    top = run.ranking.sort_values("rank", kind="stable").head(n)
    return pd.Series(np.arange(1, len(top) + 1), index=top.sample_id.to_numpy())


def recurrence(selections: dict[str, pd.Series], manifest: pd.DataFrame) -> pd.DataFrame:
    """How many runs select each training sample.

    Args:
        selections: per run name, the selected samples ``sample_id -> rank within the run``.

    Returns:
        One row per sample selected by at least one run: ``sample_id, label, true_label,
        flipped`` (where known), ``n_runs``, ``share`` (of the runs), ``in_most_runs`` (more than
        half), ``rank_<run>`` per run (NaN where that run did not select it), ``mean_rank``
        (over the runs that did). Sorted by ``n_runs`` descending, then ``mean_rank``.
    """
    ranks = pd.DataFrame(selections)
    n_runs = len(selections)
    m = manifest.set_index("sample_id").reindex(ranks.index)
    out = pd.DataFrame({"sample_id": ranks.index.to_numpy(dtype=np.int64), "label": m.label_name.to_numpy()})
    if "true_label_name" in m:
        out["true_label"] = m.true_label_name.to_numpy()
    if "flipped" in m:
        out["flipped"] = pd.array(m.flipped.to_numpy(), dtype="boolean")
    out["n_runs"] = ranks.notna().sum(axis=1).to_numpy()
    out["share"] = out.n_runs / n_runs
    out["in_most_runs"] = out.n_runs >= majority(n_runs)
    for name in selections:
        out[f"rank_{name}"] = ranks[name].to_numpy()
    out["mean_rank"] = ranks.mean(axis=1).to_numpy()
    return out.sort_values(["n_runs", "mean_rank", "sample_id"], ascending=[False, True, True], kind="stable", ignore_index=True)


def jaccard(selections: dict[str, pd.Series]) -> pd.DataFrame:
    """Pairwise Jaccard overlap of the runs' selections: ``(n_runs, n_runs)``, 1 on the diagonal (0 for an empty selection)."""
    names = list(selections)
    sets = {name: set(selections[name].index) for name in names}
    values = [[len(sets[a] & sets[b]) / max(len(sets[a] | sets[b]), 1) for b in names] for a in names]
    return pd.DataFrame(values, index=names, columns=names)


def plot_runs(
    accuracy: pd.DataFrame, errors: pd.DataFrame, influential: dict[str, pd.Series], mislabel: dict[str, pd.Series], path: str
) -> None:
    """Four panels, written atomically as PNG: accuracy and mislabel recall per run; in how many
    runs each test sample is wrong; pairwise overlap of the top influential samples; pairwise
    overlap of the mislabel candidates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    ax = axes[0, 0]
    x = np.arange(len(accuracy))
    bars = ax.bar(x - 0.2, accuracy.test_accuracy, 0.4, label="test accuracy", color="#1f77b4")
    ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
    if accuracy.mislabel_recall_at_10pct.notna().all():
        bars = ax.bar(x + 0.2, accuracy.mislabel_recall_at_10pct, 0.4, label="mislabel recall@10%", color="#ff7f0e")
        ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
    ax.set_xticks(x, [f"{r.run}{' (main)' if r.main else ''}" for r in accuracy.itertuples()], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("accuracy and mislabel recall per run")

    ax = axes[0, 1]
    wrong = errors.sum(axis=1)
    counts = wrong.value_counts().reindex(range(1, errors.shape[1] + 1), fill_value=0)
    bars = ax.bar(
        counts.index.astype(str), counts.to_numpy(), color=["#d62728" if k == errors.shape[1] else "#aaaaaa" for k in counts.index]
    )
    ax.bar_label(bars, padding=2, fontsize=8)
    ax.set_xlabel("number of runs that mispredict it")
    ax.set_ylabel("test samples")
    ax.set_title(f"test errors: {int(counts.iloc[-1])} persistent (wrong in all {errors.shape[1]} runs)")

    for ax, selection, title in (
        (axes[1, 0], influential, "overlap of the most influential training samples"),
        (axes[1, 1], mislabel, "overlap of the mislabel candidates"),
    ):
        n = max(len(s) for s in selection.values())
        sns.heatmap(jaccard(selection), vmin=0, vmax=1, annot=True, fmt=".2f", cmap="viridis", square=True, cbar=False, ax=ax)
        ax.set_title(f"{title} (top {n}, Jaccard)", fontsize=10)
    fig.suptitle(f"{len(accuracy)} training runs of the same data, different seeds", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def load_runs(seeds: list[int], predictions: list[str], topk: list[str], rankings: list[str], metrics: list[str]) -> list[Run]:
    """The runs' result files (main run first) as :class:`Run` objects, named ``seed_<s>``."""
    if not len(seeds) == len(predictions) == len(topk) == len(rankings) == len(metrics):
        raise InflowError("runs comparison: the rule's inputs do not list the same number of runs; check rules/runs.smk")
    return [
        Run(f"seed_{seed}", seed, read_table(p), read_table(t), read_table(r, columns=["rank", "sample_id"]), read_json(m))
        for seed, p, t, r, m in zip(seeds, predictions, topk, rankings, metrics)
    ]


def compare_runs(
    manifest_path: str,
    seeds: list[int],
    predictions: list[str],
    topk: list[str],
    rankings: list[str],
    metrics: list[str],
    top_influential_n: int,
    top_mislabel: float,
    outputs: dict[str, str],
) -> None:
    """Rule ``runs_comparison``: the four tables (CSV) and the picture.

    ``outputs`` has the keys ``accuracy, persistent, influential, mislabel, plot``.
    """
    manifest = read_table(manifest_path)
    runs = load_runs(seeds, predictions, topk, rankings, metrics)
    n_candidates = budget_count(top_mislabel, int((manifest.split == "train").sum()))
    accuracy = accuracy_table(runs)
    influential = {run.name: top_influential(run, manifest, top_influential_n) for run in runs}
    candidates = {run.name: mislabel_candidates(run, n_candidates) for run in runs}
    persistent = persistent_errors(runs, manifest)
    recurring_influential = recurrence(influential, manifest)
    recurring_mislabel = recurrence(candidates, manifest)
    write_table(accuracy, outputs["accuracy"])
    write_table(persistent, outputs["persistent"])
    write_table(recurring_influential, outputs["influential"])
    write_table(recurring_mislabel, outputs["mislabel"])
    plot_runs(accuracy, test_errors(runs), influential, candidates, outputs["plot"])
    for row in accuracy.itertuples():
        log.info("%s: test accuracy %.4f, mislabel recall@10%% %.3f", row.run, row.test_accuracy, row.mislabel_recall_at_10pct)
    log.info(
        "%d test samples mispredicted by every run; %d of the top-%d influential and %d of the top-%d mislabel candidates recur in most runs",
        len(persistent),
        int(recurring_influential.in_most_runs.sum()),
        top_influential_n,
        int(recurring_mislabel.in_most_runs.sum()),
        n_candidates,
    )
