"""Rule ``factors``: per-sample gradient factors of the hooked final Linear layer.

For a Linear layer ``z = W a + b`` and a per-sample loss ``L(z)``, the gradient of ``L``
with respect to ``W`` is the outer product ``e a^T`` with ``e = dL/dz``; with respect to ``b``
it is ``e``. Appending a constant 1 to ``a`` makes ``e [a; 1]^T`` the gradient of ``[W b]``.
So the dot product of two samples' full layer gradients is ``<a, a'> <e, e'>`` (the ghost
dot-product), and storing ``a`` (d_in [+1]) and ``e`` (d_out) per sample is enough.

The loss is the training loss (class weights, label smoothing) of the one sample, not divided
by the batch size.

``factors.method`` picks what is stored; every method writes one or more *blocks* ``(a_l, e_l)``
per sample, and TracIn is ``sum_l <a_l, a_l'> <e_l, e_l'>`` (:func:`inflow.tracin.influence.ghost_sum`):

* ``last_layer``: one block, the head's final Linear (the default).
* ``head_layers``: one block per Linear layer of the head, the final one first. Each layer's
  gradient is ``e_l a_l^T`` with ``a_l`` its input and ``e_l`` the gradient of the loss with
  respect to its output, so the blocks together are the gradient of every head weight and bias.
* ``layers`` given (``factors.layers``): one block per named Linear layer anywhere in the model,
  in the listed order (:func:`named_layer_factors`); ``e_l`` is scaled by
  ``sqrt(lr_group / tracin_lr)`` so a backbone layer is weighted by the backbone's learning rate.
* ``projection``: one block, ``a`` = the per-sample gradient of every model parameter projected
  to ``factors.projection_dim`` dimensions (:mod:`inflow.tracin.projection`) and ``e = [1]``, so the
  ghost product is the plain dot product of the projections.
* ``all_layers``: one block, ``a`` = every Linear and Conv2d layer's per-sample gradient projected
  per layer to ``factors.projection_k_out x factors.projection_k_in`` from one forward and backward
  pass (:mod:`inflow.tracin.layer_projection`), the layers concatenated, and ``e = [1]``.

A file holds block 0 in columns ``a`` and ``e`` and block ``l >= 1`` in ``a_l`` and ``e_l``; its
metadata records the method (files without one are ``last_layer``).

Split ``fisher`` (:data:`FISHER_SPLIT`) is the training split with each label replaced by one
drawn from the model's own prediction, ``y ~ softmax(z)``: its ``e`` are the gradients whose
second moment is the true Fisher (the curvature preconditioners' ``influence.fisher: sampled``),
where the ``train`` file's ``e`` (given labels) give the empirical Fisher. ``a`` is the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from inflow.core.errors import InflowError
from inflow.core.io import atomic_path
from inflow.core.progress import track
from inflow.data.manifest import Split, load_manifest, load_split
from inflow.model.architectures import Classifier, resolve_device
from inflow.model.checkpoints import load_checkpoint, model_fingerprint, read_sidecar
from inflow.model.losses import inverse_frequency_weights, per_sample_loss

log = logging.getLogger(__name__)

Block = tuple[np.ndarray, np.ndarray]  # (a (n, d_a), e (n, d_out)) of one layer
METHODS = ("last_layer", "head_layers", "projection", "all_layers")
PROJECTED_METHODS = ("projection", "all_layers")  # one block (a = projected gradients, e = [1]); no named layers
DEFAULT_METHOD = "last_layer"
FISHER_SPLIT = "fisher"  # the train split with labels sampled from the model (true-Fisher curvature)


def objective_factors(
    model: Classifier, x: Tensor, y: Tensor, objective: Callable[[Tensor, Tensor], Tensor], include_bias: bool
) -> tuple[Tensor, Tensor]:
    """Factors of one batch for ``model.final_linear`` and any per-sample objective of the logits.

    Args:
        x: images ``(n, 3, h, w)``; y: labels ``(n,)``; objective: ``f(logits (n, C), y) -> (n,)``.

    Returns:
        ``a``: layer inputs ``(n, d_in)``, or ``(n, d_in + 1)`` with a trailing 1 if
        ``include_bias``; ``e``: ``df_i/dz_i`` ``(n, d_out)`` (computed in the model's dtype).
        Both float32, detached.
    """
    captured: list[Tensor] = []
    handle = model.final_linear.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach()))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    z = logits.detach().requires_grad_(True)
    with torch.enable_grad():
        (e,) = torch.autograd.grad(objective(z, y).sum(), z)  # rows are independent, so grad row i = df_i/dz_i
    a = captured[0].float()
    if include_bias:
        a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], dim=1)
    return a, e.float()


def layer_factors(
    model: Classifier, x: Tensor, y: Tensor, class_weights: Tensor | None, smoothing: float, include_bias: bool
) -> tuple[Tensor, Tensor]:
    """:func:`objective_factors` of the per-sample training loss (class weights, label smoothing), in float32: ``e = dL_i/dz_i``."""
    return objective_factors(model, x, y, lambda z, t: per_sample_loss(z.float(), t, class_weights, smoothing), include_bias)


def head_layer_factors(
    model: Classifier, x: Tensor, y: Tensor, class_weights: Tensor | None, smoothing: float, include_bias: bool
) -> list[tuple[Tensor, Tensor]]:
    """Factors of one batch for every Linear layer of ``model.head``, the final layer first.

    Args:
        x: images ``(n, 3, h, w)``; y: labels ``(n,)``.

    Returns:
        One ``(a_l (n, d_in_l [+1]), e_l (n, d_out_l))`` per Linear layer: ``a_l`` its input (with a
        trailing 1 if ``include_bias``), ``e_l = dL_i/dz_l`` for its output ``z_l``. Float32, detached
        (:func:`named_layer_factors` of :func:`head_layer_names`).
    """
    return named_layer_factors(model, x, y, head_layer_names(model), class_weights, smoothing, include_bias)


def head_layer_names(model: Classifier) -> list[str]:
    """Names of the head's Linear layers in block order (final first), e.g. ``["head.2", "head.0"]``."""
    return [name for name, _ in reversed(model.head_linears())]


def named_layer_factors(
    model: Classifier,
    x: Tensor,
    y: Tensor,
    names: list[str],
    class_weights: Tensor | None,
    smoothing: float,
    include_bias: bool,
) -> list[tuple[Tensor, Tensor]]:
    """Factors of one batch for the Linear modules ``names`` (as in ``model.named_modules()``), in that order.

    Forward hooks take each layer's input ``a_l (n, d_in)`` and make its output ``z_l`` a
    tensor that requires grad (the rest of the pass sees a copy, so in-place activations leave
    ``z_l`` intact); parameters are frozen during the pass, so autograd records only what lies
    after the first hooked layer. ``e_l = dL_i/dz_l`` from one backward pass of the
    summed per-sample loss (rows are independent).

    Returns:
        One ``(a_l (n, d_in [+1]), e_l (n, d_out))`` per name, float32, detached.

    Raises:
        InflowError: a name is not a Linear module, or its input is not ``(n, d_in)`` (a layer
        applied to several tokens per sample has no rank-one per-sample gradient).
    """
    modules = dict(model.named_modules())
    captured: dict[str, tuple[Tensor, Tensor]] = {}

    def hook(name: str) -> Callable:
        def capture(_module: torch.nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor:
            if inputs[0].ndim != 2:
                raise InflowError(
                    f"factors.layers: {name} sees inputs of shape {tuple(inputs[0].shape)}, not (n, d); name a layer applied once per sample, e.g. the classifier's"
                )
            if not out.requires_grad:
                out = out.detach().requires_grad_(True)
            captured[name] = (inputs[0].detach().float(), out)
            return out.clone()  # an in-place activation next (ReLU(inplace=True)) must not overwrite z_l

        return capture

    for name in names:
        if not isinstance(modules.get(name), torch.nn.Linear):
            raise InflowError(f"factors.layers: {name} is not a Linear layer of the model; name Linear modules as in model.named_modules()")
    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.enable_grad():
            loss = per_sample_loss(model(x).float(), y, class_weights, smoothing).sum()
            grads = torch.autograd.grad(loss, [captured[name][1] for name in names], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    blocks = []
    for name, g in zip(names, grads):
        a, out = captured[name]
        e = torch.zeros_like(out) if g is None else g
        if include_bias:
            a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], dim=1)
        blocks.append((a, e.detach().float()))
    return blocks


def layer_group(name: str) -> str:
    """The optimizer parameter group (``head`` or ``backbone``) of module ``name``."""
    return "head" if name.startswith("head.") else "backbone"


BatchFactors = Callable[[Tensor, Tensor], list[tuple[Tensor, Tensor]]]


def method_batch_factors(
    model: Classifier,
    method: dict[str, Any],
    class_weights: Tensor | None,
    smoothing: float,
    include_bias: bool,
    group_lrs: dict[str, float],
    tracin_lr: float,
) -> BatchFactors:
    """The function ``(x, y) -> blocks`` that computes one batch's factors for ``method``.

    ``method`` is ``{"method": name}`` plus ``projection_dim`` and ``projection_seed`` for
    ``projection``, ``projection_k_in``, ``projection_k_out`` and ``projection_seed`` for
    ``all_layers``; ``group_lrs`` and ``tracin_lr`` (from the sidecar) weight the projection's
    parameter groups.
    """
    name = method["method"]
    if method.get("layers") and name not in PROJECTED_METHODS:
        layers = list(method["layers"])
        scales = [math.sqrt(group_lrs.get(layer_group(n), tracin_lr) / tracin_lr) if tracin_lr > 0 else 1.0 for n in layers]

        def named(x: Tensor, y: Tensor) -> list[tuple[Tensor, Tensor]]:
            blocks = named_layer_factors(model, x, y, layers, class_weights, smoothing, include_bias)
            return [(a, e * scale) for (a, e), scale in zip(blocks, scales)]

        return named
    if name == "last_layer":
        return lambda x, y: [layer_factors(model, x, y, class_weights, smoothing, include_bias)]
    if name == "head_layers":
        return lambda x, y: head_layer_factors(model, x, y, class_weights, smoothing, include_bias)
    if name == "projection":
        from inflow.tracin.projection import group_scales, model_projector, projected_gradients

        projector = model_projector(model, method["projection_dim"], method["projection_seed"])
        scales = group_scales(list(projector.shapes), group_lrs, tracin_lr)

        def projected(x: Tensor, y: Tensor) -> list[tuple[Tensor, Tensor]]:
            p = projected_gradients(model, x, y, class_weights, smoothing, projector, scales)
            return [(p, torch.ones(len(p), 1, dtype=p.dtype, device=p.device))]

        return projected
    if name == "all_layers":
        from inflow.tracin.layer_projection import LayerProjector, all_layer_gradients, micro_batch_rows
        from inflow.tracin.projection import group_scales

        device = next(model.parameters()).device
        layer_projector = LayerProjector(model, method["projection_k_in"], method["projection_k_out"], method["projection_seed"], device)
        layer_scales = group_scales(layer_projector.names, group_lrs, tracin_lr)
        rows: dict[tuple[int, ...], int] = {}  # micro-batch size per image shape, measured once

        def all_layers(x: Tensor, y: Tensor) -> list[tuple[Tensor, Tensor]]:
            shape = tuple(x.shape[1:])
            if shape not in rows:
                rows[shape] = micro_batch_rows(model, x)
                log.info("all_layers: micro-batches of %d image(s) of shape %s", rows[shape], shape)
            p = all_layer_gradients(model, x, y, class_weights, smoothing, layer_projector, layer_scales, max_rows=rows[shape])
            return [(p, torch.ones(len(p), 1, dtype=p.dtype, device=p.device))]

        return all_layers
    raise InflowError(f"factors.method={name!r}: use one of {', '.join(METHODS)}")


def sampled_labels(batch_factors: BatchFactors, model: Classifier, seed: int) -> BatchFactors:
    """``batch_factors`` with each label replaced by ``y ~ Categorical(softmax(model(x)))``.

    The draws come from one CPU generator seeded with ``seed``, batch after batch, so a file is
    the same on every device and rerun.
    """
    generator = torch.Generator().manual_seed(seed)

    def sampled(x: Tensor, y: Tensor) -> list[tuple[Tensor, Tensor]]:
        with torch.no_grad():
            probs = torch.softmax(model(x).float(), dim=1).cpu()
        drawn = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(y.device)
        return batch_factors(x, drawn)

    return sampled


def compute_factors(batch_factors: BatchFactors, data: Split, batch_size: int, device: torch.device) -> list[Block]:
    """Factors for a whole split: one ``(a (n, d_a), e (n, d_out))`` float32 NumPy pair per block."""
    parts: list[list[tuple[np.ndarray, np.ndarray]]] = []
    batches = range(0, len(data), batch_size)
    for start in track(batches, len(batches), "factors", log, unit="batch"):
        x, y = data.batch(slice(start, start + batch_size), device)
        parts.append([(a.cpu().numpy(), e.cpu().numpy()) for a, e in batch_factors(x, y)])
    return [(np.concatenate([p[b][0] for p in parts]), np.concatenate([p[b][1] for p in parts])) for b in range(len(parts[0]))]


def block_columns(n_blocks: int) -> list[tuple[str, str]]:
    """Column names of each block: ``("a", "e")``, then ``("a_1", "e_1")``, ..."""
    return [("a", "e")] + [(f"a_{b}", f"e_{b}") for b in range(1, n_blocks)]


def _fixed_list(x: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x, dtype=np.float32).ravel()), x.shape[1])


