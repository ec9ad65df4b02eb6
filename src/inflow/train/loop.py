"""Rule ``train``: two-stage fine-tuning with checkpoints for TracIn.

Stage 1 (``warmup_epochs``): the backbone is frozen (no gradients, BatchNorm statistics
fixed) and only the head trains, at ``lr_head_warmup`` (``lr_head`` when null). Stage 2:
everything trains, with separate backbone and head learning rates (``lr_backbone``, ``lr_head``). AdamW, class-weighted cross-entropy with label smoothing, ReduceLROnPlateau
on the validation loss, early stopping on the validation loss, best model by validation loss.

If early stopping ends training before a configured checkpoint epoch, that checkpoint is the
final model with learning rate 0 in its sidecar (``trained: false``): no training happened in
that interval, so it adds nothing to TracIn, which is exactly right.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from inflow.core.errors import InflowError
from inflow.core.io import write_table
from inflow.core.progress import track
from inflow.data.manifest import Split, load_manifest, load_split
from inflow.model.architectures import Classifier, build_model, resolve_device
from inflow.model.checkpoints import save_checkpoint
from inflow.model.losses import inverse_frequency_weights, per_sample_loss

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed torch and ask for deterministic kernels (exact reruns on CPU)."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def stage_lr_head(cfg: dict[str, Any], warmup: bool) -> float:
    """The head's learning rate in the warm-up (``lr_head_warmup``, or ``lr_head`` when null) or full-training stage."""
    return cfg["lr_head"] if not warmup or cfg.get("lr_head_warmup") is None else cfg["lr_head_warmup"]


def make_optimizer(model: Classifier, cfg: dict[str, Any]) -> torch.optim.AdamW:
    """AdamW with two parameter groups, ``backbone`` and ``head``, each with its own lr (the head's of the first epoch's stage)."""
    return torch.optim.AdamW(
        [
            {"params": list(model.backbone.parameters()), "lr": cfg["lr_backbone"], "name": "backbone"},
            {"params": list(model.head.parameters()), "lr": stage_lr_head(cfg, cfg.get("warmup_epochs", 0) > 0), "name": "head"},
        ],
        weight_decay=cfg["weight_decay"],
    )


def set_stage(model: Classifier, warmup: bool) -> None:
    """Freeze (warm-up) or unfreeze the backbone, and set train/eval modes to match."""
    model.train()
    for p in model.backbone.parameters():
        p.requires_grad_(not warmup)
    if warmup:
        model.backbone.eval()  # keep BatchNorm running statistics fixed while frozen


