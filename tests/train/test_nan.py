"""NaN/Inf in training losses and in factors stop with the offending sample ids, writing nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import synthetic_data

import inflow.train.loop as training
from inflow.core.errors import InflowError
from inflow.model.architectures import build_model
from inflow.model.checkpoints import save_checkpoint
from inflow.tracin.factors import extract_factors, write_factors
from inflow.tracin.influence import influence_shard
from inflow.tracin.self_influence import self_influence

TRAIN = {
    "epochs": 2,
    "warmup_epochs": 0,
    "batch_size": 32,
    "lr_head": 1e-3,
    "lr_backbone": 1e-3,
    "weight_decay": 5e-4,
    "label_smoothing": 0.1,
    "class_weights": True,
    "augment": False,
    "plateau_factor": 0.5,
    "plateau_patience": 1,
    "early_stopping_patience": 5,
    "checkpoint_epochs": [1, 2],
}
MODEL = {"arch": "resnet9", "width": 4, "pretrained_weights": None}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_data(tmp_path_factory.mktemp("data"), image_size=16, n_train=60, n_test=20, noise_rate=0.0, val_fraction=0.2)


def run_train(data, out, **over):
    cfg = {**TRAIN, **over}
    paths = [str(out / f"epoch_{e}.pt") for e in cfg["checkpoint_epochs"]], [str(out / f"epoch_{e}.json") for e in cfg["checkpoint_epochs"]]
    training.train(*data, MODEL, cfg, 0, "cpu", paths[0], paths[1], str(out / "best.pt"), str(out / "metrics.parquet"))


def test_diverging_training_stops_naming_the_samples(data, tmp_path) -> None:
    with pytest.raises(
        InflowError, match=r"loss is NaN/Inf at epoch \d+ for \d+ sample\(s\) of the batch, sample_id\(s\) \[\d+.*lower train.lr_head"
    ):
        run_train(data, tmp_path, lr_head=1e30, lr_backbone=1e30)
    assert not (tmp_path / "metrics.parquet").exists()


def test_nan_loss_of_some_samples_lists_exactly_those(data, tmp_path, monkeypatch) -> None:
    real = training.per_sample_loss

    def poisoned(logits, labels, weights, smoothing):
        losses = real(logits, labels, weights, smoothing)
        return torch.where(labels == 3, torch.full_like(losses, float("nan")), losses)  # class 3 poisoned

    monkeypatch.setattr(training, "per_sample_loss", poisoned)
    with pytest.raises(InflowError) as info:
        run_train(data, tmp_path)
    msg = str(info.value)
    ids = [int(x) for x in msg.split("sample_id(s) [")[1].split("]")[0].split(", ")]
    from inflow.core.io import read_table

    manifest = read_table(data[1]).set_index("sample_id")
    assert ids and all(manifest.loc[i, "label"] == 3 and manifest.loc[i, "split"] == "train" for i in ids)
    assert "\n" not in msg
    assert not list(tmp_path.glob("*.pt"))


def nan_checkpoint(tmp_path):
    """A checkpoint whose final layer holds a NaN weight, with a valid sidecar."""
    torch.manual_seed(0)
    model = build_model("resnet9", 10, width=4)
    with torch.no_grad():
        model.final_linear.weight[2, 0] = float("nan")
    arch = {"name": "resnet9", "num_classes": 10, "width": 4}
    save_checkpoint(model, arch, tmp_path / "epoch_1.pt", {"epoch": 1, "lr": {"head": 0.01}, "tracin_lr": 0.01}, tmp_path / "epoch_1.json")
    return str(tmp_path / "epoch_1.pt"), str(tmp_path / "epoch_1.json")


def test_nan_checkpoint_stops_factor_extraction(data, tmp_path) -> None:
    ckpt, side = nan_checkpoint(tmp_path)
    out = tmp_path / "train.parquet"
    with pytest.raises(InflowError, match=r"epoch_1.pt: NaN/Inf factors for \d+ train sample\(s\), sample_id\(s\) \[\d+"):
        extract_factors(*data, ckpt, side, "train", TRAIN, True, 64, "cpu", str(out))
    assert not out.exists() and not list(tmp_path.glob(".train.parquet*"))


@pytest.fixture
def nan_factor_files(tmp_path):
    """Test/train factor files of one checkpoint; the train file has NaN in sample 107 and Inf in 131."""
    rng = np.random.default_rng(0)
    paths = {}
    for split, n, first in (("train", 40, 100), ("test", 12, 500)):
        a, e = rng.normal(size=(n, 5)).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32)
        if split == "train":
            a[7, 2], e[31, 0] = np.nan, np.inf
        paths[split] = str(tmp_path / f"{split}.parquet")
        write_factors(paths[split], np.arange(first, first + n), a, e, {"epoch": 3, "tracin_lr": 0.01, "split": split})
    return paths


def test_nan_factor_file_stops_influence_naming_the_samples(nan_factor_files, tmp_path) -> None:
    out = tmp_path / "shard.npy"
    with pytest.raises(
        InflowError,
        match=r"train.parquet: NaN/Inf factors for 2 sample\(s\), sample_id\(s\) \[107, 131\]; delete the file and rerun the factors rule",
    ):
        influence_shard(nan_factor_files["test"], nan_factor_files["train"], "0-0", 1, 1, str(out))
    assert not out.exists()
    # a tile that holds only finite rows still works
    influence_shard(nan_factor_files["test"], nan_factor_files["train"], "0-2", 1, 4, str(out))  # train rows 20:30
    assert np.isfinite(np.load(out)).all()


def test_nan_factor_file_stops_self_influence(nan_factor_files, tmp_path) -> None:
    out = tmp_path / "self.parquet"
    with pytest.raises(InflowError, match=r"sample_id\(s\) \[107, 131\]"):
        self_influence([nan_factor_files["train"]], str(out))
    assert not out.exists()
