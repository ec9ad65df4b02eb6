"""Rule ``factors``: per-sample gradient factors of the hooked final Linear layer.

For a Linear layer ``z = W a + b`` and a per-sample loss ``L(z)``, the gradient of ``L``
with respect to ``W`` is the outer product ``e a^T`` with ``e = dL/dz``; with respect to ``b``
it is ``e``. Appending a constant 1 to ``a`` makes ``e [a; 1]^T`` the gradient of ``[W b]``.
So the dot product of two samples' full layer gradients is ``<a, a'> <e, e'>`` (the ghost
dot-product), and storing ``a`` (d_in [+1]) and ``e`` (d_out) per sample is enough.

The loss is the training loss (class weights, label smoothing) of the one sample, not divided
by the batch size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from inflow.checkpoints import load_checkpoint, model_fingerprint, read_sidecar
from inflow.data import Split, load_manifest, load_split
from inflow.errors import InflowError
from inflow.io import atomic_path
from inflow.losses import inverse_frequency_weights, per_sample_loss
from inflow.models import Classifier, resolve_device
from inflow.progress import track

log = logging.getLogger(__name__)


def layer_factors(model: Classifier, x: Tensor, y: Tensor, class_weights: Tensor | None, smoothing: float, include_bias: bool) -> tuple[Tensor, Tensor]:
    """Factors of one batch for ``model.final_linear``.

    Args:
        x: images ``(n, 3, h, w)``; y: labels ``(n,)``.

    Returns:
        ``a``: layer inputs ``(n, d_in)``, or ``(n, d_in + 1)`` with a trailing 1 if
        ``include_bias``; ``e``: ``dL_i/dz_i`` ``(n, d_out)``. Both float32, detached.
    """
    captured: list[Tensor] = []
    handle = model.final_linear.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach()))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    a = captured[0].float()
    z = logits.detach().float().requires_grad_(True)
    loss = per_sample_loss(z, y, class_weights, smoothing).sum()  # rows are independent, so grad row i = dL_i/dz_i
    (e,) = torch.autograd.grad(loss, z)
    if include_bias:
        a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], dim=1)
    return a, e


def compute_factors(model: Classifier, data: Split, class_weights: Tensor | None, smoothing: float, include_bias: bool, batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Factors for a whole split: ``a (n, d_a)`` and ``e (n, d_out)`` float32 NumPy arrays."""
    model.eval()
    a_parts, e_parts = [], []
    batches = range(0, len(data), batch_size)
    for start in track(batches, len(batches), "factors", log, unit="batch"):
        x, y = data.batch(slice(start, start + batch_size), device)
        a, e = layer_factors(model, x, y, class_weights, smoothing, include_bias)
        a_parts.append(a.cpu().numpy())
        e_parts.append(e.cpu().numpy())
    return np.concatenate(a_parts), np.concatenate(e_parts)


