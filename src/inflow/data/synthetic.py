"""A procedurally drawn 10-class RGB image dataset, made offline and deterministically.

Each image shows one shape (the class) in a random colour, position, scale and rotation on a
random background, with clutter (random bars) and pixel noise. Colour carries no class
information, and several shape pairs (disk/ellipse, ring/frame, square/frame, disk/crescent) are close at
small scales, so a small CNN does well but not perfectly.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "disk",
    "square",
    "triangle",
    "plus",
    "ring",
    "ellipse",
    "frame",
    "crescent",
    "two_dots",
    "ell",
)


def _shape_masks(u: np.ndarray, v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Masks of every class shape in rotated, centred coordinates.

    Args:
        u, v: rotated pixel coordinates relative to the shape centre, ``(n, h, w)``.
        s: shape half-size in the same units, ``(n, 1, 1)``.

    Returns:
        Boolean masks ``(n_classes, n, h, w)``.
    """
    r = np.sqrt(u**2 + v**2)
    box = np.maximum(np.abs(u), np.abs(v))
    masks = [
        r < s,  # disk
        box < 0.85 * s,  # square
        (v < 0.6 * s) & (v > -0.9 * s + 1.7 * np.abs(u)),  # triangle
        ((np.abs(u) < 0.3 * s) & (np.abs(v) < s)) | ((np.abs(v) < 0.3 * s) & (np.abs(u) < s)),  # plus
        (r < s) & (r > 0.6 * s),  # ring
        (u / s) ** 2 + (v / (0.5 * s)) ** 2 < 1,  # ellipse
        (box < 0.9 * s) & (box > 0.6 * s),  # frame
        (r < s) & (np.sqrt((u - 0.45 * s) ** 2 + v**2) > 0.8 * s),  # crescent
        (np.sqrt((u - 0.55 * s) ** 2 + v**2) < 0.4 * s) | (np.sqrt((u + 0.55 * s) ** 2 + v**2) < 0.4 * s),  # two dots
        ((u > -0.7 * s) & (u < -0.25 * s) & (np.abs(v) < 0.8 * s)) | ((v > 0.35 * s) & (v < 0.8 * s) & (np.abs(u) < 0.7 * s)),  # L shape
    ]
    return np.stack(masks)


def make_images(labels: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one image per label.

    Args:
        labels: class indices ``(n,)`` in ``[0, 10)``.
        image_size: side length in pixels.
        rng: the random generator (all randomness comes from it).

    Returns:
        ``(n, image_size, image_size, 3)`` uint8 RGB images.
    """
    n, h = len(labels), image_size
    grid = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1  # pixel centres in [-1, 1]
    y, x = np.meshgrid(grid, grid, indexing="ij")
    x, y = x[None], y[None]

    def param(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, size=(n, 1, 1)).astype(np.float32)

    cx, cy, s, theta = param(-0.35, 0.35), param(-0.35, 0.35), param(0.35, 0.65), param(0, 2 * np.pi)
    dx, dy = x - cx, y - cy
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    shape = _shape_masks(u, v, s)[labels, np.arange(n)]  # (n, h, w)

    background = rng.uniform(0, 1, size=(n, 1, 1, 3)).astype(np.float32)
    # foreground differs from the background by at least 0.35 in some channel
    foreground = (background + rng.uniform(0.35, 0.65, size=(n, 1, 1, 3)) * rng.choice([-1, 1], size=(n, 1, 1, 3))) % 1.0
    img = np.where(shape[..., None], foreground, background)

    # clutter: up to three thin random bars in random colours, drawn under and over the shape
    for _ in range(3):
        bx, by, bl, bt = param(-1, 1), param(-1, 1), param(0.2, 0.6), param(0, np.pi)
        bu = np.cos(bt) * (x - bx) + np.sin(bt) * (y - by)
        bv = -np.sin(bt) * (x - bx) + np.cos(bt) * (y - by)
        bar = (np.abs(bu) < bl) & (np.abs(bv) < 0.04) & (rng.uniform(size=(n, 1, 1)) < 0.7)
        colour = rng.uniform(0, 1, size=(n, 1, 1, 3)).astype(np.float32)
        img = np.where(bar[..., None], colour, img)

    img = img + rng.normal(0, 0.08, size=img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def make_dataset(n: int, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A balanced dataset: ``(images (n, s, s, 3) uint8, labels (n,) int64)``, same for the same seed."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASS_NAMES)).astype(np.int64)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    chunk = 1024  # bounds the temporary (n_classes, chunk, s, s) mask array
    for start in range(0, n, chunk):
        images[start : start + chunk] = make_images(labels[start : start + chunk], image_size, rng)
    return images, labels
