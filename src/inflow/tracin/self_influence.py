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
from inflow.tracin.factors import Block, check_same_samples, factor_meta, read_factor_blocks, read_factor_ids, read_factor_meta

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


def paired_terms(left: list[Block], right: list[Block], lr: float) -> np.ndarray:
    """``lr * sum_l <a_l, a'_l> <e_l, e'_l>`` per row of two factor views of the same samples, ``(n,)`` float64.

    With ``left`` the preconditioned factors ``H^-1 g`` and ``right`` the plain (or rotated) ones
    this is ``lr * g^T H^-1 g``, the preconditioned self-influence.
    """
    out = np.zeros(len(left[0][0]), dtype=np.float64)
    for (a_l, e_l), (a_r, e_r) in zip(left, right):
        out += np.einsum("ij,ij->i", a_l.astype(np.float64), a_r.astype(np.float64)) * np.einsum(
            "ij,ij->i", e_l.astype(np.float64), e_r.astype(np.float64)
        )
    return lr * out


def self_influence(
    train_factor_paths: list[str],
    out_path: str,
    rows_per_read: int = 65536,
    left_paths: list[str] | None = None,
    runs: list[str] | None = None,
) -> None:
    """Sum self-influence over checkpoints; write sample_id, self_influence and one column per epoch.

    ``left_paths`` (one per checkpoint, same order): preconditioned train factors; the
    self-influence is then ``g^T H^-1 g`` (:func:`paired_terms`) instead of ``|g|^2``.
    ``runs``: for an ensemble, the run of each block of files (the files are run by run, each
    run's checkpoints in epoch order); the columns are then ``<run>/epoch_<e>`` ("" for the main
    run) and the total sums every run. Factor files are read ``rows_per_read`` rows at a time, so
    memory holds the outputs, not the factors.
    """
    if not train_factor_paths:
        raise InflowError("self-influence: no train factor files; check train.checkpoint_epochs")
    if left_paths is not None and len(left_paths) != len(train_factor_paths):
        raise InflowError("self-influence: needs one preconditioned train factor file per checkpoint; check train.checkpoint_epochs")
    ids0 = check_same_samples(train_factor_paths)
    if left_paths is not None:
        for path in left_paths:
            if not np.array_equal(read_factor_ids(path), ids0):
                raise InflowError(f"{path}: lists other samples than {train_factor_paths[0]}; delete results/curvature and rerun")
    runs = [r for r in (runs or [""]) if r is not None]
    if len(train_factor_paths) % len(runs):
        raise InflowError(f"self-influence: {len(train_factor_paths)} train factor files cannot be split evenly into runs {runs}")
    per_run = len(train_factor_paths) // len(runs)
    columns: dict[str, np.ndarray] = {}
    for c, path in enumerate(train_factor_paths):
        meta = factor_meta(path, read_factor_meta(path), split="train")
        column = np.empty(len(ids0), dtype=np.float64)
        for start in range(0, len(ids0), rows_per_read):
            stop = min(start + rows_per_read, len(ids0))
            _, blocks, _ = read_factor_blocks(path, rows=(start, stop))
            if left_paths is None:
                column[start:stop] = self_influence_blocks(blocks, float(meta["tracin_lr"]))
            else:
                _, left, _ = read_factor_blocks(left_paths[c], rows=(start, stop))
                column[start:stop] = paired_terms(left, blocks, float(meta["tracin_lr"]))
        run = runs[c // per_run]
        name = f"{run}/epoch_{meta['epoch']}" if run else f"epoch_{meta['epoch']}"
        if name in columns:
            raise InflowError(
                f"{path}: holds the factors of {name} a second time; each checkpoint's train factors must appear once, rerun the factors rule"
            )
        columns[name] = column
    table = pd.DataFrame({"sample_id": ids0, "self_influence": np.sum(list(columns.values()), axis=0), **columns})
    log.info(
        "self-influence of %d training samples over %d checkpoints%s", len(table), len(columns), " (preconditioned)" if left_paths else ""
    )
    write_table(table, out_path)
