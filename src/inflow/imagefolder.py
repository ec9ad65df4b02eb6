"""Reading a directory of class folders (the Animals-10 layout) into a uint8 image array."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from inflow.errors import InflowError
from inflow.progress import track

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def scan_folder(root: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> tuple[pd.DataFrame, list[str]]:
    """List image files under ``root/<class>/``.

    Returns:
        ``(files, class_names)``: a table with columns ``path`` and ``label`` (index into the
        sorted class names) and the class names.
    """
    root = Path(root)
    if not root.is_dir():
        raise InflowError(f"dataset.imagefolder.path: {root} is not a directory; point it at a folder of class folders")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise InflowError(f"dataset.imagefolder.path: {root} has {len(class_dirs)} class folders; need at least 2 (one folder per class)")
    rows, empty = [], []
    for label, d in enumerate(class_dirs):
        files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in extensions)
        if not files:
            empty.append(d.name)
        rows += [(str(p), label) for p in files]
    if empty:
        raise InflowError(f"dataset.imagefolder.path: class folder(s) {', '.join(empty)} in {root} hold no images; remove them or add images")
    return pd.DataFrame(rows, columns=["path", "label"]), [d.name for d in class_dirs]


def load_image(path: str | Path, image_size: int) -> np.ndarray:
    """Load one image as RGB, resize its shorter side to ``image_size`` and centre-crop.

    Grayscale, palette, CMYK and RGBA images are converted to RGB.

    Returns:
        ``(image_size, image_size, 3)`` uint8.
    """
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = image_size / min(w, h)
        im = im.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - image_size) // 2, (h - image_size) // 2
        im = im.crop((left, top, left + image_size, top + image_size))
        return np.asarray(im, dtype=np.uint8)


def load_images(files: pd.DataFrame, image_size: int) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Load every file in ``files`` (columns path, label).

    Unreadable or corrupt files are skipped and returned in a separate table.

    Returns:
        ``(images (n_ok, s, s, 3) uint8, kept rows of files, skipped table (path, reason))``.
    """
    images = np.empty((len(files), image_size, image_size, 3), dtype=np.uint8)
    ok = np.zeros(len(files), dtype=bool)
    skipped = []
    for i, path in enumerate(track(files["path"], len(files), "loading images", log, unit="img")):
        try:
            images[i] = load_image(path, image_size)
            ok[i] = True
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            skipped.append((path, f"{type(exc).__name__}: {exc}"))
    if skipped:
        log.warning("skipped %d unreadable image(s); see the skipped-files table", len(skipped))
    return images[ok], files[ok].reset_index(drop=True), pd.DataFrame(skipped, columns=["path", "reason"])
