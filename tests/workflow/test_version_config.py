"""Model versions in the config: the shorthand of runs.seeds, merged settings, what a version changes."""

from __future__ import annotations

import copy

from inflow.workflow.versions import changes, is_seed_only, run_versions, seed_versions, version_config

CONFIG = {
    "seed": 0,
    "runs": {"seeds": [0, 2]},
    "train": {"epochs": 12, "lr_head": 1e-3},
    "model": {"arch": "resnet9", "width": 16},
    "versions": {
        "lr": {"train": {"lr_head": 2e-4}, "note": "smaller head learning rate"},
        "cleaned": {"data": "clean/influence"},
        "again": {"seed": 3, "train": {"epochs": 12}},
    },
}


def test_runs_seeds_are_seed_only_versions_listed_first() -> None:
    versions = run_versions(CONFIG)
    assert list(versions) == ["seed_2", "lr", "cleaned", "again"]
    assert versions["seed_2"]["seed"] == 2 and versions["cleaned"]["seed"] is None and versions["lr"]["data"] == "original"
    assert seed_versions(CONFIG) == {"seed_2": 2, "again": 3}  # epochs 12 is the main value: still seed-only
    assert not is_seed_only(CONFIG, versions["lr"]) and not is_seed_only(CONFIG, versions["cleaned"])


def test_version_config_merges_only_the_overrides() -> None:
    before = copy.deepcopy(CONFIG)
    merged = version_config(CONFIG, run_versions(CONFIG)["lr"])
    assert merged["train"] == {"epochs": 12, "lr_head": 2e-4} and merged["seed"] == 0 and merged["model"] == CONFIG["model"]
    assert CONFIG == before  # the main config is untouched
    assert version_config(CONFIG, run_versions(CONFIG)["seed_2"])["seed"] == 2


def test_changes_name_what_differs_from_the_main_run() -> None:
    versions = run_versions(CONFIG)
    assert changes(CONFIG, versions["lr"]) == "train.lr_head=0.0002"
    assert changes(CONFIG, versions["cleaned"]) == "data=clean/influence"
    assert changes(CONFIG, versions["again"]) == "seed=3"
