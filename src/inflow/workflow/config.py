"""Config checks with one line per problem: JSON-schema errors and semantic ones a schema cannot express.

Every line names the dotted key and says what to do. ``rules/common.smk`` runs
:func:`schema_errors` first, then fills in the schema defaults and runs :func:`semantic_errors`,
and stops before any job with all the lines.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from inflow.core.errors import InflowError
from inflow.workflow.versions import OVERRIDE_SECTIONS, run_versions, seed_versions, version_config, version_errors

_TYPE_WORDS = {
    "integer": "a whole number",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "array": "a list",
    "object": "a section of settings",
    "null": "null",
}


def _is_integer(_checker: Any, instance: Any) -> bool:
    """Integers only: jsonschema would accept ``2.0``, which breaks ``range()`` later."""
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


def _fix(err: jsonschema.ValidationError) -> str:
    """What to do about one schema violation, as a short clause."""
    kind, want, sub = err.validator, err.validator_value, err.schema
    default = sub.get("default")
    example = f" (default: {default})" if default not in (None, {}, []) else ""
    if kind == "type":
        types = [want] if isinstance(want, str) else list(want)
        if "object" in types and err.instance is None:
            return "put the settings indented below this key, or delete the line"
        return "give " + " or ".join(_TYPE_WORDS.get(t, t) for t in types) + example
    if kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kind]
        return f"use a value {op} {want}{example}"
    if kind == "enum":
        return "use one of " + ", ".join(map(str, want))
    if kind == "uniqueItems":
        return "list each value once"
    if kind == "minItems":
        return f"list at least {want} value(s){example}"
    if kind == "additionalProperties":
        allowed = sorted(sub.get("properties", {}))
        unknown = [k for k in err.instance if k not in allowed]
        close = {k: difflib.get_close_matches(str(k), allowed, n=1) for k in unknown}
        hints = "".join(f"; did you mean {c[0]!r} for {k!r}?" for k, c in close.items() if c)
        return f"allowed keys here: {', '.join(allowed)}{hints}; remove or rename the unknown key"
    return "see schemas/config.schema.yaml"


def schema_errors(config: dict[str, Any], schema_path: str | Path) -> list[str]:
    """One line per JSON-schema violation, naming the dotted key and the fix.

    For example ``train.epochs: 0 is less than the minimum of 1; use a value >= 1 (default: 12)``.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    if not isinstance(config, dict):
        return [f"(top level): the config is {type(config).__name__}, not a mapping of settings; see config.yaml for the layout"]
    validator = _Validator(schema)
    lines = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        key = ".".join(map(str, err.absolute_path)) or "(top level)"
        lines.append(f"{key}: {err.message}; {_fix(err)}")
    return lines


def training_set_size(dataset: dict[str, Any]) -> tuple[int, int, int]:
    """``(n_train, n_test, n_classes)``: the exact split sizes ``prepare_data`` will make from ``dataset``.

    For an image folder or a manifest the counts are of listed files, an upper bound
    (unreadable files are skipped later). Raises :class:`InflowError` for a folder that
    cannot be split (see :func:`inflow.data.imagefolder.scan_folder`) and for a manifest
    with a bad row (see :func:`inflow.data.user_split.read_user_manifest`).
    """
    import numpy as np

    from inflow.data import imagefolder, synthetic
    from inflow.data.prepare import check_class_splits, has_given_split, split_fractions, split_sizes, user_files

    if has_given_split(dataset):
        files, names = user_files(dataset)
        split = files["split"].to_numpy()
        n_val = 0 if (split == "val").any() else int(round(dataset["val_fraction"] * (split == "train").sum()))
        return int((split == "train").sum()) - n_val, int((split == "test").sum()), len(names)
    fractions = split_fractions(dataset)
    if dataset["source"] == "synthetic":
        n = dataset["synthetic"]["n_train"] + dataset["synthetic"]["n_test"]
        counts = np.bincount(np.arange(n) % len(synthetic.CLASS_NAMES))  # synthetic.make_dataset is exactly balanced
    else:
        folder = dataset["imagefolder"]
        files, names = imagefolder.scan_folder(folder["path"], tuple(folder["extensions"]))
        counts = np.bincount(files["label"].to_numpy(), minlength=len(names))
        check_class_splits(counts, names, fractions, "image files")
    sizes = [split_sizes(int(c), fractions) for c in counts]
    return sum(s["train"] for s in sizes), sum(s["test"] for s in sizes), len(counts)


def train_errors(train: dict[str, Any]) -> list[str]:
    """Problems of the ``train`` section a schema cannot express (checkpoints past the last epoch, no epoch after warm-up, huge learning rates)."""
    errors = []
    late = sorted(e for e in train["checkpoint_epochs"] if e > train["epochs"])
    if late:
        errors.append(f"train.checkpoint_epochs: {late} are beyond train.epochs={train['epochs']}; remove them or raise train.epochs")
    if train["warmup_epochs"] >= train["epochs"]:
        errors.append(
            f"train.warmup_epochs={train['warmup_epochs']} leaves no full-training epoch (train.epochs={train['epochs']}); lower it"
        )
    for key in ("lr_head", "lr_backbone", "lr_head_warmup"):
        if train[key] is not None and train[key] > 1:
            errors.append(
                f"train.{key}={train[key]:g} is far too large for AdamW (training diverges to NaN); use a value <= 1, typically 1e-4 to 1e-2"
            )
    return errors


