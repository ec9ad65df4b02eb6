"""TracIn influence with the ghost dot-product, one (checkpoint, tile) shard at a time.

TracIn(z, z') = sum_c lr_c <g_c(z), g_c(z')> with g_c the hooked layer's weight gradient at
checkpoint c. For a Linear layer ``g = e a^T``, so ``<g, g'> = <a, a'> <e, e'>`` and a block of
influences is two small GEMMs and an elementwise product, never a per-sample gradient. With
several layers (factor blocks) the products are summed: :func:`ghost_sum`, the one function every
consumer of factor files uses.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from inflow.core.errors import InflowError
from inflow.core.io import npy_row_writer
from inflow.model.architectures import resolve_device
from inflow.tracin.factors import (
    Block,
    as_tensor,
    block_widths,
    check_factors_match,
    count_factor_rows,
    factor_meta,
    read_factor_blocks,
)

log = logging.getLogger(__name__)


def ghost_block(
    a_test: Tensor,
    e_test: Tensor,
    a_train: Tensor,
    e_train: Tensor,
    lr: float,
    out: Tensor | None = None,
    work: Tensor | None = None,
) -> Tensor:
    """``lr * (a_test a_train^T) * (e_test e_train^T)``.

    Args:
        a_test: ``(n_test, d_a)``; e_test: ``(n_test, d_out)``;
        a_train: ``(n_train, d_a)``; e_train: ``(n_train, d_out)``.
        out, work: optional contiguous ``(n_test, n_train)`` float32 buffers to reuse (the
            result goes to ``out``; ``work`` holds the e-product).

    Returns:
        ``(n_test, n_train)`` influence of each train sample on each test sample at one checkpoint.
    """
    block = torch.matmul(a_test, a_train.T, out=out) if out is not None else a_test @ a_train.T
    e_prod = torch.matmul(e_test * lr, e_train.T, out=work) if work is not None else (e_test * lr) @ e_train.T
    return block.mul_(e_prod)


def ghost_sum(
    test: Sequence[tuple[Tensor, Tensor]],
    train: Sequence[tuple[Tensor, Tensor]],
    lr: float,
    out: Tensor | None = None,
    work: Tensor | None = None,
    work2: Tensor | None = None,
) -> Tensor:
    """``sum_l lr * (A_l A'_l^T) * (E_l E'_l^T)`` over the factor blocks ``l`` of both sides.

    Args:
        test: blocks ``(a_l (n_test, d_a_l), e_l (n_test, d_out_l))``; train: the same blocks
            ``(n_train, .)``, in the same order.
        out, work, work2: optional contiguous ``(n_test, n_train)`` float32 buffers (the result
            goes to ``out``; ``work2`` is needed only for a second block).

    Returns:
        ``(n_test, n_train)`` influence at one checkpoint. With one block this is exactly
        :func:`ghost_block`.
    """
    if len(test) != len(train) or not test:
        raise ValueError(f"ghost_sum: {len(test)} test blocks vs {len(train)} train blocks")
    (a_q, e_q), (a_r, e_r) = test[0], train[0]
    total = ghost_block(a_q, e_q, a_r, e_r, lr, out=out, work=work)
    for (a_q, e_q), (a_r, e_r) in zip(test[1:], train[1:]):
        a_prod = torch.matmul(a_q, a_r.T, out=work) if work is not None else a_q @ a_r.T
        e_prod = torch.matmul(e_q * lr, e_r.T, out=work2) if work2 is not None else (e_q * lr) @ e_r.T
        total.addcmul_(a_prod, e_prod)
    return total


def block_tensors(
    blocks: Sequence[tuple[np.ndarray, np.ndarray]], device: torch.device, rows: slice = slice(None)
) -> list[tuple[Tensor, Tensor]]:
    """Factor blocks (NumPy, possibly read-only) as tensors on ``device``, rows ``rows`` only."""
    return [(as_tensor(a[rows]).to(device), as_tensor(e[rows]).to(device)) for a, e in blocks]


# Larger chunks are no faster (a (256, 13000, 257) GEMM runs at the roofline on 2 cores) and cost
# memory: at the seeds' scale 256 rows x 13,000 columns is 13 MB per buffer.
MAX_CHUNK_ROWS = 256


def rows_per_chunk(n_cols: int, memory_mb: float, buffers: int = 2) -> int:
    """Rows per chunk so that ``buffers`` float32 ``(rows, n_cols)`` temporaries fit in ``memory_mb`` (at most 1024)."""
    return max(1, min(MAX_CHUNK_ROWS, int(memory_mb * 2**20) // (4 * max(n_cols, 1) * buffers)))


def product_rows(n_cols: int, memory_mb: float, n_blocks: int) -> int:
    """Test rows per chunk of a tile's influence products, one rule for the shard and the fused path.

    A GEMM's rounding can depend on its row count, so both paths cut rows alike to give the same
    float32 products bit for bit. The budget counts the fused path's float32 ``(rows, n_cols)``
    buffers: the running total, the product and the e-product (which then hold ``reduce_tile``'s
    positive part and sign mask) (3), plus a second work buffer with several factor blocks (4).
    """
    return rows_per_chunk(n_cols, memory_mb, buffers=3 if n_blocks == 1 else 4)


def tile_bounds(n: int, n_tiles: int, index: int) -> tuple[int, int]:
    """``[start, stop)`` of tile ``index`` when ``n`` rows are cut into ``n_tiles`` near-equal tiles."""
    if not 0 <= index < n_tiles:
        raise ValueError(f"tile index {index} out of range for {n_tiles} tiles")
    base, extra = divmod(n, n_tiles)
    start = index * base + min(index, extra)
    return start, start + base + (index < extra)


def parse_tile(tile: str) -> tuple[int, int]:
    """``"q-r"`` -> (test tile q, train tile r)."""
    m = re.fullmatch(r"(\d+)-(\d+)", tile)
    if not m:
        raise ValueError(f"tile id {tile!r} is not of the form <test>-<train>")
    return int(m.group(1)), int(m.group(2))


def checked_tile(tile: str, n_test_tiles: int, n_train_tiles: int) -> tuple[int, int]:
    """``(q, r)`` of tile ``"q-r"``; a tile outside the configured ``n_test_tiles x n_train_tiles`` stops with one line."""
    q, r = parse_tile(tile)
    if not (q < n_test_tiles and r < n_train_tiles):
        raise InflowError(
            f"tile {tile}: outside the {n_test_tiles} x {n_train_tiles} tiles of influence.test_tiles x influence.train_tiles; rerun with the current config"
        )
    return q, r


def read_tile_sides(
    test_factors: str, train_factors: str, test_rows: tuple[int, int], train_rows: tuple[int, int]
) -> tuple[list[Block], list[Block], float, dict[str, Any]]:
    """One checkpoint's factor blocks of a tile, ``(test blocks, train blocks, tracin lr, train metadata)``,
    checked to be a test and a train file of the same checkpoint and method."""
    _, blocks_q, meta_q = read_factor_blocks(test_factors, rows=test_rows)
    _, blocks_r, meta_r = read_factor_blocks(train_factors, rows=train_rows)
    factor_meta(test_factors, meta_q, split="test")
    factor_meta(train_factors, meta_r, split="train")
    check_factors_match(test_factors, {**meta_q, **block_widths(blocks_q)}, train_factors, {**meta_r, **block_widths(blocks_r)})
    return blocks_q, blocks_r, float(meta_r["tracin_lr"]), meta_r


def influence_shard(
    test_factors: str,
    train_factors: str,
    tile: str,
    n_test_tiles: int,
    n_train_tiles: int,
    out_path: str,
    memory_mb: float = 1024,
    device_name: str = "cpu",
) -> dict[str, float]:
    """Write the dense ``(n_test_tile, n_train_tile)`` float32 influence block of one checkpoint.

    Returns seconds spent computing the products (``compute_s``) and writing (``write_s``).

    The block is computed and written in row chunks, so memory stays within ``memory_mb``
    whatever the tile size. On a GPU the chunks are computed there and copied back.
    """
    q, r = checked_tile(tile, n_test_tiles, n_train_tiles)
    q0, q1 = tile_bounds(count_factor_rows(test_factors), n_test_tiles, q)
    r0, r1 = tile_bounds(count_factor_rows(train_factors), n_train_tiles, r)
    blocks_q, blocks_r, lr, meta_r = read_tile_sides(test_factors, train_factors, (q0, q1), (r0, r1))
    device = resolve_device(device_name)
    train = block_tensors(blocks_r, device)
    chunk = product_rows(r1 - r0, memory_mb, len(blocks_r))
    log.info(
        "epoch %s tile %s: test rows %d:%d x train rows %d:%d, %d block(s), lr %g, %d rows per chunk on %s",
        meta_r.get("epoch"),
        tile,
        q0,
        q1,
        r0,
        r1,
        len(blocks_r),
        lr,
        chunk,
        device,
    )
    out = torch.empty(min(chunk, q1 - q0), r1 - r0, device=device)  # reused: no page faults per chunk
    work = torch.empty_like(out)
    work2 = torch.empty_like(out) if len(blocks_r) > 1 else None
    times = {"compute_s": 0.0, "write_s": 0.0}
    with npy_row_writer(out_path, (q1 - q0, r1 - r0)) as write:
        for c0 in range(0, q1 - q0, chunk):
            n = min(chunk, q1 - q0 - c0)
            t0 = time.perf_counter()
            test = block_tensors(blocks_q, device, slice(c0, c0 + n))
            block = ghost_sum(test, train, lr, out=out[:n], work=work[:n], work2=None if work2 is None else work2[:n]).cpu().numpy()
            t1 = time.perf_counter()
            write(block)
            times["compute_s"] += t1 - t0
            times["write_s"] += time.perf_counter() - t1
    width = sum(a.shape[1] + e.shape[1] for a, e in blocks_q)
    log.info(
        "products %.2fs (%.1f GFLOP/s), writing %.2fs",
        times["compute_s"],
        2e-9 * (q1 - q0) * (r1 - r0) * width / max(times["compute_s"], 1e-9),
        times["write_s"],
    )
    return times
