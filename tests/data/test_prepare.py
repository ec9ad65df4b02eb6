"""Dataset preparation: the synthetic generator, label noise, splits, and image folders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from inflow.core.errors import InflowError
from inflow.core.io import read_metadata, read_table
from inflow.data.prepare import flip_labels, prepare_data, stratified_split
from inflow.data.synthetic import CLASS_NAMES, make_dataset


def synthetic_cfg(**over):
    cfg = {
        "source": "synthetic",
        "image_size": 16,
        "noise_rate": 0.1,
        "val_fraction": 0.1,
        "synthetic": {"n_train": 200, "n_test": 50},
        "imagefolder": {"path": None, "test_fraction": 0.2, "extensions": [".jpg", ".png"]},
    }
    cfg.update(over)
    return cfg


def test_synthetic_is_deterministic_and_balanced() -> None:
    a, la = make_dataset(120, 16, seed=3)
    b, lb = make_dataset(120, 16, seed=3)
    c, _ = make_dataset(120, 16, seed=4)
    assert a.shape == (120, 16, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)
    assert np.bincount(la).tolist() == [12] * len(CLASS_NAMES)
    assert a.std() > 20  # not blank images


def test_flip_labels_flips_exactly_the_rate_to_other_classes() -> None:
    rng = np.random.default_rng(0)
    labels = np.arange(1000) % 10
    noisy = flip_labels(labels, 0.1, 10, rng)
    assert (noisy != labels).sum() == 100
    assert noisy.min() >= 0 and noisy.max() < 10


def test_stratified_split_keeps_class_proportions() -> None:
    labels = np.repeat(np.arange(4), 50)
    split = stratified_split(labels, {"test": 0.2, "val": 0.1}, np.random.default_rng(0))
    for c in range(4):
        s = split[labels == c]
        assert (s == "test").sum() == 10 and (s == "val").sum() == 5 and (s == "train").sum() == 35


def test_prepare_synthetic_manifest(tmp_path) -> None:
    prepare_data(
        synthetic_cfg(), 0, str(tmp_path / "im.npy"), str(tmp_path / "m.parquet"), str(tmp_path / "s.csv"), str(tmp_path / "c.json")
    )
    images, m = np.load(tmp_path / "im.npy"), read_table(tmp_path / "m.parquet")
    assert len(images) == len(m) == 250
    assert set(m.columns) >= {"sample_id", "split", "row", "path", "label", "label_name", "true_label", "flipped"}
    assert (m.split == "test").sum() == 50
    train = m[m.split == "train"]
    assert train.flipped.sum() == round(0.1 * len(train))
    assert (train.label != train.true_label).sum() == train.flipped.sum()
    assert not m[m.split != "train"].flipped.any()  # noise only in the training split
    assert read_metadata(tmp_path / "m.parquet")["class_names"] == list(CLASS_NAMES)


def write_folder(root, n_per_class=6):
    rng = np.random.default_rng(0)
    for _c, name in enumerate(["cat", "dog", "horse"]):
        d = root / name
        d.mkdir(parents=True)
        for i in range(n_per_class):
            arr = (rng.uniform(size=(20 + i, 30, 3)) * 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{i}.jpg")
    Image.fromarray(np.zeros((12, 12), np.uint8), mode="L").save(root / "cat" / "gray.png")
    Image.fromarray(np.zeros((12, 12, 4), np.uint8), mode="RGBA").save(root / "dog" / "rgba.png")
    (root / "horse" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "horse" / "notes.txt").write_text("ignored: not an image extension")


def test_prepare_imagefolder(tmp_path) -> None:
    write_folder(tmp_path / "data")
    cfg = synthetic_cfg(
        source="imagefolder",
        noise_rate=0.0,
        imagefolder={"path": str(tmp_path / "data"), "test_fraction": 0.34, "extensions": [".jpg", ".png"]},
    )
    prepare_data(cfg, 0, str(tmp_path / "im.npy"), str(tmp_path / "m.parquet"), str(tmp_path / "s.csv"), str(tmp_path / "c.json"))
    images, m = np.load(tmp_path / "im.npy"), read_table(tmp_path / "m.parquet")
    skipped = pd.read_csv(tmp_path / "s.csv")
    assert images.shape == (20, 16, 16, 3)  # 18 jpgs + gray + rgba; broken.jpg skipped, notes.txt ignored
    assert len(m) == 20 and m.path.notna().all()
    assert skipped.path.str.endswith("broken.jpg").tolist() == [True]
    assert sorted(m.label_name.unique()) == ["cat", "dog", "horse"]
    assert m.true_label.isna().all()  # no injected noise: the truth is unknown
    assert set(m[m.split == "test"].label_name) == {"cat", "dog", "horse"}


def test_imagefolder_with_empty_class_folder_fails_clearly(tmp_path) -> None:
    write_folder(tmp_path / "data")
    (tmp_path / "data" / "zebra").mkdir()
    cfg = synthetic_cfg(source="imagefolder", imagefolder={"path": str(tmp_path / "data"), "test_fraction": 0.2, "extensions": [".jpg"]})
    with pytest.raises(InflowError, match="zebra"):
        prepare_data(cfg, 0, str(tmp_path / "im.npy"), str(tmp_path / "m.parquet"), str(tmp_path / "s.csv"), str(tmp_path / "c.json"))
    assert not (tmp_path / "m.parquet").exists()


def prepare(cfg, tmp_path) -> pd.DataFrame:
    prepare_data(cfg, 0, str(tmp_path / "im.npy"), str(tmp_path / "m.parquet"), str(tmp_path / "s.csv"), str(tmp_path / "c.json"))
    return read_table(tmp_path / "m.parquet")


def test_real_images_get_no_label_noise_unless_asked(tmp_path) -> None:
    """dataset.noise_rate null: 0 for a user's images, the known 0.1 for the built-in data."""
    write_folder(tmp_path / "data", n_per_class=10)
    folder = {"path": str(tmp_path / "data"), "test_fraction": 0.2, "extensions": [".jpg", ".png"]}
    m = prepare(synthetic_cfg(source="imagefolder", noise_rate=None, imagefolder=folder), tmp_path)
    assert m.flipped.isna().all() and m.true_label.isna().all()
    m = prepare(synthetic_cfg(source="imagefolder", noise_rate=0.2, imagefolder=folder), tmp_path)
    assert m.flipped.sum() == round(0.2 * (m.split == "train").sum())
    m = prepare(synthetic_cfg(noise_rate=None), tmp_path)
    assert m.flipped.sum() == round(0.1 * (m.split == "train").sum())


