"""Config validation: the JSON schema (with defaults) and the semantic checks."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO, run_snakemake
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from inflow.workflow.config import schema_errors, semantic_errors

SCHEMA = str(REPO / "schemas" / "config.schema.yaml")


def default_config() -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    validate(cfg, SCHEMA, set_default=True)
    return cfg


def test_default_config_is_valid() -> None:
    cfg = default_config()
    assert semantic_errors(cfg) == []
    assert cfg["dataset"]["imagefolder"]["extensions"]  # listed in config.yaml, equal to the schema default


def test_empty_config_gets_every_default() -> None:
    cfg: dict = {}
    validate(cfg, SCHEMA, set_default=True)
    assert cfg["train"]["checkpoint_epochs"] == [3, 6, 9, 12]
    assert cfg["influence"]["top_k"] == 20


@pytest.mark.parametrize(
    "path,value",
    [
        (("train", "epochs"), 0),
        (("influence", "top_k"), -1),
        (("train", "lr_head"), "fast"),
        (("dataset", "source"), "s3"),
        (("train", "bogus_key"), 1),
    ],
)
def test_schema_rejects_bad_values(path, value) -> None:
    cfg = default_config()
    cfg[path[0]][path[1]] = value
    with pytest.raises(WorkflowError):
        validate(cfg, SCHEMA, set_default=True)


def test_semantic_errors_name_the_key() -> None:
    cfg = default_config()
    bad = copy.deepcopy(cfg)
    bad["train"]["checkpoint_epochs"] = [3, 40]
    bad["influence"]["top_k"] = 10**6
    bad["dataset"]["source"] = "imagefolder"
    errors = semantic_errors(bad)
    assert any(e.startswith("train.checkpoint_epochs") and "[40]" in e for e in errors)
    assert any(e.startswith("dataset.imagefolder.path") for e in errors)


def test_schema_errors_are_one_line_per_problem_naming_the_key() -> None:
    cfg = default_config()
    cfg["train"]["bogus_key"] = 1
    cfg["influence"]["top_k"] = 0
    errors = schema_errors(cfg, SCHEMA)
    assert len(errors) == 2 and all("\n" not in e for e in errors)
    assert errors[0].startswith("influence.top_k: 0 is less than the minimum of 1")
    assert errors[1].startswith("train: ") and "'bogus_key' was unexpected" in errors[1] and "checkpoint_epochs" in errors[1]
    assert schema_errors(default_config(), SCHEMA) == []


@pytest.mark.e2e
def test_workflow_refuses_a_bad_config_before_any_job(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  checkpoint_epochs: [3, 40]\n")
    proc = run_snakemake(tmp_path, "-n", configfiles=[bad], cores=None, check=False)
    assert proc.returncode != 0
    assert "train.checkpoint_epochs: [40] are beyond train.epochs=12" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()
