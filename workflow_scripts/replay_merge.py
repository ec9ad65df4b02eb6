from inflow.replay.jobs import merge_replay
from inflow.workflow.smk import run

run(
    snakemake,
    merge_replay,
    group_paths=list(snakemake.input),
    top_k=snakemake.params.top_k,
    scores_out=snakemake.output.scores,
    topk_out=snakemake.output.topk,
    summary_out=snakemake.output.summary,
)