@torch.no_grad()
def evaluate(
    model: Classifier, data: Split, class_weights: torch.Tensor, smoothing: float, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """Mean training loss and accuracy of ``model`` on ``data``."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        x, y = data.batch(slice(start, start + batch_size), device)
        logits = model(x)
        loss_sum += per_sample_loss(logits, y, class_weights, smoothing).sum().item()
        correct += (logits.argmax(1) == y).sum().item()
    n = max(len(data), 1)
    return loss_sum / n, correct / n


def train_epoch(
    model: Classifier,
    data: Split,
    optimizer: torch.optim.Optimizer,
    class_weights: torch.Tensor,
    cfg: dict[str, Any],
    generator: torch.Generator,
    device: torch.device,
    epoch: int,
) -> tuple[float, float]:
    """One pass over ``data`` in a seeded random order; returns (mean loss, accuracy)."""
    order = torch.randperm(len(data), generator=generator).numpy()
    batches = range(0, len(data), cfg["batch_size"])
    loss_sum, correct = 0.0, 0
    for start in track(batches, len(batches), f"epoch {epoch}", log, unit="batch", every=0.25):
        idx = np.sort(order[start : start + cfg["batch_size"]])
        x, y = data.batch(idx, device)
        if cfg["augment"]:
            flip = (torch.rand(len(idx), generator=generator) < 0.5).to(device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        logits = model(x)
        losses = per_sample_loss(logits, y, class_weights, cfg["label_smoothing"])
        loss = losses.mean()
        if not torch.isfinite(loss):
            bad = data.sample_ids[idx[~torch.isfinite(losses).cpu().numpy()]]
            raise InflowError(
                f"train: loss is NaN/Inf at epoch {epoch} for {len(bad)} sample(s) of the batch, sample_id(s) {bad[:10].tolist()}; "
                "lower train.lr_head/train.lr_backbone (training diverged) or check those images"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += losses.sum().item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / len(data), correct / len(data)


def train(
    images_path: str,
    manifest_path: str,
    model_cfg: dict[str, Any],
    train_cfg: dict[str, Any],
    seed: int,
    device_name: str,
    checkpoint_paths: list[str],
    sidecar_paths: list[str],
    best_path: str,
    metrics_path: str,
) -> None:
    """Train the configured model, writing checkpoints at ``train_cfg['checkpoint_epochs']``.

    ``checkpoint_paths[i]`` / ``sidecar_paths[i]`` belong to the i-th checkpoint epoch.
    """
    device = resolve_device(device_name)
    seed_everything(seed)
    manifest, class_names = load_manifest(manifest_path)
    train_set = load_split(images_path, manifest, "train")
    val_set = load_split(images_path, manifest, "val")
    if len(val_set) == 0:
        val_set = train_set
        log.warning("no validation split (dataset.val_fraction is 0): monitoring the training set instead")
    num_classes = len(class_names)
    arch = {"name": model_cfg["arch"], "num_classes": num_classes, "width": model_cfg["width"]}
    model = build_model(arch["name"], num_classes, width=arch["width"], pretrained_weights=model_cfg.get("pretrained_weights")).to(device)
    class_weights = (
        inverse_frequency_weights(train_set.labels, num_classes) if train_cfg["class_weights"] else torch.ones(num_classes)
    ).to(device)
    optimizer = make_optimizer(model, train_cfg)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=train_cfg["plateau_factor"], patience=train_cfg["plateau_patience"]
    )
    generator = torch.Generator().manual_seed(seed)
    ckpt_at = {e: (p, s) for e, p, s in zip(train_cfg["checkpoint_epochs"], checkpoint_paths, sidecar_paths)}
    hooked = model.final_linear_name
    log.info(
        "training %s (%d parameters) on %d images, validating on %d, device %s",
        arch["name"],
        sum(p.numel() for p in model.parameters()),
        len(train_set),
        len(val_set),
        device,
    )

    rows, best_loss, since_best, stopped_at = [], math.inf, 0, None
    for epoch in range(1, train_cfg["epochs"] + 1):
        warmup = epoch <= train_cfg["warmup_epochs"]
        if epoch == train_cfg["warmup_epochs"] + 1 and epoch > 1:  # full training starts: the head's own rate for this stage
            for group in optimizer.param_groups:
                if group["name"] == "head":
                    group["lr"] = stage_lr_head(train_cfg, warmup=False)
        set_stage(model, warmup)
        lrs = {g["name"]: (0.0 if warmup and g["name"] == "backbone" else g["lr"]) for g in optimizer.param_groups}
        t0 = time.perf_counter()
        train_loss, train_acc = train_epoch(model, train_set, optimizer, class_weights, train_cfg, generator, device, epoch)
        val_loss, val_acc = evaluate(model, val_set, class_weights, train_cfg["label_smoothing"], train_cfg["batch_size"] * 2, device)
        row = {
            "epoch": epoch,
            "stage": "warmup" if warmup else "full",
            **{f"lr_{k}": v for k, v in lrs.items()},
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "checkpoint": epoch in ckpt_at,
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        log.info(
            "epoch %d (%s): train loss %.4f acc %.3f | val loss %.4f acc %.3f | lr %s",
            epoch,
            row["stage"],
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            lrs,
        )
        if epoch in ckpt_at:
            side = {
                "epoch": epoch,
                "lr": lrs,
                "tracin_lr": lrs["head"],
                "hooked_layer": hooked,
                "trained": True,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "stage": row["stage"],
            }
            save_checkpoint(model, arch, ckpt_at[epoch][0], side, ckpt_at[epoch][1])
        if val_loss < best_loss:
            best_loss, since_best = val_loss, 0
            save_checkpoint(model, arch, best_path)
        else:
            since_best += 1
        if not warmup:
            plateau.step(val_loss)
            if since_best >= train_cfg["early_stopping_patience"]:
                stopped_at = epoch
                log.info("early stopping at epoch %d: no val-loss improvement for %d epochs", epoch, since_best)
                break

    for epoch, (path, side_path) in ckpt_at.items():
        if stopped_at is not None and epoch > stopped_at:
            log.warning(
                "checkpoint epoch %d is after early stopping (epoch %d): saved the final model with lr 0 (adds nothing to TracIn)",
                epoch,
                stopped_at,
            )
            side = {
                "epoch": epoch,
                "lr": {g["name"]: 0.0 for g in optimizer.param_groups},
                "tracin_lr": 0.0,
                "hooked_layer": hooked,
                "trained": False,
                "stopped_at": stopped_at,
            }
            save_checkpoint(model, arch, path, side, side_path)
    write_table(pd.DataFrame(rows), metrics_path)
