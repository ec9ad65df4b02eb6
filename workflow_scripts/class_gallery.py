from inflow.report.galleries import write_class_gallery
from inflow.workflow.smk import run

run(
    snakemake,
    write_class_gallery,
    cls=snakemake.wildcards.cls,
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    tops_path=snakemake.input.tops,
    ncols=snakemake.params.ncols,
    out=snakemake.output.picture,
    cells_out=snakemake.output.cells,
)
