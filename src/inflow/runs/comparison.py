"""Model versions compared (config ``versions`` and ``runs.seeds``): the rule body of ``runs_comparison``.

Each version trains its own model (another seed, other ``train``/``model`` settings, or a cleaned
training set) and produces its own predictions, exact top-k influences and mislabel ranking under
``results/runs/<version>/``. What survives a change of version is what a reviewer should trust
most. :func:`compare_runs` loads every version (:func:`load_runs`), builds the tables of
:mod:`inflow.runs.tables`, the recommendations of :mod:`inflow.runs.recommendations` and the
picture of :mod:`inflow.runs.figure`, and writes each table as CSV and Parquet.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime

import pandas as pd

from inflow.core.errors import InflowError
from inflow.core.io import read_json, read_table, write_table
from inflow.mislabel.ranking import budget_count
from inflow.runs import TABLES
from inflow.runs.figure import plot_versions
from inflow.runs.recommendations import recommendations
from inflow.runs.tables import (
    Run,
    accuracy_table,
    class_errors,
    confusion_pairs,
    influence_stats,
    mislabel_candidates,
    persistent_errors,
    recurrence,
    summary_table,
    top_influential,
    with_appearances,
)

log = logging.getLogger(__name__)


def trained_at(path: str) -> str:
    """When a version was trained: the modification time of its training record ``path``, ``YYYY-MM-DD HH:MM UTC``."""
    return datetime.fromtimestamp(os.path.getmtime(path), tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def load_runs(
    versions: list[str],
    info: dict[str, list],
    training: list[str],
    predictions: list[str],
    topk: list[str],
    rankings: list[str],
    metrics: list[str],
) -> list[Run]:
    """Every version's result files (main run first) as :class:`Run` objects.

    ``info`` holds per-version lists ``seeds, notes, data, changes`` in ``versions`` order.
    """
    lists = [training, predictions, topk, rankings, metrics, *info.values()]
    if any(len(x) != len(versions) for x in lists):
        raise InflowError("runs comparison: the rule's inputs do not list the same number of versions; check rules/runs.smk")
    return [
        Run(
            name,
            int(info["seeds"][i]),
            read_table(predictions[i]),
            read_table(topk[i]),
            read_table(rankings[i], columns=["rank", "sample_id"]),
            read_json(metrics[i]),
            note=info["notes"][i],
            data=info["data"][i],
            changes=info["changes"][i],
            date=trained_at(training[i]),
        )
        for i, name in enumerate(versions)
    ]


def comparison_tables(runs: list[Run], manifest: pd.DataFrame, top_influential_n: int, top_mislabel: float) -> dict[str, pd.DataFrame]:
    """Every cross-version table by its name in :data:`TABLES`, and the candidates' selections under ``"_candidates"``."""
    n_candidates = budget_count(top_mislabel, int((manifest.split == "train").sum()))
    accuracy = accuracy_table(runs)
    summary = summary_table(accuracy)
    errors = persistent_errors(runs, manifest)
    pairs = confusion_pairs(runs, manifest)
    classes = class_errors(runs, manifest)
    influential = with_appearances(recurrence({r.name: top_influential(r, manifest, top_influential_n) for r in runs}, manifest), runs)
    candidates = {run.name: mislabel_candidates(run, n_candidates) for run in runs}
    mislabel = recurrence(candidates, manifest)
    tables = {
        "accuracy": accuracy,
        "summary": summary,
        "persistent_errors": errors,
        "confusion_pairs": pairs,
        "class_errors": classes,
        "recurring_influential": influential,
        "recurring_mislabel": mislabel,
        "influence_stats": influence_stats(runs),
        "recommendations": recommendations(accuracy, summary, errors, pairs, classes, mislabel, influential),
    }
    return {**tables, "_candidates": candidates}


def compare_runs(
    manifest_path: str,
    images_path: str,
    versions: list[str],
    info: dict[str, list],
    training: list[str],
    predictions: list[str],
    topk: list[str],
    rankings: list[str],
    metrics: list[str],
    top_influential_n: int,
    top_mislabel: float,
    grid_images: int,
    grid_columns: int,
    outputs: dict[str, str],
) -> None:
    """Rule ``runs_comparison``: the tables (``outputs[<name>]`` CSV, ``outputs[<name>_parquet]``) and the picture (``outputs["plot"]``)."""
    manifest = read_table(manifest_path)
    runs = load_runs(versions, info, training, predictions, topk, rankings, metrics)
    tables = comparison_tables(runs, manifest, top_influential_n, top_mislabel)
    for name in TABLES:
        write_table(tables[name], outputs[name])
        write_table(tables[name], outputs[f"{name}_parquet"])
    plot_versions(
        tables["accuracy"],
        tables["summary"],
        tables["persistent_errors"],
        tables["_candidates"],
        manifest,
        images_path,
        grid_images,
        grid_columns,
        outputs["plot"],
    )
    for row in tables["accuracy"].itertuples():
        log.info("%s: test accuracy %.4f, test loss %.4f (%s)", row.version, row.test_accuracy, row.test_loss, row.changes or "main")
    for row in tables["recommendations"].itertuples():
        log.info("recommendation %d (%s): %s", row.priority, row.source, row.recommendation)
