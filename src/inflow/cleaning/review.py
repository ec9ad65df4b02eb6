"""Close the loop: review file, cleaned training sets, and what retraining on them bought.

Three ways to spend the same budget of ``n`` training samples (rule ``clean_manifest``):

* ``influence``: the actions in the review file ``review.csv`` (top-``n`` mislabel candidates;
  proposed by :func:`propose_actions`, editable by hand): keep, drop, or relabel.
* ``oracle``: relabel ``min(n, n_flipped)`` of the truly flipped samples to their true label
  (only where the true labels are known: built-in data, or injected noise).
* ``random``: drop ``n`` training samples drawn at random (seeded).

Each cleaned manifest is retrained with the same seed and config, and
:func:`compare_cleaning` tabulates test accuracy and loss against the uncleaned baseline.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from inflow.core.errors import InflowError
from inflow.core.figures import save_figure
from inflow.core.io import read_metadata, read_table, write_table
from inflow.data.manifest import load_manifest
from inflow.mislabel.ranking import budget_count

log = logging.getLogger(__name__)

ACTIONS = ("keep", "drop", "relabel")
REVIEW_COLUMNS = ["rank", "sample_id", "path", "given_label", "suggested_label", "confidence", "score", "action"]
VARIANT_TEXT = {
    "baseline": "no cleaning",
    "influence": "review file actions (influence-guided)",
    "oracle": "relabel truly flipped samples (oracle)",
    "random": "drop random samples",
}


def propose_actions(candidates: pd.DataFrame, relabel_confidence: float) -> pd.Series:
    """Proposed action per candidate: ``relabel`` when the model confidently suggests another class, else ``drop``.

    ``candidates`` needs ``given_label``, ``suggested_label`` and ``confidence`` (the model's
    probability of its prediction).
    """
    relabel = (candidates.suggested_label != candidates.given_label) & (candidates.confidence >= relabel_confidence)
    return pd.Series(np.where(relabel, "relabel", "drop"), index=candidates.index)


def review_table(ranking: pd.DataFrame, n: int, relabel_confidence: float) -> pd.DataFrame:
    """The top-``n`` rows of the mislabel ranking as an editable review table (:data:`REVIEW_COLUMNS`)."""
    top = ranking.sort_values("rank").head(n)
    review = pd.DataFrame(
        {
            "rank": top["rank"].to_numpy(),
            "sample_id": top.sample_id.to_numpy(),
            "path": top.path.to_numpy(),
            "given_label": top.label_name.to_numpy(),
            "suggested_label": top.suggested_label_name.to_numpy(),
            "confidence": top.confidence.round(4).to_numpy(),
            "score": top.score.round(6).to_numpy(),
        }
    )
    review["action"] = propose_actions(review, relabel_confidence)
    return review[REVIEW_COLUMNS]


def write_review(ranking_path: str, budget: float, relabel_confidence: float, review_out: str) -> None:
    """Rule ``review``: write ``review.csv`` with proposed actions for the top mislabel candidates."""
    ranking = read_table(ranking_path)
    n = budget_count(budget, len(ranking))
    review = review_table(ranking, n, relabel_confidence)
    write_table(review, review_out)
    log.info("review file: %d candidates (budget %s of %d): %s", n, budget, len(ranking), review.action.value_counts().to_dict())


def read_review(path: str, manifest: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """The review file, checked: known actions, training sample ids, known class names.

    Raises:
        InflowError: naming the file, the line and the fix, for any row that cannot be applied.
    """
    try:
        review = pd.read_csv(path, dtype={"action": str, "suggested_label": str})
    except FileNotFoundError:
        raise InflowError(f"{path}: file not found; rerun the rule review") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InflowError(f"{path}: not a readable CSV ({exc}); fix it or delete it to get the proposed file back") from None
    missing = [c for c in ("sample_id", "suggested_label", "action") if c not in review.columns]
    if missing:
        raise InflowError(f"{path}: lacks column(s) {', '.join(missing)}; delete it to get the proposed file back")
    review["action"] = review.action.fillna("keep").str.strip().str.lower()
    train_ids = set(manifest.sample_id[manifest.split == "train"].tolist())
    for line, row in zip(range(2, len(review) + 2), review.itertuples()):
        where = f"{path} line {line} (sample_id {row.sample_id})"
        if row.action not in ACTIONS:
            raise InflowError(f"{where}: action {row.action!r} is not one of {', '.join(ACTIONS)}")
        if row.sample_id not in train_ids:
            raise InflowError(f"{where}: not a training sample of the manifest; remove the line")
        if row.action == "relabel" and row.suggested_label not in class_names:
            raise InflowError(f"{where}: suggested_label {row.suggested_label!r} is not a class ({', '.join(class_names)})")
    if review.sample_id.duplicated().any():
        dup = review.sample_id[review.sample_id.duplicated()].iloc[0]
        raise InflowError(f"{path}: sample_id {dup} is listed twice; keep one line per sample")
    return review


def apply_review(manifest: pd.DataFrame, review: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    """``manifest`` with the review's ``drop`` rows removed and ``relabel`` rows given their suggested label."""
    out = manifest.copy()
    drop = set(review.sample_id[review.action == "drop"].tolist())
    relabel = review[review.action == "relabel"].set_index("sample_id").suggested_label
    index = {name: i for i, name in enumerate(class_names)}
    hit = out.sample_id.isin(relabel.index)
    if hit.any():
        out.loc[hit, "label_name"] = out.loc[hit, "sample_id"].map(relabel).to_numpy()
        out.loc[hit, "label"] = out.loc[hit, "label_name"].map(index).to_numpy(dtype=np.int64)
    return out[~out.sample_id.isin(drop)].reset_index(drop=True)


