from inflow.report.plots import write_class_dashboard
from inflow.workflow.smk import run

run(
    snakemake,
    write_class_dashboard,
    cls=snakemake.wildcards.cls,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    summary_path=snakemake.input.summary,
    topk_path=snakemake.input.topk,
    health_path=snakemake.input.health,
    ranking_path=snakemake.input.ranking,
    out=snakemake.output[0],
)
