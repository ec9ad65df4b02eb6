"""Linear datamodeling score (LDS): does summed TracIn predict what retraining does?

Ilyas et al. 2022 (datamodels) and Park et al. 2023 (TRAK) validate an attribution method by
training ``M`` models on random subsets ``S_1..S_M`` of the training set (each a fraction
``alpha`` of it) and asking, for every test sample ``z``, whether the attribution predicts the
retrained models' behaviour on ``z``:

    predicted_m(z) = sum over training samples i in S_m of  TracIn(z, i)        (n_test, M)
    measured_m(z)  = output of the model trained on S_m at z                     (n_test, M)
    LDS            = mean over test samples z of  Spearman_m(predicted_m(z), measured_m(z))

The output is ``neg_loss`` (minus the test sample's training loss: class weights and label
smoothing as in training, the very loss whose gradient TracIn uses) or ``margin`` (label logit
minus the largest other logit). Both have TracIn's sign: a proponent (positive influence) is a
training sample whose gradient step lowers the test loss, so including more proponents should
give a larger output. LDS is 1 for a perfect ranking of subsets, 0 for no relation.

``predicted`` needs no per-subset TracIn matrix: ``S = TracIn @ masks^T`` is formed from the
ghost products of the factor files in test-row chunks (:func:`summed_influence`).

The rule bodies are :func:`write_subsets`, :func:`train_subset_model`, :func:`subset_scores`
and :func:`write_lds`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from inflow.core.errors import InflowError
from inflow.core.figures import save_figure
from inflow.core.io import read_metadata, read_table, write_json, write_table
from inflow.core.stats import bootstrap_ci, lds, masks_from_table, subset_masks, wide_matrix
from inflow.data.manifest import Split, load_manifest, load_split
from inflow.model.architectures import Classifier, resolve_device
from inflow.model.checkpoints import load_checkpoint
from inflow.model.losses import inverse_frequency_weights, per_sample_loss
from inflow.tracin.factors import block_widths, check_factors_match, check_same_samples, factor_meta, factor_method, read_factor_blocks
from inflow.tracin.influence import block_tensors, ghost_sum, rows_per_chunk
from inflow.train.subset import train_on_subset

log = logging.getLogger(__name__)

METHOD_DESCRIPTIONS = {
    "last_layer": "ghost dot-product on the final Linear layer",
    "head_layers": "ghost dot-product on every Linear layer of the head, summed",
    "projection": "dot product of randomly projected per-sample gradients of all parameters",
    "all_layers": "dot product of per-layer projected gradients of every Linear and Conv2d layer",
}

OUTPUTS = {
    "neg_loss": "minus the test sample's training loss (class-weighted cross-entropy with label smoothing)",
    "margin": "label logit minus the largest other logit",
}


# ---------------------------------------------------------------------------------------------
# Math: subsets, per-row Spearman, bootstrap, LDS
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Summed TracIn of each subset, from the factor files
# ---------------------------------------------------------------------------------------------


def summed_influence(
    test: list[tuple[Tensor, Tensor]], train: list[tuple[Tensor, Tensor]], lr: float, masks: Tensor, chunk_rows: int
) -> Tensor:
    """One checkpoint's TracIn summed over each subset: ``(ghost sum) @ masks^T``.

    Args:
        test: factor blocks ``(a_l (n_test, d_a_l), e_l (n_test, d_out_l))``; train: the same
        blocks ``(n_train, .)``; masks: ``(M, n_train)`` 0/1 float32; lr: the checkpoint's TracIn
        learning rate; chunk_rows: test rows per dense ``(chunk_rows, n_train)`` block (float32,
        plus its float64 copy).

    Returns:
        ``(n_test, M)`` float64: ``sum_i masks[m, i] * lr * sum_l <a_lt, a_li> <e_lt, e_li>``.
    """
    n_test = len(test[0][0])
    out = torch.empty(n_test, len(masks), dtype=torch.float64, device=masks.device)
    masks_t = masks.T.double().contiguous()
    for start in range(0, n_test, chunk_rows):
        stop = min(start + chunk_rows, n_test)
        block = ghost_sum([(a[start:stop], e[start:stop]) for a, e in test], train, lr)  # (chunk, n_train)
        out[start:stop] = block.double() @ masks_t  # float64: subsets differ by a small part of their sums
    return out


def subset_scores(
    test_factor_paths: list[str],
    train_factor_paths: list[str],
    subsets_path: str,
    out_path: str,
    memory_mb: float = 1024,
    device_name: str = "cpu",
) -> None:
    """Rule ``lds_scores``: summed TracIn over every subset for every test sample.

    ``test_factor_paths[c]`` and ``train_factor_paths[c]`` are checkpoint ``c``'s factor files.
    Writes a long table (test_id, model, score) with the checkpoints' epochs and learning rates
    in its metadata.
    """
    if len(test_factor_paths) != len(train_factor_paths) or not train_factor_paths:
        raise InflowError("lds_scores: needs one test and one train factor file per checkpoint; check train.checkpoint_epochs")
    test_ids, train_ids = check_same_samples(test_factor_paths), check_same_samples(train_factor_paths)
    models, masks = masks_from_table(read_table(subsets_path), train_ids, subsets_path)
    device = resolve_device(device_name)
    masks_t = torch.from_numpy(masks).to(device=device, dtype=torch.float32)
    chunk = None
    total = torch.zeros(len(test_ids), len(models), dtype=torch.float64, device=device)
    epochs, lrs, layer, method = [], [], None, None
    for test_path, train_path in zip(test_factor_paths, train_factor_paths):
        _, blocks_q, meta_q = read_factor_blocks(test_path)
        _, blocks_r, meta_r = read_factor_blocks(train_path)
        factor_meta(test_path, meta_q, split="test")
        factor_meta(train_path, meta_r, split="train")
        check_factors_match(test_path, {**meta_q, **block_widths(blocks_q)}, train_path, {**meta_r, **block_widths(blocks_r)})
        lr = float(meta_r["tracin_lr"])
        chunk = chunk or rows_per_chunk(len(train_ids), memory_mb, buffers=4 + (len(blocks_r) > 1))  # float32 block, products, float64 copy
        total += summed_influence(block_tensors(blocks_q, device), block_tensors(blocks_r, device), lr, masks_t, chunk)
        epochs.append(meta_r["epoch"])
        lrs.append(lr)
        layer, method = meta_r.get("layer", layer), factor_method(meta_r)
        log.info(
            "epoch %s: %d test x %d train, %d subsets, %d factor block(s) (%s), lr %g",
            meta_r["epoch"],
            len(test_ids),
            len(train_ids),
            len(models),
            len(blocks_r),
            method,
            lr,
        )
    scores = total.cpu().numpy()
    table = pd.DataFrame({"test_id": np.repeat(test_ids, len(models)), "model": np.tile(models, len(test_ids)), "score": scores.ravel()})
    write_table(
        table, out_path, metadata={"epochs": epochs, "tracin_lr": lrs, "layer": layer, "method": method, "n_train": int(len(train_ids))}
    )


# ---------------------------------------------------------------------------------------------
# Subsets and subset models
# ---------------------------------------------------------------------------------------------


def write_subsets(manifest_path: str, n_models: int, alpha: float, seed: int, out_path: str) -> None:
    """Rule ``lds_subsets``: the training sample ids of every subset, a table (model, sample_id)."""
    manifest, _ = load_manifest(manifest_path)
    train_ids = manifest.loc[manifest.split == "train", "sample_id"].to_numpy(dtype=np.int64)
    masks = subset_masks(len(train_ids), n_models, alpha, seed)
    models, cols = np.nonzero(masks)
    table = pd.DataFrame({"model": models.astype(np.int64), "sample_id": train_ids[cols]})
    write_table(
        table,
        out_path,
        metadata={"n_models": n_models, "alpha": alpha, "seed": seed, "n_train": int(len(train_ids)), "subset_size": int(masks[0].sum())},
    )
    log.info("%d subsets of %d of the %d training samples (alpha %g, seed %d)", n_models, masks[0].sum(), len(train_ids), alpha, seed)


@torch.no_grad()
def measure_outputs(
    model: Classifier, data: Split, class_weights: Tensor | None, smoothing: float, batch_size: int, device: torch.device
) -> dict[str, np.ndarray]:
    """Per sample of ``data``: ``neg_loss``, ``margin`` ``(n,)`` float64 and ``correct`` ``(n,)`` bool."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"neg_loss": [], "margin": [], "correct": []}
    for start in range(0, len(data), batch_size):
        x, y = data.batch(slice(start, start + batch_size), device)
        logits = model(x).double()
        parts["neg_loss"].append(
            (-per_sample_loss(logits, y, None if class_weights is None else class_weights.double(), smoothing)).cpu().numpy()
        )
        own = logits.gather(1, y.view(-1, 1)).squeeze(1)
        other = logits.scatter(1, y.view(-1, 1), -math.inf).max(dim=1).values
        parts["margin"].append((own - other).cpu().numpy())
        parts["correct"].append((logits.argmax(1) == y).cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def train_subset_model(
    images_path: str,
    manifest_path: str,
    subsets_path: str,
    model_index: int,
    model_cfg: dict[str, Any],
    train_cfg: dict[str, Any],
    loss_cfg: dict[str, Any],
    seed: int,
    device_name: str,
    batch_size: int,
    manifest_out: str,
    checkpoint_out: str,
    sidecar_out: str,
    metrics_out: str,
    outputs_out: str,
) -> None:
    """Rule ``lds_train``: train on subset ``model_index`` and measure the final model on the test split.

    Training is the workflow's own (:func:`inflow.train.loop.train`, same recipe and seed as the
    main model, so the same initialisation) on a manifest whose training split is the subset.
    The model after the last epoch (or at early stopping) is kept (``checkpoint_out``); its
    outputs on every test sample go to ``outputs_out`` (model, test_id, neg_loss, margin,
    correct). ``neg_loss`` uses the full training set's class weights, as the TracIn factors do.
    """
    manifest, class_names = load_manifest(manifest_path)
    subsets = read_table(subsets_path)
    keep = subsets.loc[subsets.model == model_index, "sample_id"].to_numpy()
    if len(keep) == 0:
        raise InflowError(f"{subsets_path}: no subset for model {model_index}; rerun lds_subsets (lds.n_models)")
    train_on_subset(
        images_path,
        manifest_path,
        keep,
        model_cfg,
        train_cfg,
        seed,
        device_name,
        manifest_out,
        metrics_out,
        final_out=(checkpoint_out, sidecar_out),
    )

    device = resolve_device(device_name)
    test = load_split(images_path, manifest, "test")
    train_labels = manifest.loc[manifest.split == "train", "label"].to_numpy()
    weights = inverse_frequency_weights(train_labels, len(class_names)).to(device) if loss_cfg["class_weights"] else None
    model = load_checkpoint(checkpoint_out, device, num_classes=len(class_names))
    measured = measure_outputs(model, test, weights, loss_cfg["label_smoothing"], batch_size, device)
    table = pd.DataFrame({"model": model_index, "test_id": test.sample_ids, **measured})
    write_table(table, outputs_out)
    log.info(
        "model %d: %d training samples, test accuracy %.4f, mean test loss %.4f",
        model_index,
        len(keep),
        table.correct.mean(),
        -table.neg_loss.mean(),
    )


# ---------------------------------------------------------------------------------------------
# The score, its interval and the picture
# ---------------------------------------------------------------------------------------------


def lds_matrix(table: pd.DataFrame, value: str, test_ids: np.ndarray, models: np.ndarray, where: str) -> np.ndarray:
    """``table`` (test_id, model, value) as ``(len(test_ids), len(models))``; raises on a missing cell."""
    hint = "the LDS inputs come from different runs, rerun the lds rules"
    return wide_matrix(table, "test_id", "model", value, test_ids, models, where, "(test sample, model)", hint)


def write_lds(
    scores_path: str,
    outputs_paths: list[str],
    subsets_path: str,
    output: str,
    n_bootstrap: int,
    seed: int,
    scatter_samples: int,
    json_out: str,
    per_test_out: str,
    plot_out: str,
) -> None:
    """Rule ``lds``: LDS with a bootstrap 95% interval (``json_out``), per-test correlations, scatter plot.

    ``output`` (``neg_loss`` or ``margin``) is the headline measure; the JSON gives both.
    """
    if output not in OUTPUTS:
        raise InflowError(f"lds.output={output!r}: use one of {', '.join(OUTPUTS)}")
    scores_table = read_table(scores_path)
    measured = pd.concat([read_table(p) for p in outputs_paths], ignore_index=True)
    test_ids = np.sort(scores_table.test_id.unique())
    models = np.sort(scores_table.model.unique())
    if not np.array_equal(np.sort(measured.model.unique()), models):
        raise InflowError(
            f"{scores_path}: scores are for models {models.tolist()} but outputs for {np.sort(measured.model.unique()).tolist()}; rerun the lds rules"
        )
    scores = lds_matrix(scores_table, "score", test_ids, models, scores_path)
    per_test = pd.DataFrame({"test_id": test_ids})
    summary: dict[str, Any] = {}
    for name in OUTPUTS:
        value, rho = lds(scores, lds_matrix(measured, name, test_ids, models, "lds outputs"))
        lo, hi = bootstrap_ci(rho, n_bootstrap, 0.95, seed)
        per_test[f"spearman_{name}"] = rho
        summary[name] = {
            "lds": value,
            "ci95": [lo, hi],
            "n_test": int(np.isfinite(rho).sum()),
            "n_test_undefined": int((~np.isfinite(rho)).sum()),
            "description": OUTPUTS[name],
        }
    meta, sub_meta = read_metadata(scores_path), read_metadata(subsets_path)
    accuracy = measured.groupby("model").correct.mean()
    result = {
        "lds": summary[output]["lds"],
        "ci95": summary[output]["ci95"],
        "ci_method": f"percentile bootstrap over test samples, {n_bootstrap} resamples, seed {seed}",
        "output": output,
        "output_description": OUTPUTS[output] + "; larger means the model does better on the test sample, the sign of positive TracIn",
        "by_output": summary,
        "n_models": int(len(models)),
        "alpha": sub_meta.get("alpha"),
        "subset_size": sub_meta.get("subset_size"),
        "n_train": sub_meta.get("n_train"),
        "n_test": int(len(test_ids)),
        "method": f"TracIn, {METHOD_DESCRIPTIONS.get(meta.get('method') or 'last_layer', meta.get('method'))}"
        f" ({meta.get('layer')}), checkpoints at epochs {meta.get('epochs')} with learning rates {meta.get('tracin_lr')};"
        " prediction for a subset = sum of TracIn over its training samples",
        "factor_method": meta.get("method") or "last_layer",
        "subset_models_test_accuracy": {"mean": float(accuracy.mean()), "min": float(accuracy.min()), "max": float(accuracy.max())},
    }
    write_json(result, json_out)
    write_table(per_test, per_test_out)
    plot_lds(
        scores,
        lds_matrix(measured, output, test_ids, models, "lds outputs"),
        test_ids,
        per_test[f"spearman_{output}"].to_numpy(),
        result,
        scatter_samples,
        plot_out,
    )
    log.info(
        "LDS (%s) = %.4f, 95%% CI [%.4f, %.4f], %d models, %d test samples",
        output,
        result["lds"],
        *result["ci95"],
        len(models),
        len(test_ids),
    )


def scatter_rows(per_test: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` rows spread over the per-test correlations, highest first (NaN rows skipped)."""
    valid = np.flatnonzero(np.isfinite(per_test))
    ranked = valid[np.argsort(-per_test[valid], kind="stable")]
    if len(ranked) == 0 or k == 0:
        return np.array([], dtype=np.int64)
    return ranked[np.unique(np.round(np.linspace(0, len(ranked) - 1, min(k, len(ranked)))).astype(np.int64))]


def plot_lds(
    scores: np.ndarray, outputs: np.ndarray, test_ids: np.ndarray, per_test: np.ndarray, result: dict[str, Any], k: int, path: str
) -> None:
    """Histogram of per-test Spearman with the LDS and its interval, and ``k`` per-test scatter plots; PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = scatter_rows(per_test, k)
    fig = Figure(figsize=(3.2 * (len(rows) + 1), 3.4))
    axes = fig.subplots(1, len(rows) + 1, squeeze=False)[0]
    ax = axes[0]
    ax.hist(per_test[np.isfinite(per_test)], bins=30, range=(-1, 1), color="#607d8b")
    ax.axvline(result["lds"], color="#c62828", linewidth=2)
    ax.axvspan(*result["ci95"], color="#c62828", alpha=0.2)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("Spearman across subset models")
    ax.set_ylabel("test samples")
    ax.set_title(f"LDS {result['lds']:.3f} [{result['ci95'][0]:.3f}, {result['ci95'][1]:.3f}]", fontsize=10)
    top = float(np.abs(scores[rows]).max()) if len(rows) else 0.0
    power = int(math.floor(math.log10(top))) if top > 0 else 0
    for ax, row in zip(axes[1:], rows):
        ax.scatter(scores[row] / 10.0**power, outputs[row], s=14, color="#1565c0")
        ax.set_xlabel("summed TracIn of the subset" + (f" (x1e{power})" if power else ""))
        ax.set_ylabel(result["output"].replace("_", " "))
        ax.set_title(f"test {test_ids[row]}: rho {per_test[row]:.2f}", fontsize=10)
    fig.suptitle(f"LDS of TracIn: {result['n_models']} models on alpha={result['alpha']} subsets, output {result['output']}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
