#!/usr/bin/env bash
# Post-deploy script: Snakemake runs it inside the new environment right after `conda env create`
# (snakemake --software-deployment-method conda). It installs the inflow package from the workflow's own
# folder. Snakemake runs a copy of this file from .snakemake/conda/, so the repository cannot be
# found from the script's path; rules/common.smk exports it as INFLOW_WORKFLOW_DIR (the folder of
# the Snakefile, an absolute path) to every process it starts. The dependencies come from
# envs/inflow.yaml; --no-deps keeps pip from resolving them again.
set -euo pipefail
: "${INFLOW_WORKFLOW_DIR:?is not set: create the environment through snakemake --software-deployment-method conda}"
python -m pip install --no-deps --editable "$INFLOW_WORKFLOW_DIR"
