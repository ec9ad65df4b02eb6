from inflow.report.tables import write_influential
from inflow.workflow.smk import run

run(
    snakemake,
    write_influential,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    topk_path=snakemake.input.topk,
    parquet_out=snakemake.output.table,
    csv_out=snakemake.output.csv,
)
