from inflow.report.galleries import write_magnitude_gallery
from inflow.workflow.smk import run

run(
    snakemake,
    write_magnitude_gallery,
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    training_path=snakemake.input.training,
    n=snakemake.params.n,
    out=snakemake.output.picture,
    cells_out=snakemake.output.cells,
)
