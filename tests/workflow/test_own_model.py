"""A user's own model: existing checkpoints of a torchvision classifier, a manifest split, no training.

The stand-in: 36 random 16 px images of 3 classes listed in a CSV manifest (24 train, 12 test),
and two checkpoints of a randomly initialised torchvision ``resnet18`` saved the plain
torchvision way (``torch.save(model.state_dict(), path)``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import config_errors, job_counts, merge, run_snakemake
from PIL import Image
from torchvision import models

from inflow.core.io import read_table
from inflow.model.architectures import IMAGENET_MEAN, IMAGENET_STD

CLASSES = ("cat", "dog", "horse")
LRS = [0.01, 0.004]
TOP_K = 5


def write_images(root: Path, n_per_class: dict[str, int], seed: int = 0) -> pd.DataFrame:
    """Random 16 px PNGs under ``root/<class>/``; a manifest table (path relative to ``root``, label, split)."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in n_per_class.items():
        for c, name in enumerate(CLASSES):
            (root / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8) // (c + 1)
                rel = f"{name}/{split}_{i}.png"
                Image.fromarray(pixels).save(root / rel)
                rows.append((rel, name, split))
    return pd.DataFrame(rows, columns=["path", "label", "split"])


def save_resnet18(path: Path, num_classes: int, seed: int) -> None:
    """A randomly initialised torchvision resnet18 (weights=None), saved as a plain state dict."""
    torch.manual_seed(seed)
    torch.save(models.resnet18(weights=None, num_classes=num_classes).state_dict(), path)


@pytest.fixture(scope="module")
def own_model(tmp_path_factory) -> dict[str, Path]:
    """The stand-in data, manifest, checkpoints and a config that analyses them."""
    root = tmp_path_factory.mktemp("own_model")
    manifest = write_images(root / "images", {"train": 8, "test": 4})
    manifest.to_csv(root / "images" / "manifest.csv", index=False)
    ckpts = [root / "ckpt_a.pt", root / "ckpt_b.pth"]
    for seed, path in enumerate(ckpts):
        save_resnet18(path, len(CLASSES), seed)
    save_resnet18(root / "four_classes.pt", 4, 0)
    torch.save(models.resnet34(weights=None, num_classes=3).state_dict(), root / "resnet34.pt")
    cfg = {
        "dataset": {
            "source": "manifest",
            "image_size": 16,
            "val_fraction": 0.0,
            "manifest": {"path": str(root / "images" / "manifest.csv")},
        },
        "model": {"arch": "torchvision:resnet18"},
        "checkpoints": {"paths": [str(p) for p in ckpts], "lr": LRS},
        "train": {"class_weights": False, "label_smoothing": 0.0},  # plain cross-entropy: the reference below needs no inflow code
        "factors": {"batch_size": 16},
        # plain TracIn against the brute-force reference below (K-FAC against explicit inverses: tests/tracin/test_curvature.py,
        # tests/workflow/test_workflow.py::test_workflow_topk_is_exact)
        "influence": {"top_k": TOP_K, "test_tiles": 2, "train_tiles": 2, "preconditioner": "none"},
        "report": {"n_test_samples": 1, "grid_images": 4, "grid_columns": 2, "neighbours": 2, "classes": ["cat"]},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return {"root": root, "config": root / "config.yaml", "manifest": root / "images" / "manifest.csv", "cfg": cfg}


def brute_force_tracin(images: np.ndarray, labels: np.ndarray, test: np.ndarray, train: np.ndarray, ckpts: list[Path]) -> np.ndarray:
    """``sum_c lr_c <g_c(test), g_c(train)>`` with ``g`` the full per-sample gradient of the final Linear (fc weight and bias).

    One backward pass per sample on a plain torchvision resnet18 (no inflow code, no ghost
    trick); (n_test, n_train) float64.
    """
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    y = torch.from_numpy(labels.copy())
    total = np.zeros((len(test), len(train)))
    for lr, path in zip(LRS, ckpts):
        net = models.resnet18(weights=None, num_classes=len(CLASSES))
        net.load_state_dict(torch.load(path, weights_only=True))
        net.eval()
        grads = []
        for i in range(len(x)):
            loss = torch.nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1])
            gw, gb = torch.autograd.grad(loss, [net.fc.weight, net.fc.bias])
            grads.append(torch.cat([gw.flatten(), gb]).double().numpy())
        g = np.stack(grads)
        total += lr * g[test] @ g[train].T
    return total


@pytest.mark.e2e
def test_existing_checkpoints_of_a_torchvision_model_give_the_exact_topk(own_model, tmp_path) -> None:
    wd = tmp_path / "run"
    planned = job_counts(run_snakemake(wd, "-n", configfiles=[own_model["config"]], cores=1).stdout)
    assert "train" not in planned and planned["import_checkpoints"] == 1 and planned["factors"] == 4
    assert "retrain" not in planned and "training_curves" not in planned  # no training anywhere
    proc = run_snakemake(wd, "results/influence/topk.parquet", "--max-threads", "1", configfiles=[own_model["config"]], cores=1)
    assert "rule train:" not in proc.stdout + proc.stderr and not (wd / "logs" / "train.log").exists()

    manifest = read_table(wd / "results/data/manifest.parquet")
    assert (manifest.split.value_counts().to_dict()) == {"train": 24, "test": 12}  # the manifest's split, no val
    assert manifest.flipped.isna().all() and (manifest.label_name == manifest.path.map(lambda p: Path(p).parent.name)).all()  # no noise
    images = np.load(wd / "results/data/images.npy")[manifest.row.to_numpy()]
    test, train = np.flatnonzero(manifest.split == "test"), np.flatnonzero(manifest.split == "train")
    ckpts = [Path(p) for p in own_model["cfg"]["checkpoints"]["paths"]]
    dense = brute_force_tracin(images, manifest.label.to_numpy(), test, train, ckpts)

    topk = read_table(wd / "results/influence/topk.parquet")
    ids = manifest.sample_id.to_numpy()
    for kind, sign in (("proponent", -1), ("opponent", 1)):
        order = np.argsort(sign * dense, axis=1, kind="stable")[:, :TOP_K]
        got = topk[topk.kind == kind].sort_values(["test_id", "rank"])
        np.testing.assert_array_equal(got.test_id.to_numpy().reshape(-1, TOP_K)[:, 0], ids[test])
        np.testing.assert_array_equal(got.train_id.to_numpy().reshape(-1, TOP_K), ids[train][order])
        np.testing.assert_allclose(got.influence.to_numpy().reshape(-1, TOP_K), np.take_along_axis(dense, order, 1), rtol=2e-4, atol=1e-9)


