"""Tiled, per-checkpoint influence shards merged into the exact top-k of the dense summed matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import dense_tracin, run_tiled

from inflow.core.io import read_table
from inflow.tracin.influence import tile_bounds
from inflow.tracin.self_influence import self_influence
from inflow.tracin.topk import fused_tile_topk, load_tile, merge_topk, row_topk, topk_table


@pytest.mark.parametrize(
    "n_test_tiles,n_train_tiles,k,memory_mb",
    [(1, 1, 5, 1024), (2, 3, 5, 1024), (3, 4, 10, 1024), (1, 7, 20, 1024), (2, 2, 5, 0.0005)],  # last: 1-row chunks
)
def test_tiled_topk_equals_dense_topk(factor_files, tmp_path, n_test_tiles, n_train_tiles, k, memory_mb) -> None:
    paths, arrays, lrs = factor_files
    topk, summary = run_tiled(paths, lrs, tmp_path, n_test_tiles, n_train_tiles, k, memory_mb)
    dense = dense_tracin(arrays, lrs)  # (23, 57), float64, brute force
    train_ids, test_ids = arrays[(3, "train")][0], arrays[(3, "test")][0]
    for kind, sign in (("proponent", -1), ("opponent", 1)):
        order = np.argsort(sign * dense, axis=1, kind="stable")[:, :k]
        got = topk[topk.kind == kind].sort_values(["test_id", "rank"])
        np.testing.assert_array_equal(got.test_id.to_numpy().reshape(-1, k), np.repeat(test_ids[:, None], k, axis=1))
        np.testing.assert_array_equal(got.train_id.to_numpy().reshape(-1, k), train_ids[order])
        np.testing.assert_allclose(got.influence.to_numpy().reshape(-1, k), np.take_along_axis(dense, order, 1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(summary.positive_sum, np.where(dense > 0, dense, 0).sum(1), rtol=1e-5)
    np.testing.assert_allclose(summary.negative_sum, np.where(dense < 0, dense, 0).sum(1), rtol=1e-5)
    np.testing.assert_array_equal(summary.n_positive, (dense > 0).sum(1))
    train = read_table(tmp_path / "train_summary.parquet")  # column sums: every training sample over every test sample
    np.testing.assert_array_equal(train.train_id, arrays[(3, "train")][0])
    np.testing.assert_allclose(train.positive_sum, np.where(dense > 0, dense, 0).sum(0), rtol=1e-5)
    np.testing.assert_allclose(train.net_influence, dense.sum(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(train.n_positive, (dense > 0).sum(0))


def test_topk_of_per_checkpoint_topk_is_not_exact(factor_files) -> None:
    """The seeds' shortcut (top-k per checkpoint, then sum) disagrees with the dense top-k here."""
    _, arrays, lrs = factor_files
    k = 3
    dense = dense_tracin(arrays, lrs)
    exact = np.sort(np.argsort(-dense, axis=1)[:, :k], axis=1)
    approx = np.zeros_like(dense)
    for epoch, lr in lrs.items():
        block = dense_tracin({(epoch, s): arrays[(epoch, s)] for s in ("train", "test")}, {epoch: lr})
        cols = np.argsort(-block, axis=1)[:, :k]
        kept = np.zeros_like(block)
        np.put_along_axis(kept, cols, np.take_along_axis(block, cols, 1), axis=1)
        approx += kept  # scatter_add of each checkpoint's kept entries
    shortcut = np.sort(np.argsort(-approx, axis=1)[:, :k], axis=1)
    assert (shortcut != exact).any()


