"""Retraining the workflow's recipe on a subset of the training set (LDS subset models, cleanlab folds)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from inflow.core.io import read_metadata, write_table
from inflow.data.manifest import load_manifest


def subset_manifest(manifest: pd.DataFrame, keep_ids: np.ndarray) -> pd.DataFrame:
    """``manifest`` with only the training samples in ``keep_ids`` (validation and test unchanged)."""
    drop = (manifest.split == "train") & ~manifest.sample_id.isin(keep_ids)
    return manifest.loc[~drop].reset_index(drop=True)


def train_on_subset(
    images_path: str,
    manifest_path: str,
    keep_ids: np.ndarray,
    model_cfg: dict[str, Any],
    train_cfg: dict[str, Any],
    seed: int,
    device_name: str,
    manifest_out: str,
    metrics_out: str,
    final_out: tuple[str, str] | None = None,
    best_out: str | None = None,
) -> None:
    """Train the workflow's recipe (:func:`inflow.train.loop.train`, same seed, so the same
    initialisation as the main model) on the training samples ``keep_ids`` alone.

    Writes the subset manifest (``manifest_out``), the metrics, and the models asked for: the
    one after the last epoch (or at early stopping) as ``final_out = (checkpoint, sidecar)`` and
    the best by validation loss as ``best_out``; the other is written to a temporary folder.
    """
    from inflow.train.loop import train

    manifest, _ = load_manifest(manifest_path)
    write_table(subset_manifest(manifest, keep_ids), manifest_out, metadata=read_metadata(manifest_path))
    cfg = {**train_cfg, "checkpoint_epochs": [train_cfg["epochs"]]}
    with tempfile.TemporaryDirectory(dir=Path(manifest_out).parent) as tmp:
        final = final_out or (str(Path(tmp) / "final.pt"), str(Path(tmp) / "final.json"))
        train(
            images_path,
            manifest_out,
            model_cfg,
            cfg,
            seed,
            device_name,
            [final[0]],
            [final[1]],
            best_out or str(Path(tmp) / "best.pt"),
            metrics_out,
        )