def bad_input_errors(own_model, over: dict) -> list[str]:
    """What start-up reports for the stand-in config with ``over`` applied (tests/configs/tiny.yaml underneath)."""
    base = {k: v for k, v in own_model["cfg"].items() if k != "report"}
    return config_errors(merge(base, {**over, "report": {"classes": []}}))


def test_the_stand_in_config_is_clean(own_model) -> None:
    assert bad_input_errors(own_model, {}) == []


def test_checkpoint_of_another_class_count_is_one_line(own_model) -> None:
    path = own_model["root"] / "four_classes.pt"
    (line,) = bad_input_errors(own_model, {"checkpoints": {"paths": [str(path)], "lr": 0.01}})
    assert line == (
        f"checkpoints.paths: {path} has 4 classes (its head.0.weight is (4, 512)) but the data has 3; list checkpoints trained on these classes"
    )


def test_checkpoint_of_another_architecture_is_one_line(own_model) -> None:
    path = own_model["root"] / "resnet34.pt"
    (line,) = bad_input_errors(own_model, {"checkpoints": {"paths": [str(path)], "lr": 0.01}})
    assert line.startswith(
        f"checkpoints.paths: {path} does not fit model.arch torchvision:resnet18 (0 missing, 96 unexpected, 0 differently shaped keys, e.g. backbone.layer1.2.conv1.weight)"
    )
    assert line.endswith("it is a checkpoint of another architecture, set model.arch to the one it was saved from")


def test_missing_checkpoint_is_one_line(own_model) -> None:
    (line,) = bad_input_errors(own_model, {"checkpoints": {"paths": ["/models/nope.pt"], "lr": 0.01}})
    assert line == "checkpoints.paths: /models/nope.pt does not exist; list existing state-dict files (.pt/.pth)"


def test_wrong_number_of_learning_rates_is_one_line(own_model) -> None:
    (line,) = bad_input_errors(own_model, {"checkpoints": {"paths": own_model["cfg"]["checkpoints"]["paths"], "lr": [0.1]}})
    assert line == "checkpoints.lr: 1 learning rates for 2 checkpoints; give one per file, or one number for all"


def test_stages_that_train_are_refused_with_existing_checkpoints(own_model) -> None:
    (line,) = bad_input_errors(own_model, {"replay": {"enabled": True, "top_k": 5, "batch_size": 8, "max_targets": 4, "lds_models": 0}})
    assert line == "replay.enabled: trains models, but checkpoints.paths analyses existing ones without training; set replay.enabled: false"


def bad_manifest(own_model, tmp_path, edit) -> str:
    table = pd.read_csv(own_model["manifest"])
    edit(table)
    path = tmp_path / "manifest.csv"
    table.assign(path=[str(own_model["manifest"].parent / p) for p in table.path]).to_csv(path, index=False)
    return str(path)


def test_manifest_row_with_a_missing_file_is_one_line(own_model, tmp_path) -> None:
    def drop_file(table: pd.DataFrame) -> None:
        table.loc[5, "path"] = "cat/gone.png"

    path = bad_manifest(own_model, tmp_path, drop_file)
    (line,) = bad_input_errors(own_model, {"dataset": {"manifest": {"path": path}}})
    gone = own_model["manifest"].parent / "cat" / "gone.png"
    assert (
        line
        == f"dataset.manifest.path: {path}: row 7 points at {gone}, which does not exist (1 missing file(s)); fix the path or remove the row"
    )


def test_manifest_with_an_unknown_split_is_one_line(own_model, tmp_path) -> None:
    def rename(table: pd.DataFrame) -> None:
        table.loc[3:4, "split"] = "validation"

    path = bad_manifest(own_model, tmp_path, rename)
    (line,) = bad_input_errors(own_model, {"dataset": {"manifest": {"path": path}}})
    assert line == f"dataset.manifest.path: {path}: row 5 has split 'validation' (2 row(s) with an unknown split); use train, val or test"


def test_unknown_torchvision_model_is_one_line(own_model) -> None:
    (line,) = bad_input_errors(own_model, {"model": {"arch": "torchvision:resnet19"}})
    assert (
        line == "model.arch: torchvision:resnet19 is not a torchvision classification model; did you mean resnet18, resnet152, resnet101?"
    )


@pytest.mark.e2e
def test_bad_checkpoint_stops_before_anything_is_written(own_model, tmp_path) -> None:
    over = tmp_path / "over.yaml"
    over.write_text(yaml.safe_dump({"checkpoints": {"paths": [str(own_model["root"] / "four_classes.pt")], "lr": 0.01}}))
    proc = run_snakemake(tmp_path / "run", configfiles=[own_model["config"], over], cores=1, check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "four_classes.pt has 4 classes" in out and "inflow/" not in out
    assert not (tmp_path / "run" / "results").exists() and not (tmp_path / "run" / "logs").exists()
