"""Statistics shared by validation and replay: random training subsets, per-row Spearman, LDS, bootstrap CIs.

The linear datamodeling score (Ilyas et al. 2022; Park et al. 2023) of an attribution is

    LDS = mean over test samples z of Spearman_m(predicted_m(z), measured_m(z))

with ``predicted (n_test, M)`` the summed attribution of each subset's training samples and
``measured (n_test, M)`` each subset model's output (see :mod:`inflow.validation.lds`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from inflow.core.errors import InflowError


def subset_size(n: int, alpha: float) -> int:
    """Members of each subset: ``round(alpha * n)``; raises unless ``0 < size < n``."""
    k = round(alpha * n)
    if not 0 < k < n:
        raise InflowError(
            f"lds.alpha={alpha} gives subsets of {k} of the {n} training samples; use an alpha that keeps between 1 and {n - 1}"
        )
    return k


def subset_masks(n: int, n_models: int, alpha: float, seed: int) -> np.ndarray:
    """Random training subsets, ``(n_models, n)`` bool, each row with exactly ``round(alpha * n)`` True.

    Row ``m`` is drawn from ``numpy.random.default_rng([seed, m])``: deterministic, and the same
    for model ``m`` whatever ``n_models`` is (adding models keeps the existing ones).
    """
    k = subset_size(n, alpha)
    masks = np.zeros((n_models, n), dtype=bool)
    for m in range(n_models):  # one draw per model, not per sample
        masks[m, np.random.default_rng([seed, m]).permutation(n)[:k]] = True
    return masks


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks along each row of ``x (n, m)``, ties given their average rank; ``(n, m)`` float64."""
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("average_ranks: values must be finite")
    n, m = x.shape
    order = np.argsort(x, axis=1, kind="stable")
    s = np.take_along_axis(x, order, axis=1)
    pos = np.broadcast_to(np.arange(m), (n, m))
    starts = np.ones((n, m), dtype=bool)  # first position of each run of equal values
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    ends = np.ones((n, m), dtype=bool)  # last position of each run
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, m - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((n, m), dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=1)
    return ranks


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation of ``x[i]`` and ``y[i]`` for every row, ``(n,)`` float64.

    Args:
        x, y: ``(n, m)``, finite. Ties get average ranks (Pearson correlation of the ranks).

    Returns:
        ``(n,)``; NaN for a row where ``x`` or ``y`` is constant (the correlation is undefined).
    """
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"spearman_rows: x {x.shape} and y {y.shape} must be equal 2-D shapes")
    rx, ry = average_ranks(x), average_ranks(y)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    num = (rx * ry).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_ci(values: np.ndarray, n_bootstrap: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values (n,)`` (NaNs dropped), resampling entries.

    Deterministic for a given ``seed``; resamples are drawn in blocks of bounded memory.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_bootstrap, dtype=np.float64)
    block = max(1, 2**22 // len(v))
    for start in range(0, n_bootstrap, block):
        b = min(block, n_bootstrap - start)
        means[start : start + b] = v[rng.integers(0, len(v), size=(b, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def lds(scores: np.ndarray, outputs: np.ndarray) -> tuple[float, np.ndarray]:
    """Linear datamodeling score.

    Args:
        scores: ``(n_test, M)`` predicted: summed attribution of each subset's training samples.
        outputs: ``(n_test, M)`` measured: each subset model's output on each test sample.

    Returns:
        ``(LDS, per_test (n_test,))``: the mean over test samples of the per-sample Spearman
        correlation across the ``M`` models (NaN rows, where a row is constant, left out).
    """
    per_test = spearman_rows(scores, outputs)
    finite = np.isfinite(per_test)
    return (float(per_test[finite].mean()) if finite.any() else math.nan), per_test


def masks_from_table(subsets: pd.DataFrame, train_ids: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(models (M,), masks (M, n_train) bool)`` from a subsets table (model, sample_id), columns in ``train_ids`` order."""
    models = np.sort(subsets.model.unique())
    unknown = ~subsets.sample_id.isin(train_ids)
    if unknown.any():
        raise InflowError(
            f"{where}: subset sample ids {subsets.sample_id[unknown].head(10).tolist()} are not training samples of the factor files; "
            "the subsets come from another manifest, delete results/lds and rerun"
        )
    masks = np.zeros((len(models), len(train_ids)), dtype=bool)
    column = pd.Series(np.arange(len(train_ids)), index=train_ids)
    rows = np.searchsorted(models, subsets.model.to_numpy())
    masks[rows, column.loc[subsets.sample_id.to_numpy()].to_numpy()] = True
    return models, masks


def wide_matrix(
    table: pd.DataFrame,
    index_col: str,
    column_col: str,
    value: str,
    index: np.ndarray,
    columns: np.ndarray,
    where: str,
    pairs: str,
    hint: str,
) -> np.ndarray:
    """``table[value]`` pivoted to ``(len(index), len(columns))`` float64, rows ``index`` and columns ``columns``.

    Raises naming ``where``, the ``pairs`` (e.g. "(test sample, model)") and what to do (``hint``)
    when a cell is missing: scores and outputs of different runs must not be correlated.
    """
    wide = table.pivot(index=index_col, columns=column_col, values=value).reindex(index=index, columns=columns)
    if wide.isna().any().any():
        raise InflowError(f"{where}: {value} missing for some {pairs} pairs; {hint}")
    return wide.to_numpy(dtype=np.float64)
