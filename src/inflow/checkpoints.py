"""Saving and loading trained checkpoints and their JSON sidecars.

A checkpoint ``.pt`` holds the architecture and the state dict; its sidecar ``.json`` holds
the epoch, the learning rate of every parameter group during that epoch, the TracIn learning
rate of the hooked layer (``tracin_lr``), train loss and validation metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from inflow.errors import InflowError
from inflow.io import atomic_path, read_json, write_json
from inflow.models import Classifier, build_model

REQUIRED_SIDECAR_KEYS = ("epoch", "lr", "tracin_lr")


def save_checkpoint(model: Classifier, arch: dict[str, Any], path: str | Path, sidecar: dict[str, Any] | None = None, sidecar_path: str | Path | None = None) -> None:
    """Write ``{"arch": arch, "state_dict": ...}`` to ``path`` and ``sidecar`` to ``sidecar_path``."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"arch": arch, "state_dict": state}, tmp)
    if sidecar is not None and sidecar_path is not None:
        write_json(sidecar, sidecar_path)


def load_checkpoint(path: str | Path, device: torch.device) -> Classifier:
    """Rebuild the model saved by :func:`save_checkpoint`, in eval mode on ``device``."""
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
    return model.to(device).eval()


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint sidecar and check it has the learning-rate metadata TracIn needs."""
    side = read_json(path)
    missing = [k for k in REQUIRED_SIDECAR_KEYS if k not in side]
    if missing:
        raise InflowError(f"{path}: checkpoint sidecar lacks {', '.join(missing)}; TracIn needs the learning rate of each checkpoint, rerun train")
    return side
