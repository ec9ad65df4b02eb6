from inflow.report.tables import write_cross_analysis
from inflow.workflow.smk import run

run(
    snakemake,
    write_cross_analysis,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    topk_path=snakemake.input.topk,
    outputs={key: snakemake.output[key] for key in ("table", "table_csv", "summary", "summary_csv")},
)
