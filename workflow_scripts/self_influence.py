from inflow.core.smk import run
from inflow.tracin.self_influence import self_influence

run(snakemake, self_influence, train_factor_paths=list(snakemake.input), out_path=snakemake.output[0])
