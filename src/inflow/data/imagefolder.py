"""Reading a directory of class folders (the Animals-10 layout) into a uint8 image array.

Structural problems (no class folders, a class folder without images) stop with a one-line
:class:`~inflow.core.errors.InflowError`; single unreadable files (corrupt, truncated, not really
an image) are skipped and reported in a table.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from inflow.core.errors import InflowError
from inflow.core.progress import track

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _walk_files(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder`` (recursively, hidden folders skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted(found)


def scan_folder(root: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> tuple[pd.DataFrame, list[str]]:
    """List image files under ``root/<class>/``.

    Files whose extension is not in ``extensions`` (case-insensitive), hidden files and files
    directly in ``root`` are ignored, with a warning that counts them.

    Returns:
        ``(files, class_names)``: a table with columns ``path`` and ``label`` (index into the
        sorted class names) and the class names.

    Raises:
        InflowError: ``root`` is not a folder, has fewer than 2 class folders, or a class
        folder holds no file with an image extension.
    """
    root = Path(root)
    if not root.is_dir():
        raise InflowError(f"dataset.imagefolder.path: {root} is not a directory; point it at a folder of class folders")
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    class_dirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in exts]
    if len(class_dirs) < 2:
        hint = f" ({len(loose)} images lie directly in it: move them into one folder per class)" if loose else ""
        raise InflowError(
            f"dataset.imagefolder.path: {root} has {len(class_dirs)} class folder(s){hint}; need at least 2, one folder per class"
        )
    rows, empty, ignored = [], [], Counter()
    for label, d in enumerate(class_dirs):
        files = []
        for p in _walk_files(d):
            if p.suffix.lower() in exts:
                files.append(p)
            else:
                ignored[p.suffix.lower() or "(no extension)"] += 1
        if not files:
            empty.append(d.name)
        rows += [(str(p), label) for p in files]
    if empty:
        raise InflowError(
            f"dataset.imagefolder.path: class folder(s) {', '.join(empty)} in {root} hold no images "
            f"(extensions {', '.join(sorted(exts))}); remove them, add images, or extend dataset.imagefolder.extensions"
        )
    if loose:
        log.warning("ignored %d image(s) directly in %s: only images inside class folders are used", len(loose), root)
    if ignored:
        log.warning(
            "ignored %d file(s) without an image extension: %s",
            sum(ignored.values()),
            ", ".join(f"{ext} x{n}" for ext, n in sorted(ignored.items())),
        )
    return pd.DataFrame(rows, columns=["path", "label"]), [d.name for d in class_dirs]


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer or float single-channel images scaled into an 8-bit ``L`` image.

    Pillow's own conversion clips these to 0..255, which turns a 16-bit image white and a
    [0, 1] float image black.
    """
    arr = np.nan_to_num(np.asarray(im, dtype=np.float64))
    top = float(arr.max(initial=0.0))
    scale = 1.0 if (im.mode == "F" and top <= 1.0) else 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
    return Image.fromarray(np.clip(arr / scale * 255.0 + 0.5, 0, 255).astype(np.uint8))


def load_image(path: str | Path, image_size: int) -> np.ndarray:
    """Load one image as RGB, resize its shorter side to ``image_size`` and centre-crop.

    Grayscale (8 or 16 bit), palette, CMYK, LA and RGBA images are converted to RGB (alpha
    dropped); animated images use their first frame.

    Returns:
        ``(image_size, image_size, 3)`` uint8.
    """
    with Image.open(path) as im:
        if im.mode in ("I", "F") or im.mode.startswith("I;16"):
            im = _to_8bit(im)
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

    Unreadable files (corrupt, truncated, not an image despite the extension, unreadable
    permissions, decompression bombs) are skipped and returned in a separate table.

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
        except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types for a bad file; the reason is reported
            reason = str(exc).replace(str(path), "").replace("\n", " ").strip(" '\"") or "unreadable"
            skipped.append((path, f"{type(exc).__name__}: {reason}"))
    if skipped:
        log.warning("skipped %d unreadable image(s), e.g. %s (%s)", len(skipped), skipped[0][0], skipped[0][1])
    return images[ok], files[ok].reset_index(drop=True), pd.DataFrame(skipped, columns=["path", "reason"])
