from inflow.report.rankings import write_training_influence
from inflow.workflow.smk import run

run(
    snakemake,
    write_training_influence,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    train_summary_path=snakemake.input.train_summary,
    parquet_out=snakemake.output.table,
    csv_out=snakemake.output.csv,
)
