from inflow.validation.comparison import ensemble_table
from inflow.workflow.smk import run

run(
    snakemake,
    ensemble_table,
    score_paths=list(snakemake.input.scores),
    self_influence_paths=list(snakemake.input.self_influence),
    seeds=list(snakemake.params.seeds),
    outputs_paths=list(snakemake.input.outputs),
    manifest_path=snakemake.input.manifest,
    output=snakemake.params.output,
    n_bootstrap=snakemake.params.bootstrap,
    seed=snakemake.params.seed,
    out_path=snakemake.output[0],
)
