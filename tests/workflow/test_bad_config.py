"""Hand-edited configs: every mistake gives one line naming the key and the fix, before any job runs."""

from __future__ import annotations

import subprocess

import pytest
from conftest import REPO, TINY, config_errors, run_snakemake

# (override of tests/configs/tiny.yaml, the one expected line)
BAD = {
    "unknown top-level key": (
        {"sede": 1},
        "(top level): Additional properties are not allowed ('sede' was unexpected); allowed keys here:",
    ),
    "unknown key, typo": (
        {"train": {"lr_haed": 0.1}},
        "train: Additional properties are not allowed ('lr_haed' was unexpected); allowed keys here: augment,",
    ),
    "unknown nested key": (
        {"dataset": {"synthetic": {"n_val": 5}}},
        "dataset.synthetic: Additional properties are not allowed ('n_val' was unexpected)",
    ),
    "key in the wrong section": (
        {"dataset": {"test_fraction": 0.3}},
        "dataset: Additional properties are not allowed ('test_fraction' was unexpected)",
    ),
    "string for integer": ({"train": {"epochs": "ten"}}, "train.epochs: 'ten' is not of type 'integer'; give a whole number (default: 12)"),
    "float for integer": ({"train": {"epochs": 2.0}}, "train.epochs: 2.0 is not of type 'integer'; give a whole number (default: 12)"),
    "bool for integer": ({"seed": True}, "seed: True is not of type 'integer'; give a whole number"),
    "string for number": (
        {"train": {"lr_head": "1e-3x"}},
        "train.lr_head: '1e-3x' is not of type 'number'; give a number (default: 0.001)",
    ),
    "string for bool": (
        {"train": {"augment": "yes please"}},
        "train.augment: 'yes please' is not of type 'boolean'; give true or false (default: True)",
    ),
    "scalar for list": (
        {"train": {"checkpoint_epochs": 3}},
        "train.checkpoint_epochs: 3 is not of type 'array'; give a list (default: [3, 6, 9, 12])",
    ),
    "string in list": (
        {"train": {"checkpoint_epochs": [2, "three"]}},
        "train.checkpoint_epochs.1: 'three' is not of type 'integer'; give a whole number",
    ),
    "empty section": (
        {"influence": None},
        "influence: None is not of type 'object'; put the settings indented below this key, or delete the line",
    ),
    "zero epochs": (
        {"train": {"epochs": 0, "checkpoint_epochs": [1]}},
        "train.epochs: 0 is less than the minimum of 1; use a value >= 1 (default: 12)",
    ),
    "negative batch size": (
        {"train": {"batch_size": -32}},
        "train.batch_size: -32 is less than the minimum of 1; use a value >= 1 (default: 64)",
    ),
    "zero factor batch size": ({"factors": {"batch_size": 0}}, "factors.batch_size: 0 is less than the minimum of 1; use a value >= 1"),
    "zero image size": (
        {"dataset": {"image_size": 0}},
        "dataset.image_size: 0 is less than the minimum of 8; use a value >= 8 (default: 32)",
    ),
    "zero top_k": ({"influence": {"top_k": 0}}, "influence.top_k: 0 is less than the minimum of 1; use a value >= 1 (default: 20)"),
    "negative tiles": ({"influence": {"train_tiles": -1}}, "influence.train_tiles: -1 is less than the minimum of 1"),
    "zero memory": ({"influence": {"memory_mb": 0}}, "influence.memory_mb: 0 is less than the minimum of 16; use a value >= 16"),
    "zero width": ({"model": {"width": 0}}, "model.width: 0 is less than the minimum of 1"),
    "negative seed": ({"seed": -1}, "seed: -1 is less than the minimum of 0; use a value >= 0"),
    "zero learning rate": ({"train": {"lr_head": 0}}, "train.lr_head: 0 is less than or equal to the minimum of 0; use a value > 0"),
    "too few training images": (
        {"dataset": {"synthetic": {"n_train": 5}}},
        "dataset.synthetic.n_train: 5 is less than the minimum of 20; use a value >= 20",
    ),
    "checkpoint epoch zero": ({"train": {"checkpoint_epochs": [0, 3]}}, "train.checkpoint_epochs.0: 0 is less than the minimum of 1"),
    "fraction out of range": (
        {"dataset": {"noise_rate": 1.5}},
        "dataset.noise_rate: 1.5 is greater than the maximum of 0.9; use a value <= 0.9",
    ),
    "test_fraction of 1": (
        {"dataset": {"imagefolder": {"test_fraction": 1.0}}},
        "dataset.imagefolder.test_fraction: 1.0 is greater than or equal to the maximum of 1; use a value < 1",
    ),
    "unknown choice": ({"device": "gpu"}, "device: 'gpu' is not one of ['auto', 'cpu', 'cuda']; use one of auto, cpu, cuda"),
    "unknown signal": ({"mislabel": {"score": ["self_influence", "margin"]}}, "mislabel.score.1: 'margin' is not one of"),
    "repeated checkpoints": (
        {"train": {"checkpoint_epochs": [2, 2]}},
        "train.checkpoint_epochs: [2, 2] has non-unique elements; list each value once",
    ),
    "no checkpoints": ({"train": {"checkpoint_epochs": []}}, "train.checkpoint_epochs: [] should be non-empty; list at least 1 value(s)"),
    # semantic checks (after the schema passes)
    "checkpoint beyond epochs": (
        {"train": {"checkpoint_epochs": [2, 5]}},
        "train.checkpoint_epochs: [5] are beyond train.epochs=3; remove them or raise train.epochs",
    ),
    "warm-up covers all epochs": (
        {"train": {"warmup_epochs": 3}},
        "train.warmup_epochs=3 leaves no full-training epoch (train.epochs=3); lower it",
    ),
    "top_k beyond training set": (
        {"influence": {"top_k": 221}},
        "influence.top_k=221 is larger than the training set (220 images); lower influence.top_k",
    ),
    "more train tiles than samples": (
        {"influence": {"train_tiles": 500}},
        "influence.train_tiles=500 is more than the 220 training images; lower it",
    ),
    "more test tiles than samples": (
        {"influence": {"test_tiles": 41}},
        "influence.test_tiles=41 is more than the 40 test images; lower it",
    ),
    "absurd learning rate": (
        {"train": {"lr_head": 1e38}},
        "train.lr_head=1e+38 is far too large for AdamW (training diverges to NaN); use a value <= 1",
    ),
    "image folder without path": (
        {"dataset": {"source": "imagefolder"}},
        "dataset.imagefolder.path: not set; give the folder of class folders, or use dataset.source: synthetic",
    ),
    "image folder path missing": (
        {"dataset": {"source": "imagefolder", "imagefolder": {"path": "/no/such/folder"}}},
        "dataset.imagefolder.path: /no/such/folder does not exist; give the folder that holds one folder per class",
    ),
    "image folder path is a file": (
        {"dataset": {"source": "imagefolder", "imagefolder": {"path": str(REPO / "README.md")}}},
        f"dataset.imagefolder.path: {REPO / 'README.md'} is a file, not a directory",
    ),
    "replay top_k beyond training set": (
        {"replay": {"enabled": True, "top_k": 300}},
        "replay.top_k=300 is more than the 220 training images; lower it",
    ),
    "replay batch beyond training set": (
        {"replay": {"enabled": True, "batch_size": 221}},
        "replay.batch_size=221 is more than the 220 training images; lower it",
    ),
    "replay targets beyond test set": (
        {"replay": {"enabled": True, "targets": "test", "max_targets": 41}},
        "replay.max_targets=41 is more than the 40 test images; lower it",
    ),
    "replay target ids beyond max_targets": (
        {"replay": {"target_ids": [1, 2, 3], "max_targets": 2}},
        "replay.target_ids lists 3 test samples but replay.max_targets=2; raise max_targets",
    ),
    "replay Nesterov without momentum": (
        {"replay": {"optimizer": "sgd", "nesterov": True, "momentum": 0}},
        "replay.nesterov: Nesterov momentum needs replay.momentum > 0",
    ),
    "LDS scatter beyond test set": (
        {"lds": {"enabled": True, "scatter_samples": 50}},
        "lds.scatter_samples=50 is more than the 40 test images; lower it",
    ),
    "runs repeat a seed": ({"runs": {"seeds": [0, 1, 1]}}, "runs.seeds: [0, 1, 1] has non-unique elements; list each value once"),
    "runs list only the main seed": (
        {"runs": {"seeds": [0]}},
        "runs.seeds: [0] lists only the main run's seed (0); add other seeds to compare runs, or leave it empty",
    ),
    "version with an unknown train key": (
        {"versions": {"v2": {"train": {"lr": 0.1}}}},
        "versions.v2.train: ['lr'] are no keys of train: (see schemas/config.schema.yaml); remove or rename them",
    ),
    "version with a bad learning rate": ({"versions": {"v2": {"train": {"lr_head": -1}}}}, "versions.v2: train.lr_head: -1 is"),
    "version with checkpoints past its epochs": (
        {"versions": {"short": {"train": {"epochs": 2}}}},
        "versions.short: train.checkpoint_epochs: [3] are beyond train.epochs=2",
    ),
    "version with an unknown key": ({"versions": {"v2": {"lr": 1}}}, "versions.v2: Additional properties are not allowed"),
    "version that changes nothing": ({"versions": {"v2": {"note": "same"}}}, "versions.v2: changes nothing against the main run"),
    "version named main": ({"versions": {"main": {"seed": 3}}}, "versions.main: 'main' is reserved"),
    "version with a bad name": ({"versions": {"my version": {"seed": 3}}}, "versions.my version: a version name starts with a letter"),
    "seed version twice": (
        {"runs": {"seeds": [0, 1]}, "versions": {"again": {"seed": 1}}},
        "versions.again: seed 1 is already the version seed_1; drop one of them",
    ),
    "oracle version without noise": (
        {"dataset": {"noise_rate": 0}, "versions": {"c": {"data": "clean/oracle"}}},
        "versions.c.data: clean/oracle needs known true labels",
    ),
    "K-FAC on projected gradients": (
        {"influence": {"preconditioner": "kfac"}, "factors": {"method": "projection"}},
        "influence.preconditioner=kfac needs layer factors, not factors.method=projection; use gram, or factors.method last_layer / head_layers",
    ),
    "Gram on layer factors": (
        {"influence": {"preconditioner": "gram"}},
        "influence.preconditioner=gram preconditions projected gradients, not factors.method=last_layer; use kfac or ekfac, or factors.method: projection",
    ),
    "ensemble of one run": (
        {"influence": {"ensemble": True}},
        "influence.ensemble: true needs other runs to add up; list their seeds in runs.seeds (e.g. [0, 1, 2, 3, 4])",
    ),
    "unknown preconditioner": (
        {"influence": {"preconditioner": "fisher"}},
        "influence.preconditioner: 'fisher' is not one of",
    ),
    "manifest without a path": (
        {"dataset": {"source": "manifest"}},
        "dataset.manifest.path: not set; give a CSV or Parquet file with columns path, label, split",
    ),
    "test folder missing": (
        {"dataset": {"source": "imagefolder", "imagefolder": {"path": str(REPO / "tests"), "test_path": "/no/such/folder"}}},
        "dataset.imagefolder.test_path: /no/such/folder does not exist; give the folder of test class folders, or null",
    ),
    "unknown architecture": (
        {"model": {"arch": "vgg"}},
        "model.arch: unknown architecture 'vgg'; choose one of resnet9, resnet9_smooth, resnet50_head or torchvision:<name>",
    ),
    "torchvision model without a Linear classifier": (
        {"model": {"arch": "torchvision:squeezenet1_0"}},
        "model.arch: torchvision:squeezenet1_0 ends in Sequential without a Linear layer; TracIn needs a final Linear",
    ),
    "TracIn layer that is not Linear": (
        {"factors": {"layers": ["head.1"]}},
        "factors.layers: head.1 not Linear layer(s) of resnet9; name Linear modules as in model.named_modules(), e.g. head.0, head.2",
    ),
    "TracIn layers with projection": (
        {"factors": {"method": "projection", "layers": ["head.2"]}},
        "factors.layers: names layers for last_layer / head_layers factors, not factors.method=projection",
    ),
    "absurd warm-up learning rate": (
        {"train": {"lr_head_warmup": 5.0}},
        "train.lr_head_warmup=5 is far too large for AdamW (training diverges to NaN); use a value <= 1",
    ),
    "pretrained weights missing": (
        {"model": {"pretrained_weights": "/models/nope.pth"}},
        "model.pretrained_weights: /models/nope.pth does not exist; give a local .pth file or null",
    ),
}


