"""Loading the prepared dataset: images as float tensors, split by the manifest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from inflow.core.errors import InflowError
from inflow.core.io import load_npy, read_metadata, read_table


@dataclass
class Split:
    """One split of the dataset held in memory.

    Attributes:
        images: ``(n, h, w, 3)`` uint8.
        labels: ``(n,)`` int64, the labels training sees (possibly flipped).
        sample_ids: ``(n,)`` int64, the manifest's sample_id.
    """

    images: np.ndarray
    labels: np.ndarray
    sample_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: np.ndarray | slice, device: torch.device) -> tuple[Tensor, Tensor]:
        """Images ``(b, 3, h, w)`` float32 in [0, 1] and labels ``(b,)`` on ``device``."""
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx])).to(device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        return x, torch.from_numpy(self.labels[idx]).to(device)


MANIFEST_COLUMNS = ("sample_id", "split", "row", "label")


def load_manifest(path: str) -> tuple[pd.DataFrame, list[str]]:
    """The manifest table and its class names."""
    manifest = read_table(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise InflowError(f"{path}: manifest lacks column(s) {', '.join(missing)}; rerun prepare_data")
    names = read_metadata(path).get("class_names")
    if not names:
        raise InflowError(f"{path}: manifest has no class_names metadata; rerun prepare_data")
    labels = manifest["label"].to_numpy()
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise InflowError(f"{path}: labels outside 0..{len(names) - 1} for the {len(names)} class names; rerun prepare_data")
    return manifest, list(names)


def load_split(images_path: str, manifest: pd.DataFrame, split: str) -> Split:
    """Rows of ``manifest`` in ``split``, in manifest order, with their images."""
    images = load_npy(images_path, "prepare_data")
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise InflowError(
            f"{images_path}: expected (n, size, size, 3) uint8 images, found {images.dtype}{images.shape}; rerun prepare_data"
        )
    rows = manifest[manifest["split"] == split]
    if len(rows) and rows["row"].max() >= len(images):
        raise InflowError(f"{images_path}: has {len(images)} images but the manifest refers to row {rows['row'].max()}; rerun prepare_data")
    return Split(
        images=np.asarray(images[rows["row"].to_numpy()]),
        labels=rows["label"].to_numpy(dtype=np.int64, copy=True),
        sample_ids=rows["sample_id"].to_numpy(dtype=np.int64, copy=True),
    )
