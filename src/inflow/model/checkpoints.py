"""Saving and loading trained checkpoints and their JSON sidecars.

A checkpoint ``.pt`` holds the architecture and the state dict; its sidecar ``.json`` holds
the epoch, the learning rate of every parameter group during that epoch, the TracIn learning
rate of the hooked layer (``tracin_lr``), train loss and validation metrics.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
from pathlib import Path
from typing import Any

import torch

from inflow.core.errors import InflowError
from inflow.core.io import read_json, write_bytes, write_json
from inflow.model.architectures import Classifier, build_model

REQUIRED_SIDECAR_KEYS = ("epoch", "lr", "tracin_lr")


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically, serialised in memory first.

    torch reports a failed write (a full disk) as a ``RuntimeError`` without an errno; writing the
    serialised bytes ourselves turns it into inflow's one-line disk-full error with the exact size.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(buffer.getvalue(), path)


def save_checkpoint(
    model: Classifier, arch: dict[str, Any], path: str | Path, sidecar: dict[str, Any] | None = None, sidecar_path: str | Path | None = None
) -> None:
    """Write ``{"arch": arch, "state_dict": ...}`` to ``path`` and ``sidecar`` to ``sidecar_path``."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    save_torch({"arch": arch, "state_dict": state}, path)
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


def _plain_state(raw: Any) -> dict[str, Any] | None:
    """The state dict inside what ``torch.load`` returned: itself, or under ``state_dict`` / ``model``; keys without ``module.``."""
    if isinstance(raw, dict):
        for key in ("state_dict", "model"):
            if isinstance(raw.get(key), dict):
                raw = raw[key]
                break
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, str) for k in raw):
        return None
    return {k.removeprefix("module."): v for k, v in raw.items()}


def to_model_keys(state: dict[str, Any], model: Classifier) -> dict[str, Any]:
    """A state dict in the model's own layout (torchvision: ``fc.weight``, ``layer1.0...``) renamed to inflow's
    (``head.0.weight``, ``backbone.layer1.0...``); one already in inflow's layout is returned as it is.

    The ``mean``/``std`` normalisation buffers are taken from ``model`` when absent.
    """
    if not any(k.startswith(("backbone.", "head.")) for k in state):
        attr, wrapped = model.native_head or ("", False)
        renamed = {}
        for key, value in state.items():
            if attr and key.startswith(f"{attr}."):
                renamed["head." + ("0." if wrapped else "") + key[len(attr) + 1 :]] = value
            else:
                renamed[f"backbone.{key}"] = value
        state = renamed
    buffers = {k: v for k, v in model.state_dict().items() if k in ("mean", "std")}
    return {**buffers, **state}


def state_mismatch(state: dict[str, Any], model: Classifier, arch: str, num_classes: int) -> str | None:
    """Why ``state`` (inflow key layout, tensors or shapes) cannot be loaded into ``model``, as a clause; None if it fits.

    The class count is named first: a checkpoint of the same architecture for another dataset.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    final = f"{model.final_linear_name}.weight"
    if final in state and tuple(state[final].shape)[:1] != (num_classes,):
        return (
            f"has {tuple(state[final].shape)[0]} classes (its {final} is {tuple(state[final].shape)}) but the data has {num_classes}; "
            "list checkpoints trained on these classes"
        )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        return (
            f"does not fit model.arch {arch} ({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} differently shaped "
            f"keys, e.g. {example}); it is a checkpoint of another architecture, set model.arch to the one it was saved from"
        )
    return None


def read_user_state(path: str | Path, model: Classifier, arch: str, num_classes: int, mmap: bool = False) -> dict[str, Any]:
    """Read a user's checkpoint (a state dict of ``arch``, saved with ``torch.save``) in inflow's key layout, checked to fit ``model``.

    ``mmap`` reads only the keys and shapes (for a quick check of many files). Raises
    :class:`InflowError` with one line naming the file: missing, unreadable, another
    architecture or another number of classes.
    """
    if not Path(path).is_file():
        raise InflowError(f"checkpoints.paths: {path} does not exist; list existing state-dict files (.pt/.pth)")
    try:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            raw = torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file cannot be memory-mapped
    except Exception as exc:  # torch raises many types for a bad file
        raise InflowError(
            f"checkpoints.paths: {path} is not a readable torch state dict ({type(exc).__name__}); save it with torch.save(model.state_dict(), path)"
        ) from None
    state = _plain_state(raw)
    if state is None:
        raise InflowError(f"checkpoints.paths: {path} holds no state dict; save it with torch.save(model.state_dict(), path)")
    state = to_model_keys(state, model)
    problem = state_mismatch(state, model, arch, num_classes)
    if problem:
        raise InflowError(f"checkpoints.paths: {path} {problem}")
    return state