def test_tiny_config_is_clean() -> None:
    assert config_errors({}) == []


@pytest.mark.parametrize("case", list(BAD))
def test_bad_config_gives_one_line_naming_the_key(case) -> None:
    over, expected = BAD[case]
    errors = config_errors(over)
    assert len(errors) == 1, errors
    assert errors[0].startswith(expected), errors[0]
    assert "\n" not in errors[0]


def test_sizes_of_disabled_stages_are_not_checked() -> None:
    assert config_errors({"replay": {"top_k": 300, "batch_size": 221}, "lds": {"scatter_samples": 50}}) == []


def test_top_k_equal_to_the_training_set_is_fine() -> None:
    assert config_errors({"influence": {"top_k": 220}}) == []  # tiny: 280 images, 10 classes, 4 test + 2 val + 22 train each


def test_typo_gets_a_suggestion() -> None:
    (line,) = config_errors({"train": {"lr_haed": 0.1}})
    assert line.endswith("did you mean 'lr_head' for 'lr_haed'?; remove or rename the unknown key")


def test_several_problems_are_listed_together() -> None:
    lines = config_errors({"train": {"epochs": 0, "bogus": 1}, "influence": {"top_k": -1}})
    assert [line.split(":")[0] for line in lines] == ["influence.top_k", "train", "train.epochs"]


def dry_run(tmp_path, text: str) -> subprocess.CompletedProcess:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    # -n: should a check ever let the config through, nothing runs (the config is validated when the Snakefile is read, as for a real run)
    return run_snakemake(tmp_path / "run", "-n", configfiles=[TINY, cfg], cores=1, check=False, timeout=300)


@pytest.mark.e2e
def test_workflow_stops_before_any_job(tmp_path) -> None:
    """Through snakemake: schema and semantic problems stop it at start-up, with no traceback into the package."""
    proc = dry_run(tmp_path, "train:\n  epochs: 2.0\n  lr_haed: 0.1\n")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "train.epochs: 2.0 is not of type 'integer'; give a whole number" in out
    assert "did you mean 'lr_head' for 'lr_haed'?" in out
    assert not (tmp_path / "run" / "results").exists() and not (tmp_path / "run" / "logs").exists()
    proc = dry_run(tmp_path, "influence:\n  top_k: 500\n")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "influence.top_k=500 is larger than the training set (220 images); lower influence.top_k" in out
    assert "inflow/" not in out  # no traceback through package files
    assert not (tmp_path / "run" / "results").exists()
