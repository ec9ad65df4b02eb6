"""The cleanlab baseline: label issues from out-of-sample predicted probabilities (K-fold).

cleanlab's ``find_label_issues`` (confident learning, Northcutt et al. 2021) needs, for every
training sample, class probabilities from a model that did not train on it. The training set is
cut into ``K`` folds, stratified by the given label and seeded; fold ``k``'s job trains the
workflow's model (same recipe and seed as ``train``) on the other folds and predicts fold ``k``
(:func:`train_fold_model`). :func:`cleanlab_issues` joins the folds and runs

* ``cleanlab.filter.find_label_issues(labels, pred_probs, return_indices_ranked_by="self_confidence")``:
  the samples cleanlab flags, most suspicious first;
* ``cleanlab.rank.get_label_quality_scores(labels, pred_probs)``: a score for every sample (low =
  likely wrong), whose ranking gives recall at 10% inspected and AUROC, as for the other signals.

cleanlab is optional (``pip install inflow[baselines]``); without it the result says so and
nothing fails. torch is imported only by the fold jobs (the cleanlab rule does not need it).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from inflow.core.errors import InflowError
from inflow.core.io import read_table, write_json, write_table
from inflow.mislabel.ranking import ranking_metrics

log = logging.getLogger(__name__)

NOT_INSTALLED = "cleanlab is not installed (pip install 'inflow[baselines]' or pip install cleanlab); no cleanlab figures"


def fold_assignment(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold of every sample, ``(n,)`` int64 in ``0..n_folds-1``, stratified by label.

    The samples of each class are shuffled with ``numpy.random.default_rng([seed, class])`` and
    dealt to the folds in turn, so fold sizes per class differ by at most one.
    """
    if n_folds < 2:
        raise InflowError(f"compare.cleanlab_folds={n_folds}: cross-validation needs at least 2 folds")
    folds = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[np.random.default_rng([seed, int(c)]).permutation(len(members))]
        folds[members] = np.arange(len(members)) % n_folds
    return folds


def predict_probabilities(model: Any, data: Any, batch_size: int, device: Any) -> np.ndarray:
    """Softmax class probabilities of ``model`` (eval mode) on a :class:`inflow.data.manifest.Split`, ``(n, C)`` float64."""
    import torch

    model.eval()
    parts = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x, _ = data.batch(slice(start, start + batch_size), device)
            parts.append(torch.softmax(model(x).double(), dim=1).cpu().numpy())
    return np.concatenate(parts)


def train_fold_model(
    images_path: str,
    manifest_path: str,
    fold: int,
    n_folds: int,
    model_cfg: dict[str, Any],
    train_cfg: dict[str, Any],
    seed: int,
    device_name: str,
    batch_size: int,
    manifest_out: str,
    model_out: str,
    metrics_out: str,
    probs_out: str,
) -> None:
    """Rule ``cleanlab_fold``: train on every fold but ``fold``; predict ``fold``'s training samples.

    Training is the workflow's own (:func:`inflow.train.loop.train`, same recipe and seed as the main
    model) on a manifest whose training split is the other folds (validation and test unchanged);
    the best model by validation loss (``model_out``, as ``predict`` uses) gives the held-out
    probabilities. ``probs_out``: sample_id, fold, label, ``p_0 .. p_{C-1}``.
    """
    from inflow.data.manifest import load_manifest, load_split
    from inflow.model.architectures import resolve_device
    from inflow.model.checkpoints import load_checkpoint
    from inflow.train.subset import train_on_subset

    manifest, class_names = load_manifest(manifest_path)
    train_rows = manifest[manifest.split == "train"]
    folds = fold_assignment(train_rows.label.to_numpy(), n_folds, seed)
    held = train_rows.sample_id.to_numpy()[folds == fold]
    if len(held) == 0:
        raise InflowError(f"compare.cleanlab_folds={n_folds}: fold {fold} holds no training sample; use fewer folds")
    train_on_subset(
        images_path,
        manifest_path,
        train_rows.sample_id.to_numpy()[folds != fold],
        model_cfg,
        train_cfg,
        seed,
        device_name,
        manifest_out,
        metrics_out,
        best_out=model_out,
    )
    device = resolve_device(device_name)
    data = load_split(images_path, manifest[manifest.sample_id.isin(held)], "train")
    probs = predict_probabilities(load_checkpoint(model_out, device, num_classes=len(class_names)), data, batch_size, device)
    table = pd.DataFrame(
        {"sample_id": data.sample_ids, "fold": fold, "label": data.labels, **{f"p_{c}": probs[:, c] for c in range(len(class_names))}}
    )
    write_table(table, probs_out, metadata={"n_folds": n_folds, "class_names": list(class_names)})
    log.info(
        "fold %d of %d: trained on %d, predicted %d held-out samples (accuracy on their given labels %.3f)",
        fold,
        n_folds,
        len(train_rows) - len(held),
        len(held),
        float((probs.argmax(1) == data.labels).mean()),
    )


