"""Glue between Snakemake and the stages: config checks at start-up (rules/common.smk) and the runner of every rule script."""
