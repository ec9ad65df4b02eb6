"""Checkpoint files: a full disk while ``torch.save`` writes one ends in inflow's one-line error."""

from __future__ import annotations

import io

import pytest
import torch

from inflow.core.errors import InflowError
from inflow.core.io import DISK_FULL_HOOK
from inflow.model.architectures import build_model
from inflow.model.checkpoints import load_checkpoint, save_checkpoint

ARCH = {"name": "resnet9", "num_classes": 3, "width": 2}


def test_a_full_disk_while_saving_a_checkpoint_stops_in_one_line_and_the_rerun_loads(tmp_path, monkeypatch) -> None:
    """torch.save itself reports a failed write as a RuntimeError without an errno; the checkpoint is
    serialised in memory first and written by inflow, so the error names the path and its exact size."""
    torch.manual_seed(0)
    model = build_model(ARCH["name"], ARCH["num_classes"], width=ARCH["width"])
    buffer = io.BytesIO()
    torch.save({"arch": ARCH, "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}, buffer)
    path = tmp_path / "train" / "checkpoints" / "epoch_2.pt"
    monkeypatch.setenv(DISK_FULL_HOOK, "*/checkpoints/epoch_2.pt")
    with pytest.raises(
        InflowError, match=rf"epoch_2.pt: disk full while writing it \(it needs {len(buffer.getvalue())} bytes, \d+ bytes are free"
    ):
        save_checkpoint(model, ARCH, path)
    assert sorted(p.name for p in path.parent.iterdir()) == []  # no checkpoint, no temporary file
    monkeypatch.delenv(DISK_FULL_HOOK)  # space freed: the rerun writes a loadable checkpoint
    save_checkpoint(model, ARCH, path)
    loaded = load_checkpoint(path, torch.device("cpu"), num_classes=3)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
