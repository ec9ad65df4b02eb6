from inflow.report.galleries import write_inspection_page
from inflow.workflow.smk import run

run(
    snakemake,
    write_inspection_page,
    train_id=int(snakemake.wildcards.train_id),
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    training_path=snakemake.input.training,
    topk_path=snakemake.input.topk,
    n=snakemake.params.n,
    out=snakemake.output.picture,
    cells_out=snakemake.output.cells,
)