def write_factor_blocks(path: str, sample_ids: np.ndarray, blocks: list[Block], metadata: dict[str, Any]) -> None:
    """Write factors as Parquet: ``sample_id`` int64 and every block's ``a``, ``e`` as float32 fixed-size lists."""
    columns: dict[str, Any] = {"sample_id": pa.array(sample_ids, type=pa.int64())}
    for (a_name, e_name), (a, e) in zip(block_columns(len(blocks)), blocks):
        columns[a_name], columns[e_name] = _fixed_list(a), _fixed_list(e)
    table = pa.table(columns).replace_schema_metadata({b"inflow": json.dumps(metadata).encode()})
    with atomic_path(path) as tmp:
        # Plain encoding, no compression: gradients do not compress (snappy saved 0.4%) and the
        # dictionary attempt slowed reads 5-40x once torch was loaded (benchmarks/influence_bench.py).
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE, compression="none", use_dictionary=False)


def write_factors(path: str, sample_ids: np.ndarray, a: np.ndarray, e: np.ndarray, metadata: dict[str, Any]) -> None:
    """Write a one-block factor file: ``sample_id`` int64, ``a`` and ``e`` as float32 fixed-size lists."""
    write_factor_blocks(path, sample_ids, [(a, e)], metadata)


ROW_GROUP_SIZE = 2048  # rows per Parquet row group: the granularity of partial reads (2.2 MB at 267 floats)