def test_merge_topk_handles_uneven_tiles() -> None:
    vals = [torch.tensor([[5.0, 1.0]]), torch.tensor([[4.0]]), torch.tensor([[9.0, 3.0]])]
    ids = [torch.tensor([[10, 11]]), torch.tensor([[20]]), torch.tensor([[30, 31]])]
    v, i = merge_topk(vals, ids, k=3, largest=True)
    assert v.tolist() == [[9.0, 5.0, 4.0]] and i.tolist() == [[30, 10, 20]]
    v, i = merge_topk(vals, ids, k=2, largest=False)
    assert v.tolist() == [[1.0, 3.0]] and i.tolist() == [[11, 31]]


def test_topk_table_is_the_long_table_sorted_by_test_id_kind_rank() -> None:
    """Built in order without a sort, it equals the long table pandas would sort (test ids not in file order)."""
    rng = np.random.default_rng(0)
    test_ids = rng.permutation(np.arange(100, 130))
    merged = {kind: (torch.randn(30, 4), torch.from_numpy(rng.integers(0, 1000, (30, 4)))) for kind in ("proponent", "opponent")}
    long = pd.concat(
        pd.DataFrame(
            {
                "test_id": np.repeat(test_ids, 4),
                "kind": kind,
                "rank": np.tile(np.arange(1, 5), 30),
                "train_id": ids.numpy().ravel(),
                "influence": vals.numpy().ravel(),
            }
        )
        for kind, (vals, ids) in merged.items()
    )
    expected = long.sort_values(["test_id", "kind", "rank"], kind="stable", ignore_index=True)
    pd.testing.assert_frame_equal(topk_table(test_ids, merged), expected)


def test_row_topk_clamps_k_to_width() -> None:
    out = row_topk(torch.tensor([[1.0, -2.0, 3.0]]), k=10)
    assert out["proponent"][1].tolist() == [[2, 0, 1]]
    assert out["opponent"][1].tolist() == [[1, 0, 2]]


@pytest.mark.parametrize("n,t", [(10, 3), (7, 7), (100, 1), (5, 2)])
def test_tile_bounds_cover_rows_once(n: int, t: int) -> None:
    spans = [tile_bounds(n, t, i) for i in range(t)]
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert max(s[1] - s[0] for s in spans) - min(s[1] - s[0] for s in spans) <= 1


def test_self_influence_is_the_dense_diagonal(factor_files, tmp_path) -> None:
    paths, arrays, lrs = factor_files
    out = tmp_path / "self.parquet"
    self_influence([paths[(e, "train")] for e in lrs], str(out))
    table = read_table(out)
    train_only = {(e, s): arrays[(e, "train")] for e in lrs for s in ("train", "test")}
    expected = np.diag(dense_tracin(train_only, lrs))
    np.testing.assert_array_equal(table.sample_id, arrays[(3, "train")][0])
    np.testing.assert_allclose(table.self_influence, expected, rtol=1e-6)
    assert {f"epoch_{e}" for e in lrs} <= set(table.columns)


@pytest.mark.parametrize("n_test_tiles,n_train_tiles,memory_mb", [(1, 1, 1024), (2, 3, 1024), (3, 2, 0.0005)])
def test_fused_tiles_equal_the_shard_path(factor_files, tmp_path, n_test_tiles, n_train_tiles, memory_mb) -> None:
    """influence.mode fused: every array of every tile result equals the shard path's, bit for bit."""
    paths, _, lrs = factor_files
    run_tiled(paths, lrs, tmp_path, n_test_tiles, n_train_tiles, 5, memory_mb)  # leaves tile_<q>-<r>.npz
    for q in range(n_test_tiles):
        for r in range(n_train_tiles):
            tile = f"{q}-{r}"
            fused = tmp_path / f"fused_{tile}.npz"
            test = [paths[(e, "test")] for e in lrs]
            train = [paths[(e, "train")] for e in lrs]
            fused_tile_topk(test, train, tile, n_test_tiles, n_train_tiles, 5, str(fused), memory_mb)
            want, got = load_tile(str(tmp_path / f"tile_{tile}.npz")), load_tile(str(fused))
            assert want.keys() == got.keys()
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{tile} {name}")
