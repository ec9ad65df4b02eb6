from inflow.report.plots import write_dashboard
from inflow.workflow.smk import run

run(
    snakemake,
    write_dashboard,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    summary_path=snakemake.input.summary,
    influential_path=snakemake.input.influential,
    health_path=snakemake.input.health,
    cross_summary_path=snakemake.input.cross_summary,
    matrix_path=snakemake.input.matrix,
    mislabel_metrics_path=snakemake.input.mislabel_metrics,
    out=snakemake.output[0],
    recommendations_path=snakemake.input.recommendations,
)
