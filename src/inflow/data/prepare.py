"""Rule ``prepare_data``: build the manifest and the preprocessed image array.

Outputs:
    * ``images.npy``: ``(n, s, s, 3)`` uint8, row ``i`` is the image of manifest row ``row == i``.
    * ``manifest.parquet``: sample_id, split (train/val/test), row, path, label, label_name,
      true_label, true_label_name, flipped.
    * ``skipped.csv``: files that could not be read (image folders only).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from inflow.core.errors import InflowError
from inflow.core.io import save_npy, write_json, write_table
from inflow.data import imagefolder, synthetic, user_split

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def split_sizes(class_count: int, fractions: dict[str, float]) -> dict[str, int]:
    """How many of ``class_count`` samples of one class go to each split.

    Each split in ``fractions`` gets ``round(frac * class_count)`` (while samples last), in
    order; ``train`` takes the rest. :func:`stratified_split` and the start-up config check
    use this, so the check knows the exact training-set size.
    """
    sizes, start = {}, 0
    for name, frac in fractions.items():
        sizes[name] = min(int(round(frac * class_count)), class_count - start)
        start += sizes[name]
    sizes["train"] = class_count - start
    return sizes


def stratified_split(labels: np.ndarray, fractions: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """Assign each sample to a split, class by class.

    Args:
        labels: ``(n,)`` class indices.
        fractions: split name -> fraction for every split but the first in ``SPLITS`` order
            that is missing (``train`` takes the rest).

    Returns:
        ``(n,)`` array of split names.
    """
    split = np.full(len(labels), "train", dtype=object)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for name, count in split_sizes(len(idx), fractions).items():
            if name == "train":
                continue
            split[idx[start : start + count]] = name
            start += count
    return split


SYNTHETIC_NOISE_RATE = 0.1  # the built-in data's known label noise


def noise_rate(cfg: dict[str, Any]) -> float:
    """``dataset.noise_rate``, with null resolved: 0.1 for the built-in synthetic data, 0 for a user's images (never corrupted unless asked)."""
    if cfg.get("noise_rate") is not None:
        return float(cfg["noise_rate"])
    return SYNTHETIC_NOISE_RATE if cfg["source"] == "synthetic" else 0.0


def has_given_split(cfg: dict[str, Any]) -> bool:
    """True when the user gives the split (a manifest, or separate train and test folders), not a random one."""
    return cfg["source"] == "manifest" or (cfg["source"] == "imagefolder" and bool(cfg["imagefolder"].get("test_path")))


