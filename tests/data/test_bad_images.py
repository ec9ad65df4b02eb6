"""Messy image folders: bad files are skipped and listed, odd colour modes load, structural problems stop clearly."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_snakemake
from PIL import Image

from inflow.core.errors import InflowError
from inflow.core.io import read_table
from inflow.data.imagefolder import load_image
from inflow.data.prepare import prepare_data
from inflow.workflow.config import semantic_errors

EXTS = [".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"]
CLASSES = ("cat", "dog", "horse")


def cfg(root, test_fraction=0.25, **over):
    c = {
        "source": "imagefolder",
        "image_size": 16,
        "noise_rate": 0.0,
        "val_fraction": 0.1,
        "synthetic": {"n_train": 20, "n_test": 10},
        "imagefolder": {"path": str(root), "test_fraction": test_fraction, "extensions": EXTS},
    }
    c.update(over)
    return c


def outputs(tmp_path):
    return str(tmp_path / "im.npy"), str(tmp_path / "m.parquet"), str(tmp_path / "skipped.csv"), str(tmp_path / "c.json")


def prepare(root, tmp_path, **kw):
    prepare_data(cfg(root, **kw), 0, *outputs(tmp_path))
    return np.load(tmp_path / "im.npy"), read_table(tmp_path / "m.parquet"), pd.read_csv(tmp_path / "skipped.csv")


def assert_nothing_written(tmp_path):
    assert not any((tmp_path / name).exists() for name in ("im.npy", "m.parquet", "skipped.csv", "c.json"))


def good_folder(root, n=8, classes=CLASSES):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray((rng.uniform(size=(18 + i, 24, 3)) * 255).astype(np.uint8)).save(root / name / f"{i}.jpg")
    return root


def jpeg_bytes(size=(40, 40)):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def png_bytes(size=(40, 40)):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


BAD_FILES = {
    "cat/random_bytes.jpg": os.urandom(500),
    "cat/text_named.png": b"this is a text file with an image extension\n",
    "dog/empty.jpg": b"",
    "dog/truncated.jpg": jpeg_bytes()[:300],
    "horse/truncated.png": png_bytes()[:200],
    "horse/html_page.webp": b"<html><body>404 not found</body></html>",
}


def test_corrupt_files_are_skipped_and_listed(tmp_path, caplog) -> None:
    root = good_folder(tmp_path / "data")
    for rel, data in BAD_FILES.items():
        (root / rel).write_bytes(data)
    with caplog.at_level(logging.WARNING):
        images, m, skipped = prepare(root, tmp_path)
    assert len(images) == len(m) == 24
    assert sorted(os.path.relpath(p, root) for p in skipped.path) == sorted(BAD_FILES)
    assert skipped.reason.str.len().gt(0).all() and not skipped.reason.str.contains("\n").any()
    assert not m.path.isin(skipped.path).any()
    assert "6 unreadable file(s) skipped" in caplog.text and "skipped.csv" in caplog.text


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file without read permission")
def test_file_without_read_permission_is_skipped(tmp_path) -> None:
    root = good_folder(tmp_path / "data")
    locked = root / "dog" / "0.jpg"
    locked.chmod(0)
    try:
        _, m, skipped = prepare(root, tmp_path)
    finally:
        locked.chmod(0o644)
    assert skipped.path.tolist() == [str(locked)] and "PermissionError" in skipped.reason[0]


def test_decompression_bomb_is_skipped(tmp_path, monkeypatch) -> None:
    root = good_folder(tmp_path / "data")
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(root / "cat" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # the 90,000-pixel image is > 2x the limit
    _, m, skipped = prepare(root, tmp_path)
    assert skipped.path.str.endswith("huge.png").tolist() == [True] and "DecompressionBombError" in skipped.reason[0]


def test_non_image_and_hidden_files_are_ignored(tmp_path, caplog) -> None:
    root = good_folder(tmp_path / "data")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "Thumbs.db").write_bytes(b"\x00" * 64)
    (root / "dog" / ".DS_Store").write_bytes(b"\x00" * 64)
    (root / "dog" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble file with an image extension
    (root / ".thumbnails").mkdir()
    (root / ".thumbnails" / "x.jpg").write_bytes(jpeg_bytes())
    (root / "README.jpg").write_bytes(jpeg_bytes())  # an image outside every class folder
    with caplog.at_level(logging.WARNING):
        images, m, skipped = prepare(root, tmp_path)
    assert len(images) == 24 and skipped.empty
    assert sorted(m.label_name.unique()) == list(CLASSES)
    assert "ignored 2 file(s) without an image extension" in caplog.text
    assert "ignored 1 image(s) directly in" in caplog.text


def test_upper_case_extensions_and_nested_folders_are_found(tmp_path) -> None:
    root = good_folder(tmp_path / "data")
    (root / "cat" / "sub" / "deeper").mkdir(parents=True)
    (root / "cat" / "sub" / "deeper" / "A.JPG").write_bytes(jpeg_bytes())
    (root / "dog" / "B.Png").write_bytes(png_bytes())
    images, m, _ = prepare(root, tmp_path, imagefolder={"path": str(root), "test_fraction": 0.25, "extensions": ["jpg", ".PNG"]})
    assert len(images) == 26
    assert m.path.str.endswith("A.JPG").sum() == 1 and m.path.str.endswith("B.Png").sum() == 1


def save(im: Image.Image, path, **kw):
    im.save(path, **kw)
    return path


def test_colour_modes_load_as_rgb(tmp_path) -> None:
    ramp = np.tile(np.linspace(0, 1, 32), (32, 1))
    files = {
        "L": save(Image.fromarray((ramp * 255).astype(np.uint8)), tmp_path / "gray.png"),
        "I;16": save(Image.fromarray((ramp * 65535).astype(np.uint16)), tmp_path / "gray16.png"),
        "1": save(Image.fromarray((ramp * 255).astype(np.uint8)).convert("1"), tmp_path / "bw.png"),
        "LA": save(Image.fromarray((ramp * 255).astype(np.uint8)).convert("LA"), tmp_path / "la.png"),
        "P": save(Image.fromarray((np.dstack([ramp] * 3) * 255).astype(np.uint8)).convert("P"), tmp_path / "palette.gif"),
        "RGBA": save(Image.fromarray((np.dstack([ramp] * 4) * 255).astype(np.uint8), mode="RGBA"), tmp_path / "rgba.png"),
        "CMYK": save(Image.fromarray((np.dstack([ramp] * 3) * 255).astype(np.uint8)).convert("CMYK"), tmp_path / "cmyk.jpg"),
        "F": save(Image.fromarray(ramp.astype(np.float32)), tmp_path / "float.tif"),
        "RGB": save(Image.fromarray((np.dstack([ramp] * 3) * 255).astype(np.uint8)), tmp_path / "rgb.png"),
    }
    reference = load_image(files["RGB"], 16).astype(int)
    for mode, path in files.items():
        assert Image.open(path).mode.startswith(mode[:1]), (mode, Image.open(path).mode)
        img = load_image(path, 16)
        assert img.shape == (16, 16, 3) and img.dtype == np.uint8, mode
        if mode != "1":  # 1-bit dithers; the rest must keep the grey ramp, not saturate to white or black
            assert np.abs(img.astype(int) - reference).mean() < 12, (mode, img[0, :, 0], reference[0, :, 0])


def test_animated_gif_uses_first_frame(tmp_path) -> None:
    frames = [Image.fromarray(np.full((20, 20, 3), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert abs(int(load_image(tmp_path / "anim.gif", 8).mean()) - 10) <= 2


# ---- structural problems: one clear error, no output ----------------------------------------------


def test_class_folder_without_images_stops(tmp_path) -> None:
    root = good_folder(tmp_path / "data")
    (root / "zebra").mkdir()
    (root / "zebra" / "readme.txt").write_text("to do: add zebras")
    with pytest.raises(InflowError, match=r"class folder\(s\) zebra in .* hold no images .*remove them, add images"):
        prepare(root, tmp_path)
    assert_nothing_written(tmp_path)


def test_single_class_folder_stops(tmp_path) -> None:
    root = good_folder(tmp_path / "data", classes=("cat",))
    with pytest.raises(InflowError, match=r"has 1 class folder\(s\); need at least 2"):
        prepare(root, tmp_path)
    assert_nothing_written(tmp_path)


def test_flat_folder_of_images_stops_with_a_hint(tmp_path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    for i in range(5):
        (root / f"{i}.jpg").write_bytes(jpeg_bytes())
    with pytest.raises(InflowError, match=r"has 0 class folder\(s\) \(5 images lie directly in it: move them into one folder per class\)"):
        prepare(root, tmp_path)
    assert_nothing_written(tmp_path)


def test_class_with_only_corrupt_images_stops_naming_a_skipped_file(tmp_path) -> None:
    root = good_folder(tmp_path / "data")
    (root / "zebra").mkdir()
    for i in range(3):
        (root / "zebra" / f"{i}.jpg").write_bytes(b"garbage")
    with pytest.raises(
        InflowError,
        match=r"class\(es\) zebra \(0\) have fewer than 2 readable images \(3 unreadable file\(s\) skipped, e\.g\. .*zebra/0\.jpg\)",
    ):
        prepare(root, tmp_path)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    "test_fraction,n_zebra,missing,fix",
    [(0.2, 2, "test", "raise test_fraction"), (0.8, 2, "train", "lower test_fraction"), (0.25, 1, None, None)],
)
def test_class_missing_from_train_or_test_stops(tmp_path, test_fraction, n_zebra, missing, fix) -> None:
    root = good_folder(tmp_path / "data")
    good_folder(root, n=n_zebra, classes=("zebra",))
    pattern = (
        rf"class\(es\) zebra \({n_zebra}\) would get no {missing} images .*{fix}"
        if missing
        else r"zebra \(1\) have fewer than 2 readable images"
    )
    with pytest.raises(InflowError, match=pattern):
        prepare(root, tmp_path, test_fraction=test_fraction)
    assert_nothing_written(tmp_path)


def full_config(root, **influence):
    from snakemake.utils import validate

    c = {"dataset": {"source": "imagefolder", "imagefolder": {"path": str(root)}}, "influence": influence}
    validate(c, str(REPO / "schemas" / "config.schema.yaml"), set_default=True)
    return c


def test_structural_problems_are_caught_at_start_up(tmp_path) -> None:
    root = good_folder(tmp_path / "data")
    assert semantic_errors(full_config(root, top_k=3)) == []
    (root / "zebra").mkdir()
    errors = semantic_errors(full_config(root, top_k=3))
    assert len(errors) == 1 and errors[0].startswith("dataset.imagefolder.path: class folder(s) zebra")
    good_folder(root, n=2, classes=("zebra",))
    errors = semantic_errors(full_config(root, top_k=3))  # 2 zebras, test_fraction 0.2: no test zebra
    assert len(errors) == 1 and errors[0].startswith("dataset.imagefolder.test_fraction=0.2: class(es) zebra (2) would get no test images")


def test_top_k_beyond_the_image_folder_is_caught_at_start_up(tmp_path) -> None:
    root = good_folder(tmp_path / "data", n=10)  # 30 files; per class 2 test, 1 val, 7 train
    errors = semantic_errors(full_config(root, top_k=22, train_tiles=2))
    assert errors == ["influence.top_k=22 is larger than the training set (at most 21 images); lower influence.top_k"]
    assert semantic_errors(full_config(root, top_k=21, train_tiles=2)) == []


@pytest.mark.e2e
def test_workflow_reports_a_bad_folder_in_one_line(tmp_path) -> None:
    """Through snakemake: corrupt files pass the start-up check (names only), then prepare_data stops in one line."""
    root = good_folder(tmp_path / "data")
    (root / "zebra").mkdir()
    for i in range(4):
        (root / "zebra" / f"{i}.jpg").write_bytes(b"garbage")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"dataset:\n  source: imagefolder\n  image_size: 16\n  imagefolder:\n    path: {root}\n    test_fraction: 0.25\ninfluence: {{top_k: 3}}\n"
    )
    proc = run_snakemake(tmp_path / "run", "results/data/manifest.parquet", configfiles=[config], cores=1, check=False, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (
        "inflow error in rule prepare_data: dataset.imagefolder.path: class(es) zebra (0) have fewer than 2 readable images (4 unreadable file(s) skipped"
        in out
    )
    assert "Traceback" not in out and 'File "' not in text_of(tmp_path / "run/logs/prepare_data.log")
    assert not (tmp_path / "run/results/data/manifest.parquet").exists()


def text_of(path):
    return path.read_text() if path.exists() else ""
