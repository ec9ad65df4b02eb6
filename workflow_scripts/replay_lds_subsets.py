from inflow.core.smk import run
from inflow.replay.lds import write_subsets

run(
    snakemake,
    write_subsets,
    manifest_path=snakemake.input.manifest,
    n_models=snakemake.params.n_models,
    alpha=float(snakemake.wildcards.alpha),
    seed=snakemake.params.seed,
    out_path=snakemake.output[0],
)
