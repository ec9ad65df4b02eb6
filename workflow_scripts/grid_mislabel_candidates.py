from inflow.report.grids import write_mislabel_grid
from inflow.workflow.smk import run

run(
    snakemake,
    write_mislabel_grid,
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    ranking_path=snakemake.input.ranking,
    n=snakemake.params.n,
    ncols=snakemake.params.ncols,
    out=snakemake.output[0],
)