def write_factors(path: str, sample_ids: np.ndarray, a: np.ndarray, e: np.ndarray, metadata: dict[str, Any]) -> None:
    """Write factors as Parquet: ``sample_id`` int64, ``a`` and ``e`` as float32 fixed-size lists."""
    table = pa.table(
        {
            "sample_id": pa.array(sample_ids, type=pa.int64()),
            "a": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a, dtype=np.float32).ravel()), a.shape[1]),
            "e": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(e, dtype=np.float32).ravel()), e.shape[1]),
        }
    )
    table = table.replace_schema_metadata({b"inflow": json.dumps(metadata).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE)


ROW_GROUP_SIZE = 8192  # rows per Parquet row group: the granularity of partial reads


def _fixed_list_to_numpy(column: pa.ChunkedArray, path: str, name: str) -> np.ndarray:
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


def check_finite(path: str, ids: np.ndarray, a: np.ndarray, e: np.ndarray) -> None:
    """Raise naming the sample ids whose factors hold NaN or Inf (at most 10 listed)."""
    bad = ~(np.isfinite(a).all(1) & np.isfinite(e).all(1))
    if bad.any():
        raise InflowError(f"{path}: NaN/Inf factors for {int(bad.sum())} sample(s), sample_id(s) {ids[bad][:10].tolist()}; "
                          "delete the file and rerun the factors rule (if it recurs, check those images and the checkpoint)")


def check_same_samples(paths: list[str]) -> np.ndarray:
    """The sample ids shared by every factor file in ``paths``, in file order.

    Raises if any file lists other samples, or the same ones in another order (factors made
    from another manifest): their rows could not be added up.
    """
    ids0 = read_factor_ids(paths[0])
    for path in paths[1:]:
        ids = read_factor_ids(path)
        if not np.array_equal(ids, ids0):
            what = f"{len(ids)} samples vs {len(ids0)}" if len(ids) != len(ids0) else "the same number of samples but other ids or order"
            raise InflowError(f"{path}: sample ids differ from {paths[0]} ({what}); the factor files come from different manifests, delete results/factors and rerun")
    return ids0


def factor_meta(path: str, meta: dict[str, Any], split: str | None = None) -> dict[str, Any]:
    """Check the metadata of a factor file has what influence needs; return it.

    ``epoch`` and a finite ``tracin_lr`` >= 0 are required; with ``split``, a recorded split
    must equal it (catches a train file passed as the test file and vice versa).
    """
    missing = [k for k in ("epoch", "tracin_lr") if k not in meta]
    if missing:
        raise InflowError(f"{path}: factor file metadata lacks {', '.join(missing)}; it was not written by the factors rule, delete it and rerun")
    lr = meta["tracin_lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not np.isfinite(lr) or lr < 0:
        raise InflowError(f"{path}: tracin_lr {lr!r} is not a finite learning rate >= 0; delete the file and rerun the factors rule")
    if split is not None and meta.get("split", split) != split:
        raise InflowError(f"{path}: holds factors of the {meta['split']} split where {split} factors are needed; check the inputs, rerun the factors rule")
    return meta


def check_factors_match(test_path: str, test_meta: dict[str, Any], train_path: str, train_meta: dict[str, Any]) -> None:
    """Raise unless a test and a train factor file come from the same checkpoint and layer.

    Compares epoch, factor widths, the bias column, and (when recorded) the fingerprints of
    the checkpoint's weights and of the manifest.
    """
    problems = []
    for key in ("epoch", "tracin_lr", "d_a", "d_out", "include_bias", "model", "manifest"):
        if key in test_meta and key in train_meta and test_meta[key] != train_meta[key]:
            problems.append(f"{key} {test_meta[key]} vs {train_meta[key]}")
    if problems:
        raise InflowError(f"{test_path} and {train_path}: factors do not come from the same checkpoint ({'; '.join(problems)}); "
                          "delete both and rerun the factors rule")


def read_factors(path: str, rows: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a factor file: ``(sample_ids (n,), a (n, d_a), e (n, d_out), metadata)``.

    ``rows=(start, stop)`` reads only the row groups that hold those rows, so a tile's job reads
    and holds its tile, not the whole split. ``a`` and ``e`` are read-only views of the Arrow
    buffers (no copy) when the rows lie in one contiguous read. Raises :class:`InflowError`
    naming the sample ids if any factor is NaN or Inf, and if ``rows`` lie outside the file.
    """
    meta = read_factor_meta(path)
    pf = _open_factor_file(path)
    if rows is None:
        table, first = pf.read(), 0
    else:
        start, stop = rows
        if not 0 <= start <= stop <= pf.metadata.num_rows:
            raise InflowError(f"{path}: rows {start}:{stop} asked for but the file has {pf.metadata.num_rows}; the factor files do not match, rerun the factors rule")
        bounds = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        groups = [g for g in range(pf.num_row_groups) if bounds[g] < stop and bounds[g + 1] > start]
        first = int(bounds[groups[0]]) if groups else 0
        table = pf.read_row_groups(groups) if groups else pf.schema_arrow.empty_table()
        table = table.slice(start - first, stop - start)
    ids = table.column("sample_id").to_numpy()
    a, e = _fixed_list_to_numpy(table.column("a"), path, "a"), _fixed_list_to_numpy(table.column("e"), path, "e")
    check_finite(path, ids, a, e)
    return ids, a, e, meta


def as_tensor(array: np.ndarray) -> Tensor:
    """A tensor sharing memory with a (possibly read-only) factor array; callers must not write to it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": we never write to it
        return torch.from_numpy(array)


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
) -> None:
    """Compute and write the factors of ``split`` at one checkpoint."""
    device = resolve_device(device_name)
    side = read_sidecar(sidecar_path)
    manifest, class_names = load_manifest(manifest_path)
    data = load_split(images_path, manifest, split)
    if len(data) == 0:
        raise InflowError(f"{manifest_path}: the {split} split is empty; check the dataset settings and rerun prepare_data")
    train_labels = manifest.loc[manifest.split == "train", "label"].to_numpy()
    weights = inverse_frequency_weights(train_labels, len(class_names)).to(device) if train_cfg["class_weights"] else None
    model = load_checkpoint(checkpoint_path, device, num_classes=len(class_names))
    a, e = compute_factors(model, data, weights, train_cfg["label_smoothing"], include_bias, batch_size, device)
    bad = ~(np.isfinite(a).all(1) & np.isfinite(e).all(1))
    if bad.any():
        raise InflowError(f"{checkpoint_path}: NaN/Inf factors for {int(bad.sum())} {split} sample(s), sample_id(s) {data.sample_ids[bad][:10].tolist()}; "
                          "the checkpoint's weights or those images are broken, rerun train (lower train.lr_head/lr_backbone if it diverged)")
    meta = {"epoch": side["epoch"], "tracin_lr": side["tracin_lr"], "split": split, "layer": side.get("hooked_layer"),
            "include_bias": include_bias, "d_a": int(a.shape[1]), "d_out": int(e.shape[1]), "checkpoint": str(checkpoint_path),
            "model": model_fingerprint(model), "manifest": manifest_fingerprint(manifest)}
    log.info("split %s, epoch %s: %d samples, a %s, e %s, tracin lr %g", split, side["epoch"], len(a), a.shape, e.shape, side["tracin_lr"])
    write_factors(out_path, data.sample_ids, a, e, meta)


def manifest_fingerprint(manifest: pd.DataFrame) -> str:
    """A short hash of the manifest's sample ids, splits and labels (what factors depend on)."""
    cols = manifest[["sample_id", "split", "label"]]
    return hashlib.sha256(pd.util.hash_pandas_object(cols, index=False).to_numpy().tobytes()).hexdigest()[:16]
