"""The cross-version tables: one row per version, test sample, class pair, class or training sample.

Every function takes the versions as :class:`Run` objects (the main run first) and returns a
DataFrame; the column ``<name>_<version>`` holds that version's value. "Most versions" means
more than half of them (both, for two).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from inflow.core.errors import InflowError
from inflow.report.tables import influential_training, sample_table

ORIGINAL = "original"
NOISE_STDS = 2.0  # a gain larger than this many standard deviations of the uncleaned versions is beyond run-to-run noise


@dataclass(frozen=True)
class Run:
    """One version's results.

    ``predictions``: the predict rule's table (``sample_id, split, label, pred, pred_name,
    confidence, loss``); ``topk``: ``test_id, kind, rank, train_id, influence``; ``ranking``: the
    mislabel ranking (``rank, sample_id``, best candidate first); ``metrics``: the mislabel
    metrics JSON; ``data``: its training set (``original`` or ``clean/<variant>``); ``changes``:
    what it changes against the main run; ``date``: when it was trained.
    """

    name: str
    seed: int
    predictions: pd.DataFrame
    topk: pd.DataFrame
    ranking: pd.DataFrame
    metrics: dict[str, Any]
    note: str = ""
    data: str = ORIGINAL
    changes: str = ""
    date: str = ""

    @property
    def cleaned(self) -> bool:
        """Whether the version trains on a cleaned training set."""
        return self.data != ORIGINAL


def majority(n_runs: int) -> int:
    """Fewest versions that make "most versions": more than half (2 of 2, 2 of 3, 3 of 4)."""
    return n_runs // 2 + 1


def split_scores(predictions: pd.DataFrame, split: str) -> tuple[float, float]:
    """``(accuracy, mean loss)`` of ``predictions`` on ``split`` (NaN, NaN when the split is empty)."""
    p = predictions[predictions.split == split]
    if p.empty:
        return np.nan, np.nan
    return float((p.pred == p.label).mean()), float(p.loss.mean())


def accuracy_table(runs: list[Run]) -> pd.DataFrame:
    """One row per version: ``version, main, seed, data, cleaned, changes, note, date, val_accuracy,
    val_loss, test_accuracy, test_loss, train_accuracy, n_test_errors, mislabel_recall_at_10pct,
    mislabel_auroc`` (NaN where there is no validation split or the true labels are unknown).

    The first run is the main one.
    """
    rows = []
    for i, run in enumerate(runs):
        p = run.predictions
        val_acc, val_loss = split_scores(p, "val")
        test_acc, test_loss = split_scores(p, "test")
        test = p[p.split == "test"]
        ranking = run.metrics.get("ranking", {})
        rows.append(
            {
                "version": run.name,
                "main": i == 0,
                "seed": run.seed,
                "data": run.data,
                "cleaned": run.cleaned,
                "changes": run.changes,
                "note": run.note,
                "date": run.date,
                "val_accuracy": val_acc,
                "val_loss": val_loss,
                "test_accuracy": test_acc,
                "test_loss": test_loss,
                "train_accuracy": split_scores(p, "train")[0],
                "n_test_errors": int((test.pred != test.label).sum()),
                "mislabel_recall_at_10pct": float(ranking.get("recall_at_10pct", np.nan)),
                "mislabel_auroc": float(ranking.get("auroc", np.nan)),
            }
        )
    return pd.DataFrame(rows)


def summary_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """The best version, and each cleaned version's gain over the best uncleaned one against run-to-run noise.

    One row per cleaned version (one row with empty cleaned columns when there is none):
    ``best_version, best_test_accuracy, n_uncleaned, uncleaned_mean, uncleaned_std`` (sample
    standard deviation of the uncleaned versions' test accuracy, NaN for fewer than two),
    ``best_uncleaned_version, best_uncleaned_accuracy, cleaned_version, cleaned_test_accuracy,
    cleaning_gain`` (cleaned minus best uncleaned), ``gain_in_std`` (gain / std) and
    ``beyond_noise`` (gain > :data:`NOISE_STDS` std; NA without a std).
    """
    best = accuracy.loc[accuracy.test_accuracy.idxmax()]
    uncleaned = accuracy[~accuracy.cleaned]
    best_uncleaned = uncleaned.loc[uncleaned.test_accuracy.idxmax()]
    std = float(uncleaned.test_accuracy.std(ddof=1)) if len(uncleaned) > 1 else np.nan
    base = {
        "best_version": best.version,
        "best_test_accuracy": float(best.test_accuracy),
        "n_uncleaned": len(uncleaned),
        "uncleaned_mean": float(uncleaned.test_accuracy.mean()),
        "uncleaned_std": std,
        "best_uncleaned_version": best_uncleaned.version,
        "best_uncleaned_accuracy": float(best_uncleaned.test_accuracy),
    }
    rows = []
    for row in accuracy[accuracy.cleaned].itertuples():
        gain = float(row.test_accuracy - best_uncleaned.test_accuracy)
        rows.append(
            {
                **base,
                "cleaned_version": row.version,
                "cleaned_test_accuracy": float(row.test_accuracy),
                "cleaning_gain": gain,
                "gain_in_std": gain / std if std > 0 else np.nan,
                "beyond_noise": bool(gain > NOISE_STDS * std) if std > 0 else pd.NA,
            }
        )
    if not rows:
        rows.append({**base, "cleaned_version": "", "cleaned_test_accuracy": np.nan, "cleaning_gain": np.nan, "gain_in_std": np.nan})
        rows[0]["beyond_noise"] = pd.NA
    out = pd.DataFrame(rows)
    out["beyond_noise"] = out.beyond_noise.astype("boolean")
    return out


def test_predictions(runs: list[Run]) -> pd.DataFrame:
    """Each version's test predictions side by side: ``(n_test, n_runs)`` predicted class ids indexed by sample_id."""
    columns = {run.name: run.predictions[run.predictions.split == "test"].set_index("sample_id").pred for run in runs}
    preds = pd.DataFrame(columns)
    if preds.isna().any().any():
        raise InflowError("runs comparison: the versions' predictions list different test samples; rerun their predict rules")
    return preds.sort_index()


def test_errors(runs: list[Run]) -> pd.DataFrame:
    """Which versions mispredict each test sample: ``(n_test, n_runs)`` booleans indexed by sample_id."""
    preds = test_predictions(runs)
    labels = runs[0].predictions[runs[0].predictions.split == "test"].set_index("sample_id").label.reindex(preds.index)
    return preds.ne(labels, axis=0)


def persistent_errors(runs: list[Run], manifest: pd.DataFrame) -> pd.DataFrame:
    """Every test sample at least one version mispredicts, with in how many ("k of n").

    Columns: ``test_id, label, n_wrong`` (k), ``n_versions`` (n), ``k_of_n`` ("2 of 3"),
    ``persistent`` (wrong in every version), ``pred_<version>`` per version (its predicted class,
    the label where it is right), ``same_prediction`` (the versions that get it wrong all predict
    the same class), ``mean_confidence`` (of the wrong predictions). Sorted by ``n_wrong``,
    ``same_prediction``, ``mean_confidence`` (all descending), then ``test_id``.
    """
    errors = test_errors(runs)
    ids = errors.index[errors.any(axis=1)]
    wrong = errors.loc[ids]
    names = manifest.set_index("sample_id").label_name
    out = pd.DataFrame({"test_id": ids.to_numpy(dtype=np.int64), "label": names.reindex(ids).to_numpy()})
    out["n_wrong"] = wrong.sum(axis=1).to_numpy(dtype=np.int64)
    out["n_versions"] = len(runs)
    out["k_of_n"] = [f"{k} of {len(runs)}" for k in out.n_wrong]
    out["persistent"] = out.n_wrong == len(runs)
    preds, confidence = {}, {}
    for run in runs:
        p = run.predictions.set_index("sample_id").reindex(ids)
        out[f"pred_{run.name}"] = p.pred_name.to_numpy()
        preds[run.name] = p.pred_name.where(wrong[run.name])
        confidence[run.name] = p.confidence.astype(float).where(wrong[run.name])
    wrong_preds = pd.DataFrame(preds)
    out["same_prediction"] = (wrong_preds.nunique(axis=1) == 1).to_numpy() if len(out) else np.array([], dtype=bool)
    out["mean_confidence"] = pd.DataFrame(confidence).mean(axis=1).to_numpy(dtype=float) if len(out) else np.array([], dtype=float)
    return out.sort_values(
        ["n_wrong", "same_prediction", "mean_confidence", "test_id"],
        ascending=[False, False, False, True],
        kind="stable",
        ignore_index=True,
    )


def test_confusions(run: Run, manifest: pd.DataFrame) -> pd.DataFrame:
    """A version's mispredicted test samples: ``test_id, true, predicted`` (class names)."""
    test = run.predictions[(run.predictions.split == "test") & (run.predictions.pred != run.predictions.label)]
    names = manifest.set_index("sample_id").label_name
    return pd.DataFrame(
        {"test_id": test.sample_id.to_numpy(), "true": names.reindex(test.sample_id).to_numpy(), "predicted": test.pred_name.to_numpy()}
    )


def confusion_pairs(runs: list[Run], manifest: pd.DataFrame) -> pd.DataFrame:
    """Test errors by class pair across versions.

    Columns: ``true, predicted, count_<version>`` per version (its test samples of class ``true``
    predicted as ``predicted``), ``total`` (over versions), ``n_versions`` (versions with at
    least one). Only pairs some version confuses; sorted by ``total`` descending, then the names.
    """
    counts = {run.name: test_confusions(run, manifest).groupby(["true", "predicted"]).size().rename(f"count_{run.name}") for run in runs}
    table = pd.concat(counts.values(), axis=1).fillna(0).astype(np.int64) if counts else pd.DataFrame()
    columns = [f"count_{run.name}" for run in runs]
    table = table.reindex(columns=columns, fill_value=0)
    table["total"] = table[columns].sum(axis=1)
    table["n_versions"] = (table[columns] > 0).sum(axis=1)
    table = table.rename_axis(["true", "predicted"]).reset_index()
    return table.sort_values(["total", "true", "predicted"], ascending=[False, True, True], kind="stable", ignore_index=True)


def class_errors(runs: list[Run], manifest: pd.DataFrame) -> pd.DataFrame:
    """Test errors per true class across versions, and where they go.

    Columns: ``class, n_test`` (test samples of the class), ``errors_<version>`` per version,
    ``total``, ``mean_errors`` (per version), ``main_confusion`` (the class it is most often
    predicted as over all versions, "" without errors), ``main_confusion_count``. Every class of
    the test set; sorted by ``total`` descending, then the class name.
    """
    test = manifest[manifest.split == "test"]
    classes = sorted(test.label_name.unique())
    out = pd.DataFrame({"class": classes, "n_test": test.groupby("label_name").size().reindex(classes).to_numpy(dtype=np.int64)})
    pairs = confusion_pairs(runs, manifest)
    for run in runs:
        out[f"errors_{run.name}"] = pairs.groupby("true")[f"count_{run.name}"].sum().reindex(classes, fill_value=0).to_numpy(dtype=np.int64)
    columns = [f"errors_{run.name}" for run in runs]
    out["total"] = out[columns].sum(axis=1)
    out["mean_errors"] = out[columns].mean(axis=1)
    main = pairs.sort_values(["total", "predicted"], ascending=[False, True], kind="stable").drop_duplicates("true").set_index("true")
    out["main_confusion"] = main.predicted.reindex(classes).fillna("").to_numpy()
    out["main_confusion_count"] = main.total.reindex(classes).fillna(0).to_numpy(dtype=np.int64)
    return out.sort_values(["total", "class"], ascending=[False, True], kind="stable", ignore_index=True)


def top_influential(run: Run, manifest: pd.DataFrame, n: int) -> pd.Series:
    """The version's ``n`` most influential training samples: ``train_id -> rank`` (1 = most).

    Ranked by appearances in the test samples' top-k lists, then ``|total influence|``, as in the
    report's influential-training table.
    """
    own = manifest[manifest.sample_id.isin(run.predictions.sample_id)]  # a cleaned version predicts its own training set
    table = influential_training(run.topk, sample_table(own, run.predictions)).head(n)
    return pd.Series(np.arange(1, len(table) + 1), index=table.train_id.to_numpy())


def mislabel_candidates(run: Run, n: int) -> pd.Series:
    """The top ``n`` of the version's mislabel ranking: ``sample_id -> rank`` (1 = most suspicious)."""
    top = run.ranking.sort_values("rank", kind="stable").head(n)
    return pd.Series(np.arange(1, len(top) + 1), index=top.sample_id.to_numpy())


def recurrence(selections: dict[str, pd.Series], manifest: pd.DataFrame) -> pd.DataFrame:
    """How many versions select each training sample.

    Args:
        selections: per version name, the selected samples ``sample_id -> rank within the version``.

    Returns:
        One row per sample selected by at least one version: ``sample_id, label, true_label,
        flipped`` (where known), ``n_versions``, ``share`` (of the versions), ``in_most_versions``
        (more than half), ``in_all_versions``, ``rank_<version>`` per version (NaN where that
        version did not select it), ``mean_rank`` (over the versions that did). Sorted by
        ``n_versions`` descending, then ``mean_rank``.
    """
    ranks = pd.DataFrame(selections)
    n_runs = len(selections)
    m = manifest.set_index("sample_id").reindex(ranks.index)
    out = pd.DataFrame({"sample_id": ranks.index.to_numpy(dtype=np.int64), "label": m.label_name.to_numpy()})
    if "true_label_name" in m:
        out["true_label"] = m.true_label_name.to_numpy()
    if "flipped" in m:
        out["flipped"] = pd.array(m.flipped.to_numpy(), dtype="boolean")
    out["n_versions"] = ranks.notna().sum(axis=1).to_numpy()
    out["share"] = out.n_versions / n_runs
    out["in_most_versions"] = out.n_versions >= majority(n_runs)
    out["in_all_versions"] = out.n_versions == n_runs
    for name in selections:
        out[f"rank_{name}"] = ranks[name].to_numpy()
    out["mean_rank"] = ranks.mean(axis=1).to_numpy()
    return out.sort_values(["n_versions", "mean_rank", "sample_id"], ascending=[False, True, True], kind="stable", ignore_index=True)


def with_appearances(table: pd.DataFrame, runs: list[Run]) -> pd.DataFrame:
    """``table`` (one row per training ``sample_id``) with ``appearances_<version>``: how many test
    samples' top-k lists (proponents and opponents) hold the sample in that version."""
    out = table.copy()
    for run in runs:
        counts = run.topk.groupby("train_id").size()
        out[f"appearances_{run.name}"] = counts.reindex(out.sample_id).fillna(0).to_numpy(dtype=np.int64)
    return out


def influence_stats(runs: list[Run]) -> pd.DataFrame:
    """Top-k influence per version and kind: ``version, kind`` (proponent, opponent), ``n, mean, median, min, max``."""
    rows = []
    for run in runs:
        for kind in ("proponent", "opponent"):
            values = run.topk.influence[run.topk.kind == kind].astype(float)
            rows.append(
                {
                    "version": run.name,
                    "kind": kind,
                    "n": len(values),
                    "mean": values.mean(),
                    "median": values.median(),
                    "min": values.min(),
                    "max": values.max(),
                }
            )
    return pd.DataFrame(rows)


def jaccard(selections: dict[str, pd.Series]) -> pd.DataFrame:
    """Pairwise Jaccard overlap of the versions' selections: ``(n_runs, n_runs)``, 1 on the diagonal (0 for an empty selection)."""
    names = list(selections)
    sets = {name: set(selections[name].index) for name in names}
    values = [[len(sets[a] & sets[b]) / max(len(sets[a] | sets[b]), 1) for b in names] for a in names]
    return pd.DataFrame(values, index=names, columns=names)
