from inflow.report.grids import write_test_sample_grid
from inflow.workflow.smk import run

run(
    snakemake,
    write_test_sample_grid,
    test_id=int(snakemake.wildcards.test_id),
    images_path=snakemake.input.images,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    topk_path=snakemake.input.topk,
    n=snakemake.params.n,
    out=snakemake.output[0],
)