def out_of_sample_probabilities(manifest: pd.DataFrame, probs_paths: list[str]) -> pd.DataFrame:
    """The fold tables joined in manifest order of the training samples; raises unless each appears once."""
    table = pd.concat([read_table(p) for p in probs_paths], ignore_index=True)
    train_ids = manifest.loc[manifest.split == "train", "sample_id"].to_numpy()
    if table.sample_id.duplicated().any() or not np.array_equal(np.sort(table.sample_id.to_numpy()), np.sort(train_ids)):
        raise InflowError(
            f"{probs_paths[0]}: the fold predictions do not cover every training sample exactly once; "
            "they come from another manifest or number of folds, delete results/methods/cleanlab and rerun"
        )
    return table.set_index("sample_id").loc[train_ids].reset_index()


def cleanlab_issues(manifest_path: str, probs_paths: list[str], json_out: str, issues_out: str) -> None:
    """Rule ``cleanlab``: cleanlab's label issues on the out-of-sample probabilities, and their metrics.

    Writes ``issues_out`` (sample_id, label, p_label, label_quality, flagged, issue_rank, flipped;
    quality NaN and nothing flagged without cleanlab) and ``json_out`` (``available``, ``n_flagged``,
    recall/precision of the flagged set, and ``metrics``: recall at 5/10/20% and AUROC of the
    ranking by label quality, when the true labels are known).
    """
    manifest = read_table(manifest_path)
    probs = out_of_sample_probabilities(manifest, probs_paths)
    p_cols = sorted((c for c in probs.columns if c.startswith("p_")), key=lambda c: int(c[2:]))
    pred_probs = probs[p_cols].to_numpy(dtype=np.float64)
    labels = probs.label.to_numpy(dtype=np.int64)
    truth = manifest.set_index("sample_id").loc[probs.sample_id, "flipped"]
    issues = pd.DataFrame(
        {
            "sample_id": probs.sample_id,
            "label": labels,
            "p_label": pred_probs[np.arange(len(labels)), labels],
            "label_quality": np.nan,
            "flagged": False,
            "issue_rank": pd.array([pd.NA] * len(labels), dtype="Int64"),
            "flipped": truth.to_numpy(),
        }
    )
    result: dict[str, Any] = {
        "n_train": int(len(labels)),
        "n_folds": len(probs_paths),
        "out_of_sample_accuracy": float((pred_probs.argmax(1) == labels).mean()),
    }
    try:
        import cleanlab
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        result.update(available=False, note=NOT_INSTALLED)
        log.warning("%s", NOT_INSTALLED)
    else:
        ranked = find_label_issues(labels, pred_probs, return_indices_ranked_by="self_confidence", n_jobs=1)
        issues["label_quality"] = get_label_quality_scores(labels, pred_probs)
        issues.loc[ranked, "flagged"] = True
        issues.loc[ranked, "issue_rank"] = np.arange(1, len(ranked) + 1)
        result.update(
            available=True,
            cleanlab_version=cleanlab.__version__,
            n_flagged=int(len(ranked)),
            note="find_label_issues(labels, pred_probs, return_indices_ranked_by='self_confidence'); ranking by get_label_quality_scores (self_confidence)",
        )
        if truth.notna().all():
            flipped = truth.to_numpy(dtype=bool)
            result["flagged_recall"] = float(issues.flagged[flipped].mean()) if flipped.any() else float("nan")
            result["flagged_precision"] = float(flipped[issues.flagged.to_numpy()].mean()) if len(ranked) else float("nan")
            result["metrics"] = ranking_metrics(-issues.label_quality.to_numpy(), flipped)
            log.info(
                "cleanlab flags %d of %d (recall %.3f, precision %.3f); ranking by label quality: recall@10%% %.3f, AUROC %.3f",
                len(ranked),
                len(labels),
                result["flagged_recall"],
                result["flagged_precision"],
                result["metrics"]["recall_at_10pct"],
                result["metrics"]["auroc"],
            )
    write_table(issues, issues_out)
    write_json(result, json_out)
