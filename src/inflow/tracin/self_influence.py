"""Self-influence: TracIn(z, z) = sum_c lr_c sum_l |a_lc(z)|^2 |e_lc(z)|^2 for every training sample.

(``l`` runs over the factor blocks of the files: one for the last layer or a projection, one per
Linear layer for ``head_layers``.)

High self-influence means the sample's own gradient stayed large through training: the model
kept being pushed to fit it, which is what a wrong label does (Pruthi et al. 2020, sec. 4).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from inflow.core.errors import InflowError
from inflow.core.io import write_table
from inflow.tracin.factors import Block, check_same_samples, factor_meta, read_factor_blocks, read_factor_meta

log = logging.getLogger(__name__)


def self_influence_terms(a: np.ndarray, e: np.ndarray, lr: float, chunk: int = 65536) -> np.ndarray:
    """``lr * |a|^2 * |e|^2`` per row, ``(n,)`` float64, from ``a (n, d_a)`` and ``e (n, d_out)``.

    Squared norms are accumulated in float64, ``chunk`` rows at a time (bounded temporaries).
    """
    out = np.empty(len(a), dtype=np.float64)
    for s in range(0, len(a), chunk):
        a64, e64 = a[s : s + chunk].astype(np.float64), e[s : s + chunk].astype(np.float64)
        out[s : s + chunk] = lr * np.einsum("ij,ij->i", a64, a64) * np.einsum("ij,ij->i", e64, e64)
    return out


def self_influence_blocks(blocks: list[Block], lr: float) -> np.ndarray:
    """``lr * sum_l |a_l|^2 |e_l|^2`` per row, ``(n,)`` float64: the diagonal of :func:`inflow.tracin.influence.ghost_sum`."""
    return np.sum([self_influence_terms(a, e, lr) for a, e in blocks], axis=0)


def self_influence(train_factor_paths: list[str], out_path: str, rows_per_read: int = 65536) -> None:
    """Sum self-influence over checkpoints; write sample_id, self_influence and one column per epoch.

    Factor files are read ``rows_per_read`` rows at a time, so memory holds the outputs, not the factors.
    """
    if not train_factor_paths:
        raise InflowError("self-influence: no train factor files; check train.checkpoint_epochs")
    ids0 = check_same_samples(train_factor_paths)
    columns: dict[str, np.ndarray] = {}
    for path in train_factor_paths:
        meta = factor_meta(path, read_factor_meta(path), split="train")
        column = np.empty(len(ids0), dtype=np.float64)
        for start in range(0, len(ids0), rows_per_read):
            stop = min(start + rows_per_read, len(ids0))
            _, blocks, _ = read_factor_blocks(path, rows=(start, stop))
            column[start:stop] = self_influence_blocks(blocks, float(meta["tracin_lr"]))
        name = f"epoch_{meta['epoch']}"
        if name in columns:
            raise InflowError(
                f"{path}: holds the factors of {name} a second time; each checkpoint's train factors must appear once, rerun the factors rule"
            )
        columns[name] = column
    table = pd.DataFrame({"sample_id": ids0, "self_influence": np.sum(list(columns.values()), axis=0), **columns})
    log.info("self-influence of %d training samples over %d checkpoints", len(table), len(columns))
    write_table(table, out_path)
