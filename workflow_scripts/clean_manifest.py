from inflow.cleaning.review import clean_manifest
from inflow.workflow.smk import run

run(
    snakemake,
    clean_manifest,
    variant=snakemake.wildcards.variant,
    manifest_path=snakemake.input.manifest,
    review_path=snakemake.input.get("review"),
    budget=snakemake.params.budget,
    seed=snakemake.params.seed,
    manifest_out=snakemake.output[0],
)
