from inflow.report.tables import write_health
from inflow.workflow.smk import run

run(
    snakemake,
    write_health,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    summary_path=snakemake.input.summary,
    parquet_out=snakemake.output.table,
    csv_out=snakemake.output.csv,
)
