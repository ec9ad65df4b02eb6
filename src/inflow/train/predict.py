"""Rule ``predict``: predictions of the best model for every split, and the test mispredictions."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.nn import functional as F

from inflow.core.io import write_table
from inflow.data.manifest import Split, load_manifest, load_split
from inflow.model.architectures import Classifier, resolve_device
from inflow.model.checkpoints import load_checkpoint

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_probs(model: Classifier, data: Split, batch_size: int, device: torch.device) -> Tensor:
    """Softmax probabilities ``(n, C)`` float32 on CPU, model in eval mode."""
    model.eval()
    out = [F.softmax(model(data.batch(slice(s, s + batch_size), device)[0]), dim=1).cpu() for s in range(0, len(data), batch_size)]
    return torch.cat(out) if out else torch.empty(0, model.final_linear.out_features)


def prediction_table(probs: Tensor, data: Split, class_names: list[str]) -> pd.DataFrame:
    """Per sample: predicted class, confidence, top-3 classes and probabilities, plain CE loss."""
    names = np.asarray(class_names, dtype=object)
    k = min(3, probs.shape[1])
    top_p, top_c = probs.topk(k, dim=1)
    labels = torch.from_numpy(data.labels)
    p_label = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    return pd.DataFrame(
        {
            "sample_id": data.sample_ids,
            "label": data.labels,
            "pred": top_c[:, 0].numpy(),
            "pred_name": names[top_c[:, 0].numpy()],
            "confidence": top_p[:, 0].numpy(),
            "p_label": p_label.numpy(),
            "loss": (-torch.log(p_label.clamp_min(1e-12))).numpy(),
            "top3": [list(r) for r in names[top_c.numpy()]],
            "top3_prob": [list(r) for r in top_p.numpy()],
        }
    )


def predict(
    images_path: str,
    manifest_path: str,
    checkpoint_path: str,
    batch_size: int,
    device_name: str,
    predictions_out: str,
    false_predictions_out: str,
) -> None:
    """Predict train/val/test with the best model; write all predictions and the test errors."""
    device = resolve_device(device_name)
    manifest, class_names = load_manifest(manifest_path)
    model = load_checkpoint(checkpoint_path, device, num_classes=len(class_names))
    tables = []
    for split in ("train", "val", "test"):
        data = load_split(images_path, manifest, split)
        table = prediction_table(predict_probs(model, data, batch_size, device), data, class_names)
        table.insert(1, "split", split)
        tables.append(table)
        if len(table):
            log.info("%s accuracy %.4f on %d images", split, float((table.pred == table.label).mean()), len(table))
    preds = pd.concat(tables, ignore_index=True)
    write_table(preds, predictions_out)

    test = preds[(preds.split == "test") & (preds.pred != preds.label)].merge(manifest[["sample_id", "path", "label_name"]], on="sample_id")
    false = pd.DataFrame(
        {
            "sample_id": test.sample_id,
            "path": test.path,
            "true": test.label_name,
            "predicted": test.pred_name,
            "confidence": test.confidence.round(4),
            "top3": [" | ".join(f"{c}:{p:.3f}" for c, p in zip(cs, ps)) for cs, ps in zip(test.top3, test.top3_prob)],
        }
    ).sort_values("confidence", ascending=False)
    write_table(false, false_predictions_out)
