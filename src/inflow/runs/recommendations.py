"""Recommendations drawn from the cross-version tables, each pointing to the table it comes from.

:func:`recommendations` reads only the tables of :mod:`inflow.runs.tables` (by their file names
in ``results/runs/comparison/``) and returns ``priority, topic, recommendation, source`` rows,
most important first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from inflow.runs.tables import NOISE_STDS


def _ids(values: pd.Series, n: int = 8) -> str:
    """Up to ``n`` ids as text, with "..." when there are more."""
    ids = [str(int(v)) for v in values.head(n)]
    return ", ".join(ids) + (", ..." if len(values) > n else "")


def best_version(accuracy: pd.DataFrame) -> list[tuple[str, str, str]]:
    """Which version to use (highest test accuracy)."""
    best = accuracy.loc[accuracy.test_accuracy.idxmax()]
    val = f", validation {best.val_accuracy:.3f}" if pd.notna(best.val_accuracy) else ""
    text = f"Use {best.version} (test accuracy {best.test_accuracy:.3f}{val}; {best.changes or 'the main settings'})."
    return [("best version", text, "accuracy.csv")]


def noise_and_cleaning(summary: pd.DataFrame) -> list[tuple[str, str, str]]:
    """Run-to-run noise of the uncleaned versions and whether each cleaned version beats it."""
    first = summary.iloc[0]
    out = []
    if first.n_uncleaned < 2:
        out.append(
            (
                "noise",
                "Only one uncleaned version: add seeds (runs.seeds) to measure run-to-run noise before trusting any difference.",
                "summary.csv",
            )
        )
    else:
        out.append(
            (
                "noise",
                f"Uncleaned versions: test accuracy {first.uncleaned_mean:.3f} +- {first.uncleaned_std:.3f} (std over "
                f"{first.n_uncleaned}); treat differences below {NOISE_STDS:g} std ({NOISE_STDS * first.uncleaned_std:.3f}) as noise.",
                "summary.csv",
            )
        )
    for row in summary[summary.cleaned_version != ""].itertuples():
        gain = f"{row.cleaning_gain:+.3f} over {row.best_uncleaned_version}"
        if pd.isna(row.beyond_noise):
            text = f"{row.cleaned_version}: {gain}, but the noise is unknown; train more uncleaned seeds to judge the cleaning."
        elif row.beyond_noise:
            text = f"{row.cleaned_version}: cleaning helps beyond run-to-run noise ({gain}, {row.gain_in_std:.1f} std); keep the cleaned training set."
        elif row.cleaning_gain >= -NOISE_STDS * row.uncleaned_std:
            text = f"{row.cleaned_version}: {gain} is within run-to-run noise ({row.gain_in_std:.1f} std); add seeds before concluding."
        else:
            text = f"{row.cleaned_version}: cleaning hurts beyond noise ({gain}); review the proposed fixes (results/clean/review.csv)."
        out.append(("cleaning", text, "summary.csv"))
    return out


def persistent(errors: pd.DataFrame) -> list[tuple[str, str, str]]:
    """Test images wrong in every version: no retraining fixes them."""
    wrong = errors[errors.persistent]
    if wrong.empty:
        return []
    text = (
        f"{len(wrong)} test images are wrong in every version ({_ids(wrong.test_id)}); retraining does not fix them: "
        "check their labels, or add training images like them."
    )
    return [("persistent errors", text, "persistent_errors.csv")]


def weakest_class(classes: pd.DataFrame, pairs: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The class with the most errors and its main confusion, and the pair confused by every version."""
    out = []
    top = classes.iloc[0] if len(classes) else None
    if top is not None and top.total > 0:
        text = (
            f"Class {top['class']} has the most test errors ({top.mean_errors:.1f} per version, of {top.n_test} test images), mostly predicted as "
            f"{top.main_confusion}: add or review {top['class']} training images."
        )
        out.append(("class", text, "class_errors.csv"))
    every = pairs[pairs.n_versions == pairs.filter(like="count_").shape[1]] if len(pairs) else pairs
    if len(every):
        pair = every.iloc[0]
        text = f"{pair.true} -> {pair.predicted} is confused by every version ({pair.total} errors in all); look at both classes' boundary images."
        out.append(("confusion", text, "confusion_pairs.csv"))
    return out


def recurring(mislabel: pd.DataFrame, influential: pd.DataFrame) -> list[tuple[str, str, str]]:
    """Mislabel candidates and influential training images that every version finds."""
    out = []
    every = mislabel[mislabel.in_all_versions]
    if len(every):
        share = ""
        if "flipped" in every and every.flipped.notna().all():
            share = f"; {float(np.mean(every.flipped.astype(bool))):.0%} of them were flipped on purpose"
        text = f"Review the {len(every)} mislabel candidates every version flags first ({_ids(every.sample_id)}{share})."
        out.append(("mislabel candidates", text, "recurring_mislabel.csv"))
    every = influential[influential.in_all_versions]
    if len(every):
        text = (
            f"{len(every)} training images are among the most influential in every version ({_ids(every.sample_id)}); "
            "they drive predictions whatever the version: check their labels."
        )
        out.append(("influential samples", text, "recurring_influential.csv"))
    return out


def recommendations(
    accuracy: pd.DataFrame,
    summary: pd.DataFrame,
    errors: pd.DataFrame,
    pairs: pd.DataFrame,
    classes: pd.DataFrame,
    mislabel: pd.DataFrame,
    influential: pd.DataFrame,
) -> pd.DataFrame:
    """``priority, topic, recommendation, source`` rows from the tables (``source``: the table's file name)."""
    rows = [
        *best_version(accuracy),
        *noise_and_cleaning(summary),
        *persistent(errors),
        *weakest_class(classes, pairs),
        *recurring(mislabel, influential),
    ]
    out = pd.DataFrame(rows, columns=["topic", "recommendation", "source"])
    out.insert(0, "priority", np.arange(1, len(out) + 1))
    return out
