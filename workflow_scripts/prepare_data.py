from inflow.data.prepare import prepare_data
from inflow.workflow.smk import run

run(
    snakemake,
    prepare_data,
    cfg=snakemake.params.dataset,
    seed=snakemake.params.seed,
    images_out=snakemake.output.images,
    manifest_out=snakemake.output.manifest,
    skipped_out=snakemake.output.skipped,
    classes_out=snakemake.output.classes,
)
