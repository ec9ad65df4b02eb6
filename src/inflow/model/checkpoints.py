"""Saving and loading trained checkpoints and their JSON sidecars.

A checkpoint ``.pt`` holds the architecture and the state dict; its sidecar ``.json`` holds
the epoch, the learning rate of every parameter group during that epoch, the TracIn learning
rate of the hooked layer (``tracin_lr``), train loss and validation metrics.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import torch

from inflow.core.errors import InflowError
from inflow.core.io import atomic_path, read_json, write_json
from inflow.model.architectures import Classifier, build_model

REQUIRED_SIDECAR_KEYS = ("epoch", "lr", "tracin_lr")


def save_checkpoint(
    model: Classifier, arch: dict[str, Any], path: str | Path, sidecar: dict[str, Any] | None = None, sidecar_path: str | Path | None = None
) -> None:
    """Write ``{"arch": arch, "state_dict": ...}`` to ``path`` and ``sidecar`` to ``sidecar_path``."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"arch": arch, "state_dict": state}, tmp)
    if sidecar is not None and sidecar_path is not None:
        write_json(sidecar, sidecar_path)


def load_checkpoint(path: str | Path, device: torch.device, num_classes: int | None = None) -> Classifier:
    """Rebuild the model saved by :func:`save_checkpoint`, in eval mode on ``device``.

    With ``num_classes``, also check the checkpoint was trained for that many classes (a
    checkpoint from another dataset would otherwise fail deep inside the loss).
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        arch = ckpt["arch"]
        model = build_model(arch["name"], arch["num_classes"], width=arch["width"])
        model.load_state_dict(ckpt["state_dict"])
    except InflowError:
        raise
    except FileNotFoundError:
        raise InflowError(f"{path}: checkpoint not found; rerun the train rule") from None
    except Exception as exc:
        raise InflowError(f"{path}: not a readable inflow checkpoint ({type(exc).__name__}); delete it and rerun train") from None
    if num_classes is not None and arch["num_classes"] != num_classes:
        raise InflowError(
            f"{path}: checkpoint has {arch['num_classes']} classes but the manifest has {num_classes}; it comes from another dataset, delete it and rerun train"
        )
    return model.to(device).eval()


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of every parameter and buffer: equal only for the same trained weights."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()[:16]


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint sidecar and check it has the learning-rate metadata TracIn needs.

    ``tracin_lr`` must be a finite number >= 0 and ``epoch`` a whole number, matching the
    ``epoch_<e>`` in the file name when there is one.
    """
    side = read_json(path)
    if not isinstance(side, dict):
        raise InflowError(f"{path}: checkpoint sidecar is not a JSON object; delete it and rerun train")
    missing = [k for k in REQUIRED_SIDECAR_KEYS if k not in side]
    if missing:
        raise InflowError(
            f"{path}: checkpoint sidecar lacks {', '.join(missing)}; TracIn needs the learning rate of each checkpoint, rerun train"
        )
    lr = side["tracin_lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise InflowError(f"{path}: tracin_lr is {lr!r}, not a finite learning rate >= 0; rerun train")
    epoch = side["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        raise InflowError(f"{path}: epoch is {epoch!r}, not a whole number; rerun train")
    named = re.fullmatch(r"epoch_(\d+)", Path(path).stem)
    if named and int(named.group(1)) != epoch:
        raise InflowError(
            f"{path}: sidecar says epoch {epoch} but the file name says {named.group(1)}; it belongs to another checkpoint, rerun train"
        )
    return side
