from inflow.mislabel.ranking import rank_mislabels
from inflow.workflow.smk import run

run(
    snakemake,
    rank_mislabels,
    manifest_path=snakemake.input.manifest,
    self_influence_path=snakemake.input.self_influence,
    topk_path=snakemake.input.topk,
    predictions_path=snakemake.input.predictions,
    cfg=snakemake.params.mislabel,
    ranking_out=snakemake.output.ranking,
    metrics_out=snakemake.output.metrics,
)