def test_separate_train_and_test_folders_give_the_split(tmp_path) -> None:
    write_folder(tmp_path / "train", n_per_class=6)
    write_folder(tmp_path / "test", n_per_class=2)
    (tmp_path / "test" / "horse" / "broken.jpg").unlink()
    folder = {"path": str(tmp_path / "train"), "test_path": str(tmp_path / "test"), "test_fraction": 0.5, "extensions": [".jpg"]}
    m = prepare(synthetic_cfg(source="imagefolder", noise_rate=None, val_fraction=0.2, imagefolder=folder), tmp_path)
    test = m[m.split == "test"]
    assert len(test) == 6 and test.path.str.startswith(str(tmp_path / "test")).all()
    assert m[m.split != "test"].path.str.startswith(str(tmp_path / "train")).all()
    assert (m.split == "val").sum() == 3  # round(0.2 * 6) of each class's training images


def test_manifest_gives_the_split_with_relative_paths(tmp_path) -> None:
    write_folder(tmp_path / "data", n_per_class=4)
    rows = [
        (f"{name}/{i}.jpg", name, "test" if i == 0 else "val" if i == 1 else "train") for name in ("cat", "dog", "horse") for i in range(4)
    ]
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(tmp_path / "data" / "list.csv", index=False)
    m = prepare(synthetic_cfg(source="manifest", noise_rate=None, manifest={"path": str(tmp_path / "data" / "list.csv")}), tmp_path)
    assert m.split.value_counts().to_dict() == {"train": 6, "val": 3, "test": 3}
    assert (m.label_name == m.path.map(lambda p: p.split("/")[-2])).all() and m.flipped.isna().all()


def test_parquet_manifest_with_integer_labels(tmp_path) -> None:
    """Parquet works like CSV; whole-number labels are class names sorted by value (2 before 10)."""
    from inflow.data.user_split import read_user_manifest

    write_folder(tmp_path / "data", n_per_class=2)
    rows = [
        (str(tmp_path / "data" / name / f"{i}.jpg"), label, "train" if i else "test")
        for name, label in (("cat", 10), ("dog", 2))
        for i in range(2)
    ]
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_parquet(tmp_path / "list.parquet")
    files, names = read_user_manifest(tmp_path / "list.parquet")
    assert names == ["2", "10"] and files.label.tolist() == [1, 1, 0, 0] and files.split.tolist() == ["test", "train", "test", "train"]