def user_files(cfg: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """``(files (path, label, split), class_names)`` of a dataset with a given split (see :mod:`inflow.data.user_split`)."""
    if cfg["source"] == "manifest":
        return user_split.read_user_manifest(cfg["manifest"]["path"])
    folder = cfg["imagefolder"]
    return user_split.scan_train_test_folders(folder["path"], folder["test_path"], tuple(folder["extensions"]))


def split_fractions(cfg: dict[str, Any]) -> dict[str, float]:
    """``{"test": f, "val": f}`` of the whole dataset for the config's ``dataset`` section."""
    if cfg["source"] == "synthetic":
        n_pool, n_test = cfg["synthetic"]["n_train"], cfg["synthetic"]["n_test"]
        test_frac = n_test / (n_pool + n_test)
    else:
        test_frac = cfg["imagefolder"]["test_fraction"]
    return {"test": test_frac, "val": cfg["val_fraction"] * (1 - test_frac)}


def check_class_splits(counts: np.ndarray, class_names: list[str], fractions: dict[str, float], where: str) -> None:
    """Raise if a class cannot have both train and test images with these split fractions.

    Args:
        counts: ``(C,)`` number of images of each class.
        where: what the counts are, for the message (e.g. ``"readable images"``).
    """
    few = [f"{class_names[c]} ({counts[c]})" for c in np.flatnonzero(counts < 2)]
    if few:
        raise InflowError(
            f"dataset.imagefolder.path: class(es) {', '.join(few)} have fewer than 2 {where}; a train/test split needs at least 2 per class, add images"
        )
    for name in ("test", "train"):
        missing = [f"{class_names[c]} ({counts[c]})" for c in range(len(counts)) if split_sizes(int(counts[c]), fractions)[name] == 0]
        if missing:
            raise InflowError(
                f"dataset.imagefolder.test_fraction={fractions['test']:g}: class(es) {', '.join(missing)} would get no {name} images "
                f"(counting {where}); add images to those class folders or {'raise' if name == 'test' else 'lower'} test_fraction"
            )


def flip_labels(labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Return a copy of ``labels`` with ``round(rate * n)`` entries changed to another class, uniformly."""
    noisy = labels.copy()
    n_flip = int(round(rate * len(labels)))
    idx = rng.choice(len(labels), size=n_flip, replace=False)
    noisy[idx] = (labels[idx] + rng.integers(1, num_classes, size=n_flip)) % num_classes
    return noisy


def build_manifest(
    labels: np.ndarray,
    class_names: list[str],
    paths: list[str] | None,
    split: np.ndarray,
    noise_rate: float,
    rng: np.random.Generator,
    labels_known_true: bool,
) -> pd.DataFrame:
    """Assemble the manifest table; label noise is injected into the train split only."""
    true_label = labels.astype(np.int64)
    label = true_label.copy()
    is_train = split == "train"
    if noise_rate > 0:
        label[is_train] = flip_labels(true_label[is_train], noise_rate, len(class_names), rng)
    names = np.asarray(class_names, dtype=object)
    known = labels_known_true or noise_rate > 0
    df = pd.DataFrame(
        {
            "sample_id": np.arange(len(labels), dtype=np.int64),
            "split": split.astype(str),
            "row": np.arange(len(labels), dtype=np.int64),
            "path": paths if paths is not None else [None] * len(labels),
            "label": label,
            "label_name": names[label],
            "true_label": pd.array(true_label if known else [None] * len(labels), dtype="Int64"),
            "true_label_name": names[true_label] if known else None,
            "flipped": pd.array(label != true_label if known else [None] * len(labels), dtype="boolean"),
        }
    )
    return df


def prepare_data(cfg: dict[str, Any], seed: int, images_out: str, manifest_out: str, skipped_out: str, classes_out: str) -> None:
    """Make or read the dataset named by ``cfg`` (the config's ``dataset`` section) and write it."""
    rng = np.random.default_rng(seed)
    size = cfg["image_size"]
    fractions = split_fractions(cfg)
    if cfg["source"] == "synthetic":
        n_pool, n_test = cfg["synthetic"]["n_train"], cfg["synthetic"]["n_test"]
        images, labels = synthetic.make_dataset(n_pool + n_test, size, seed)
        class_names = list(synthetic.CLASS_NAMES)
        paths = None
        skipped = pd.DataFrame(columns=["path", "reason"])
        known_true = True
    else:
        folder = cfg["imagefolder"]
        if has_given_split(cfg):
            files, class_names = user_files(cfg)
        else:
            files, class_names = imagefolder.scan_folder(folder["path"], tuple(folder["extensions"]))
        images, files, skipped = imagefolder.load_images(files, size)
        if len(skipped):
            log.warning("%d unreadable file(s) skipped; they are listed with the reason in %s", len(skipped), skipped_out)
        labels, paths = files["label"].to_numpy(), files["path"].tolist()
        known_true = False
        counts = np.bincount(labels, minlength=len(class_names))
        where = (
            f"readable images ({len(skipped)} unreadable file(s) skipped, e.g. {skipped.path.iloc[0]})"
            if len(skipped)
            else "readable images"
        )
        if not has_given_split(cfg):
            check_class_splits(counts, class_names, fractions, where)
    split = user_split.given_split(files, cfg["val_fraction"], rng) if has_given_split(cfg) else stratified_split(labels, fractions, rng)
    for name in ("train", "test"):
        present = set(labels[split == name])
        missing = [class_names[c] for c in range(len(class_names)) if c not in present]
        if missing:
            fix = (
                f"give some of their images the {name} split"
                if has_given_split(cfg)
                else "add images or change dataset.imagefolder.test_fraction"
            )
            raise InflowError(f"dataset: class(es) {', '.join(missing)} have no {name} images after the split; {fix}")
    manifest = build_manifest(labels, class_names, paths, split, noise_rate(cfg), rng, known_true)
    log.info(
        "dataset: %d images of %d classes (%s), %d train labels flipped",
        len(manifest),
        len(class_names),
        ", ".join(f"{s}={int((manifest.split == s).sum())}" for s in SPLITS),
        int(manifest["flipped"].fillna(False).sum()),
    )
    save_npy(images, images_out)
    write_table(manifest, manifest_out, metadata={"class_names": class_names, "image_size": size})
    write_table(skipped, skipped_out)
    write_json({"class_names": class_names}, classes_out)