def _fixed_list_to_numpy(column: pa.ChunkedArray, path: str, name: str) -> np.ndarray:
    """A fixed-size-list float32 column as ``(rows, width)``: a view of the Arrow buffer when it is one chunk."""
    arr = column.combine_chunks()
    if not pa.types.is_fixed_size_list(arr.type) or not pa.types.is_float32(arr.type.value_type):
        raise InflowError(f"{path}: column {name!r} is {arr.type}, expected fixed_size_list<float32>; regenerate the factors")
    width = arr.type.list_size
    return arr.flatten().to_numpy(zero_copy_only=True).reshape(len(arr), width)  # flatten() honours slice offsets


def _open_factor_file(path: str) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise InflowError(f"{path}: factor file not found; rerun the factors rule") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise InflowError(f"{path}: not a readable factor Parquet file ({exc}); delete it and rerun") from None
    missing = {"sample_id", "a", "e"} - set(pf.schema_arrow.names)
    if missing:
        raise InflowError(f"{path}: factor file lacks column(s) {', '.join(sorted(missing))}; regenerate it")
    return pf


def _count_blocks(path: str, names: list[str]) -> int:
    """Blocks in a file with columns ``names``: ``a``/``e``, then ``a_1``/``e_1``, ... while present."""
    n = 1
    while f"a_{n}" in names or f"e_{n}" in names:
        if not {f"a_{n}", f"e_{n}"} <= set(names):
            raise InflowError(f"{path}: factor file has only one of a_{n}, e_{n}; regenerate it")
        n += 1
    return n


