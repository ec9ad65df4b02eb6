from inflow.report.grids import write_influential_grid
from inflow.workflow.smk import run

run(
    snakemake,
    write_influential_grid,
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    influential_path=snakemake.input.influential,
    n=snakemake.params.n,
    out=snakemake.output[0],
)
