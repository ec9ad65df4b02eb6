"""Training: determinism on CPU, checkpoint sidecars, and early stopping before a checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import synthetic_data

from inflow.core.errors import InflowError
from inflow.core.io import read_table, write_json
from inflow.model.checkpoints import load_checkpoint, read_sidecar
from inflow.train.loop import train

MODEL = {"arch": "resnet9", "width": 4, "pretrained_weights": None}
TRAIN = {
    "epochs": 3,
    "warmup_epochs": 1,
    "batch_size": 32,
    "lr_head": 1e-3,
    "lr_backbone": 5e-4,
    "weight_decay": 5e-4,
    "label_smoothing": 0.1,
    "class_weights": True,
    "augment": True,
    "plateau_factor": 0.5,
    "plateau_patience": 1,
    "early_stopping_patience": 5,
    "checkpoint_epochs": [1, 3],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synthetic_data(tmp_path_factory.mktemp("data"), image_size=16, n_train=120, n_test=20, noise_rate=0.1, val_fraction=0.2)


def run_train(data, out, **over):
    cfg = {**TRAIN, **over}
    ce = cfg["checkpoint_epochs"]
    paths = [str(out / f"e{e}.pt") for e in ce], [str(out / f"e{e}.json") for e in ce]
    train(*data, MODEL, cfg, 0, "cpu", paths[0], paths[1], str(out / "best.pt"), str(out / "metrics.parquet"))
    return paths


def test_training_is_deterministic_and_writes_sidecars(data, tmp_path) -> None:
    (a_pt, a_js), (b_pt, _) = run_train(data, tmp_path / "a"), run_train(data, tmp_path / "b")
    for pa_, pb_ in zip(a_pt, b_pt):
        sa, sb = torch.load(pa_, weights_only=True)["state_dict"], torch.load(pb_, weights_only=True)["state_dict"]
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    warm, full = read_sidecar(a_js[0]), read_sidecar(a_js[1])
    assert warm["stage"] == "warmup" and warm["lr"]["backbone"] == 0.0 and warm["tracin_lr"] == TRAIN["lr_head"]
    assert full["epoch"] == 3 and full["lr"]["backbone"] > 0
    metrics = read_table(tmp_path / "a" / "metrics.parquet")
    assert {"epoch", "lr_head", "lr_backbone", "train_loss", "val_accuracy", "checkpoint"} <= set(metrics.columns)
    assert load_checkpoint(a_pt[1], torch.device("cpu")).final_linear.out_features == 10


def test_checkpoint_after_early_stop_has_zero_lr(data, tmp_path) -> None:
    # lr 0 after warm-up: the val loss cannot improve, so patience 1 stops at epoch 2
    _, sidecars = run_train(data, tmp_path, epochs=6, checkpoint_epochs=[1, 6], lr_backbone=1e-12, lr_head=1e-12, early_stopping_patience=1)
    late = json.loads(open(sidecars[1]).read())
    assert late["trained"] is False and late["tracin_lr"] == 0.0 and late["stopped_at"] < 6


def test_sidecar_without_learning_rate_is_rejected(tmp_path) -> None:
    write_json({"epoch": 3}, tmp_path / "side.json")
    with pytest.raises(InflowError, match="lacks lr, tracin_lr"):
        read_sidecar(tmp_path / "side.json")


def test_train_on_subset_keeps_only_the_models_asked_for(data, tmp_path) -> None:
    """LDS subset models keep the last-epoch model, cleanlab folds the best one; the other leaves nothing behind."""
    from inflow.train.subset import train_on_subset

    manifest = read_table(data[1])
    train_ids = manifest.loc[manifest.split == "train", "sample_id"].to_numpy()
    keep = train_ids[::2]
    cfg = {**TRAIN, "epochs": 2, "warmup_epochs": 0}
    final = tmp_path / "final"
    final.mkdir()
    train_on_subset(
        *data,
        keep,
        MODEL,
        cfg,
        0,
        "cpu",
        str(final / "m.parquet"),
        str(final / "metrics.parquet"),
        final_out=(str(final / "f.pt"), str(final / "f.json")),
    )
    assert sorted(p.name for p in final.iterdir()) == ["f.json", "f.pt", "m.parquet", "metrics.parquet"]
    sub = read_table(final / "m.parquet")
    assert set(sub.loc[sub.split == "train", "sample_id"]) == set(keep)
    assert (sub.split != "train").sum() == (manifest.split != "train").sum()
    assert read_sidecar(str(final / "f.json"))["epoch"] == 2
    best = tmp_path / "best"
    best.mkdir()
    train_on_subset(*data, keep, MODEL, cfg, 0, "cpu", str(best / "m.parquet"), str(best / "metrics.parquet"), best_out=str(best / "b.pt"))
    assert sorted(p.name for p in best.iterdir()) == ["b.pt", "m.parquet", "metrics.parquet"]
    for path in (final / "f.pt", best / "b.pt"):
        assert (
            load_checkpoint(str(path), torch.device("cpu"), num_classes=int(manifest.label.max()) + 1).final_linear.out_features
            == int(manifest.label.max()) + 1
        )


def test_warmup_has_its_own_head_learning_rate(data, tmp_path) -> None:
    """train.lr_head_warmup: the head trains at 1e-2 in the warm-up, then at lr_head; the checkpoints record the rate of their epoch."""
    (_, sidecars) = run_train(data, tmp_path, lr_head_warmup=1e-2, plateau_patience=10)
    metrics = read_table(tmp_path / "metrics.parquet")
    assert metrics.lr_head.tolist() == [1e-2, 1e-3, 1e-3] and metrics.lr_backbone.tolist() == [0.0, 5e-4, 5e-4]
    assert [read_sidecar(p)["tracin_lr"] for p in sidecars] == [1e-2, 1e-3]
