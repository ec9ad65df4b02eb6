from inflow.runs.comparison import compare_runs
from inflow.workflow.smk import run

run(
    snakemake,
    compare_runs,
    manifest_path=snakemake.input.manifest,
    seeds=list(snakemake.params.seeds),
    predictions=list(snakemake.input.predictions),
    topk=list(snakemake.input.topk),
    rankings=list(snakemake.input.rankings),
    metrics=list(snakemake.input.metrics),
    top_influential_n=snakemake.params.top_influential,
    top_mislabel=snakemake.params.top_mislabel,
    outputs={key: snakemake.output[key] for key in ("accuracy", "persistent", "influential", "mislabel", "plot")},
)
