"""Datasets whose split the user gives: a manifest table, or separate train and test folders.

* Manifest (``dataset.source: manifest``): a CSV or Parquet file with columns ``path``, ``label``
  and ``split`` (``train``, ``val`` or ``test``); relative paths are read from the manifest's folder.
  Class names are the distinct labels, sorted (numerically when every label is a whole number).
* Folders (``dataset.source: imagefolder`` with ``imagefolder.test_path``): ``path`` holds the
  training class folders, ``test_path`` the test class folders with the same names.

When no row is ``val``, ``dataset.val_fraction`` of each class's training rows become the
validation split (seeded), as for a random split. Every problem stops with one line naming the
manifest row or the folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from inflow.core.errors import InflowError
from inflow.data.imagefolder import scan_folder

SPLIT_NAMES = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "label", "split")


def read_user_manifest(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Read and check a user's manifest: ``(files, class_names)``.

    Returns:
        ``files`` with columns ``path`` (absolute), ``label`` (index into ``class_names``) and
        ``split`` (train | val | test), in the manifest's row order.

    Raises:
        InflowError: the file is missing or unreadable, lacks a column, names an unknown split,
        has an empty label, or a row points at a missing file (one line, the first such row).
    """
    where = f"dataset.manifest.path: {path}"
    path = Path(path)
    if not path.is_file():
        raise InflowError(f"{where} does not exist; give a CSV or Parquet file with columns path, label, split")
    try:
        table = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas and pyarrow raise many types for a bad file
        raise InflowError(
            f"{where} is not a readable CSV or Parquet table ({type(exc).__name__}); give columns path, label, split"
        ) from None
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise InflowError(f"{where} lacks column(s) {', '.join(missing)}; it needs path, label and split (train, val or test)")
    if table.empty:
        raise InflowError(f"{where} has no rows; list one image per row")
    table = table[list(MANIFEST_COLUMNS)].astype(str)
    split = table["split"].str.strip().str.lower()
    bad = np.flatnonzero(~split.isin(SPLIT_NAMES).to_numpy())
    if len(bad):
        i = int(bad[0])
        raise InflowError(
            f"{where}: row {i + 2} has split {table['split'].iloc[i]!r} ({len(bad)} row(s) with an unknown split); use train, val or test"
        )
    labels = table["label"].str.strip()
    empty = np.flatnonzero((labels == "").to_numpy())
    if len(empty):
        raise InflowError(f"{where}: row {int(empty[0]) + 2} has no label ({len(empty)} row(s) without one); give every image its class")
    files = [Path(p) if Path(p).is_absolute() else path.parent / p for p in table["path"]]
    absent = [i for i, f in enumerate(files) if not f.is_file()]
    if absent:
        i = absent[0]
        raise InflowError(
            f"{where}: row {i + 2} points at {files[i]}, which does not exist ({len(absent)} missing file(s)); fix the path or remove the row"
        )
    class_names = sorted(labels.unique(), key=lambda v: (0, int(v), "") if v.isdigit() else (1, 0, v))
    index = {name: i for i, name in enumerate(class_names)}
    out = pd.DataFrame({"path": [str(f) for f in files], "label": labels.map(index).to_numpy(np.int64), "split": split.to_numpy()})
    return out, class_names


def scan_train_test_folders(train_path: str | Path, test_path: str | Path, extensions: tuple[str, ...]) -> tuple[pd.DataFrame, list[str]]:
    """Two folders of class folders as one ``(files, class_names)`` table (columns path, label, split).

    The test folder may hold fewer classes than the training folder, not others.
    """
    train, names = scan_folder(train_path, extensions)
    if not Path(test_path).is_dir():
        raise InflowError(f"dataset.imagefolder.test_path: {test_path} is not a directory; give the folder of test class folders, or null")
    test, test_names = scan_folder(test_path, extensions)
    unknown = sorted(set(test_names) - set(names))
    if unknown:
        raise InflowError(
            f"dataset.imagefolder.test_path: class folder(s) {', '.join(unknown)} of {test_path} are not classes of {train_path}; use the same class folder names"
        )
    test["label"] = [names.index(test_names[label]) for label in test["label"]]
    files = pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)
    return files, names


def given_split(files: pd.DataFrame, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``(n,)`` split names from ``files.split``; without any ``val`` row, ``val_fraction`` of each class's train rows become ``val``."""
    split = files["split"].to_numpy(dtype=object).copy()
    if val_fraction > 0 and not (split == "val").any():
        labels = files["label"].to_numpy()
        for c in np.unique(labels[split == "train"]):
            idx = rng.permutation(np.flatnonzero((labels == c) & (split == "train")))
            split[idx[: int(round(val_fraction * len(idx)))]] = "val"
    return split