def oracle_fix(manifest: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``manifest`` with ``min(n, n_flipped)`` truly flipped training labels set back to the truth (seeded choice)."""
    flipped = manifest.index[(manifest.split == "train") & manifest.flipped.fillna(False).astype(bool)]
    rng = np.random.default_rng(seed)
    fix = rng.choice(flipped, size=min(n, len(flipped)), replace=False) if len(flipped) else flipped
    out = manifest.copy()
    out.loc[fix, "label"] = out.loc[fix, "true_label"].to_numpy()
    out.loc[fix, "label_name"] = out.loc[fix, "true_label_name"].to_numpy()
    return out


def random_removal(manifest: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """``manifest`` without ``n`` training samples drawn at random (seeded)."""
    train = manifest.index[manifest.split == "train"]
    drop = np.random.default_rng(seed).choice(train, size=min(n, len(train)), replace=False)
    return manifest.drop(index=drop).reset_index(drop=True)


def clean_manifest(variant: str, manifest_path: str, review_path: str | None, budget: float, seed: int, manifest_out: str) -> None:
    """Rule ``clean_manifest``: the training manifest cleaned the ``variant`` way, on the same budget."""
    manifest, class_names = load_manifest(manifest_path)
    n = budget_count(budget, int((manifest.split == "train").sum()))
    if variant == "influence":
        if review_path is None:
            raise InflowError("clean_manifest: the influence variant needs the review file")
        cleaned = apply_review(manifest, read_review(review_path, manifest, class_names), class_names)
    elif variant == "oracle":
        if not manifest.flipped.notna().any():
            raise InflowError(f"{manifest_path}: true labels are unknown, so there is no oracle; remove oracle from clean.references")
        cleaned = oracle_fix(manifest, n, seed)
    elif variant == "random":
        cleaned = random_removal(manifest, n, seed)
    else:
        raise InflowError(f"clean_manifest: unknown variant {variant!r}; use influence, oracle or random")
    known = cleaned.true_label.notna()
    cleaned.loc[known, "flipped"] = cleaned.loc[known, "label"] != cleaned.loc[known, "true_label"]  # still wrong after cleaning
    write_table(cleaned, manifest_out, metadata=read_metadata(manifest_path))
    log.info(
        "%s: %d -> %d training samples, %d labels changed",
        variant,
        (manifest.split == "train").sum(),
        (cleaned.split == "train").sum(),
        changed_labels(manifest, cleaned),
    )


def changed_labels(before: pd.DataFrame, after: pd.DataFrame) -> int:
    """Training samples present in both manifests whose label differs."""
    both = before[["sample_id", "label"]].merge(after[["sample_id", "label"]], on="sample_id", suffixes=("_before", "_after"))
    return int((both.label_before != both.label_after).sum())


def cleaning_row(variant: str, original: pd.DataFrame, cleaned: pd.DataFrame, predictions: pd.DataFrame) -> dict[str, Any]:
    """One comparison row: what was changed, how much of it was real noise, and test accuracy and loss."""
    train0 = original[original.split == "train"].set_index("sample_id")
    train1 = cleaned[cleaned.split == "train"].set_index("sample_id")
    dropped = train0.index.difference(train1.index)
    kept = train0.index.intersection(train1.index)
    relabelled = kept[train0.loc[kept, "label"].to_numpy() != train1.loc[kept, "label"].to_numpy()]
    known = train0.flipped.notna().all()
    flipped = train0.flipped.fillna(False).astype(bool)
    test = predictions[predictions.split == "test"]
    row: dict[str, Any] = {
        "variant": variant,
        "cleaning": VARIANT_TEXT.get(variant, variant),
        "n_train": len(train1),
        "dropped": len(dropped),
        "relabelled": len(relabelled),
        "test_accuracy": float((test.pred == test.label).mean()),
        "test_loss": float(test.loss.mean()),
    }
    if known:
        row["dropped_truly_flipped"] = int(flipped.loc[dropped].sum())
        row["relabelled_to_truth"] = int((train1.loc[relabelled, "label"] == train0.loc[relabelled, "true_label"]).sum())
        row["wrong_labels_left"] = int((train1.label != train1.true_label).sum())
    return row


def comparison_table(original: pd.DataFrame, variants: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> pd.DataFrame:
    """Rows per variant (``{name: (cleaned manifest, predictions)}``, baseline first) with gains.

    ``accuracy_gain`` is test accuracy minus the baseline's; ``share_of_oracle_gain`` divides it by
    the oracle's gain (NaN without an oracle or when the oracle gained nothing).
    """
    table = pd.DataFrame([cleaning_row(name, original, manifest, preds) for name, (manifest, preds) in variants.items()])
    base = table.loc[table.variant == "baseline"].iloc[0]
    table["accuracy_gain"] = table.test_accuracy - base.test_accuracy
    table["loss_change"] = table.test_loss - base.test_loss
    oracle = table.loc[table.variant == "oracle", "accuracy_gain"]
    oracle_gain = float(oracle.iloc[0]) if len(oracle) else math.nan
    table["share_of_oracle_gain"] = table.accuracy_gain / oracle_gain if oracle_gain > 0 else math.nan
    return table


def plot_comparison(table: pd.DataFrame, path: str) -> None:
    """Bar chart of test accuracy and loss per variant, the baseline marked, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"baseline": "#888888", "influence": "#1f77b4", "oracle": "#2ca02c", "random": "#d62728"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, column, label in ((axes[0], "test_accuracy", "test accuracy"), (axes[1], "test_loss", "test loss (cross-entropy)")):
        values = table[column].to_numpy()
        bars = ax.bar(table.variant, values, color=[colors.get(v, "#9467bd") for v in table.variant])
        ax.axhline(values[0], color="#444444", linestyle="--", linewidth=1)
        ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=2)
        span = values.max() - values.min()
        ax.set_ylim(max(0.0, values.min() - 2 * span - 0.01), values.max() + span + 0.01)
        ax.set_title(label)
    text = ", ".join(f"{r.variant}: -{r.dropped}/~{r.relabelled}" for r in table.itertuples())
    fig.suptitle(f"Retraining after cleaning (dropped/relabelled: {text})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def compare_cleaning(
    manifest_path: str,
    baseline_predictions_path: str,
    variant_names: list[str],
    variant_manifests: list[str],
    variant_predictions: list[str],
    table_out: str,
    plot_out: str,
) -> None:
    """Rule ``clean_comparison``: the before/after table (CSV) and its bar chart."""
    original, _ = load_manifest(manifest_path)
    variants = {"baseline": (original, read_table(baseline_predictions_path))}
    for name, manifest_path_v, preds_path in zip(variant_names, variant_manifests, variant_predictions):
        variants[name] = (read_table(manifest_path_v), read_table(preds_path))
    table = comparison_table(original, variants)
    write_table(table, table_out)
    plot_comparison(table, plot_out)
    for row in table.itertuples():
        log.info("%-9s test accuracy %.4f (gain %+.4f) loss %.4f", row.variant, row.test_accuracy, row.accuracy_gain, row.test_loss)