def version_schema_errors(config: dict[str, Any], schema_path: str | Path) -> list[str]:
    """Each version's merged settings (:func:`inflow.workflow.versions.version_config`) checked like the main
    run's: the schema of ``seed``, ``train`` and ``model``, and :func:`train_errors`; lines start ``versions.<name>: ``."""
    lines = []
    for name, overrides in run_versions(config).items():
        if any(set(overrides[s]) - set(config[s]) for s in OVERRIDE_SECTIONS):
            continue  # unknown keys: reported by version_errors
        merged = version_config(config, overrides)
        own = [line for line in schema_errors(merged, schema_path) if line.split(".")[0].split(":")[0] in ("seed", *OVERRIDE_SECTIONS)]
        if not own:
            own = train_errors(merged["train"])
        lines += [f"versions.{name}: {line}" for line in own]
    return lines


def semantic_errors(config: dict[str, Any]) -> list[str]:
    """One line per problem, each naming the key and the fix; empty if the config is usable.

    Needs a schema-valid config with defaults filled in. For an image folder this scans the
    folder (file names only, no image is opened).
    """
    train, data, influence = config["train"], config["dataset"], config["influence"]
    errors = train_errors(train)
    preconditioner, method = resolved_preconditioner(config), config["factors"]["method"]
    if preconditioner in ("kfac", "ekfac") and method in ("projection", "all_layers"):
        errors.append(
            f"influence.preconditioner={preconditioner} needs layer factors, not factors.method={method}; use gram, or factors.method last_layer / head_layers"
        )
    if influence["ensemble"] and not seed_versions(config):
        errors.append(
            "influence.ensemble: true needs other runs to add up; list their seeds in runs.seeds (e.g. [0, 1, 2, 3, 4]) or add seed-only versions"
        )
    if preconditioner == "gram" and method not in ("projection", "all_layers"):
        errors.append(
            f"influence.preconditioner=gram preconditions projected gradients, not factors.method={method}; use kfac or ekfac, or factors.method: projection"
        )
    from inflow.model.architectures import architecture_errors

    errors += architecture_errors(config["model"]["arch"], config["factors"]["layers"])
    if config["factors"]["layers"] and method in ("projection", "all_layers"):
        errors.append(
            f"factors.layers: names layers for last_layer / head_layers factors, not factors.method={method}; empty it or change the method"
        )
    sizes = None
    if data["source"] == "manifest":
        if not data["manifest"]["path"]:
            errors.append("dataset.manifest.path: not set; give a CSV or Parquet file with columns path, label, split")
        else:
            try:
                sizes = training_set_size(data)
            except InflowError as exc:
                errors.append(str(exc))
    elif data["source"] == "imagefolder":
        path = data["imagefolder"]["path"]
        if not path:
            errors.append("dataset.imagefolder.path: not set; give the folder of class folders, or use dataset.source: synthetic")
        elif not Path(path).is_dir():
            what = "is a file, not a directory" if Path(path).exists() else "does not exist"
            errors.append(f"dataset.imagefolder.path: {path} {what}; give the folder that holds one folder per class")
        elif data["imagefolder"]["test_path"] and not Path(data["imagefolder"]["test_path"]).is_dir():
            test_path = data["imagefolder"]["test_path"]
            what = "is a file, not a directory" if Path(test_path).exists() else "does not exist"
            errors.append(f"dataset.imagefolder.test_path: {test_path} {what}; give the folder of test class folders, or null")
        else:
            try:
                sizes = training_set_size(data)
            except InflowError as exc:
                errors.append(str(exc))
    else:
        sizes = training_set_size(data)
    if sizes is not None:
        n_train, n_test, n_classes = sizes
        approx = "at most " if data["source"] != "synthetic" else ""
        errors += checkpoint_errors(config, n_classes)
        if influence["top_k"] > n_train:
            errors.append(
                f"influence.top_k={influence['top_k']} is larger than the training set ({approx}{n_train} images); lower influence.top_k"
            )
        if influence["train_tiles"] > n_train:
            errors.append(f"influence.train_tiles={influence['train_tiles']} is more than the {approx}{n_train} training images; lower it")
        if influence["test_tiles"] > n_test:
            errors.append(f"influence.test_tiles={influence['test_tiles']} is more than the {approx}{n_test} test images; lower it")
        replay = config["replay"]
        for key, limit, what in (("top_k", n_train, "training"), ("batch_size", n_train, "training"), ("max_targets", n_test, "test")):
            if replay["enabled"] and replay[key] > limit:
                errors.append(f"replay.{key}={replay[key]} is more than the {approx}{limit} {what} images; lower it")
        if (config["lds"]["enabled"] or config["compare"]["enabled"]) and config["lds"]["scatter_samples"] > n_test:
            errors.append(f"lds.scatter_samples={config['lds']['scatter_samples']} is more than the {approx}{n_test} test images; lower it")
    replay = config["replay"]
    if replay["optimizer"] == "sgd" and replay["nesterov"] and replay["momentum"] == 0:
        errors.append("replay.nesterov: Nesterov momentum needs replay.momentum > 0; set momentum (e.g. 0.9) or nesterov: false")
    if len(replay["target_ids"]) > replay["max_targets"]:
        errors.append(
            f"replay.target_ids lists {len(replay['target_ids'])} test samples but replay.max_targets={replay['max_targets']}; "
            "raise max_targets (it sets the number of replay_targets jobs) or list fewer ids"
        )
    if 0 < replay["lds_models"] < 3:
        errors.append(
            f"replay.lds_models={replay['lds_models']}: a rank correlation across fewer than 3 subset models means nothing; use 3 or more (16 is usual), or 0 for no replay LDS"
        )
    if replay["enabled"] and replay["lds_models"] and sizes is not None:
        bad = [a for a in replay["lds_alphas"] if not 0 < round(a * sizes[0]) < sizes[0]]
        if bad:
            errors.append(
                f"replay.lds_alphas: {bad} keep none or all of the {sizes[0]} training images; use fractions that drop at least one image and keep at least one"
            )
    seeds = config["runs"]["seeds"]
    if seeds and all(seed == config["seed"] for seed in seeds):
        errors.append(
            f"runs.seeds: {seeds} lists only the main run's seed ({config['seed']}); add other seeds to compare runs, or leave it empty"
        )
    errors += version_errors(config)
    if config["compare"]["cleanlab_folds"] == 1:
        errors.append("compare.cleanlab_folds=1 leaves no other fold to train on; use 2 or more (5 is usual), or 0 for no cleanlab row")
    weights = config["model"]["pretrained_weights"]
    if weights and not Path(weights).is_file():
        errors.append(f"model.pretrained_weights: {weights} does not exist; give a local .pth file or null")
    return errors


