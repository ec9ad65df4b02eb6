"""The training loss: class-weighted cross-entropy with label smoothing.

The same per-sample loss is used for training (averaged) and for the TracIn factors
(per sample, not divided by the batch size).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F


def inverse_frequency_weights(labels: np.ndarray, num_classes: int) -> Tensor:
    """Class weights ``n / (C * count_c)`` (mean 1 over a balanced set), ``(num_classes,)`` float32.

    A class with no samples gets weight 0.
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.as_tensor(weights, dtype=torch.float32)


def per_sample_loss(logits: Tensor, labels: Tensor, class_weights: Tensor | None, label_smoothing: float) -> Tensor:
    """Per-sample training loss ``(n,)`` from ``logits (n, C)`` and ``labels (n,)``."""
    return F.cross_entropy(logits, labels, weight=class_weights, label_smoothing=label_smoothing, reduction="none")