def count_factor_blocks(path: str) -> int:
    """Number of ``(a, e)`` blocks in a factor file, from its footer alone."""
    return _count_blocks(path, _open_factor_file(path).schema_arrow.names)


def count_factor_rows(path: str) -> int:
    """Number of samples in a factor file, from its footer alone."""
    return _open_factor_file(path).metadata.num_rows


def read_factor_ids(path: str) -> np.ndarray:
    """The ``sample_id`` column of a factor file, ``(n,)`` int64, without reading the factors."""
    return _open_factor_file(path).read(columns=["sample_id"]).column("sample_id").to_numpy()


def read_factor_meta(path: str) -> dict[str, Any]:
    """The metadata dict of a factor file (epoch, tracin_lr, split, ...), from its footer alone."""
    raw = (_open_factor_file(path).schema_arrow.metadata or {}).get(b"inflow", b"{}")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise InflowError(f"{path}: factor file metadata is not a JSON object; delete it and rerun the factors rule")
    return meta


def factor_method(meta: dict[str, Any]) -> str:
    """The method recorded in a factor file's metadata; files without one are last-layer factors."""
    return str(meta.get("method", DEFAULT_METHOD))


REREAD_HINT = "delete the file and rerun the factors rule (if it recurs, check those images and the checkpoint)"


