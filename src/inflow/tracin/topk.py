"""Exact top-k proponents and opponents of the influence summed over checkpoints.

For one tile of test x train, the per-checkpoint dense shards are summed (so the tile holds
the exact total influence), and the k largest and k most negative entries of every test row
are kept. Merging the tiles of a test row is exact: the global top-k of a row is the top-k of
the union of every train tile's top-k. (Taking top-k per checkpoint first and summing, as
the seed scripts did, is not exact.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import Tensor

from inflow.core.errors import InflowError
from inflow.core.io import NpyRowReader, atomic_path, write_table
from inflow.model.architectures import resolve_device
from inflow.tracin.factors import as_tensor, check_same_samples, read_factor_ids, read_factor_meta
from inflow.tracin.influence import (
    block_tensors,
    checked_tile,
    ghost_sum,
    parse_tile,
    product_rows,
    read_tile_sides,
    rows_per_chunk,
    tile_bounds,
)

log = logging.getLogger(__name__)

KINDS = ("proponent", "opponent")


def open_shards(shard_paths: list[str]) -> list[NpyRowReader]:
    """Open the per-checkpoint shards of one tile for chunked reading; all must have the same shape."""
    if not shard_paths:
        raise InflowError("no influence shards to sum; check train.checkpoint_epochs")
    shards = [NpyRowReader(p) for p in shard_paths]
    for path, shard in zip(shard_paths, shards):
        if shard.shape != shards[0].shape:
            raise InflowError(f"{path}: shard shape {shard.shape} differs from {shards[0].shape}; rerun the influence shards")
    return shards


def sum_rows(shards: list[NpyRowReader], start: int, stop: int, total: np.ndarray, buffer: np.ndarray) -> Tensor:
    """Rows ``start:stop`` of the sum of ``shards`` in list (checkpoint) order, ``(stop-start, n_train_tile)`` float32.

    ``total`` and ``buffer`` are reused ``(rows, n_train_tile)`` float32 arrays; the result is a view of ``total``.
    """
    total = torch.from_numpy(shards[0].read(start, stop, out=total))
    for shard in shards[1:]:
        total += torch.from_numpy(shard.read(start, stop, out=buffer))
    return total


def row_topk(scores: Tensor, k: int) -> dict[str, tuple[Tensor, Tensor]]:
    """Per row, the ``k`` largest and ``k`` smallest entries of ``scores (n, m)``.

    Returns:
        ``{"proponent": (values (n, k'), columns (n, k')), "opponent": (...)}`` with
        ``k' = min(k, m)``, each sorted from strongest to weakest.
    """
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1, largest=True, sorted=True)
    bottom = scores.topk(k, dim=1, largest=False, sorted=True)
    return {"proponent": (top.values, top.indices), "opponent": (bottom.values, bottom.indices)}


def merge_topk(values: list[Tensor], ids: list[Tensor], k: int, largest: bool) -> tuple[Tensor, Tensor]:
    """Merge per-tile candidates ``values[j], ids[j]`` (each ``(n, k_j)``) into the top-``k``.

    Returns:
        ``(values (n, k'), ids (n, k'))``, strongest first, ``k' = min(k, sum_j k_j)``.
    """
    vals, idx = torch.cat(values, dim=1), torch.cat(ids, dim=1)
    best = vals.topk(min(k, vals.shape[1]), dim=1, largest=largest, sorted=True)
    return best.values, idx.gather(1, best.indices)


def check_top_k(k: int, n_train: int, train_factors: str) -> None:
    """Stop with one line when ``influence.top_k`` exceeds the ``n_train`` training samples of ``train_factors``."""
    if k > n_train:
        raise InflowError(
            f"influence.top_k={k} is larger than the training set ({n_train} samples in {train_factors}); lower influence.top_k"
        )


def tile_topk(
    shard_paths: list[str],
    train_factors: str,
    tile: str,
    n_train_tiles: int,
    k: int,
    out_path: str,
    memory_mb: float = 1024,
    device_name: str = "cpu",
    checkpoint_factors: list[str] | None = None,
) -> None:
    """Sum one tile's shards over checkpoints; save its row top-k (train sample ids), row sums and column sums.

    Rows are processed in chunks that fit ``memory_mb``. ``checkpoint_factors``, the test and
    train factor files of every checkpoint, are checked (when given) to list the same samples
    in the same order, so that the shards' rows and columns line up when summed. The ``.npz`` holds
    ``proponent_values/ids``, ``opponent_values/ids`` ``(n_test_tile, k')`` and
    ``positive_sum``, ``negative_sum``, ``n_positive`` ``(n_test_tile,)``: over the tile's training
    samples, the sums of the positive and of the negative influences and the count of positive
    ones; and the same over the tile's test samples for every column: ``train_ids``,
    ``train_positive_sum``, ``train_negative_sum``, ``train_n_positive`` ``(n_train_tile,)``.
    """
    _, r = parse_tile(tile)
    by_split: dict[str, list[str]] = {}
    for path in checkpoint_factors or []:
        if path != train_factors:
            by_split.setdefault(str(read_factor_meta(path).get("split")), []).append(path)
    by_split.setdefault("train", []).append(train_factors)
    for paths in by_split.values():
        check_same_samples(paths[-1:] + paths[:-1])  # against the last checkpoint's file, which defines the rows
    train_ids = read_factor_ids(train_factors)
    check_top_k(k, len(train_ids), train_factors)
    if r >= n_train_tiles:
        raise InflowError(f"tile {tile}: outside the {n_train_tiles} train tiles of influence.train_tiles; rerun with the current config")
    r0, r1 = tile_bounds(len(train_ids), n_train_tiles, r)
    shards = open_shards(shard_paths)
    n_rows, n_cols = shards[0].shape
    chunk = rows_per_chunk(n_cols, memory_mb, buffers=4)  # the sum, a shard's rows, reduce_tile's two buffers
    total, buffer = (np.empty((min(chunk, n_rows), n_cols), np.float32) for _ in range(2))
    device = resolve_device(device_name)
    # On the CPU a shard's read buffer is free once summed: it holds reduce_tile's positive part.
    scratch = (torch.from_numpy(buffer), torch.empty(len(buffer), n_cols)) if device.type == "cpu" else None
    if n_cols != r1 - r0:
        raise InflowError(
            f"{shard_paths[0]}: shard has {n_cols} train columns but tile {tile} of {train_factors} has {r1 - r0}; rerun the influence shards"
        )
    chunks = (sum_rows(shards, start, min(start + chunk, n_rows), total, buffer) for start in range(0, n_rows, chunk))
    arrays = reduce_tile(chunks, train_ids[r0:r1], k, device, tile, scratch=scratch)
    for shard in shards:
        shard.close()
    save_tile(arrays, out_path)


MAX_EXACT_COUNT = 2**24  # float32 holds every integer up to here: the widest tile whose positive counts are exact


def reduce_tile(
    chunks: Iterable[Tensor],
    train_ids: np.ndarray,
    k: int,
    device: torch.device,
    tile: str,
    scratch: tuple[Tensor, Tensor] | None = None,
) -> dict[str, np.ndarray]:
    """Row top-k, row sums and column sums of a tile's total influence, given as row chunks.

    ``chunks`` yields consecutive ``(rows, n_train_tile)`` float32 blocks of the tile's influence
    summed over checkpoints (test rows in order); ``train_ids`` ``(n_train_tile,)`` names the
    columns. Returns the arrays of a tile result (:data:`TILE_ARRAYS`, :data:`TRAIN_ARRAYS`):
    per test row the ``k`` strongest proponents and opponents (train ids) with their influence,
    the sums of its positive and negative influences and the count of positive ones; per train
    column the same sums over the tile's test rows.

    The sums are matrix-vector products with a vector of ones (``I 1`` and ``I^T 1``, float32
    accumulation inside the BLAS, one pass over memory each) of the chunk ``I``, its positive part
    ``max(I, 0)`` and its sign mask ``[I > 0]``, written into two ``(rows, n_train_tile)`` float32
    buffers reused by every chunk (``scratch`` when the caller has two free, else allocated once);
    the column sums are carried across chunks in float64. Counts are exact (integers below 2^24).
    """
    ids = as_tensor(train_ids)
    n_cols = len(train_ids)
    if n_cols > MAX_EXACT_COUNT:
        raise InflowError(f"tile {tile}: {n_cols} train samples in one tile (at most {MAX_EXACT_COUNT}); raise influence.train_tiles")
    parts: dict[str, list[np.ndarray]] = {}
    cols = {name: torch.zeros(n_cols, dtype=torch.float64, device=device) for name in ("net", "positive", "n_positive")}
    ones = torch.ones(n_cols, device=device)
    positive_part, is_positive = scratch if scratch is not None else (torch.empty(0, n_cols, device=device),) * 2
    start = 0
    for block in chunks:
        total = block.to(device)
        n = len(total)
        if len(positive_part) < n:  # first chunk (the largest): the buffers every chunk reuses
            positive_part, is_positive = torch.empty_like(total), torch.empty_like(total)
        pos, mask = torch.clamp(total, min=0, out=positive_part[:n]), torch.gt(total, 0, out=is_positive[:n])
        net = torch.mv(total, ones)
        if not torch.isfinite(net).all():  # a row with an Inf/NaN entry, or finite entries whose sum overflows
            rows = (start + torch.nonzero(~torch.isfinite(net)).flatten()[:10]).tolist()
            raise InflowError(
                f"tile {tile}: influence overflows float32 (Inf/NaN) in rows {rows} of the tile's test samples; "
                "the factors are finite but huge, check train.lr_head and the checkpoints, rerun train"
            )
        start += n
        for kind, (vals, idx) in row_topk(total, k).items():
            parts.setdefault(f"{kind}_values", []).append(vals.cpu().numpy())
            parts.setdefault(f"{kind}_ids", []).append(ids[idx.cpu()].numpy())
        positive = torch.mv(pos, ones)
        parts.setdefault("positive_sum", []).append(positive.double().cpu().numpy())
        parts.setdefault("negative_sum", []).append((net.double() - positive.double()).cpu().numpy())
        parts.setdefault("n_positive", []).append(torch.mv(mask, ones).long().cpu().numpy())
        row_ones = ones[:n] if n <= n_cols else torch.ones(n, device=device)
        for name, matrix in (("net", total), ("positive", pos), ("n_positive", mask)):
            cols[name] += torch.mv(matrix.T, row_ones)
    arrays = {name: np.concatenate(p) for name, p in parts.items()}
    arrays.update(
        train_ids=ids.numpy(),
        train_positive_sum=cols["positive"].cpu().numpy(),
        train_negative_sum=(cols["net"] - cols["positive"]).cpu().numpy(),
        train_n_positive=cols["n_positive"].long().cpu().numpy(),
    )
    return arrays


def save_tile(arrays: dict[str, np.ndarray], out_path: str) -> None:
    """Write a tile result (``.npz``) atomically."""
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def fused_tile_topk(
    test_factor_paths: list[str],
    train_factor_paths: list[str],
    tile: str,
    n_test_tiles: int,
    n_train_tiles: int,
    k: int,
    out_path: str,
    memory_mb: float = 1024,
    device_name: str = "cpu",
) -> None:
    """``influence.mode: fused``: one tile's influence summed over checkpoints in memory, reduced as it comes.

    ``test_factor_paths[i]`` and ``train_factor_paths[i]`` are the two sides of one checkpoint (of
    one run, for an ensemble). For each chunk of the tile's test rows the products of every
    checkpoint are added up, ``total = sum_c ghost_sum(test_c, train_c, lr_c)`` ``(rows,
    n_train_tile)``, in checkpoint order as :func:`tile_topk` sums the shards, and the chunk goes
    straight to :func:`reduce_tile`: no dense shard is written, and the result equals the shard
    path's. Memory: the tile's train factors of every checkpoint plus three (four with several blocks)
    ``(rows, n_train_tile)`` float32 buffers (the products' two work buffers serve the reduction),
    rows chosen to fit ``memory_mb``.
    """
    if len(test_factor_paths) != len(train_factor_paths) or not train_factor_paths:
        raise InflowError("influence: needs one test and one train factor file per checkpoint; check train.checkpoint_epochs")
    q, r = checked_tile(tile, n_test_tiles, n_train_tiles)
    test_ids, train_ids = check_same_samples(test_factor_paths), check_same_samples(train_factor_paths)
    check_top_k(k, len(train_ids), train_factor_paths[0])
    q0, q1 = tile_bounds(len(test_ids), n_test_tiles, q)
    r0, r1 = tile_bounds(len(train_ids), n_train_tiles, r)
    device = resolve_device(device_name)
    sides = []
    for test_path, train_path in zip(test_factor_paths, train_factor_paths):
        blocks_q, blocks_r, lr, _ = read_tile_sides(test_path, train_path, (q0, q1), (r0, r1))
        sides.append((blocks_q, block_tensors(blocks_r, device), lr))
    n_blocks = max(len(train) for _, train, _ in sides)
    chunk = product_rows(r1 - r0, memory_mb, n_blocks)  # as influence_shard cuts rows: the same products bit for bit
    log.info(
        "tile %s: test rows %d:%d x train rows %d:%d, %d checkpoint file pair(s) summed in memory, %d rows per chunk on %s",
        tile, q0, q1, r0, r1, len(sides), chunk, device,
    )  # fmt: skip
    rows = min(chunk, q1 - q0)
    total, out, work = (torch.empty(rows, r1 - r0, device=device) for _ in range(3))  # reused by every chunk
    work2 = torch.empty(rows, r1 - r0, device=device) if n_blocks > 1 else None

    def chunks() -> Iterator[Tensor]:
        for c0 in range(0, q1 - q0, chunk):
            n = min(chunk, q1 - q0 - c0)
            for i, (blocks_q, train, lr) in enumerate(sides):
                test = block_tensors(blocks_q, device, slice(c0, c0 + n))
                # The first checkpoint's products go straight into the total (as the shard path starts
                # from the first shard); later ones are added in checkpoint order.
                part = ghost_sum(
                    test, train, lr, out=(total if i == 0 else out)[:n], work=work[:n], work2=None if work2 is None else work2[:n]
                )
                if i:
                    total[:n] += part
            yield total[:n]

    save_tile(reduce_tile(chunks(), train_ids[r0:r1], k, device, tile, scratch=(out, work)), out_path)  # products done: free


TILE_ARRAYS = ("proponent_values", "proponent_ids", "opponent_values", "opponent_ids", "positive_sum", "negative_sum", "n_positive")
TRAIN_ARRAYS = ("train_ids", "train_positive_sum", "train_negative_sum", "train_n_positive")


def load_tile(path: str) -> dict[str, np.ndarray]:
    """The arrays of one ``tile_topk`` result, checked to be complete."""
    try:
        with np.load(path) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise InflowError(f"{path}: tile result not found; rerun the tile_topk rule") from None
    except Exception as exc:  # noqa: BLE001 - zipfile/numpy raise several types for a damaged .npz
        raise InflowError(f"{path}: not a readable tile result ({type(exc).__name__}); delete it and rerun tile_topk") from None
    missing = [name for name in TILE_ARRAYS + TRAIN_ARRAYS if name not in arrays]
    if missing:
        raise InflowError(f"{path}: tile result lacks {', '.join(missing)}; delete it and rerun tile_topk")
    return arrays


def topk_table(test_ids: np.ndarray, merged: dict[str, tuple[Tensor, Tensor]]) -> pd.DataFrame:
    """The long top-k table sorted by (test_id, kind, rank), built in that order without a sort.

    ``test_ids`` ``(n_test,)`` in factor-file order; ``merged[kind] = (values, train ids)``, each
    ``(n_test, k')`` in the same row order, strongest first. Returns one row per (test sample,
    kind, rank): test_id, kind, rank (1..k'), train_id, influence.
    """
    order = np.argsort(test_ids, kind="stable")
    kinds = sorted(merged)  # "opponent" before "proponent", as a sort by kind puts them
    values = np.concatenate([merged[kind][0].numpy()[order] for kind in kinds], axis=1)  # (n_test, len(kinds) * k')
    ids = np.concatenate([merged[kind][1].numpy()[order] for kind in kinds], axis=1)
    n, kk = len(order), merged[kinds[0]][0].shape[1]
    return pd.DataFrame(
        {
            "test_id": np.repeat(test_ids[order], len(kinds) * kk),
            # via Arrow: pandas converts 1M+ Python strings to its string dtype 6x more slowly
            "kind": pa.DictionaryArray.from_arrays(
                pa.array(np.tile(np.repeat(np.arange(len(kinds), dtype=np.int8), kk), n)), pa.array(kinds)
            )
            .cast(pa.string())
            .to_pandas(),
            "rank": np.tile(np.tile(np.arange(1, kk + 1), len(kinds)), n),
            "train_id": ids.ravel(),
            "influence": values.ravel(),
        }
    )


def accumulate_topk(
    tile_files: dict[tuple[int, int], str],
    test_factors: str,
    n_test_tiles: int,
    n_train_tiles: int,
    k: int,
    topk_out: str,
    summary_out: str,
    train_summary_out: str | None = None,
) -> None:
    """Merge every tile's candidates into the exact top-k per test sample and the per-test summary.

    Writes ``topk_out`` (test_id, kind, rank, train_id, influence) and ``summary_out`` (test_id,
    positive_sum, negative_sum, net_influence, n_positive), and when given ``train_summary_out``:
    the same sums per training sample over every test sample (train_id, positive_sum,
    negative_sum, net_influence, n_positive), i.e. the column sums of the influence matrix
    ``I (n_test, n_train)``: ``net_influence[j] = sum_i I[i, j]``, ``positive_sum[j] = sum_i max(I[i, j], 0)``.
    """
    test_ids = read_factor_ids(test_factors)
    merged: dict[str, list[tuple[Tensor, Tensor]]] = {kind: [] for kind in KINDS}
    summary_parts, train_parts = [], []
    for q in range(n_test_tiles):
        q0, q1 = tile_bounds(len(test_ids), n_test_tiles, q)
        tiles = [load_tile(tile_files[(q, r)]) for r in range(n_train_tiles)]
        if any(len(t["positive_sum"]) != q1 - q0 for t in tiles):
            raise InflowError(f"tile results of test tile {q} do not match {test_factors}; rerun the tile_topk rule")
        for kind in KINDS:
            merged[kind].append(
                merge_topk(
                    [torch.from_numpy(t[f"{kind}_values"]) for t in tiles],
                    [torch.from_numpy(t[f"{kind}_ids"]) for t in tiles],
                    k,
                    largest=(kind == "proponent"),
                )
            )
        pos = sum(t["positive_sum"] for t in tiles)
        neg = sum(t["negative_sum"] for t in tiles)
        summary_parts.append(
            pd.DataFrame(
                {
                    "test_id": test_ids[q0:q1],
                    "positive_sum": pos,
                    "negative_sum": neg,
                    "net_influence": pos + neg,
                    "n_positive": sum(t["n_positive"] for t in tiles),
                }
            )
        )
    for r in range(n_train_tiles):
        tiles = [load_tile(tile_files[(q, r)]) for q in range(n_test_tiles)]
        if any(not np.array_equal(t["train_ids"], tiles[0]["train_ids"]) for t in tiles):
            raise InflowError(f"tile results of train tile {r} list different training samples; rerun the tile_topk rule")
        pos = sum(t["train_positive_sum"] for t in tiles)
        neg = sum(t["train_negative_sum"] for t in tiles)
        train_parts.append(
            pd.DataFrame(
                {
                    "train_id": tiles[0]["train_ids"],
                    "positive_sum": pos,
                    "negative_sum": neg,
                    "net_influence": pos + neg,
                    "n_positive": sum(t["train_n_positive"] for t in tiles),
                }
            )
        )
    topk = topk_table(
        test_ids, {kind: (torch.cat([v for v, _ in parts]), torch.cat([i for _, i in parts])) for kind, parts in merged.items()}
    )
    summary = pd.concat(summary_parts, ignore_index=True)
    log.info(
        "top-%d for %d test samples; %.1f%% of test samples have positive net influence",
        k,
        len(summary),
        100 * float((summary.net_influence > 0).mean()),
    )
    write_table(topk, topk_out)
    write_table(summary, summary_out)
    if train_summary_out is not None:
        write_table(pd.concat(train_parts, ignore_index=True), train_summary_out)
