from inflow.report.rankings import write_confusion_pairs
from inflow.workflow.smk import run

run(
    snakemake,
    write_confusion_pairs,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    topk_path=snakemake.input.topk,
    n=snakemake.params.n,
    parquet_out=snakemake.output.table,
    csv_out=snakemake.output.csv,
)
