"""Config checks with one line per problem: JSON-schema errors and semantic ones a schema cannot express."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml


def schema_errors(config: dict[str, Any], schema_path: str | Path) -> list[str]:
    """One line per JSON-schema violation, naming the dotted key, e.g. ``train.epochs: 0 is less than the minimum of 1``."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    lines = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        key = ".".join(map(str, err.absolute_path)) or "(top level)"
        if err.validator == "additionalProperties":
            allowed = ", ".join(sorted(err.schema.get("properties", {})))
            lines.append(f"{key}: {err.message}; allowed keys here: {allowed}")
        else:
            lines.append(f"{key}: {err.message}")
    return lines


def semantic_errors(config: dict[str, Any]) -> list[str]:
    """One line per problem, each naming the key and the fix; empty if the config is usable."""
    errors = []
    train, data = config["train"], config["dataset"]
    late = sorted(e for e in train["checkpoint_epochs"] if e > train["epochs"])
    if late:
        errors.append(f"train.checkpoint_epochs: {late} are beyond train.epochs={train['epochs']}; remove them or raise train.epochs")
    if train["warmup_epochs"] >= train["epochs"]:
        errors.append(f"train.warmup_epochs={train['warmup_epochs']} leaves no full-training epoch (train.epochs={train['epochs']}); lower it")
    if data["source"] == "imagefolder":
        path = data["imagefolder"]["path"]
        if not path:
            errors.append("dataset.imagefolder.path: not set; give the folder of class folders, or use dataset.source: synthetic")
        elif not Path(path).is_dir():
            errors.append(f"dataset.imagefolder.path: {path} is not a directory; fix the path")
    else:
        n_train = round(data["synthetic"]["n_train"] * (1 - data["val_fraction"]))
        if config["influence"]["top_k"] > n_train:
            errors.append(f"influence.top_k={config['influence']['top_k']} is larger than the training set (~{n_train}); lower it")
        if config["influence"]["train_tiles"] > n_train or config["influence"]["test_tiles"] > data["synthetic"]["n_test"]:
            errors.append("influence.train_tiles/test_tiles: more tiles than samples; lower them")
    weights = config["model"]["pretrained_weights"]
    if weights and not Path(weights).is_file():
        errors.append(f"model.pretrained_weights: {weights} does not exist; give a local .pth file or null")
    return errors
