"""Model versions: named trainings of the same prepared data that differ from the main run by config overrides.

A version is ``versions.<name>`` in the config: an optional ``note`` and overrides of what changes
training: ``seed``, keys of ``train:`` and ``model:``, and ``data`` (the main training set,
``original``, or a cleaned one of the cleaning stage, ``clean/<variant>``). ``runs.seeds`` is a
shorthand: every other seed ``s`` listed there is the version ``seed_<s>: {seed: s}``.

``rules/common.smk`` builds every version's job params from :func:`version_config` (the main
config with that version's overrides merged in), so a version's jobs depend on its own settings
only: editing one version reruns that version and nothing else.
"""

from __future__ import annotations

import copy
import re
from typing import Any

ORIGINAL = "original"
CLEAN_DATA = ("clean/influence", "clean/oracle", "clean/random")
OVERRIDE_SECTIONS = ("train", "model")
RESERVED_NAMES = ("main", "comparison")


def run_versions(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every version besides the main run, in config order: ``name -> overrides``.

    Overrides hold ``note`` (str), ``seed`` (int or None: the top-level seed), ``data``
    (``original`` or ``clean/<variant>``), ``train`` and ``model`` (dicts of changed keys). The
    seeds of ``runs.seeds`` other than the top-level one come first, as ``seed_<s>``.
    """
    versions = {}
    for seed in config.get("runs", {}).get("seeds", []):
        if seed != config["seed"]:
            versions[f"seed_{seed}"] = {"note": f"seed {seed} (runs.seeds)", "seed": seed}
    for name, overrides in (config.get("versions") or {}).items():
        versions[name] = dict(overrides or {})
    return {name: _filled(overrides) for name, overrides in versions.items()}


def _filled(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` with every key present (defaults: no note, the main seed, the original data, no change)."""
    return {
        "note": overrides.get("note") or "",
        "seed": overrides.get("seed"),
        "data": overrides.get("data") or ORIGINAL,
        "train": dict(overrides.get("train") or {}),
        "model": dict(overrides.get("model") or {}),
    }


def version_config(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``config`` with a version's ``overrides`` (from :func:`run_versions`) merged in: ``seed``, and
    ``train``/``model`` key by key. Not the note or the data: they are no training setting."""
    merged = copy.deepcopy(config)
    if overrides["seed"] is not None:
        merged["seed"] = overrides["seed"]
    for section in OVERRIDE_SECTIONS:
        merged[section] = {**merged[section], **copy.deepcopy(overrides[section])}
    return merged


def is_seed_only(config: dict[str, Any], overrides: dict[str, Any]) -> bool:
    """Whether a version differs from the main run by its seed alone (so it belongs in an ensemble of seeds)."""
    return (
        overrides["seed"] is not None
        and overrides["seed"] != config["seed"]
        and overrides["data"] == ORIGINAL
        and all(config[section].get(key) == value for section in OVERRIDE_SECTIONS for key, value in overrides[section].items())
    )


def seed_versions(config: dict[str, Any]) -> dict[str, int]:
    """The seed-only versions (:func:`is_seed_only`), config order: ``name -> seed``; with the main run they make an ensemble."""
    return {name: o["seed"] for name, o in run_versions(config).items() if is_seed_only(config, o)}


def changes(config: dict[str, Any], overrides: dict[str, Any]) -> str:
    """What a version changes, as text: ``seed=1; train.lr_head=0.0002; data=clean/influence`` (``""`` for none)."""
    parts = []
    if overrides["seed"] is not None and overrides["seed"] != config["seed"]:
        parts.append(f"seed={overrides['seed']}")
    for section in OVERRIDE_SECTIONS:
        parts += [f"{section}.{key}={value}" for key, value in overrides[section].items() if config[section].get(key) != value]
    if overrides["data"] != ORIGINAL:
        parts.append(f"data={overrides['data']}")
    return "; ".join(parts)


def version_errors(config: dict[str, Any]) -> list[str]:
    """Problems with ``versions`` and ``runs.seeds`` a schema cannot express, one line each (the
    merged configs themselves are checked by ``rules/common.smk`` against the schema)."""
    errors = []
    listed = config.get("versions") or {}
    for seed in config.get("runs", {}).get("seeds", []):
        if f"seed_{seed}" in listed and seed != config["seed"]:
            errors.append(f"versions.seed_{seed}: the name is taken by runs.seeds ({seed}); rename the version or drop the seed")
    versions = run_versions(config)
    seen_seeds: dict[int, str] = {}
    for name, overrides in versions.items():
        key = f"versions.{name}"
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", str(name)):
            errors.append(
                f"{key}: a version name starts with a letter and holds letters, digits, _ . - only (it names a folder); rename it"
            )
        if name in RESERVED_NAMES:
            errors.append(f"{key}: {name!r} is reserved (the main run, the comparison folder); choose another name")
        for section in OVERRIDE_SECTIONS:
            unknown = sorted(set(overrides[section]) - set(config[section]))
            if unknown:
                errors.append(
                    f"{key}.{section}: {unknown} are no keys of {section}: (see schemas/config.schema.yaml); remove or rename them"
                )
        if overrides["data"] == "clean/oracle" and not config["dataset"]["noise_rate"] > 0:
            errors.append(f"{key}.data: clean/oracle needs known true labels (injected noise, dataset.noise_rate > 0); use clean/influence")
        if not changes(config, overrides):
            errors.append(f"{key}: changes nothing against the main run (same seed, data and settings); set seed, data, train or model")
        if is_seed_only(config, overrides):
            if overrides["seed"] in seen_seeds:
                errors.append(f"{key}: seed {overrides['seed']} is already the version {seen_seeds[overrides['seed']]}; drop one of them")
            seen_seeds[overrides["seed"]] = name
    if listed and config["checkpoints"]["paths"]:
        errors.append("versions: versions are trained, but checkpoints.paths analyses existing ones without training; leave versions empty")
    return errors
