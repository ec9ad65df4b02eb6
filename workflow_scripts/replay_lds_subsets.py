from inflow.replay.lds import write_subsets
from inflow.workflow.smk import run

run(
    snakemake,
    write_subsets,
    manifest_path=snakemake.input.manifest,
    n_models=snakemake.params.n_models,
    alpha=float(snakemake.wildcards.alpha),
    seed=snakemake.params.seed,
    out_path=snakemake.output[0],
)