def check_finite(path: str, ids: np.ndarray, blocks: list[Block], hint: str = REREAD_HINT, split: str | None = None) -> None:
    """Raise naming the sample ids (``ids (n,)``, at most 10 listed) whose factors hold NaN or Inf in any block.

    ``path`` is the file (or checkpoint) the factors belong to, ``hint`` what to do about it.
    """
    bad = np.zeros(len(ids), dtype=bool)
    for a, e in blocks:
        bad |= ~(np.isfinite(a).all(1) & np.isfinite(e).all(1))
    if bad.any():
        which = f"{split} sample(s)" if split else "sample(s)"
        raise InflowError(f"{path}: NaN/Inf factors for {int(bad.sum())} {which}, sample_id(s) {ids[bad][:10].tolist()}; {hint}")


def check_same_samples(paths: list[str]) -> np.ndarray:
    """The sample ids shared by every factor file in ``paths``, in file order.

    Raises if any file lists other samples, or the same ones in another order (factors made
    from another manifest), or holds factors of another method: their rows could not be added up.
    """
    ids0 = read_factor_ids(paths[0])
    method0 = factor_method(read_factor_meta(paths[0]))
    for path in paths[1:]:
        method = factor_method(read_factor_meta(path))
        if method != method0:
            raise InflowError(
                f"{path}: holds {method} factors but {paths[0]} holds {method0} factors; "
                "factors of two methods cannot be added up, delete the stale files and rerun the factors rule"
            )
        ids = read_factor_ids(path)
        if not np.array_equal(ids, ids0):
            what = f"{len(ids)} samples vs {len(ids0)}" if len(ids) != len(ids0) else "the same number of samples but other ids or order"
            raise InflowError(
                f"{path}: sample ids differ from {paths[0]} ({what}); the factor files come from different manifests, delete results/factors and rerun"
            )
    return ids0


