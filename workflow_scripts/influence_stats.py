from inflow.report.tables import write_stats
from inflow.workflow.smk import run

run(
    snakemake,
    write_stats,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    topk_path=snakemake.input.topk,
    summary_path=snakemake.input.summary,
    self_influence_path=snakemake.input.self_influence,
    parquet_out=snakemake.output.table,
    csv_out=snakemake.output.csv,
)
