from inflow.report.tables import write_text_report
from inflow.workflow.smk import run

run(
    snakemake,
    write_text_report,
    manifest_path=snakemake.input.manifest,
    predictions_path=snakemake.input.predictions,
    health_path=snakemake.input.health,
    cross_summary_path=snakemake.input.cross_summary,
    influential_path=snakemake.input.influential,
    stats_path=snakemake.input.stats,
    ranking_path=snakemake.input.ranking,
    mislabel_metrics_path=snakemake.input.mislabel_metrics,
    out=snakemake.output[0],
    recommendations_path=snakemake.input.recommendations,
)
