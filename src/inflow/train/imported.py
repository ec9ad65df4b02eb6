"""Rule ``import_checkpoints``: a user's existing checkpoints in place of training.

Each listed state dict (the model's own layout, e.g. a torchvision ``resnet18`` saved with
``torch.save(model.state_dict(), path)``, or inflow's) is checked against ``model.arch`` and the
data's class count, then written as the workflow's checkpoint ``epoch_<i>`` (``i = 1..n`` in
list order) with a sidecar holding its learning rate, the TracIn weight
``sum_i lr_i <g_i(test), g_i(train)>``. The last one is also ``best.pt``, the model whose
predictions are analysed. Every file is checked before anything is written.
"""

from __future__ import annotations

import logging
from typing import Any

from inflow.core.errors import InflowError
from inflow.data.manifest import load_manifest
from inflow.model.architectures import build_model
from inflow.model.checkpoints import read_user_state, save_checkpoint

log = logging.getLogger(__name__)


def checkpoint_lrs(lr: float | list[float], n: int) -> list[float]:
    """The learning rate of each of ``n`` checkpoints: one rate for all, or one per checkpoint."""
    if isinstance(lr, list):
        if len(lr) != n:
            raise InflowError(f"checkpoints.lr: {len(lr)} learning rates for {n} checkpoints; give one per file, or one number for all")
        return [float(v) for v in lr]
    return [float(lr)] * n


def import_checkpoints(
    manifest_path: str,
    model_cfg: dict[str, Any],
    paths: list[str],
    lr: float | list[float],
    checkpoint_outs: list[str],
    sidecar_outs: list[str],
    best_out: str,
) -> None:
    """Check every file in ``paths`` fits ``model_cfg['arch']`` for the manifest's classes, then write them as checkpoints."""
    _, class_names = load_manifest(manifest_path)
    num_classes = len(class_names)
    lrs = checkpoint_lrs(lr, len(paths))
    arch = {"name": model_cfg["arch"], "num_classes": num_classes, "width": model_cfg["width"]}
    model = build_model(arch["name"], num_classes, width=arch["width"])
    for path in paths:  # all checked before anything is written
        read_user_state(path, model, arch["name"], num_classes, mmap=True)
    for epoch, (path, rate, out, side_out) in enumerate(zip(paths, lrs, checkpoint_outs, sidecar_outs), start=1):
        model.load_state_dict(read_user_state(path, model, arch["name"], num_classes))
        side = {
            "epoch": epoch,
            "lr": {"backbone": rate, "head": rate},
            "tracin_lr": rate,
            "hooked_layer": model.final_linear_name,
            "trained": True,
            "imported_from": str(path),
        }
        save_checkpoint(model, arch, out, side, side_out)
        log.info("checkpoint %d: %s (%s, %d classes), learning rate %g", epoch, path, arch["name"], num_classes, rate)
    save_checkpoint(model, arch, best_out)