def resolved_preconditioner(config: dict[str, Any]) -> str:
    """``influence.preconditioner`` with ``auto`` resolved: ``kfac`` for layer factors (last_layer,
    head_layers), ``none`` for ``projection`` (Gram measured below plain TracIn there, docs/validation.md)
    and ``all_layers`` (its projected layer gradients have no Kronecker factors; ``gram`` applies)."""
    preconditioner = config["influence"]["preconditioner"]
    if preconditioner != "auto":
        return preconditioner
    return "none" if config["factors"]["method"] in ("projection", "all_layers") else "kfac"


RETRAINING_STAGES = ("replay", "lds", "compare")


def checkpoint_errors(config: dict[str, Any], n_classes: int) -> list[str]:
    """Problems with ``checkpoints`` (existing checkpoints analysed instead of training), one line each.

    Each file is read by keys and shapes only (memory-mapped) and checked against ``model.arch``
    built on the meta device for ``n_classes`` classes, so the check is quick and allocates nothing.
    """
    import torch

    from inflow.model.architectures import build_model
    from inflow.model.checkpoints import read_user_state
    from inflow.train.imported import checkpoint_lrs

    section = config["checkpoints"]
    paths, lr = section["paths"], section["lr"]
    if not paths:
        return []
    errors = []
    try:
        checkpoint_lrs(lr, len(paths))
    except InflowError as exc:
        errors.append(str(exc))
    for stage in RETRAINING_STAGES:
        if config[stage]["enabled"]:
            errors.append(
                f"{stage}.enabled: trains models, but checkpoints.paths analyses existing ones without training; set {stage}.enabled: false"
            )
    if [s for s in config["runs"]["seeds"] if s != config["seed"]]:
        errors.append(
            "runs.seeds: other runs are trained, but checkpoints.paths analyses existing ones without training; leave runs.seeds empty"
        )
    arch = config["model"]["arch"]
    try:
        with torch.device("meta"):
            model = build_model(arch, n_classes, width=config["model"]["width"])
    except InflowError:
        return errors  # model.arch itself is reported by architecture_errors
    for path in paths:
        try:
            read_user_state(path, model, arch, n_classes, mmap=True)
        except InflowError as exc:
            errors.append(str(exc))
    return errors


def resolved(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (schema defaults filled in) with null defaults that depend on other keys resolved: ``dataset.noise_rate``."""
    from inflow.data.prepare import noise_rate

    return {**config, "dataset": {**config["dataset"], "noise_rate": noise_rate(config["dataset"])}}


def canonical(value: Any) -> Any:
    """``value`` with every mapping's keys sorted, recursively (lists keep their order).

    Snakemake compares a rule's params with the last run's by their text, so without this,
    reordering keys in config.yaml would look like a params change and rerun everything.
    """
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [canonical(item) for item in value]
    return value