def factor_meta(path: str, meta: dict[str, Any], split: str | None = None) -> dict[str, Any]:
    """Check the metadata of a factor file has what influence needs; return it.

    ``epoch`` and a finite ``tracin_lr`` >= 0 are required; with ``split``, a recorded split
    must equal it (catches a train file passed as the test file and vice versa).
    """
    missing = [k for k in ("epoch", "tracin_lr") if k not in meta]
    if missing:
        raise InflowError(
            f"{path}: factor file metadata lacks {', '.join(missing)}; it was not written by the factors rule, delete it and rerun"
        )
    lr = meta["tracin_lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not np.isfinite(lr) or lr < 0:
        raise InflowError(f"{path}: tracin_lr {lr!r} is not a finite learning rate >= 0; delete the file and rerun the factors rule")
    if split is not None and meta.get("split", split) != split:
        raise InflowError(
            f"{path}: holds factors of the {meta['split']} split where {split} factors are needed; check the inputs, rerun the factors rule"
        )
    return meta


def check_factors_match(test_path: str, test_meta: dict[str, Any], train_path: str, train_meta: dict[str, Any]) -> None:
    """Raise unless a test and a train factor file come from the same method, checkpoint and layers.

    Compares the method (and its projection settings), epoch, factor widths, the bias column,
    and (when recorded) the fingerprints of the checkpoint's weights and of the manifest.
    """
    methods = factor_method(test_meta), factor_method(train_meta)
    if methods[0] != methods[1]:
        raise InflowError(
            f"{test_path} and {train_path}: factors of two methods ({methods[0]} vs {methods[1]}); "
            "delete both and rerun the factors rule with one factors.method"
        )
    problems = []
    for key in (
        "projection_dim",
        "projection_seed",
        "projection_k_in",
        "projection_k_out",
        "layers",
        "epoch",
        "tracin_lr",
        "d_a",
        "d_out",
        "include_bias",
        "model",
        "manifest",
    ):
        if key in test_meta and key in train_meta and test_meta[key] != train_meta[key]:
            problems.append(f"{key} {test_meta[key]} vs {train_meta[key]}")
    if problems:
        raise InflowError(
            f"{test_path} and {train_path}: factors do not come from the same checkpoint ({'; '.join(problems)}); "
            "delete both and rerun the factors rule"
        )


def read_factor_blocks(path: str, rows: tuple[int, int] | None = None) -> tuple[np.ndarray, list[Block], dict[str, Any]]:
    """Read a factor file: ``(sample_ids (n,), blocks [(a (n, d_a), e (n, d_out)), ...], metadata)``.

    ``rows=(start, stop)`` reads only the row groups that hold those rows, so a tile's job reads
    and holds its tile, not the whole split. The file is read one row group at a time into
    arrays of exactly ``n`` rows, so the job's memory is the factors it asked for plus one row
    group, not a decoded copy of every group it touched. Raises :class:`InflowError` naming the
    sample ids if any factor is NaN or Inf, and if ``rows`` lie outside the file.
    """
    meta = read_factor_meta(path)
    pf = _open_factor_file(path)
    n_rows = pf.metadata.num_rows
    start, stop = (0, n_rows) if rows is None else rows
    if not 0 <= start <= stop <= n_rows:
        raise InflowError(
            f"{path}: rows {start}:{stop} asked for but the file has {n_rows}; the factor files do not match, rerun the factors rule"
        )
    names = block_columns(_count_blocks(path, pf.schema_arrow.names))
    ids = np.empty(stop - start, np.int64)
    out: dict[str, np.ndarray] = {}
    bounds = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
    for g in range(pf.num_row_groups):
        lo, hi = max(start, int(bounds[g])), min(stop, int(bounds[g + 1]))
        if lo >= hi:
            continue
        # One thread: Arrow's thread pool made these reads several times slower on a 2-core machine
        # (benchmarks/influence_bench.py), and decoding a few float columns gains little from threads.
        table = pf.read_row_group(g, use_threads=False).slice(lo - int(bounds[g]), hi - lo)
        rows_out = slice(lo - start, hi - start)
        ids[rows_out] = table.column("sample_id").to_numpy()
        for name in (name for pair in names for name in pair):
            part = _fixed_list_to_numpy(table.column(name), path, name)
            if name not in out:
                out[name] = np.empty((stop - start, part.shape[1]), np.float32)
            out[name][rows_out] = part
    for name in (name for pair in names for name in pair):  # no rows asked for: empty arrays of the file's widths
        if name not in out:
            field = pf.schema_arrow.field(name).type
            out[name] = np.empty((0, getattr(field, "list_size", 0)), np.float32)
    blocks = [(out[a], out[e]) for a, e in names]
    check_finite(path, ids, blocks)
    return ids, blocks, meta


def read_factors(path: str, rows: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a one-block factor file: ``(sample_ids (n,), a (n, d_a), e (n, d_out), metadata)``.

    See :func:`read_factor_blocks`; raises for a file of several blocks (``head_layers``), whose
    ``a`` and ``e`` alone are not its factors.
    """
    ids, blocks, meta = read_factor_blocks(path, rows)
    if len(blocks) != 1:
        raise InflowError(f"{path}: holds {len(blocks)} factor blocks ({factor_method(meta)}); read it with read_factor_blocks")
    ((a, e),) = blocks
    return ids, a, e, meta


def block_widths(blocks: list[Block]) -> dict[str, Any]:
    """``{"d_a": ..., "d_out": ...}`` of a file's blocks: numbers for one block, lists for several."""
    d_a, d_out = [a.shape[1] for a, _ in blocks], [e.shape[1] for _, e in blocks]
    return {"d_a": d_a[0], "d_out": d_out[0]} if len(blocks) == 1 else {"d_a": d_a, "d_out": d_out}


def as_tensor(array: np.ndarray) -> Tensor:
    """A tensor sharing memory with a (possibly read-only) factor array; callers must not write to it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": we never write to it
        return torch.from_numpy(array)


def method_metadata(model: Classifier, method: dict[str, Any], side: dict[str, Any]) -> dict[str, Any]:
    """What a factor file records about its method: name, layers (block order), projection settings."""
    name = method["method"]
    if method.get("layers") and name not in PROJECTED_METHODS:
        return {"method": name, "layer": method["layers"][0], "layers": list(method["layers"])}
    if name == "last_layer":
        return {"method": name, "layer": side.get("hooked_layer")}
    if name == "head_layers":
        return {"method": name, "layer": side.get("hooked_layer"), "layers": head_layer_names(model)}
    n_params = sum(p.numel() for p in model.parameters())
    if name == "all_layers":
        from inflow.tracin.layer_projection import covered_layers

        layers = covered_layers(model)
        k_in, k_out = method["projection_k_in"], method["projection_k_out"]
        covered = sum(p.numel() for _, m in layers for p in m.parameters(recurse=False))
        return {
            "method": name,
            "layer": f"{len(layers)} Linear/Conv2d layers ({covered} of {n_params} parameters), each projected to {k_out} x {k_in}",
            "layers": [n for n, _ in layers],
            "projection_k_in": k_in,
            "projection_k_out": k_out,
            "projection_seed": method["projection_seed"],
            "projection_matrix": "rademacher",
            "n_params": n_params,
            "n_covered_params": covered,
            "group_lr": side.get("lr"),
        }
    return {
        "method": name,
        "layer": f"{n_params} parameters projected to {method['projection_dim']}",
        "projection_dim": method["projection_dim"],
        "projection_seed": method["projection_seed"],
        "projection_matrix": "rademacher",
        "n_params": n_params,
        "group_lr": side.get("lr"),
    }


def extract_factors(
    images_path: str,
    manifest_path: str,
    checkpoint_path: str,
    sidecar_path: str,
    split: str,
    train_cfg: dict[str, Any],
    include_bias: bool,
    batch_size: int,
    device_name: str,
    out_path: str,
    method: dict[str, Any] | None = None,
) -> None:
    """Compute and write the factors of ``split`` (train, test or :data:`FISHER_SPLIT`) at one checkpoint.

    ``method`` is ``{"method": "last_layer" | "head_layers" | "projection" | "all_layers"}`` (plus
    ``projection_dim``, ``projection_seed``, ``projection_k_in``, ``projection_k_out``); None means ``last_layer``.
    """
    method = method or {"method": DEFAULT_METHOD}
    device = resolve_device(device_name)
    side = read_sidecar(sidecar_path)
    manifest, class_names = load_manifest(manifest_path)
    sampled = split == FISHER_SPLIT
    split = "train" if sampled else split
    data = load_split(images_path, manifest, split)
    if len(data) == 0:
        raise InflowError(f"{manifest_path}: the {split} split is empty; check the dataset settings and rerun prepare_data")
    train_labels = manifest.loc[manifest.split == "train", "label"].to_numpy()
    weights = inverse_frequency_weights(train_labels, len(class_names)).to(device) if train_cfg["class_weights"] else None
    model = load_checkpoint(checkpoint_path, device, num_classes=len(class_names))
    group_lrs = side["lr"] if isinstance(side["lr"], dict) else {}
    batch_factors = method_batch_factors(
        model, method, weights, train_cfg["label_smoothing"], include_bias, group_lrs, float(side["tracin_lr"])
    )
    if sampled:
        batch_factors = sampled_labels(batch_factors, model, int(side["epoch"]))
    blocks = compute_factors(batch_factors, data, batch_size, device)
    check_finite(
        str(checkpoint_path),
        data.sample_ids,
        blocks,
        "the checkpoint's weights or those images are broken, rerun train (lower train.lr_head/lr_backbone if it diverged)",
        split,
    )
    meta = {
        "epoch": side["epoch"],
        "tracin_lr": side["tracin_lr"],
        "split": split,
        "labels": "sampled" if sampled else "given",
        **method_metadata(model, method, side),
        "include_bias": include_bias,
        **block_widths(blocks),
        "checkpoint": str(checkpoint_path),
        "model": model_fingerprint(model),
        "manifest": manifest_fingerprint(manifest),
    }
    log.info(
        "split %s%s, epoch %s, method %s: %d samples, blocks %s, tracin lr %g",
        split,
        " (labels sampled from the model)" if sampled else "",
        side["epoch"],
        method["method"],
        len(data),
        [(a.shape[1], e.shape[1]) for a, e in blocks],
        side["tracin_lr"],
    )
    write_factor_blocks(out_path, data.sample_ids, blocks, meta)


def manifest_fingerprint(manifest: pd.DataFrame) -> str:
    """A short hash of the manifest's sample ids, splits and labels (what factors depend on)."""
    cols = manifest[["sample_id", "split", "label"]]
    return hashlib.sha256(pd.util.hash_pandas_object(cols, index=False).to_numpy().tobytes()).hexdigest()[:16]
