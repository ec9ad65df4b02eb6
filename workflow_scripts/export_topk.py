from inflow.report.rankings import write_topk_csv
from inflow.workflow.smk import run

run(
    snakemake,
    write_topk_csv,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    topk_path=snakemake.input.topk,
    out=snakemake.output[0],
)
